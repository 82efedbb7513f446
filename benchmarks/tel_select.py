"""TEL unit-score and proposal rules chosen on held-out TRAINING movies: a concatenated-clips segment-level proxy.

    python benchmarks/tel_select.py --ckpt runs/subtitles_official/version_0/checkpoints/best.ckpt \
        --config configs/tel/subtitles_official.yaml --root /path/to/tel [--group 3] [--json OUT] [--markdown FILE]

This replaces the cross-validation over the test movies of ``benchmarks/tel_proposal_cv.py`` (history): nothing
here reads ``test.json``. The data module is built from ``--config``'s ``data.init_args`` (root replaced by
``--root``) for the validate stage only, which reads ``train.json`` and holds out ``val_movies`` training movies
(seeded) as the ``val`` split.

The proxy (pseudo-clips with subtitle-level labels built from training clips):

* the held-out training clips (the ``val`` split: ``data.init_args.val_movies`` movies) are sorted by (movie, clip
  id; digit runs compare as numbers) and each movie's clips are cut into consecutive groups of ``--group`` clips
  (default 3). A movie's last clips that do not fill a group (the group would span two movies) are left out, and so
  is every group that contains a clip with no subtitles;
* the clips of a group are concatenated into one pseudo-clip: each clip's subtitle times are shifted so that its
  first subtitle starts 1 s after the previous clip's last subtitle ends (the first clip keeps its times);
* every subtitle of a pseudo-clip is labelled with the clip-level labels of the clip it came from. Ground-truth
  instances are then, as on the test split, maximal runs of consecutive labelled subtitles of one class (two
  neighbouring clips that share a class make one instance across the gap).

Why: the boundary between clips with different labels is the only temporal structure with known labels in the
training split. With 3 clips each origin clip covers about a third of its pseudo-clip, close to the share of a clip
that an annotated emotion covers on the test split (29 % of the subtitles on average, docs/tel.md), so ranking the
whole pseudo-clip by its clip probability (the ``clip`` unit scores, whole-clip proposals) is not rewarded for free
as it would be on a single training clip, where every subtitle carries the clip's labels.

Bias: every subtitle of an origin clip counts as positive for each of its clip's classes, while on the test split an
annotated emotion covers only part of its clip. The proxy therefore favours smooth scores, constant over a clip
(``clip`` / ``product`` unit scores, long or whole-clip proposals), over scores that single out a few subtitles;
read a win of the smooth rules as an upper bound of what they gain on the test split.

The model runs on each pseudo-clip as one clip (batches of ``--batch-size``), giving raw unit probabilities
``raw``; the clip score is ``topk_mean(raw, mask, ratio)`` with the model's top-k ratio. For each unit-score rule of
``calibrated_scores`` (``unit``, ``product``, ``clip``) the script computes the proxy segment-level mAP (SegmentMAP
over the pseudo-clips' subtitles) and, for each proposal rule of ``tel_proposal_cv.RULES``, the proxy instance mAP
(InstanceMAP, mean over tIoU 0.1:0.5; proposals with relative thresholds, scored with the clip score, NMS at the
model's ``nms_iou``, as the module does). It also reports the clip-level mAP of the held-out clips themselves (each
clip alone, the top-k pooled raw probabilities against its labels: the training run's ``val/clip_map``).

Printed: a Markdown table, one row per unit-score rule x proposal rule, columns proxy segment mAP and proxy instance
mAP; then the chosen pair: the unit-score rule with the best proxy segment mAP and, for it, the proposal rule with
the best proxy instance mAP (ties: the first in the order above). ``--json`` writes the numbers; ``--markdown FILE``
replaces the text between the lines ``<!-- tel_select:begin -->`` and ``<!-- tel_select:end -->`` of FILE.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.tel_proposal_cv import RULES  # noqa: E402
from benchmarks.tel_timelines import _load_class, load_model  # noqa: E402
from datamodules.tel_annotations import Clip  # noqa: E402
from datamodules.video_subtitles import collate_clips  # noqa: E402
from experiments.errors import ConfigError, DataError, SuiteError  # noqa: E402
from experiments.io import atomic_write_bytes  # noqa: E402
from lightning_modules.emotion.losses import topk_mean  # noqa: E402
from lightning_modules.emotion.metrics import InstanceMAP, SegmentMAP  # noqa: E402
from lightning_modules.emotion.module import UNIT_SCORES, calibrated_scores  # noqa: E402
from lightning_modules.emotion.proposals import ground_truth, proposals  # noqa: E402

GAP = 1.0  # seconds between the last subtitle of a clip and the first of the next one in a pseudo-clip
BEGIN, END = "<!-- tel_select:begin -->", "<!-- tel_select:end -->"


def _natural(text: str) -> list:
    """Sort key of a clip id: digit runs compare as numbers (``c2`` before ``c10``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def pseudo_clips(clips: list[Clip], group: int = 3, gap: float = GAP) -> list[dict]:
    """Pseudo-clips of ``group`` consecutive clips of one movie, with subtitle-level labels (module docstring).

    Each is a dict: ``movie``, ``keys`` (the origin clips' ``movie/clip``), ``members`` (their indices in
    ``clips``), ``offsets`` (seconds added to each origin clip's times), ``starts``/``ends`` ``[U]`` float64,
    ``texts``, ``origin`` ``[U]`` (which member each subtitle came from), ``labels`` ``[18]`` bool (the union of the
    members' labels) and ``unit_labels`` ``[U, 18]`` bool (each subtitle: its origin clip's labels).
    """
    if group < 1:
        raise ConfigError(f"--group is {group}; a pseudo-clip needs at least one clip")
    order = sorted(range(len(clips)), key=lambda i: (clips[i].movie, _natural(clips[i].clip)))
    movies: dict[str, list[int]] = {}
    for i in order:
        movies.setdefault(clips[i].movie, []).append(i)
    out = []
    for movie, members in movies.items():
        for at in range(0, len(members) - group + 1, group):
            chosen = members[at : at + group]
            if any(len(clips[i].texts) == 0 for i in chosen):
                continue
            offsets, starts, ends, origin, unit_labels = [], [], [], [], []
            for k, i in enumerate(chosen):
                clip = clips[i]
                shift = 0.0 if k == 0 else float(ends[-1].max()) + gap - float(clip.starts.min())
                offsets.append(shift)
                starts.append(clip.starts + shift)
                ends.append(clip.ends + shift)
                origin.append(np.full(len(clip.texts), k, dtype=np.int64))
                unit_labels.append(np.repeat(clip.labels[None], len(clip.texts), axis=0))
            out.append(dict(movie=movie, keys=[clips[i].key for i in chosen], members=chosen, offsets=offsets,
                            starts=np.concatenate(starts), ends=np.concatenate(ends),
                            texts=[t for i in chosen for t in clips[i].texts], origin=np.concatenate(origin),
                            labels=np.any([clips[i].labels for i in chosen], axis=0),
                            unit_labels=np.concatenate(unit_labels)))  # fmt: skip
    return out


def pseudo_items(pseudo: list[dict], num_classes: int) -> list[dict]:
    """``collate_clips`` items of the pseudo-clips (the first ``num_classes`` classes; ``index``: list position)."""
    return [{"index": n, "texts": p["texts"], "starts": torch.from_numpy(p["starts"]).float(),
             "ends": torch.from_numpy(p["ends"]).float(), "labels": torch.from_numpy(p["labels"][:num_classes]),
             "unit_labels": torch.from_numpy(p["unit_labels"][:, :num_classes])}
            for n, p in enumerate(pseudo)]  # fmt: skip


def _nan_low(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def proxy_scores(raw: torch.Tensor, mask: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor,
                 unit_labels: torch.Tensor, ratio: float, nms: float = 0.6) -> dict:  # fmt: skip
    """Proxy numbers of raw unit probabilities ``raw [B, U, C]`` of ``B`` pseudo-clips (``mask``, ``starts``,
    ``ends`` ``[B, U]``, pseudo labels ``unit_labels [B, U, C]``): ``{unit rule: {"segment_map": x, "instance_map":
    {proposal rule: y}}}`` for the rules of ``UNIT_SCORES`` and ``RULES``, in percent."""
    raw = raw.float()
    clip = topk_mean(raw, mask, ratio)
    ids = torch.arange(raw.shape[0])
    gt = ground_truth(unit_labels.bool(), starts, ends, mask, ids)
    out = {}
    for rule in UNIT_SCORES:
        scores = calibrated_scores(raw, clip, rule) * mask.unsqueeze(-1).to(raw.dtype)
        segment = SegmentMAP(raw.shape[-1])
        segment.update(scores[mask], unit_labels[mask].long())
        instance = {}
        for name, spec in RULES.items():
            metric = InstanceMAP(raw.shape[-1])
            metric.update(proposals(scores, starts, ends, mask, ids, spec["thresholds"], nms, True, clip,
                                    spec["whole_clip"]), gt)  # fmt: skip
            instance[name] = float(metric.compute()["map"])
        out[rule] = {"segment_map": float(segment.compute()), "instance_map": instance}
    return out


def clip_map(raw: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, ratio: float) -> float:
    """Clip-level mAP (percent) of ``raw [B, U, C]`` clips, each alone: top-k pooled probabilities vs ``labels``."""
    metric = SegmentMAP(raw.shape[-1])
    metric.update(topk_mean(raw.float(), mask, ratio), labels.long())
    return float(metric.compute())


def choose(scores: dict) -> tuple[str, str]:
    """The unit rule with the best proxy segment mAP, then its proposal rule with the best proxy instance mAP (ties
    and NaN: the first in order)."""
    unit = max(scores, key=lambda r: _nan_low(scores[r]["segment_map"]))
    instance = scores[unit]["instance_map"]
    return unit, max(instance, key=lambda r: _nan_low(instance[r]))


def table(scores: dict) -> str:
    """The Markdown table: one row per unit-score rule x proposal rule."""
    lines = ["| unit scores | proposals | proxy segment mAP | proxy instance mAP |", "|---|---|---:|---:|"]
    for unit, row in scores.items():
        for name, value in row["instance_map"].items():
            lines.append(f"| {unit} | {name} | {row['segment_map']:.2f} | {value:.2f} |")
    return "\n".join(lines)


def held_out_data(config: dict, root: str):
    """The config's data module (root replaced, no workers) set up for the validate stage only, and its ``val``
    dataset: the held-out training movies. Never reads the test annotations."""
    data = config.get("data") or {}
    cls = _load_class(data.get("class_path", "datamodules.video_subtitles.VideoSubtitlesDataModule"))
    kwargs = {**data.get("init_args", {}), "root": root, "num_workers": 0, "pin_memory": False,
              "persistent_workers": False}  # fmt: skip
    dm = cls(**kwargs)
    if not getattr(dm, "val_movies", 0):
        raise ConfigError("the proxy runs on held-out training movies: set data.init_args.val_movies > 0 (and "
                          "val_json: null) in the config")  # fmt: skip
    if dm.visual != "none" or dm.subtitles != "json":
        raise ConfigError("the proxy concatenates the annotation's subtitles only: use a subtitle-only config "
                          "(data.init_args.visual: none, subtitles: json)")  # fmt: skip
    dm.setup("validate")
    return dm, dm.val_set


@torch.no_grad()
def run(model, items: list[dict], batch_size: int, device: str) -> tuple[dict, torch.Tensor]:
    """All ``items`` collated into one padded batch, and the model's raw unit probabilities ``[N, U, C]`` of them
    (computed ``batch_size`` clips at a time, each chunk padded to its own longest clip only)."""
    full = collate_clips(items)
    raw = torch.zeros(*full["unit_mask"].shape, model.num_classes)
    for at in range(0, len(items), batch_size):
        batch = collate_clips(items[at : at + batch_size])
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        probs = model.unit_probs(batch).float().cpu()
        raw[at : at + probs.shape[0], : probs.shape[1]] = probs
    return full, raw


def replace_block(path: Path, text: str) -> None:
    """Put ``text`` between the ``BEGIN`` and ``END`` marker lines of ``path`` (both must be there)."""
    lines = path.read_text().splitlines()
    if BEGIN not in lines or END not in lines or lines.index(BEGIN) > lines.index(END):
        raise DataError(f"{path}: add the lines {BEGIN} and {END} where the table belongs")
    lines[lines.index(BEGIN) + 1 : lines.index(END)] = text.splitlines()
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def select(args: argparse.Namespace) -> tuple[dict, str]:
    """Run the checkpoint on the pseudo-clips and the held-out clips: the JSON document and the printed text."""
    from experiments.configs import load_config

    config = load_config(args.config)  # merged over its bases, resolved
    model, _ = load_model(args.ckpt, config)
    model = model.to(args.device)
    C, ratio, nms = model.num_classes, model.cfg["ratio"], model.cfg["nms"]
    _, dataset = held_out_data(config, args.root)
    if dataset.num_classes != C:
        raise DataError(f"the data has {dataset.num_classes} classes but the model {C}")
    clips = dataset.clips
    pseudo = pseudo_clips(clips, args.group)
    if not pseudo:
        raise DataError(f"no group of {args.group} held-out clips of one movie with subtitles: lower --group")
    print(f"{len(clips)} held-out clips -> {len(pseudo)} pseudo-clips of {args.group}", file=sys.stderr)
    batch, raw = run(model, pseudo_items(pseudo, C), args.batch_size, args.device)
    scores = proxy_scores(raw, batch["unit_mask"], batch["starts"], batch["ends"], batch["unit_labels"], ratio, nms)
    held, held_raw = run(model, [dataset[i] for i in range(len(dataset))], args.batch_size, args.device)
    held_map = clip_map(held_raw, held["unit_mask"], held["labels"], ratio)
    unit, rule = choose(scores)
    spec = RULES[rule]
    movies = len({c.movie for c in clips})
    text = (f"{table(scores)}\n\nHeld-out training clips: {len(clips)} of {movies} movies, clip-level mAP "
            f"{held_map:.2f}; proxy: {len(pseudo)} pseudo-clips of {args.group} clips.\n\nChosen: unit_scores: {unit}, "
            f"proposals: {rule} (whole_clip: {str(spec['whole_clip']).lower()}, thresholds: "
            f"{list(spec['thresholds'])}).")  # fmt: skip
    result = {"checkpoint": args.ckpt, "config": args.config, "group": args.group, "pseudo_clips": len(pseudo),
              "held_out": {"clips": len(clips), "movies": movies, "clip_map": held_map}, "proxy": scores,
              "chosen": {"unit_scores": unit, "proposals": rule, "whole_clip": spec["whole_clip"],
                         "thresholds": list(spec["thresholds"])}}  # fmt: skip
    return result, text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--config", default="configs/tel/subtitles_official.yaml", help="the run's config")
    parser.add_argument("--root", required=True, help="folder with train.json (test.json is never read)")
    parser.add_argument("--group", type=int, default=3, help="clips per pseudo-clip")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="write the numbers here")
    parser.add_argument("--markdown", default=None, help="replace the tel_select marked block of this file")
    args = parser.parse_args(argv)
    try:
        result, text = select(args)
        print(text)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        if args.markdown:
            replace_block(Path(args.markdown), text)
    except (SuiteError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
