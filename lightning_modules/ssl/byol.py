"""BYOL building blocks (Grill et al., "Bootstrap your own latent", NeurIPS 2020): the MLP heads and the target
network's momentum schedule.

* Projector ``g`` and predictor ``q``: ``Linear -> BatchNorm1d -> ReLU -> Linear`` (4096 hidden -> 256 out in the
  paper; sizes are arguments).
* The loss (BYOL Eq. 2, symmetrised over the views): :mod:`lightning_modules.ssl.losses`.
* Target weights ``xi <- m xi + (1 - m) theta`` after every optimizer step, with ``m`` rising from ``base`` (0.996) to 1
  on a half cosine over the run: ``m_k = 1 - (1 - base) (cos(pi k / K) + 1) / 2``.
"""

from __future__ import annotations

import math

from torch import nn

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

    @property
    def out_dim(self) -> int:
        return self[-1].out_features


def cosine_momentum(step: int, total: int, base: float = 0.996) -> float:
    """Target EMA momentum at optimizer step ``step`` of ``total``:
    ``1 - (1 - base) * (cos(pi * step / total) + 1) / 2`` (``base`` at step 0, 1.0 at ``step == total``)."""
    if total <= 0:
        return base
    step = min(max(step, 0), total)
    return 1 - (1 - base) * (math.cos(math.pi * step / total) + 1) / 2
