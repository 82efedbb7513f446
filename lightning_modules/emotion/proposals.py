"""From per-subtitle emotion probabilities to scored temporal instances, and ground truth as rows (vectorised).

Proposals follow the multi-threshold convention of weakly supervised temporal localization: for each clip, class
and threshold ``theta`` in ``thresholds``, every maximal run of consecutive subtitle units whose probability is at
least ``theta`` is a proposal from its first unit's start to its last unit's end, scored by its mean probability;
duplicates across thresholds are removed by class-wise non-maximum suppression on tIoU (torchvision's
``batched_nms`` on intervals drawn as boxes of unit height). With ``relative=True`` (the default) the thresholds
apply to each clip's sequence divided by its maximum, as WTAL methods threshold a normalised class activation
sequence: every clip gets proposals for every class, and the score (the mean raw probability) ranks them across
clips; with absolute thresholds a class whose probabilities stay below the lowest threshold in a clip gets none.
A threshold of 0 makes the clip's whole subtitle span a run scored like the others. With ``whole_clip=True`` every
clip also proposes its whole span for every class scored by the clip-level probability alone, which (being at least
the score of any run in the clip) ranks first among the clip's proposals of that class: the class-frequency prior's
one proposal per clip and class, ranked by the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms


def unit_runs(active: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Maximal runs of ``True`` along the last axis of ``active [..., U]``: ``(row, first, last)`` with ``row`` the
    flat index over the leading axes (inclusive unit indices)."""
    flat = active.reshape(-1, active.shape[-1])
    pad = torch.zeros(flat.shape[0], 1, dtype=torch.bool, device=flat.device)
    rising = flat & ~torch.cat([pad, flat[:, :-1]], 1)
    falling = flat & ~torch.cat([flat[:, 1:], pad], 1)
    row, first = rising.nonzero(as_tuple=True)
    _, last = falling.nonzero(as_tuple=True)  # same row-major order: the k-th run's end is the k-th falling edge
    return row, first, last


def proposals(
    probs: Tensor,
    starts: Tensor,
    ends: Tensor,
    unit_mask: Tensor,
    clip_ids: Tensor,
    thresholds: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    nms_iou: float = 0.6,
    relative: bool = True,
    clip_scores: Tensor | None = None,
    whole_clip: bool = False,
) -> Tensor:
    """Scored instances ``[N, 5]`` (clip, class, start s, end s, score) from ``probs [B, U, C]``.

    ``starts``/``ends`` ``[B, U]`` are the units' times, ``unit_mask [B, U]`` marks real (not padded) units and
    ``clip_ids [B]`` the dataset-wide clip ids written in the first column. ``clip_scores [B, C]`` (optional): the
    clip-level probability of each class, multiplied into the score of the clip's proposals (WTAL methods fuse the
    video-level class score into the proposal score so that proposals rank across clips by both). ``whole_clip``:
    add each clip's whole span per class, scored by ``clip_scores`` (required).
    """
    B, U, C = probs.shape
    theta = torch.tensor(list(thresholds), dtype=probs.dtype, device=probs.device)
    if whole_clip and clip_scores is None:
        raise ValueError("whole_clip proposals are scored by the clip-level probability: pass clip_scores")
    p = probs.permute(0, 2, 1)  # [B, C, U]
    level = p
    if relative:
        peak = p.masked_fill(~unit_mask.unsqueeze(1), 0).amax(-1, keepdim=True)
        level = p / peak.clamp(min=torch.finfo(p.dtype).tiny)
    active = (level.unsqueeze(2) >= theta.view(1, 1, -1, 1)) & unit_mask.view(B, 1, 1, U)  # [B, C, T, U]
    row, first, last = unit_runs(active)
    b = row // (C * max(len(theta), 1))
    c = (row // max(len(theta), 1)) % C
    cumulative = torch.cat([p.new_zeros(B, C, 1), p.cumsum(-1)], -1)  # [B, C, U + 1]
    score = (cumulative[b, c, last + 1] - cumulative[b, c, first]) / (last - first + 1)
    if clip_scores is not None:
        score = score * clip_scores[b, c].to(score.dtype)
    if whole_clip:
        wb = torch.arange(B, device=probs.device).repeat_interleave(C)
        wc = torch.arange(C, device=probs.device).repeat(B)
        real = unit_mask.sum(1)[wb] > 0
        wb, wc = wb[real], wc[real]
        b, c = torch.cat([b, wb]), torch.cat([c, wc])
        first = torch.cat([first, torch.zeros_like(wb)])
        last = torch.cat([last, unit_mask.sum(1)[wb] - 1])
        score = torch.cat([score, clip_scores[wb, wc].to(score.dtype)])
    if b.numel() == 0:
        return probs.new_zeros(0, 5)
    t0, t1 = starts[b, first], ends[b, last]
    boxes = torch.stack([t0, torch.zeros_like(t0), t1, torch.ones_like(t1)], 1).float()
    keep = batched_nms(boxes, score.float(), b * C + c, nms_iou)
    return torch.stack([clip_ids[b].to(probs.dtype), c.to(probs.dtype), t0, t1, score], 1)[keep]


def ground_truth(unit_labels: Tensor, starts: Tensor, ends: Tensor, unit_mask: Tensor, clip_ids: Tensor) -> Tensor:
    """Ground-truth instances ``[M, 4]`` (clip, class, start, end): maximal runs of annotated units per class."""
    B, U, C = unit_labels.shape
    active = unit_labels.permute(0, 2, 1) & unit_mask.unsqueeze(1)  # [B, C, U]
    row, first, last = unit_runs(active)
    b, c = row // C, row % C
    return torch.stack([clip_ids[b].float(), c.float(), starts[b, first].float(), ends[b, last].float()], 1)
