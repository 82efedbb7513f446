"""Few-shot heads as COSOC's official code computes them (``architectures/classifier/{CC_head,proto_head}.py``).

* :func:`pooled_features`: the feature map L2-normalised over channels, average-pooled, L2-normalised again.
* :class:`CosineClassifier` (``CC_head``): ``s * cos(f, w_c)`` with unit-norm class weights and a learnable scale
  ``s`` initialised to 10; trained with cross-entropy over the base classes.
* :func:`proto_logits` (``PN_head``, metric ``cosine``): prototypes are the normalised means of the support features
  of each class, logits ``s * cos(q, p_c)`` (Snell et al. 2017 with cosine similarity; ``euclidean`` gives
  ``-s * ||q - p_c||^2``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pooled_features(fmap: Tensor) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, C]``: normalise over channels, average-pool, normalise."""
    return F.normalize(F.adaptive_avg_pool2d(F.normalize(fmap, dim=1), 1).flatten(1), dim=1)


class CosineClassifier(nn.Module):
    """``scale * normalize(x) @ normalize(W).T`` (bias-free; the scale starts at ``scale`` and is learned).

    Args:
        in_features: feature size (the backbone's ``num_features``: 640 for ResNet-12).
        num_classes: base classes (64 for miniImageNet, 351 for tieredImageNet).
        scale: initial scale of the cosine logits (10, official ``CC_head``).
        learn_scale: learn the scale (True) or keep it fixed.
    """

    def __init__(self, in_features: int = 640, num_classes: int = 64, scale: float = 10.0,
                 learn_scale: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's initialisation
        self.scale = nn.Parameter(torch.tensor(float(scale)), requires_grad=learn_scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).T


def proto_logits(support: Tensor, query: Tensor, n_way: int, k_shot: int, scale: Tensor | float = 10.0,
                 metric: str = "cosine") -> Tensor:  # fmt: skip
    """Logits ``[Q, N]`` of queries ``[Q, D]`` against the class means of ``support [N * K, D]`` (class-major)."""
    protos = support.view(n_way, k_shot, -1).mean(1)
    if metric == "cosine":
        return scale * F.normalize(query, dim=-1) @ F.normalize(protos, dim=-1).T
    if metric == "euclidean":
        return -scale * torch.cdist(query, protos).pow(2)
    raise ValueError(f"metric must be cosine or euclidean, got {metric!r}")
