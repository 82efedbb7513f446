"""TEL's weak-supervision objective (Li et al., ACM MM 2022, arXiv 2208.01954) as pure functions of unit logits.

The paper's equations could not be read (docs/tel.md); the forms are ours and are written out in
:mod:`lightning_modules.emotion.dcin`'s docstring::

    L_MIL^m = BCE( mean_topk_u s_m[u, c], y_c )                                    (multiple-instance loss, per stream)
    L_CON   = mean_{u, c} [ (p_v - sg(p_t))^2 + (p_t - sg(p_v))^2 ],  p = sigmoid(s)          (cross-modal consensus)
    L       = L_MIL^v + L_MIL^t + L_MIL^fused + lambda L_CON
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def topk_mean(logits: Tensor, mask: Tensor, ratio: float) -> Tensor:
    """The pooling inside ``L_MIL`` (module docstring): clip-level logits ``[B, C]``, the mean of the
    ``k = ceil(U_b / ratio)`` largest unit logits of each clip."""
    low = torch.finfo(logits.dtype).min
    ordered = logits.masked_fill(~mask.unsqueeze(-1), low).sort(1, descending=True).values  # [B, U, C]
    k = (mask.sum(1).float() / ratio).ceil().clamp(min=1)  # [B]
    take = (torch.arange(logits.shape[1], device=logits.device)[None, :] < k[:, None]).to(logits.dtype)  # [B, U]
    return (ordered * take.unsqueeze(-1)).sum(1) / k.unsqueeze(-1)


def mil_loss(logits: Tensor, mask: Tensor, labels: Tensor, ratio: float) -> Tensor:
    """``L_MIL^m`` (module docstring): binary cross-entropy of the top-k mean clip logits of ``logits [B, U, C]``
    (``k = ceil(U / ratio)`` real units, ``mask [B, U]``) against clip-level ``labels [B, C]``."""
    return F.binary_cross_entropy_with_logits(topk_mean(logits, mask, ratio), labels.to(logits.dtype))


def consensus_loss(video_logits: Tensor, text_logits: Tensor, mask: Tensor) -> Tensor:
    """``L_CON`` (module docstring): mutual agreement of the two streams' unit probabilities, each pulled towards
    the other's detached values, averaged over real units (``mask [B, U]``) and classes."""
    pv, pt = torch.sigmoid(video_logits), torch.sigmoid(text_logits)
    sq = (pv - pt.detach()).pow(2) + (pt - pv.detach()).pow(2)  # [B, U, C]
    keep = mask.unsqueeze(-1).to(sq.dtype)
    return (sq * keep).sum() / (keep.sum() * sq.shape[-1]).clamp(min=1)


def tel_loss(logits: dict[str, Tensor], mask: Tensor, labels: Tensor, ratio: float, consensus_weight: float,
             ) -> dict[str, Tensor]:  # fmt: skip
    """``L`` (module docstring) from the unit logits of each present stream (``text``, ``video``, ``fused``, each
    ``[B, U, C]``): ``{"mil_<stream>": L_MIL, "consensus": L_CON (both streams, weight > 0), "loss": L}``."""
    terms = {f"mil_{k}": mil_loss(v, mask, labels, ratio) for k, v in logits.items()}
    loss = sum(terms.values())
    if "text" in logits and "video" in logits and consensus_weight > 0:
        terms["consensus"] = consensus_loss(logits["video"], logits["text"], mask)
        loss = loss + consensus_weight * terms["consensus"]
    terms["loss"] = loss
    return terms
