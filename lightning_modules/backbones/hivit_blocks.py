"""HiViT's building blocks and iTPN's feature pyramid (Tian et al., "Integrally Pre-Trained Transformer Pyramid
Networks", CVPR 2023): attention and MLP blocks, patch embedding / merging / splitting, the pyramid's modules and the
per-patch token layout helpers. :class:`~lightning_modules.backbones.hivit.HiViT` assembles them; names are
re-exported from ``lightning_modules.backbones.hivit``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

from suite_base.errors import ConfigError

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def reference_resample_pos_table(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The absolute position table as the released iTPN code adds it: ``interpolate_pos_encoding`` of
    ``itpn_pixel/models/models_itpn.py`` (sunsmarterjie/iTPN), ``[1, S*S, C]`` -> ``[1, gh*gw, C]``.

    The released ``forward_features`` calls ``interpolate_pos_encoding(x, Hp, Wp)`` with ``x`` the KEPT tokens, and
    that function resamples the table whenever ``x`` holds fewer tokens than the table (or the grid is not square),
    i.e. in every masked pre-training step, even at the table's own grid. It calls
    ``F.interpolate(table as [1, C, S, S], scale_factor=((Hp + 0.1) / S, (Wp + 0.1) / S), mode='bicubic')``
    (``align_corners`` False; the ``+ 0.1`` is DINO's guard against a floating-point output size one short). The
    output is ``Hp x Wp``, but with the scale factor given PyTorch maps output row ``i`` to input row
    ``(i + 0.5) * S / (Hp + 0.1) - 0.5`` rather than ``(i + 0.5) * S / Hp - 0.5``. At ``Hp = S`` row ``i`` is read
    ``0.1 * (i + 0.5) / (S + 0.1)`` rows towards row 0 (0.004 for the first row, 0.096 for the last at ``S = 14``),
    and columns alike, through a bicubic kernel: the released pixel pre-training sees a slightly smoothed table,
    shrunk towards its top-left corner, not its own rows. Gradients flow through the interpolation to the stored
    table, as in the released code.
    """
    num, dim = table.shape[1], table.shape[2]
    side = math.isqrt(num)
    if side * side != num:
        raise ConfigError(f"the reference position-table mode needs a square table; absolute_pos_embed has {num} rows")
    h0, w0 = grid[0] + 0.1, grid[1] + 0.1
    maps = table.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    maps = F.interpolate(maps, scale_factor=(h0 / side, w0 / side), mode="bicubic", align_corners=False)
    if tuple(maps.shape[-2:]) != tuple(grid):
        raise ConfigError(f"reference position-table resampling gave {tuple(maps.shape[-2:])}, expected {grid}")
    return maps.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)


def relative_position_index(grid: int) -> torch.Tensor:
    """Swin-style index ``[N, N]`` into a ``(2*grid-1)**2`` table of relative offsets over a ``grid x grid`` map."""
    coords = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (grid - 1)
    return rel[..., 0] * (2 * grid - 1) + rel[..., 1]


class Attention(nn.Module):
    """Multi-head self-attention with an optional relative position bias table (official name
    ``relative_position_bias_table``, zero-initialised), computed with SDPA."""

    def __init__(
        self, dim: int, num_heads: int, grid: int, qkv_bias: bool = True, attn_drop: float = 0.0, rpe: bool = True
    ):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * grid - 1) ** 2, num_heads)) if rpe else None

    def forward(self, x: torch.Tensor, rpe_index: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        bias = None
        if self.relative_position_bias_table is not None and rpe_index is not None:
            # rpe_index: [N, N] (all tokens) or [B, N, N] (kept tokens only)
            bias = self.relative_position_bias_table[rpe_index]  # [..., N, N, heads]
            bias = bias.movedim(-1, -3).to(q.dtype)
            if bias.ndim == 3:
                bias = bias.unsqueeze(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class HiViTBlock(nn.Module):
    """Pre-LN block: attention (when ``num_heads > 0``) and MLP, each with drop path and optional layer scale.

    With ``num_heads == 0`` it is the MLP-only block of HiViT's early stages and of the pyramid: it acts on the last
    dimension only, so it accepts any ``[..., C]`` tensor and never mixes tokens.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 0,
        mlp_ratio: float = 4.0,
        grid: int = 14,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        rpe: bool = False,
        init_values: float | None = None,
    ):
        super().__init__()
        with_attn = num_heads > 0
        self.norm1 = LayerNorm(dim) if with_attn else None
        self.attn = Attention(dim, num_heads, grid, qkv_bias, attn_drop, rpe) if with_attn else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        use_ls = init_values is not None and init_values > 0
        self.gamma_1 = nn.Parameter(init_values * torch.ones(dim)) if use_ls and with_attn else None
        self.gamma_2 = nn.Parameter(init_values * torch.ones(dim)) if use_ls else None

    def forward(self, x: torch.Tensor, rpe_index: torch.Tensor | None = None) -> torch.Tensor:
        if self.attn is not None:
            y = self.attn(self.norm1(x), rpe_index)
            x = x + self.drop_path(y if self.gamma_1 is None else self.gamma_1 * y)
        y = self.mlp(self.norm2(x))
        return x + self.drop_path(y if self.gamma_2 is None else self.gamma_2 * y)


class PatchEmbed(nn.Module):
    """4x4/stride-4 convolution, arranged as a 4x4 grid of sub-tokens per 16x16 patch: ``[B, N, 4, 4, C/4]``."""

    def __init__(self, patch_size: int = 16, inner_patches: int = 4, in_chans: int = 3, embed_dim: int = 128):
        super().__init__()
        self.patch_size = patch_size
        self.inner_patches = inner_patches
        conv = patch_size // inner_patches
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=conv, stride=conv)
        self.norm = LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        if H % self.patch_size or W % self.patch_size:
            raise ConfigError(
                f"image size {H}x{W} is not a multiple of the patch size {self.patch_size}; "
                f"resize or crop to a multiple of {self.patch_size} (data.img_size)"
            )
        gh, gw, s = H // self.patch_size, W // self.patch_size, self.inner_patches
        x = self.proj(x).view(B, -1, gh, s, gw, s).permute(0, 2, 4, 3, 5, 1).reshape(B, gh * gw, s, s, -1)
        return self.norm(x)


class PatchMerge(nn.Module):
    """Concatenate each 2x2 neighbourhood inside the per-patch grid -> LN -> Linear(4d -> 2d, no bias)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = LayerNorm(dim * 4)
        self.reduction = nn.Linear(dim * 4, dim * 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the official concatenation order: (0,0), (1,0), (0,1), (1,1) as (row, col) offsets
        x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]], -1)
        return self.reduction(self.norm(x))


