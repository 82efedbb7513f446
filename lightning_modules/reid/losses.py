"""STT's training objective (arXiv 2103.16469, Sec. 3), as pure functions over the outputs of
:class:`lightning_modules.reid.stt.SpatioTemporalTransformer`.

    L = L_id + L_tri                          (clip feature: BNNeck cross-entropy + batch-hard triplet)
      + w_spatial  * L_SpaC,  L_SpaC = CE(frame cls) + 1/P sum_p CE(stripe p)          (spatial constraint)
      + w_temporal * L_TemC,  L_TemC = L_tri(frame features) + w_att * KL(a || uniform)  (temporal constraint)

The paper names the terms (spatial cross-entropy, spatial part cross-entropy over P horizontal groups, temporal
triplet, temporal attention term) but its formulas were not available to us; the forms below are our choices,
recorded in ``docs/stt.md``:

* **Temporal triplet**: batch-hard triplet over the frame-level features f_s of every frame in the batch (a frame's
  positives are all frames of its identity, from its own and the other tracklets), so that ST's per-frame summaries
  agree along time and across tracklets before TT aggregates them.
* **Temporal attention term**: ``KL(a || U_T) = sum_t a_t log a_t + log T`` of TT's class-token attention ``a`` over
  the T frames: zero for attention spread over all frames, ``log T`` for attention on one frame. It is the temporal
  twin of the part loss (keep the model from relying on a few frames, as the stripes keep ST from relying on a few
  regions).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def identity_loss(logits: Tensor, labels: Tensor, smoothing: float = 0.1) -> Tensor:
    """``L_id`` of ``L`` (module docstring; STT Sec. 3): cross-entropy with label smoothing ``smoothing`` of the
    clip feature's BNNeck logits ``[B, C]`` against identity ``labels [B]``."""
    return F.cross_entropy(logits, labels, label_smoothing=smoothing)


def batch_hard_triplet(features: Tensor, labels: Tensor, margin: float = 0.3) -> Tensor:
    """``L_tri`` of ``L`` (module docstring; STT Sec. 3), the batch-hard triplet loss (Hermans et al., 2017): for
    each anchor, the farthest positive and the closest negative in Euclidean distance,
    ``mean(relu(d(a, p) - d(a, n) + margin))``. Anchors without a positive or a negative in the batch are left
    out. ``features [N, D]``, ``labels [N]``."""
    dist = torch.cdist(features.float(), features.float())  # [N, N]
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & ~eye
    hardest_positive = dist.masked_fill(~positive, float("-inf")).amax(1)
    hardest_negative = dist.masked_fill(same, float("inf")).amin(1)
    valid = positive.any(1) & (~same).any(1)
    if not valid.any():
        return features.sum() * 0.0
    return F.relu(hardest_positive - hardest_negative + margin)[valid].mean()


def spatial_constraint(frame_logits: Tensor, part_logits: Tensor, labels: Tensor, smoothing: float = 0.1) -> Tensor:
    """``L_SpaC`` of ``L`` (module docstring; STT Sec. 3, spatial perception constraint): cross-entropy of every
    frame's cls logits ``[B, T, C]`` plus the mean over the ``P`` stripes of their cross-entropy
    (``part_logits [B, T, P, C]``); ``labels [B]`` apply to all frames of a clip."""
    B, T, P, C = part_logits.shape
    frame_labels = labels[:, None].expand(B, T).reshape(-1)
    frame_loss = F.cross_entropy(frame_logits.reshape(-1, C), frame_labels, label_smoothing=smoothing)
    part_labels = labels[:, None, None].expand(B, T, P).reshape(-1)
    part_loss = F.cross_entropy(part_logits.reshape(-1, C), part_labels, label_smoothing=smoothing)
    return frame_loss + part_loss  # the mean over stripes and frames of equal-sized groups is one mean


def temporal_attention_divergence(attention: Tensor) -> Tensor:
    """The attention term of ``L_TemC`` (module docstring; STT Sec. 3, temporal perception constraint):
    ``KL(a || uniform)`` of attention rows ``[B, T]`` over frames, averaged over the batch (0 when uniform)."""
    T = attention.shape[-1]
    a = attention.clamp_min(1e-12)
    return ((a * a.log()).sum(-1) + math.log(T)).mean()


def temporal_constraint(frame_features: Tensor, attention: Tensor, labels: Tensor, margin: float = 0.3,
                        attention_weight: float = 0.1) -> Tensor:  # fmt: skip
    """``L_TemC`` of ``L`` (module docstring; STT Sec. 3, temporal perception constraint): batch-hard triplet over
    frame features ``[B, T, D]`` (each frame labelled with its clip's identity) plus ``attention_weight`` times the
    attention divergence of ``attention [B, T]``."""
    B, T, D = frame_features.shape
    frame_labels = labels[:, None].expand(B, T).reshape(-1)
    triplet = batch_hard_triplet(frame_features.reshape(B * T, D), frame_labels, margin)
    return triplet + attention_weight * temporal_attention_divergence(attention)


def stt_loss(out: dict[str, Tensor], labels: Tensor, smoothing: float = 0.1, margin: float = 0.3,
             spatial_weight: float = 1.0, temporal_weight: float = 1.0, attention_weight: float = 0.1,
             ) -> dict[str, Tensor]:  # fmt: skip
    """Every term of the module docstring's ``L`` from the model's training outputs; ``loss`` is their weighted sum.
    A weight of 0 removes a constraint (the ablation without perception constraints)."""
    terms = {
        "id": identity_loss(out["logits"], labels, smoothing),
        "triplet": batch_hard_triplet(out["feature"], labels, margin),
    }
    loss = terms["id"] + terms["triplet"]
    if spatial_weight:
        terms["spatial"] = spatial_constraint(out["frame_logits"], out["part_logits"], labels, smoothing)
        loss = loss + spatial_weight * terms["spatial"]
    if temporal_weight:
        terms["temporal"] = temporal_constraint(out["frame_feature"], out["temporal_attention"], labels, margin,
                                                attention_weight)  # fmt: skip
        loss = loss + temporal_weight * terms["temporal"]
    terms["loss"] = loss
    return terms
