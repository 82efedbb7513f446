"""E-DIY region terms (Wei et al., "Exploring the Diversity and Invariance in Yourself for Visual Pre-Training
Task", arXiv 2106.00537). No code of the paper is public; this is a re-implementation from its abstract, which says
that (a) BYOL's global loss is kept, (b) a *diversity* term pushes apart the MOST DIFFERENT regions inside one view
and (c) an *invariance* term pulls together the MOST SIMILAR regions across the two views of an image.

Regions are the cells of the last feature map (ResNet-50 C5: ``[B, 2048, 7, 7]`` at 224 px, i.e. N = 49 regions).
Each goes through a dense projector (1x1-conv MLP, online and EMA target) and, on the online side, a dense
predictor, giving ``[B, N, D]`` region embeddings.

Diversity (per view, online projected regions ``r``, ``S_ij = cos(r_i, r_j)``, self excluded). The abstract says
the term works by "pushing the most different regions inside each augmented view away": each region is pushed away
from the region of the same view it is LEAST similar to. Two readings are implemented (``partner``)::

    least_similar (default):  L_div = mean_{b, i} [ mean over the k SMALLEST S_ij, j != i ]   (k = 1: min_{j != i} S_ij)
    most_similar (ablation):  L_div = mean_{b, i} [ mean over the k LARGEST  S_ij, j != i ]   (k = 1: max_{j != i} S_ij)

``least_similar`` is the abstract's reading: minimising it lowers each region's similarity to its least similar
partner, so the gradient moves every region away from that partner. It is bounded below by -1, which a two-cluster
layout (half the regions at ``+v``, half at ``-v``) already reaches; on the toy it nears that floor within ~60 steps
and then acts little, while the pairs inside each cluster may grow closer (tests/lightning_modules/ssl/test_ssl.py
shows both behaviours).
``most_similar`` repels every region from its nearest neighbour in the view instead, which lowers the largest
intra-view similarity; it was the default until issue 22, chosen to meet an acceptance line that asked for the maximum
intra-view similarity to fall. That line, not the abstract, was wrong: ``div_partner: most_similar`` is kept as a
named ablation (configs/ediy/*_most_similar.yaml). docs/ediy.md compares the two readings on the toy (3 seeds each).

Invariance (across views): for each online-predicted region ``p_i`` of view 1 the most similar target region of
view 2, ``j*(i) = argmax_j cos(p_i, z_j)``, is its match, and ``L_inv = mean_{b, i} (2 - 2 cos(p_i, z_{j*(i)}))``;
the module adds the swapped direction (view 2 -> view 1), as BYOL does for its global loss.

Total: ``L = L_BYOL + lambda_div * (L_div(view 1) + L_div(view 2)) + lambda_inv * (L_inv(1->2) + L_inv(2->1))``.
The terms are pure functions in :mod:`lightning_modules.ssl.losses`; this file holds the dense heads and the metric.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_modules.ssl.losses import similarity_matrix
from suite_base.errors import ConfigError


class DenseHead(nn.Sequential):
    """``Conv1x1(in, hidden) -> BatchNorm2d -> ReLU -> Conv1x1(hidden, out)``: BYOL's MLP applied to every region."""

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256) -> None:
        if min(in_dim, hidden_dim, out_dim) < 1:
            raise ConfigError(f"dense head sizes must be >= 1 (got in {in_dim}, hidden {hidden_dim}, out {out_dim})")
        super().__init__(
            nn.Conv2d(in_dim, hidden_dim, 1),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, out_dim, 1),
        )

    @property
    def out_dim(self) -> int:
        return self[-1].out_channels


def regions(fmap: Tensor) -> Tensor:
    """``[B, D, H, W]`` map -> ``[B, N = H*W, D]`` region vectors (row-major cells)."""
    return fmap.flatten(2).transpose(1, 2)


@torch.no_grad()
def region_collapse(fmap: Tensor) -> Tensor:
    """ "Region collapse" of a feature map ``[B, D, H, W]``: the mean cosine similarity over all pairs of different
    regions of the same image, averaged over images (1.0: every region carries the same feature)."""
    r = regions(fmap.float())
    n = r.shape[1]
    if n < 2:
        return torch.ones((), device=fmap.device)
    sim = similarity_matrix(r, r)
    off_diag = sim.sum(dim=(1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(-1)
    return (off_diag / (n * (n - 1))).mean()


def check_lambdas(**weights: float) -> None:
    """Raise a ConfigError naming the key of any loss weight that is negative or not a number."""
    for key, value in weights.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
            raise ConfigError(f"model.init_args.{key} must be a number >= 0 (a loss weight), got {value!r}")
