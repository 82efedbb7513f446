"""Exponential moving average of a network's parameters: the momentum / target encoders of MoCo (COSOC's Exemplar),
ALBEF (LOUPE's momentum queue) and BYOL / E-DIY share this one update."""

from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, m: float) -> None:
    """``target = m * target + (1 - m) * online`` for every parameter, in one vectorised ``_foreach`` call per dtype
    and device group. Buffers (batch-norm statistics) are left alone: the target network keeps its own."""
    t_params, o_params = list(target.parameters()), list(online.parameters())
    if len(t_params) != len(o_params):
        raise ValueError(f"target has {len(t_params)} parameters, online {len(o_params)}; not the same network")
    groups: dict[tuple, tuple[list[Tensor], list[Tensor]]] = {}
    for t, o in zip(t_params, o_params, strict=True):
        key = (t.device, t.dtype)
        groups.setdefault(key, ([], []))
        groups[key][0].append(t.data)
        groups[key][1].append(o.data.to(t.dtype))
    for ts, os_ in groups.values():
        # t + (1 - m) * (o - t) == m * t + (1 - m) * o
        torch._foreach_lerp_(ts, os_, 1.0 - m)
