"""Learning-by-compression's objective as a pure function.

arXiv 2105.13978 states its loss in words, with no numbered equation (../shared/papers/
visformer_cosoc_ediy_compression.md, section 4): reconstruction + lambda_rate * rate + an optional lambda_sem *
CE(classifier(z), y) as the weak supervision. The rate-distortion part is Ballé et al.'s Lagrangian ``R + lambda D``
("End-to-end optimized image compression", ICLR 2017; "Variational image compression with a scale hyperprior",
ICLR 2018), written with the weight on the rate as the paper's notes write it.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from lightning_modules.compression.entropy import bits_per_pixel


def rate_distortion_semantic_loss(
    x_hat: Tensor,
    x: Tensor,
    likelihoods: Tensor,
    *,
    lambda_rate: float,
    lambda_sem: float = 0.0,
    distortion: Literal["mse", "l1"] = "mse",
    logits: Tensor | None = None,
    target: Tensor | None = None,
) -> dict[str, Tensor]:
    """``L = D(x_hat, x) + lambda_rate * bpp + lambda_sem * CE(logits, target)``.

    ``x_hat``, ``x``: ``[B, 3, H, W]`` images in [0, 1]; ``D`` the MSE (or L1) over all their values. ``likelihoods``:
    of the quantised latent; ``bpp = -sum log2 p(y_hat) / (B H W)``. ``logits`` ``[B, K]`` of the weak-label head and
    ``target`` ``[B]``: the CE term, when both are given. Returns ``distortion``, ``bpp``, ``ce`` (with labels),
    ``loss`` (``L``, what is reported) and ``objective`` (what is optimised): with ``lambda_sem = 0`` the head is a
    probe on a detached latent, so ``objective = L + CE`` trains it without the labels reaching the encoder.
    """
    b, _, h, w = x.shape
    dist = F.mse_loss(x_hat, x) if distortion == "mse" else F.l1_loss(x_hat, x)
    bpp = bits_per_pixel(likelihoods, b * h * w)
    loss = dist + lambda_rate * bpp
    terms = {"distortion": dist, "bpp": bpp}
    objective = loss
    if logits is not None and target is not None:
        ce = F.cross_entropy(logits.float(), target)
        terms["ce"] = ce
        if lambda_sem > 0:
            loss = loss + lambda_sem * ce
            objective = loss
        else:
            objective = loss + ce  # the detached probe: its gradient stops at the latent
    terms["loss"] = loss
    terms["objective"] = objective
    return terms
