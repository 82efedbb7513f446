"""Losses of UPerNet semantic segmentation as mmseg trains it (and iTPN's ADE20K configs with it): pure functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_modules.segmentation.upernet import resize


def pixel_cross_entropy(logits: torch.Tensor, masks: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Per-pixel softmax cross-entropy, averaged over the labelled pixels: ``logits [B, K, h, w]`` are upsampled
    bilinearly to the size of ``masks [B, H, W]`` first; pixels equal to ``ignore_index`` count nowhere. UPerNet
    (Xiao et al., ECCV 2018, Sec. 4.1) trains its scene-parsing head with this per-pixel loss, as mmseg's
    ``CrossEntropyLoss`` of ``decode_head``."""
    return F.cross_entropy(resize(logits, masks.shape[-2:]), masks, ignore_index=ignore_index)


def upernet_loss(
    logits: torch.Tensor,
    aux_logits: torch.Tensor | None,
    masks: torch.Tensor,
    aux_weight: float,
    ignore_index: int,
) -> dict[str, torch.Tensor]:
    """``{"decode", "aux" (when aux_logits is given), "loss"}`` with ``loss = decode + aux_weight * aux``: the
    decode head's :func:`pixel_cross_entropy` plus the auxiliary FCN head's on the stride-16 level, weighted (deep
    supervision, PSPNet: Zhao et al., CVPR 2017, Sec. 3.3, weight 0.4; mmseg's UPerNet and iTPN's ADE20K configs use
    the same auxiliary head and weight)."""
    out = {"decode": pixel_cross_entropy(logits, masks, ignore_index)}
    if aux_logits is not None:
        out["aux"] = pixel_cross_entropy(aux_logits, masks, ignore_index)
    out["loss"] = out["decode"] + aux_weight * out.get("aux", 0.0)
    return out