class PatchSplit(nn.Module):
    """Linear up-sampling: LN -> Linear(d -> 4 * fpn_dim, no bias) -> a 2x2 sub-grid per token."""

    def __init__(self, dim: int, fpn_dim: int):
        super().__init__()
        self.norm = LayerNorm(dim)
        self.reduction = nn.Linear(dim, fpn_dim * 4, bias=False)
        self.fpn_dim = fpn_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, h, w, _ = x.shape
        x = self.reduction(self.norm(x)).reshape(B, N, h, w, 2, 2, self.fpn_dim)
        return x.permute(0, 1, 2, 4, 3, 5, 6).reshape(B, N, 2 * h, 2 * w, self.fpn_dim)


class FeaturePyramid(nn.Module):
    """iTPN's feature pyramid (Sec. 3.2): top-down P16 -> P8 -> P4 with linear up-sampling and MLP blocks.

    * P16 = ``align_dim_16tofpn``(stage-3 tokens) (a Linear to ``fpn_dim``; identity when the widths agree);
    * P8 = ``block_16to8``(``split_16to8``(stage-3 tokens) + ``align_dim_16to8``(stage-2 output));
    * P4 = ``block_8to4``(``split_8to4``(P8) + ``align_dim_8to4``(stage-1 output));
    * each level then passes its own MLP block ``fpn_modules[i]`` (i = 0, 1, 2 for P16, P8, P4).

    All tensors stay in the per-patch layout ``[B, N, h, w, C]`` (h = w = 1, 2, 4), so the pyramid works on the
    visible patches only when the encoder dropped the masked ones.
    """

    def __init__(
        self, embed_dim: int, fpn_dim: int = 256, fpn_depth: int = 2, mlp_ratio: float = 4.0, drop: float = 0.0
    ):
        super().__init__()
        if fpn_depth < 1:
            raise ConfigError(f"fpn_depth must be >= 1 (official: 2 for pixels, 1 for CLIP), got {fpn_depth}")
        dims = {4: embed_dim // 4, 8: embed_dim // 2, 16: embed_dim}

        def mlp_block() -> HiViTBlock:
            return HiViTBlock(fpn_dim, 0, mlp_ratio, drop=drop)

        self.align_dim_16tofpn = nn.Linear(embed_dim, fpn_dim) if embed_dim != fpn_dim else None
        self.fpn_modules = nn.ModuleList([mlp_block() for _ in range(3)])
        self.align_dim_16to8 = nn.Linear(dims[8], fpn_dim, bias=False)
        self.split_16to8 = PatchSplit(dims[16], fpn_dim)
        self.block_16to8 = nn.Sequential(*[mlp_block() for _ in range(fpn_depth)])
        self.align_dim_8to4 = nn.Linear(dims[4], fpn_dim, bias=False)
        self.split_8to4 = PatchSplit(fpn_dim, fpn_dim)
        self.block_8to4 = nn.Sequential(*[mlp_block() for _ in range(fpn_depth)])
        self.fpn_dim = fpn_dim

    def forward(self, tokens: torch.Tensor, laterals: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``tokens [B, N, C]`` (stage 3), ``laterals`` = (stage-1 ``[B,N,4,4,C/4]``, stage-2 ``[B,N,2,2,C/2]``)
        -> ``[P16 [B,N,1,1,F], P8 [B,N,2,2,F], P4 [B,N,4,4,F]]``."""
        x = tokens[:, :, None, None, :]
        p16 = x if self.align_dim_16tofpn is None else self.align_dim_16tofpn(x)
        p8 = self.block_16to8(self.split_16to8(x) + self.align_dim_16to8(laterals[1]))
        p4 = self.block_8to4(self.split_8to4(p8) + self.align_dim_8to4(laterals[0]))
        return [blk(p) for blk, p in zip(self.fpn_modules, (p16, p8, p4), strict=True)]


def tokens_to_map(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, gh*gw, h, w, C]`` per-patch layout -> ``[B, C, gh*h, gw*w]`` feature map."""
    B, _, h, w, C = x.shape
    gh, gw = grid
    return x.reshape(B, gh, gw, h, w, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, gh * h, gw * w).contiguous()


@dataclass
class StageOutputs:
    """What :meth:`HiViT.forward_tokens` returns."""

    tokens: torch.Tensor  # [B, L, C] stage-3 output (L = kept patches)
    laterals: list[torch.Tensor]  # stage-1 [B, L, 4, 4, C/4] and stage-2 [B, L, 2, 2, C/2] outputs
    rpe_index: torch.Tensor | None  # the index the attention blocks used (for extra blocks on the same tokens)
    collected: dict[int, torch.Tensor] = field(default_factory=dict)  # main block index -> its output
