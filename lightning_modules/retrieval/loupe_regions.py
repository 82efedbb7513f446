"""LOUPE's box geometry and region generation: patch centres, boxes to patch sets, jittered candidate boxes and the
attention-moment box head (:mod:`lightning_modules.retrieval.loupe`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def patch_centres(grid: tuple[int, int], device=None) -> Tensor:
    """``[h * w, 2]`` (x, y) centres of the patch grid in [0, 1] image coordinates, row-major."""
    h, w = grid
    ys, xs = torch.meshgrid(
        (torch.arange(h, device=device) + 0.5) / h, (torch.arange(w, device=device) + 0.5) / w, indexing="ij"
    )
    return torch.stack([xs.flatten(), ys.flatten()], -1)


def box_to_patch_mask(boxes: Tensor, grid: tuple[int, int]) -> Tensor:
    """Bool ``[..., h * w]``: the patches whose centre lies inside each ``(cx, cy, w, h)`` box (normalised).

    A box narrower than a patch still keeps the patch under its centre, so no region is empty.
    """
    centres = patch_centres(grid, boxes.device)  # [n, 2]
    half = torch.maximum(boxes[..., 2:] / 2, boxes.new_tensor([0.5 / grid[1], 0.5 / grid[0]]))
    offset = (centres - boxes[..., None, :2]).abs()  # [..., n, 2]
    return (offset <= half[..., None, :] + 1e-6).all(-1)


def jitter_boxes(
    boxes: Tensor, count: int, scale: float, min_size: float, generator: torch.Generator | None = None
) -> Tensor:
    """``[..., count, 4]`` random variants of ``(cx, cy, w, h)`` boxes: centres moved by up to ``scale`` of the size,
    sizes multiplied by up to ``exp(+-scale)``; clamped to the image."""
    noise = torch.rand(*boxes.shape[:-1], count, 4, device=boxes.device, generator=generator) * 2 - 1
    base = boxes.unsqueeze(-2)
    centre = (base[..., :2] + scale * base[..., 2:] * noise[..., :2]).clamp(0, 1)
    size = (base[..., 2:] * torch.exp(scale * noise[..., 2:])).clamp(min_size, 1)
    return torch.cat([centre, size], -1)


class RegionGenerator(nn.Module):
    """Semantic region generation: ``R`` learned queries attend over the patch tokens; each query's box is the
    moments of its attention map over the patch grid (centre = mean position, width/height = sqrt(12 var), the size
    of a uniform box with that variance), so boxes are differentiable and tied to where the query looks."""

    def __init__(self, dim: int, num_regions: int, key_dim: int = 64) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_regions, key_dim) * 0.5)
        self.norm = nn.LayerNorm(dim)
        self.key = nn.Linear(dim, key_dim)
        self.key_dim = key_dim

    def attention(self, tokens: Tensor) -> Tensor:
        """``tokens [B, n, C]`` -> attention ``[B, R, n]``."""
        keys = self.key(self.norm(tokens))
        return torch.softmax(self.queries @ keys.transpose(1, 2) / math.sqrt(self.key_dim), dim=-1)

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """``[B, R, 4]`` boxes ``(cx, cy, w, h)`` in [0, 1]."""
        attn = self.attention(tokens)
        centres = patch_centres(grid, tokens.device)
        mean = attn @ centres  # [B, R, 2]
        var = attn @ centres.pow(2) - mean.pow(2)
        size = (12 * var.clamp(min=0) + 1e-6).sqrt().clamp(1 / max(grid), 1)
        return torch.cat([mean, size], -1)
