"""Losses of the two MIM targets (pure functions with named parameters, testable without Lightning; the module calls
them with its settings).

* Pixels (MAE, He et al. 2022, Eq. 1 with ``norm_pix_loss``; iTPN's pixel recipe): each 16x16 patch's pixels are
  normalised by the patch's own mean and variance, the squared error is averaged over the patch's values and then
  over the **masked** patches only.
* CLIP features, iTPN: ``SmoothL1(beta=1)`` between the predicted and the teacher's (LayerNorm-ed) features of
  **all** tokens (the official code's default), summed over the main and the auxiliary head with weights 1:1.
* CLIP features, MVP (UNVERIFIED choice, see docs/mvp.md): ``1 - cos`` between the l2-normalised prediction and
  target at the **masked** positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, 3, H, W]`` -> ``[B, N, p*p*3]`` with each patch's values ordered (row, col, channel), as MAE does."""
    B, C, H, W = images.shape
    h, w = H // patch_size, W // patch_size
    x = images.reshape(B, C, h, patch_size, w, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, h * w, patch_size * patch_size * C)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, N, p*p*C]`` -> ``[B, C, H, W]``."""
    B = patches.shape[0]
    h, w = grid
    x = patches.reshape(B, h, w, patch_size, patch_size, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(B, channels, h * patch_size, w * patch_size)


def normalized_patches(target: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-patch normalisation of ``[B, N, D]`` targets -> (normalised, mean, std) (MAE's ``norm_pix_loss``)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True, unbiased=True)
    std = (var + eps).sqrt()
    return (target - mean) / std, mean, std


def pixel_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True) -> torch.Tensor:
    """Mean squared error over the masked patches: MAE's reconstruction loss (He et al. 2022, Eq. 1 with
    ``norm_pix_loss``), the loss of iTPN's pixel recipe (Tian et al. 2023, Sec. 3.3):
    ``sum_i m_i * mean_d (pred_id - t_id)^2 / sum_i m_i`` with ``t`` the (normalised) target patch.

    Args:
        pred: ``[B, N, p*p*3]`` predicted (normalised) pixels.
        target: ``[B, N, p*p*3]`` patchified images.
        mask: ``[B, N]``, True (or 1) where the patch was masked; only these count.
        norm_pix: normalise each target patch by its mean and std first.
    """
    if norm_pix:
        target = normalized_patches(target)[0]
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum().clamp(min=1)


def feature_loss(
    pred: torch.Tensor, target: torch.Tensor, kind: str = "smooth_l1", mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Feature regression ``pred [B, N, D]`` -> ``target [B, N, D]`` over all tokens (``mask=None``) or the masked ones.

    ``smooth_l1``: ``SmoothL1(beta=1)`` averaged over every element: iTPN's CLIP-feature regression (Tian et al.
    2023, Sec. 3.3; the form of the official ``itpn_clip/modeling_pretrain.py``). ``cosine``: ``1 - cos(pred, target)``
    per token, averaged over tokens: MVP's feature loss (Wei et al. 2022, Sec. 3; UNVERIFIED form, see docs/mvp.md).
    """
    pred, target = pred.float(), target.float()
    if mask is not None:
        pred, target = pred[mask], target[mask]
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=1.0)
    if kind == "cosine":
        return (1 - F.cosine_similarity(pred, target, dim=-1)).mean()
    raise ValueError(f"unknown feature loss {kind!r}; use 'smooth_l1' or 'cosine'")


def clip_feature_terms(
    pred: torch.Tensor,
    aux: torch.Tensor | None,
    target: torch.Tensor,
    kind: str = "smooth_l1",
    mask: torch.Tensor | None = None,
    aux_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """iTPN's CLIP-recipe loss: the pyramid head's :func:`feature_loss` plus ``aux_weight`` times the auxiliary
    head's (the stage-3 branch's) on the same target, ``L = L_main + w * L_aux`` (Tian et al. 2023, Sec. 3.3: the
    pyramid and the backbone are supervised together; weights 1 : 1 in the official code).

    Returns ``{"loss_main", "loss"}``, and ``"loss_aux"`` when ``aux`` is given (None: no auxiliary head).
    """
    loss_main = feature_loss(pred, target, kind, mask)
    if aux is None:
        return {"loss_main": loss_main, "loss": loss_main}
    loss_aux = feature_loss(aux, target, kind, mask)
    return {"loss_main": loss_main, "loss_aux": loss_aux, "loss": loss_main + aux_weight * loss_aux}
