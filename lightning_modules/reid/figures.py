"""Ranked-list figures for video re-ID, built with tensor operations only (no matplotlib), so a LightningModule can
log them to TensorBoard (``add_image`` of a ``[3, H, W]`` float tensor) or save them as PNG (``torchvision.utils.
save_image``).

A row shows one query: its tracklet (``frames_shown`` frames side by side, evenly spaced over the tracklet) outlined
in grey, then the top-R gallery tracklets in ranked order, each outlined in green when it is a correct match and in
red when it is not. :func:`ranked_lists_grid` stacks rows of several queries vertically on a white background.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

QUERY_COLOUR = (0.5, 0.5, 0.5)
CORRECT_COLOUR = (0.0, 1.0, 0.0)
WRONG_COLOUR = (1.0, 0.0, 0.0)
BACKGROUND = 1.0  # white


def _strip(frames: Tensor, frames_shown: int) -> Tensor:
    """``[3, H, n*W]``: ``n = min(frames_shown, T)`` frames of ``frames [T, 3, H, W]``, evenly spaced, side by side."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"a tracklet must be [T, 3, H, W], got {tuple(frames.shape)}")
    count = min(frames_shown, frames.shape[0])
    picked = torch.linspace(0, frames.shape[0] - 1, count, device=frames.device).round().long()
    chosen = frames[picked].float().clamp(0.0, 1.0)  # [n, 3, H, W]
    return chosen.permute(1, 2, 0, 3).reshape(3, frames.shape[2], count * frames.shape[3])


def _outlined(image: Tensor, colour: tuple[float, float, float], border: int) -> Tensor:
    """``image [3, H, W]`` inside a ``border``-pixel frame of ``colour``: ``[3, H + 2 border, W + 2 border]``."""
    _, h, w = image.shape
    fill = torch.tensor(colour, dtype=image.dtype, device=image.device)[:, None, None]
    out = fill.repeat(1, h + 2 * border, w + 2 * border)
    out[:, border : border + h, border : border + w] = image
    return out


def ranked_list_figure(
    query_frames: Tensor,
    gallery_frames: Tensor,
    correct: Tensor,
    frames_shown: int = 4,
    border: int = 2,
    gap: int = 4,
) -> Tensor:
    """One row: the query tracklet (grey outline), then the top-R gallery tracklets (green when correct, red when
    wrong), left to right in ranked order, ``gap`` white columns between tracklets.

    Args:
        query_frames: ``[T, 3, H, W]`` de-normalised frames in ``[0, 1]``.
        gallery_frames: ``[R, T', 3, H, W]`` frames of the top-R gallery tracklets, best first (``T'`` may differ
            from ``T``; ``H`` and ``W`` may not).
        correct: ``[R]`` bool, whether each gallery tracklet has the query's identity.
        frames_shown: frames per tracklet (evenly spaced over it; all of them when the tracklet is shorter).
        border: outline width in pixels.
        gap: white pixels between two tracklets.

    Returns:
        ``[3, H + 2 border, Wq + R (Wg + gap)]`` float in ``[0, 1]``, with ``Wq = nq W + 2 border`` and
        ``Wg = ng W + 2 border`` (``nq``, ``ng`` the frames shown per tracklet).
    """
    if gallery_frames.ndim != 5:
        raise ValueError(f"gallery_frames must be [R, T, 3, H, W], got {tuple(gallery_frames.shape)}")
    if gallery_frames.shape[-2:] != query_frames.shape[-2:]:
        sizes = f"{tuple(query_frames.shape[-2:])} vs {tuple(gallery_frames.shape[-2:])}"
        raise ValueError(f"query and gallery frames differ in size: {sizes}")
    if correct.shape != (gallery_frames.shape[0],):
        raise ValueError(f"correct must be [{gallery_frames.shape[0]}], got {tuple(correct.shape)}")
    if frames_shown < 1 or border < 0 or gap < 0:
        raise ValueError(f"need frames_shown >= 1, border >= 0, gap >= 0, got {frames_shown}, {border}, {gap}")
    parts = [_outlined(_strip(query_frames, frames_shown), QUERY_COLOUR, border)]
    for tracklet, hit in zip(gallery_frames, correct.tolist(), strict=True):
        strip = _strip(tracklet, frames_shown)
        parts.append(torch.full((3, strip.shape[1] + 2 * border, gap), BACKGROUND, device=strip.device))
        parts.append(_outlined(strip, CORRECT_COLOUR if hit else WRONG_COLOUR, border))
    return torch.cat(parts, dim=2)


def ranked_lists_grid(rows: Sequence[Tensor], padding: int = 4) -> Tensor:
    """Stack rows of :func:`ranked_list_figure` (``[3, H_i, W_i]``) vertically on white, left-aligned, with
    ``padding`` white pixels around and between them: ``[3, sum H_i + (n + 1) padding, max W_i + 2 padding]``."""
    if not rows:
        raise ValueError("ranked_lists_grid needs at least one row")
    if any(row.ndim != 3 or row.shape[0] != 3 for row in rows):
        raise ValueError(f"rows must be [3, H, W], got {[tuple(row.shape) for row in rows]}")
    height = sum(row.shape[1] for row in rows) + (len(rows) + 1) * padding
    width = max(row.shape[2] for row in rows) + 2 * padding
    grid = torch.full((3, height, width), BACKGROUND, device=rows[0].device)
    top = padding
    for row in rows:
        grid[:, top : top + row.shape[1], padding : padding + row.shape[2]] = row.float()
        top += row.shape[1] + padding
    return grid
