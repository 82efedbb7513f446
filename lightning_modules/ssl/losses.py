"""BYOL's and E-DIY's losses as pure functions.

* BYOL (Grill et al., "Bootstrap your own latent", NeurIPS 2020, Sec. 3.1): the normalised MSE between the online
  prediction and the target projection of the other view (Eq. 2), symmetrised by swapping the views
  (``L^BYOL = L + L~``).
* E-DIY (Wei et al., "Exploring the Diversity and Invariance in Yourself for Visual Pre-Training Task", arXiv
  2106.00537). The paper released no code and its equations could not be read; the terms follow its abstract (our
  reading in :mod:`lightning_modules.ssl.ediy`): a *diversity* term pushes apart the most different regions inside
  one view, an *invariance* term pulls together the most similar regions across the two views, and BYOL's global
  loss is kept: ``L = L_BYOL + lambda_div (L_div(1) + L_div(2)) + lambda_inv (L_inv(1->2) + L_inv(2->1))``.

Regions are ``[B, N, D]`` embeddings (one per cell of the backbone's last map, :func:`lightning_modules.ssl.ediy.
regions`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from suite_base.errors import ConfigError


def byol_loss(p: Tensor, z: Tensor, dim: int = -1) -> Tensor:
    """BYOL Eq. 2, the normalised mean squared error, averaged over all other dimensions:

        L(p, z) = || p / ||p|| - z / ||z|| ||_2^2 = 2 - 2 <p, z> / (||p|| ||z||) = 2 - 2 cos(p, z)

    ``p``: online predictions, ``z``: target projections (detached by the caller), both ``[..., D]`` (features on
    ``dim``). One direction only; :func:`symmetrised_byol_loss` adds the swapped views.
    """
    return (2 - 2 * F.cosine_similarity(p, z, dim=dim, eps=1e-6)).mean()


def symmetrised_byol_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """BYOL's total loss ``L^BYOL = L(p1, z2') + L(p2, z1')`` (Sec. 3.1: each view's online prediction against the
    other view's target projection, :func:`byol_loss`)."""
    return byol_loss(p1, z2) + byol_loss(p2, z1)


def similarity_matrix(a: Tensor, b: Tensor) -> Tensor:
    """``[B, N, M]`` cosine similarities between the regions of ``a [B, N, D]`` and ``b [B, M, D]``."""
    return F.normalize(a, dim=-1, eps=1e-6) @ F.normalize(b, dim=-1, eps=1e-6).transpose(1, 2)


def diversity_loss(
    r: Tensor, top_k: int = 1, partner: Literal["least_similar", "most_similar"] = "least_similar"
) -> Tensor:
    """E-DIY diversity term of one view (abstract: "pushing the most different regions inside each augmented view
    away"), with ``S_ij = cos(r_i, r_j)`` over the regions ``r [B, N, D]`` of one view, self excluded::

        least_similar (default):  L_div = mean_{b, i} [ mean of the top_k SMALLEST S_ij, j != i ]
        most_similar (ablation):  L_div = mean_{b, i} [ mean of the top_k LARGEST  S_ij, j != i ]

    Vectorised: one ``[B, N, N]`` similarity matrix, the diagonal masked out, ``topk`` along the last dimension.
    """
    n = r.shape[1]
    if n < 2:
        raise ConfigError(f"the diversity term needs at least 2 regions per view, got a {n}-region map")
    if not 1 <= top_k <= n - 1:
        raise ConfigError(f"model.init_args.div_top_k must be in [1, regions - 1 = {n - 1}], got {top_k}")
    sim = similarity_matrix(r, r)
    eye = torch.eye(n, dtype=torch.bool, device=r.device)
    if partner == "least_similar":
        picked = sim.masked_fill(eye, 2.0).topk(top_k, dim=-1, largest=False).values
    elif partner == "most_similar":
        picked = sim.masked_fill(eye, -2.0).topk(top_k, dim=-1, largest=True).values
    else:
        raise ConfigError(f"model.init_args.div_partner must be least_similar or most_similar, got {partner!r}")
    return picked.mean()


@torch.no_grad()
def match_most_similar(a: Tensor, b: Tensor) -> Tensor:
    """For each region of ``a [B, N, D]``, the index of the most similar (cosine) region of ``b [B, M, D]``:
    ``[B, N]`` long tensor, ``argmax_j cos(a_i, b_j)`` (ties: the lowest index)."""
    return similarity_matrix(a, b).argmax(dim=-1)


def invariance_loss(p: Tensor, z: Tensor) -> Tensor:
    """E-DIY invariance term, one direction (abstract: "pulling the most similar regions across views together"):
    ``L_inv = mean_{b,i} 2 - 2 cos(p_i, z_{j*(i)})`` with ``j*(i) = argmax_j cos(p_i, z_j)``
    (:func:`match_most_similar`), i.e. BYOL's Eq. 2 on the matched pair. ``p``: online predicted regions of one view,
    ``z``: target projected regions of the other (no gradient flows into the matching)."""
    idx = match_most_similar(p.detach(), z)
    matched = torch.gather(z, 1, idx[..., None].expand(-1, -1, z.shape[-1]))
    return byol_loss(p, matched)


def ediy_loss(loss_byol: Tensor, loss_div: Tensor, loss_inv: Tensor, *, lambda_div: float, lambda_inv: float) -> Tensor:
    """E-DIY's total: ``L = L_BYOL + lambda_div * L_div + lambda_inv * L_inv`` (each term already summed over both
    views / directions)."""
    return loss_byol + lambda_div * loss_div + lambda_inv * loss_inv
