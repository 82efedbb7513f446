"""BYOL building blocks (Grill et al., "Bootstrap your own latent", NeurIPS 2020): MLP heads, the loss, the target
network's momentum schedule and its EMA update.

* Projector ``g`` and predictor ``q``: ``Linear -> BatchNorm1d -> ReLU -> Linear`` (4096 hidden -> 256 out in the
  paper; sizes are arguments).
* Loss between the online prediction ``p`` and the target projection ``z`` (stop-gradient) of the other view
  (BYOL Eq. 2): ``|| p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z)``; the module symmetrises it by swapping the views and
  summing (``L + L~``).
* Target weights ``xi <- m xi + (1 - m) theta`` after every optimizer step, with ``m`` rising from ``base`` (0.996) to 1
  on a half cosine over the run: ``m_k = 1 - (1 - base) (cos(pi k / K) + 1) / 2``.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from suite_base.errors import ConfigError


class MLPHead(nn.Sequential):
    """``Linear(in, hidden) -> BatchNorm1d -> ReLU -> Linear(hidden, out)``: BYOL's projector and predictor."""

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256) -> None:
        if min(in_dim, hidden_dim, out_dim) < 1:
            raise ConfigError(f"MLP head sizes must be >= 1 (got in {in_dim}, hidden {hidden_dim}, out {out_dim})")
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


def byol_loss(p: Tensor, z: Tensor, dim: int = -1) -> Tensor:
    """BYOL's normalised mean squared error, averaged over all other dimensions:

        L(p, z) = || p / ||p|| - z / ||z|| ||_2^2 = 2 - 2 <p, z> / (||p|| ||z||) = 2 - 2 cos(p, z)

    ``p``: online predictions, ``z``: target projections (detached by the caller), both ``[..., D]`` (features on
    ``dim``). One direction only; :class:`~lightning_modules.ssl.module.BYOLModule` adds the swapped views.
    """
    return (2 - 2 * F.cosine_similarity(p, z, dim=dim, eps=1e-6)).mean()


def cosine_momentum(step: int, total: int, base: float = 0.996) -> float:
    """Target EMA momentum at optimizer step ``step`` of ``total``:
    ``1 - (1 - base) * (cos(pi * step / total) + 1) / 2`` (``base`` at step 0, 1.0 at ``step == total``)."""
    if total <= 0:
        return base
    step = min(max(step, 0), total)
    return 1 - (1 - base) * (math.cos(math.pi * step / total) + 1) / 2
