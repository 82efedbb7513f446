"""Timeline pictures of temporal emotion localization: subtitles along time, ground truth and predictions per class."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def draw_timeline(
    starts: Tensor,
    ends: Tensor,
    texts: Sequence[str],
    unit_labels: Tensor,
    probs: Tensor,
    class_names: Sequence[str],
    threshold: float = 0.5,
    width: int = 900,
    title: str | None = None,
) -> Tensor:
    """One clip as an image ``[3, H, W]`` in ``[0, 1]``.

    Top row: the subtitle units as grey bars with their (shortened) text. Then, for each class annotated in the clip
    or predicted above ``threshold`` on some unit, two rows: the annotated units (green) and the predicted probability
    of each unit (blue, opacity = probability; outlined where it reaches ``threshold``). ``title`` (e.g. the clip's
    movie/clip key) is written above the panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, p = unit_labels.bool().numpy(), probs.float().numpy()
    shown = [c for c in range(len(class_names)) if labels[:, c].any() or (p[:, c] >= threshold).any()]
    rows = 1 + 2 * max(len(shown), 1)
    dpi = 100
    fig, ax = plt.subplots(figsize=(width / dpi, 0.35 * rows + 0.6), dpi=dpi)
    s, e = starts.numpy(), ends.numpy()
    top = rows - 1
    for k, (a, b) in enumerate(zip(s, e, strict=True)):
        ax.barh(top, b - a, left=a, height=0.8, color="0.85", edgecolor="0.5")
        text = texts[k] if len(texts[k]) <= 22 else texts[k][:20] + ".."
        ax.text((a + b) / 2, top, text, ha="center", va="center", fontsize=5, clip_on=True)
    ticks, names = [top], ["subtitles"]
    for i, c in enumerate(shown):
        y_gt, y_pr = top - 1 - 2 * i, top - 2 - 2 * i
        for k, (a, b) in enumerate(zip(s, e, strict=True)):
            if labels[k, c]:
                ax.barh(y_gt, b - a, left=a, height=0.8, color="tab:green")
            ax.barh(y_pr, b - a, left=a, height=0.8, color="tab:blue", alpha=float(np.clip(p[k, c], 0.05, 1)),
                    edgecolor="black" if p[k, c] >= threshold else "none")  # fmt: skip
        ticks += [y_gt, y_pr]
        names += [f"{class_names[c]} (truth)", f"{class_names[c]} (predicted)"]
    ax.set_yticks(ticks, names, fontsize=6)
    ax.set_xlim(float(s.min()) - 0.2 if len(s) else 0, float(e.max()) + 0.2 if len(e) else 1)
    ax.set_ylim(-0.6, rows - 0.4)
    ax.set_xlabel("time (s)", fontsize=6)
    ax.tick_params(axis="x", labelsize=6)
    if title:
        ax.set_title(title, fontsize=6, loc="left")
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255
