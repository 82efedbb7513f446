"""The retrieval modules' losses as pure functions of tensors and named settings.

LOUPE (Li et al., NeurIPS 2022, arXiv 2208.02515). The paper's equation numbers could not be read; the equations are
cited by the numbers docs/loupe.md gives them (E1-E9), each with the paper's name for the term.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou_loss


def contrastive_loss(
    image_emb: Tensor,
    text_emb: Tensor,
    image_ids: Tensor,
    scale: Tensor,
    keys: tuple[Tensor, Tensor, Tensor] | None = None,
) -> Tensor:
    """L_CMC, LOUPE's cross-modal contrastive loss (docs/loupe.md E1): the symmetric InfoNCE
    ``1/2 [CE(s I T_k^T, Y) + CE(s T I_k^T, Y^T)]``; captions of the same image are all positives (uniform soft
    targets).

    Without ``keys`` the batch is contrasted with itself. With ``keys = (image_keys [K, D], text_keys [K, D],
    key_ids [K])`` (ALBEF's momentum features of the batch followed by the queue) each image is contrasted with the
    text keys and each caption with the image keys; a key is positive when it comes from the same image.
    """
    if keys is None:
        image_keys, text_keys, key_ids = image_emb, text_emb, image_ids
    else:
        image_keys, text_keys, key_ids = keys
    positives = (image_ids[:, None] == key_ids[None, :]).float()  # [B, K]
    targets = positives / positives.sum(1, keepdim=True)
    i2t = -(targets * F.log_softmax(scale * image_emb @ text_keys.t(), dim=1)).sum(1).mean()
    t2i = -(targets * F.log_softmax(scale * text_emb @ image_keys.t(), dim=1)).sum(1).mean()
    return (i2t + t2i) / 2


def region_box_loss(boxes: Tensor, candidates: Tensor, scores: Tensor) -> Tensor:
    """L_TSA, LOUPE's token-level Shapley interaction loss (docs/loupe.md E7): each box regresses to its best-scored
    candidate ``b*_r`` with L1 + generalised IoU, ``mean_r (|b_r - b*_r|_1 + L_GIoU(b_r, b*_r))``.

    Args:
        boxes: predicted ``(cx, cy, w, h)`` boxes ``[B, R, 4]``.
        candidates: ``[B, R, C, 4]`` candidate boxes of each region.
        scores: ``[B, R, C]`` token-level scores of the candidates; a region with a NaN score (dropped by the
            estimator's budget) adds nothing and is not counted (0 when every region is dropped).
    """
    kept = ~scores.isnan().any(-1)  # [B, R]
    best = scores.nan_to_num(0.0).argmax(-1)  # [B, R]
    target = torch.gather(candidates, 2, best[..., None, None].expand(-1, -1, 1, 4)).squeeze(2)
    if not kept.any():
        return boxes.sum() * 0
    pred, target = boxes[kept], target[kept]
    giou = generalized_box_iou_loss(
        box_convert(pred, "cxcywh", "xyxy"), box_convert(target, "cxcywh", "xyxy"), reduction="mean"
    )
    return F.l1_loss(pred, target) + giou


def phrase_alignment_loss(
    regions: Tensor, phrases: Tensor, interactions: Tensor, valid: Tensor, scale: Tensor, temperature: float
) -> Tensor:
    """L_FSA, LOUPE's semantics-level Shapley interaction loss (docs/loupe.md E8):
    ``mean_j KL(softmax_i(I_ij / temperature) || softmax_i(scale <h_i, p_j>))``, per phrase over the regions.

    Args:
        regions: ``[B, R, D]`` region embeddings ``h`` (unit norm); phrases: ``[B, P, D]`` phrase embeddings ``p``.
        interactions: ``[B, R, P]`` region-phrase interactions ``I``; NaN for pairs the estimator's budget dropped,
            which are left out of both softmaxes of their phrase.
        valid: ``[B, P]`` real (not padded) phrases.
        scale: the logit scale ``s``; temperature: ``tau_I`` of the targets.

    The mean is over the phrases with at least one region left (0 when there is none).
    """
    dropped = interactions.isnan()  # [B, R, P]
    keep = valid & ~dropped.all(1)  # [B, P]
    if not keep.any():
        return regions.sum() * 0
    out = dropped & keep.unsqueeze(1)  # left out of a kept phrase's softmaxes
    logits = (scale * regions @ phrases.transpose(1, 2)).masked_fill(out, -math.inf)  # [B, R, P]
    target = torch.softmax((interactions.nan_to_num(0.0) / temperature).masked_fill(out, -math.inf), dim=1).detach()
    terms = target * (torch.log(target.clamp(min=1e-12)) - torch.log_softmax(logits, dim=1))
    kl = terms.masked_fill(out, 0.0).sum(1)  # [B, P]
    return (kl * keep).sum() / keep.sum()


def estimator_loss(
    mean: Tensor,
    targets: Tensor,
    variance: Tensor,
    noise_var: Tensor | None = None,
    replay: Tensor | None = None,
    replay_count: int = 0,
) -> Tensor:
    """L_NSE, the loss of LOUPE's uncertainty-aware neural Shapley interaction learning (docs/loupe.md E9): the
    Gaussian NLL of sampled interactions ``targets`` under the predicted ``mean`` and ``variance`` plus each sample's
    own sampling variance ``noise_var`` (its squared standard error), so the predicted variance measures the
    estimator's error, not the Monte-Carlo noise of its targets.

    ``replay``: the NLL of ``replay_count`` remembered earlier samples; the result is then the count-weighted mean
    of both, one NLL over fresh and replayed samples."""
    nll = F.gaussian_nll_loss(mean, targets, variance if noise_var is None else variance + noise_var)
    if replay is None:
        return nll
    fresh = targets.numel()
    return (fresh * nll + replay_count * replay) / (fresh + replay_count)


def loupe_loss(
    cmc: Tensor, tsa: Tensor, fsa: Tensor, nse: Tensor, tsa_weight: float, fsa_weight: float, estimator_weight: float
) -> Tensor:
    """LOUPE's total loss (docs/loupe.md E9): ``L_CMC + alpha L_TSA + beta L_FSA + gamma L_NSE``, with ``nse`` the
    sum of both levels' estimator losses and ``alpha, beta, gamma`` = ``tsa_weight, fsa_weight, estimator_weight``."""
    return cmc + tsa_weight * tsa + fsa_weight * fsa + estimator_weight * nse
