"""Prediction heads of the MIM recipes (official module names kept, so official pre-training heads load by name).

* :class:`PyramidPixelDecoder` (iTPN pixel recipe, ``itpn_pixel/models/models_itpn_mim.py``): each pyramid level
  P16 / P8 / P4 of the visible patches is embedded by ``decoder_embed[i]`` (LN -> Linear to 512, 128 and 32 dims,
  i.e. 512 values per 16x16 patch at every level), mask tokens fill the removed patches, the patches are put back in
  order, the three levels are **summed**, a fixed sin-cos position table is added, and an 8-block 512-wide
  transformer predicts the 16x16x3 pixels of every patch.
* :class:`PyramidFeatureHead` (iTPN CLIP recipe, ``itpn_clip/modeling_pretrain.py``): the levels are embedded to
  C, C/4 and C/16 dims (C values per patch), summed, ``norm`` -> ``lm_head`` to the teacher's width; the auxiliary
  branch runs two more attention blocks (``cls_pt_layers``) on the stage-3 tokens after block ``int(0.75 * depth)``
  -> ``norm_cls`` -> ``lm_cls_head``.
* :class:`TokenFeatureHead` (MVP): LN -> Linear from the ViT's patch tokens to the teacher's width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import build_sincos2d_pos_embed, trunc_normal_
from torch import nn

from lightning_modules.backbones.hivit import HiViT, HiViTBlock, LayerNorm


def _init(module: nn.Module) -> None:
    HiViT._init_weights(module)


class PyramidPixelDecoder(nn.Module):
    """Sum-of-levels MAE decoder of iTPN's pixel recipe.

    Args:
        fpn_dim: pyramid width.
        grid: patch grid side (14 at 224 px).
        patch_size: pixels per patch side (16).
        decoder_dim: decoder width (512).
        decoder_depth: decoder blocks (8).
        decoder_heads: decoder heads (16).
        mlp_ratio: decoder MLP ratio.
        in_chans: predicted channels.
        levels: number of pyramid levels used (3: P16, P8, P4; 1: P16 only, an ablation).
    """

    def __init__(
        self,
        fpn_dim: int = 256,
        grid: int = 14,
        patch_size: int = 16,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        mlp_ratio: float = 4.0,
        in_chans: int = 3,
        levels: int = 3,
    ):
        super().__init__()
        self.decoder_embed = nn.ModuleList(
            nn.Sequential(LayerNorm(fpn_dim), nn.Linear(fpn_dim, decoder_dim // 4**i)) for i in range(levels)
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        table = build_sincos2d_pos_embed((grid, grid), decoder_dim).reshape(1, grid * grid, decoder_dim)
        self.decoder_pos_embed = nn.Parameter(table, requires_grad=False)  # fixed, as in MAE
        self.decoder_blocks = nn.ModuleList(
            HiViTBlock(decoder_dim, decoder_heads, mlp_ratio, grid=grid, rpe=False) for _ in range(decoder_depth)
        )
        self.decoder_norm = LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, patch_size**2 * in_chans)
        self.apply(_init)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, levels: Sequence[torch.Tensor], ids_restore: torch.Tensor) -> torch.Tensor:
        """``levels``: ``[P16, P8, P4]`` of the kept patches (``[B, L, h, w, F]``); ``ids_restore [B, N]``
        -> ``[B, N, p*p*3]`` predictions for every patch."""
        B, L = levels[0].shape[:2]
        N = ids_restore.shape[1]
        filled = []
        for feat, embed in zip(levels, self.decoder_embed, strict=False):
            y = embed(feat).reshape(B, L, -1)
            y = torch.cat([y, self.mask_token.to(y.dtype).expand(B, N - L, -1)], dim=1)
            filled.append(y.gather(1, ids_restore[:, :, None].expand(-1, -1, y.shape[-1])))
        # the released forward_decoder's order: P16 + position table, then + P8, + P4 (equal sums in float)
        x = filled[0] + self.decoder_pos_embed
        for y in filled[1:]:
            x = x + y
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))


class PyramidFeatureHead(nn.Module):
    """iTPN CLIP-recipe heads: the pyramid head (main) and the stage-3 auxiliary head.

    Args:
        embed_dim: the backbone's stage-3 width C.
        fpn_dim: pyramid width.
        teacher_dim: the teacher's feature width (512 for CLIP-B, 768 for CLIP-L).
        num_heads: heads of the auxiliary blocks.
        grid: patch grid side (for the auxiliary blocks' relative position tables).
        aux_blocks: number of auxiliary transformer blocks (2).
        init_values: layer-scale init of the auxiliary blocks.
        drop_path: stochastic depth of the auxiliary blocks (official: the rates of blocks 0.75*depth, +1).
        rpe: relative position bias in the auxiliary blocks.
    """

    def __init__(
        self,
        embed_dim: int,
        fpn_dim: int = 256,
        teacher_dim: int = 512,
        num_heads: int = 8,
        grid: int = 14,
        aux_blocks: int = 2,
        init_values: float | None = 0.1,
        drop_path: Sequence[float] = (0.0, 0.0),
        rpe: bool = True,
    ):
        super().__init__()
        self.decoder_embed = nn.ModuleList(
            nn.Sequential(LayerNorm(fpn_dim), nn.Linear(fpn_dim, embed_dim // 4**i)) for i in range(3)
        )
        self.norm = LayerNorm(embed_dim)
        self.lm_head = nn.Linear(embed_dim, teacher_dim)
        self.cls_pt_layers = nn.ModuleList(
            HiViTBlock(embed_dim, num_heads, 4.0, grid=grid, drop_path=dp, rpe=rpe, init_values=init_values)
            for dp in list(drop_path)[:aux_blocks]
        )
        self.norm_cls = LayerNorm(embed_dim)
        self.lm_cls_head = nn.Linear(embed_dim, teacher_dim)
        self.apply(_init)

    def forward(
        self, levels: Sequence[torch.Tensor], aux: torch.Tensor, rpe_index: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``levels`` ``[P16, P8, P4]`` (``[B, N, h, w, F]``), ``aux [B, N, C]`` -> (main, aux), each
        ``[B, N, teacher_dim]``."""
        B, N = aux.shape[:2]
        x = sum(embed(feat).reshape(B, N, -1) for feat, embed in zip(levels, self.decoder_embed, strict=True))
        for blk in self.cls_pt_layers:
            aux = blk(aux, rpe_index)
        return self.lm_head(self.norm(x)), self.lm_cls_head(self.norm_cls(aux))


class TokenFeatureHead(nn.Module):
    """MVP's head: LayerNorm -> Linear from the encoder's patch tokens to the teacher's width."""

    def __init__(self, embed_dim: int, teacher_dim: int):
        super().__init__()
        self.norm = LayerNorm(embed_dim)
        self.lm_head = nn.Linear(embed_dim, teacher_dim)
        trunc_normal_(self.lm_head.weight, std=0.02)
        nn.init.zeros_(self.lm_head.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(tokens))
