"""HiViT as used by iTPN (Tian et al., "Integrally Pre-Trained Transformer Pyramid Networks", CVPR 2023,
arXiv 2211.12735), with iTPN's feature pyramid.

Data flow (the official ``itpn_pixel/models/models_itpn.py`` in sunsmarterjie/iTPN, read for the facts):

1. ``patch_embed``: a 4x4/stride-4 convolution to ``C/4`` channels, arranged so that every 16x16 patch holds a
   4x4 grid of sub-tokens: ``[B, N, 4, 4, C/4]`` with ``N = (H/16) * (W/16)``, then LayerNorm.
2. Stage 1 (stride 4): ``mlp_depth`` MLP-only blocks (pre-LN MLP, ratio ``bridge_mlp_ratio`` = 3). No attention:
   no block mixes sub-tokens of different 16x16 patches, so masking and token dropping work at the patch level from
   the very first layer (:meth:`HiViT.forward_tokens` takes ``ids_keep``).
3. ``PatchMerge``: 2x2 neighbours concatenated -> LN -> Linear(4d -> 2d). Stage 2 (stride 8): ``mlp_depth2`` MLP
   blocks at ``C/2``. A second merge gives one ``C``-dim token per patch.
4. Absolute position embedding (``ape``), then ``depth`` attention blocks (stage 3, stride 16) with optional
   relative position bias (``rpe``, a Swin-style per-block table over the patch grid) and layer scale
   (``init_values``; official keys ``gamma_1`` / ``gamma_2``).
5. Classifier: mean of the patch tokens -> ``fc_norm`` -> ``head`` (no class token).

The pyramid (:class:`FeaturePyramid`, Sec. 3 of the paper; official names kept so checkpoints load by name) turns
the stage-3 tokens and the stage-1/2 outputs (taken just before each merge) into P16, P8 and P4 at ``fpn_dim``
channels with linear up-sampling (``PatchSplit``) and MLP blocks, top-down. :meth:`HiViT.forward_pyramid` returns
them as ``NCHW`` maps ``[P4, P8, P16]`` (plus average-pooled P32 and P64 for detectors, as the official det configs
do with ``num_outs=5``).

timm's feature API (``feature_info``, :meth:`HiViT.forward_intermediates`, ``timm.create_model(...,
features_only=True, out_indices=...)``) gives the three stage outputs, not the pyramid: stage 1 (stride 4, ``C/4``),
stage 2 (stride 8, ``C/2``) and stage 3 (stride 16, ``C``), one level per stage as timm's Hiera reports them.

Sizes (Table 1; asserted in tests/lightning_modules/backbones/test_hivit.py): iTPN-B "3324" (widths 128/256/512,
blocks 3/3/24, 8 heads)
78.6M parameters with the 1000-class head, the paper's 79M; iTPN-L "2240" (192/384/768, 2/2/40, 12 heads) 288.5M,
the paper's 288M. "HiViT-L/14" of Table 1 is ``itpn_large_2240_patch16_256``: 16-pixel patches on 256-pixel
inputs, a 16x16 grid matched to CLIP-L/14 at 224.

Position table modes (``pos_embed_mode``): ``exact`` adds the table's own row to every kept patch; ``reference``
resamples the table as the released code does whenever patches are dropped (:func:`reference_resample_pos_table`, the
``(Hp + 0.1) / Hp`` quirk of ``interpolate_pos_encoding``), which the released pixel pre-training ran with.

Attention runs through ``F.scaled_dot_product_attention`` with the relative position bias as its additive mask.
Differences from the official code, deliberate: every LayerNorm uses eps 1e-6 (the official CLIP recipe's two
auxiliary blocks fall back to PyTorch's 1e-5); the ``relative_position_index`` buffer is not saved in our
state_dicts (it is a pure function of the grid) and is dropped from official ones on load.

Files: the blocks and the pyramid's modules are in ``hivit_blocks.py``, the official-checkpoint mapping in
``hivit_checkpoints.py``; this file assembles :class:`HiViT`, registers the ``itpn_*`` models and re-exports both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import build_sincos2d_pos_embed, resample_abs_pos_embed, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices  # no public export; timm's own models import it from here
from torch import nn
from torch.utils.checkpoint import checkpoint

from lightning_modules.backbones.common import imagenet_cfg
from lightning_modules.backbones.hivit_blocks import (
    Attention,
    FeaturePyramid,
    HiViTBlock,
    LayerNorm,
    PatchEmbed,
    PatchMerge,
    PatchSplit,
    StageOutputs,
    reference_resample_pos_table,
    relative_position_index,
    tokens_to_map,
)
from lightning_modules.backbones.hivit_checkpoints import (
    PIXEL_DECODER_KEYS,
    PRETRAIN_ONLY_KEYS,
    PYRAMID_KEYS,
    checkpoint_filter_fn,
)
from suite_base.errors import ConfigError

__all__ = [
    "HiViT",
    "FeaturePyramid",
    "HiViTBlock",
    "checkpoint_filter_fn",
    "reference_resample_pos_table",
    "PYRAMID_KEYS",
    "PRETRAIN_ONLY_KEYS",
    "PIXEL_DECODER_KEYS",
    "POS_EMBED_MODES",
    "Attention",
    "LayerNorm",
    "PatchEmbed",
    "PatchMerge",
    "PatchSplit",
    "StageOutputs",
    "relative_position_index",
    "tokens_to_map",
]


POS_EMBED_MODES = ("exact", "reference")
PosEmbedMode = Literal["exact", "reference"]


class HiViT(nn.Module):
    """HiViT backbone of iTPN with an optional feature pyramid; constructor names follow the official ``iTPN``.

    Args:
        img_size: input resolution the position tables are built for (other sizes interpolate ``ape``).
        patch_size: patch size of stage 3 (16; each patch starts as 4x4 sub-tokens).
        in_chans: input channels.
        num_classes: classifier outputs; 0 gives a backbone without ``fc_norm`` / ``head`` (pre-training).
        embed_dim: stage-3 width ``C`` (stages 1/2 use ``C/4`` and ``C/2``).
        mlp_depth: MLP-only blocks of stage 1 (and of stage 2 unless ``mlp_depth2`` is given).
        mlp_depth2: MLP-only blocks of stage 2 (official CLIP code's ``mlp_depth2``).
        depth: attention blocks of stage 3.
        num_heads: attention heads.
        bridge_mlp_ratio: MLP ratio of stages 1/2.
        mlp_ratio: MLP ratio of stage 3 and the pyramid.
        fpn_dim: pyramid width (256 in every official config).
        fpn_depth: MLP blocks after each pyramid merge (2 pixel pre-training / seg, 1 CLIP pre-training / det).
        num_outs: 1 = no pyramid; 3 = P16/P8/P4 (pre-training); 4/5 add pooled P32/P64 in :meth:`forward_pyramid`.
        qkv_bias: bias on the qkv projection.
        drop_rate: dropout in MLPs and before the classifier.
        attn_drop_rate: attention dropout.
        drop_path_rate: stochastic depth, rising linearly over the ``mlp_depth + mlp_depth2 + depth`` blocks.
        init_values: layer-scale init (0.1 in the CLIP recipe); None disables.
        ape: absolute position embedding.
        ape_init: ``trunc_normal`` (std 0.02, CLIP recipe) or ``sincos`` (2-D sin-cos, pixel recipe).
        pos_embed_mode: ``exact`` (each kept patch gets its own table row; another input grid resamples the table
            with timm's bicubic ``resample_abs_pos_embed``) or ``reference`` (the released code's resampling whenever
            patches are dropped or the grid differs, :func:`reference_resample_pos_table`).
        rpe: relative position bias in the attention blocks.
        global_pool: ``avg`` (mean of the patch tokens, official) or ``""`` (return tokens from forward_head).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 512,
        mlp_depth: int = 3,
        mlp_depth2: int | None = None,
        depth: int = 24,
        num_heads: int = 8,
        bridge_mlp_ratio: float = 3.0,
        mlp_ratio: float = 4.0,
        fpn_dim: int = 256,
        fpn_depth: int = 2,
        num_outs: int = 1,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        init_values: float | None = None,
        ape: bool = True,
        ape_init: str = "trunc_normal",
        pos_embed_mode: PosEmbedMode = "exact",
        rpe: bool = True,
        global_pool: str = "avg",
    ):
        super().__init__()
        if isinstance(img_size, (tuple, list)):  # timm passes (H, W)
            if len(set(img_size)) != 1:
                raise ConfigError(f"HiViT needs a square img_size, got {tuple(img_size)}")
            img_size = int(img_size[0])
        if img_size % patch_size:
            raise ConfigError(f"img_size {img_size} is not a multiple of the patch size {patch_size}")
        if patch_size % 4:
            raise ConfigError(f"patch_size {patch_size} must be a multiple of 4 (4x4 sub-tokens per patch)")
        if embed_dim % 4:
            raise ConfigError(f"embed_dim {embed_dim} must be divisible by 4 (stage widths C/4, C/2, C)")
        if num_outs not in (1, 3, 4, 5):
            raise ConfigError(f"num_outs must be 1 (no pyramid), 3, 4 or 5, got {num_outs}")
        if pos_embed_mode not in POS_EMBED_MODES:
            raise ConfigError(f"pos_embed_mode must be one of {POS_EMBED_MODES}, got {pos_embed_mode!r}")
        mlp_depth2 = mlp_depth if mlp_depth2 is None else mlp_depth2
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.grid = img_size // patch_size
        self.patch_size = patch_size
        self.depth = depth
        self.num_main_blocks = depth
        self.mlp_depths = (mlp_depth, mlp_depth2)
        self.num_outs = num_outs
        self.global_pool = global_pool
        self.pos_embed_mode = pos_embed_mode
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(patch_size, 4, in_chans, embed_dim // 4)
        num_patches = self.grid**2
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dim)) if ape else None
        if rpe:
            self.register_buffer("relative_position_index", relative_position_index(self.grid), persistent=False)
        else:
            self.relative_position_index = None
        self.pos_drop = nn.Dropout(drop_rate)

        dpr = iter(torch.linspace(0, drop_path_rate, mlp_depth + mlp_depth2 + depth, device="cpu").tolist())
        kw = dict(grid=self.grid, qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate, rpe=rpe)
        kw["init_values"] = init_values
        blocks: list[nn.Module] = [
            HiViTBlock(embed_dim // 4, 0, bridge_mlp_ratio, drop_path=next(dpr), **kw) for _ in range(mlp_depth)
        ]
        blocks.append(PatchMerge(embed_dim // 4))
        blocks += [
            HiViTBlock(embed_dim // 2, 0, bridge_mlp_ratio, drop_path=next(dpr), **kw) for _ in range(mlp_depth2)
        ]
        blocks.append(PatchMerge(embed_dim // 2))
        blocks += [HiViTBlock(embed_dim, num_heads, mlp_ratio, drop_path=next(dpr), **kw) for _ in range(depth)]
        self.blocks = nn.ModuleList(blocks)
        # the last block of each stage (-1: stage 1 has no block, its output is the patch embedding's)
        self.stage_ends = [mlp_depth - 1, mlp_depth + mlp_depth2, len(blocks) - 1]
        self.feature_info = [
            dict(num_chs=c, reduction=r, module=f"blocks.{end}" if end >= 0 else "patch_embed")
            for c, r, end in zip((embed_dim // 4, embed_dim // 2, embed_dim), (4, 8, 16), self.stage_ends, strict=True)
        ]

        self.pyramid = FeaturePyramid(embed_dim, fpn_dim, fpn_depth, mlp_ratio, drop_rate) if num_outs > 1 else None
        self.fc_norm = LayerNorm(embed_dim) if num_classes > 0 else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        self.apply(self._init_weights)
        if self.absolute_pos_embed is not None:
            if ape_init == "sincos":
                table = build_sincos2d_pos_embed((self.grid, self.grid), embed_dim)
                self.absolute_pos_embed.data.copy_(table.reshape(1, num_patches, embed_dim))
            elif ape_init == "trunc_normal":
                trunc_normal_(self.absolute_pos_embed, std=0.02)
            else:
                raise ConfigError(f"ape_init must be 'trunc_normal' or 'sincos', got {ape_init!r}")

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ---- timm interface -------------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"absolute_pos_embed"}

    def main_block_ids(self) -> list[int]:
        """Indices into ``blocks`` of every non-merge block (the layers of iTPN's layer-wise lr decay)."""
        return [i for i, blk in enumerate(self.blocks) if not isinstance(blk, PatchMerge)]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        """Layer ids of iTPN's ``lr_decay.py``: 0 = patch embedding and position table; every non-merge block its
        own layer (a merge shares the layer of the block before it); the rest (pyramid, ``fc_norm``, head) last."""
        main = self.main_block_ids()
        last = len(main) + 1

        def layer_id(name: str) -> int:
            if name.startswith(("patch_embed", "absolute_pos_embed")):
                return 0
            if name.startswith("blocks."):
                i = int(name.split(".")[1])
                while i >= 0 and i not in main:
                    i -= 1
                return main.index(i) + 1 if i >= 0 else 0
            return last

        return layer_id

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.fc_norm = LayerNorm(self.embed_dim) if num_classes > 0 else nn.Identity()
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(self.head)

    # ---- forward ---------------------------------------------------------------------------------------------
    def rpe_index_for(self, ids_keep: torch.Tensor | None) -> torch.Tensor | None:
        """Relative-position index for all patches ``[N, N]`` or for each sample's kept patches ``[B, L, L]``."""
        if self.relative_position_index is None:
            return None
        index = self.relative_position_index
        if ids_keep is None:
            return index
        return index[ids_keep[:, :, None], ids_keep[:, None, :]]

    def _pos_embed(self, x: torch.Tensor, grid: tuple[int, int], ids_keep: torch.Tensor | None) -> torch.Tensor:
        if self.absolute_pos_embed is None:
            return x
        pos = self.absolute_pos_embed
        if self.pos_embed_mode == "reference":
            # the released code keeps the table only when every patch is there on a square grid (a token count that
            # matches the table on another grid would break it; that case is resampled here)
            if x.shape[1] != pos.shape[1] or grid != (self.grid, self.grid):
                pos = reference_resample_pos_table(pos, grid)
        elif grid != (self.grid, self.grid):
            pos = resample_abs_pos_embed(pos, list(grid), [self.grid, self.grid], num_prefix_tokens=0)
        if ids_keep is not None:
            pos = pos.expand(x.shape[0], -1, -1).gather(1, ids_keep[:, :, None].expand(-1, -1, pos.shape[-1]))
        return x + pos

    def _early_stages(
        self, x: torch.Tensor, ids_keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Patch embedding and stages 1-2 (MLP blocks, both merges): ``([B, L, 1, 1, C], [stage-1, stage-2 outputs])``
        in the per-patch layout (the laterals are taken just before each merge)."""
        x = self.patch_embed(x)
        if ids_keep is not None:
            x = x.gather(1, ids_keep[:, :, None, None, None].expand(-1, -1, *x.shape[2:]))
        laterals = []
        for blk in self.blocks[: -self.depth]:
            if isinstance(blk, PatchMerge):
                laterals.append(x)
            x = blk(x)
        return x, laterals

    def forward_tokens(
        self,
        x: torch.Tensor,
        ids_keep: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
        collect: Sequence[int] = (),
    ) -> StageOutputs:
        """Run stages 1-3.

        Args:
            x: images ``[B, 3, H, W]``.
            ids_keep: ``[B, L]`` indices of the patches to keep (MAE-style dropping from the first layer).
            bool_masked_pos: ``[B, N]`` True where ``mask_token`` replaces the token at the stage-3 input (BEiT
                style, the CLIP recipe; stages 1-2 see the whole image, as in the official code).
            mask_token: ``[1, 1, C]`` learnable token for ``bool_masked_pos``.
            collect: main-block indices (0-based over the ``depth`` attention blocks) whose outputs to return.
        """
        if x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
            raise ConfigError(
                f"image size {x.shape[-2]}x{x.shape[-1]} is not a multiple of the patch size {self.patch_size}; "
                f"resize or crop to a multiple of {self.patch_size} (data.img_size)"
            )
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        if self.relative_position_index is not None and grid != (self.grid, self.grid):
            raise ConfigError(
                f"input {x.shape[-2]}x{x.shape[-1]} gives a {grid[0]}x{grid[1]} patch grid but the relative position "
                f"tables were built for img_size {self.grid * self.patch_size}; set the backbone's img_size"
            )
        x, laterals = self._early_stages(x, ids_keep)
        x = x[:, :, 0, 0, :]
        if bool_masked_pos is not None:
            if mask_token is None:
                raise ValueError("bool_masked_pos needs a mask_token")
            w = bool_masked_pos.unsqueeze(-1).to(x.dtype)
            x = x * (1 - w) + mask_token.to(x.dtype) * w
        x = self.pos_drop(self._pos_embed(x, grid, ids_keep))
        rpe_index = self.rpe_index_for(ids_keep)
        collected = {}
        for i, blk in enumerate(self.blocks[-self.depth :]):
            if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                x = checkpoint(blk, x, rpe_index, use_reentrant=False)
            else:
                x = blk(x, rpe_index)
            if i in collect:
                collected[i] = x
        return StageOutputs(x, laterals, rpe_index, collected)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        output_dict: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]] | dict[str, object]:
        """timm's ``forward_intermediates`` over the three stages (``feature_info``): stage 1 (stride 4, ``C/4``),
        stage 2 (stride 8, ``C/2``), stage 3 (stride 16, ``C``), as timm's hierarchical models (Hiera, Swin).

        Args:
            indices: stages to return: last n if an int, all if None, these (negative from the end) if a list.
            norm: no effect: HiViT has no final norm (``fc_norm`` follows the pooling, as timm's ViT with fc_norm).
            stop_early: skip stage 3 when only stages 1-2 are asked for and ``intermediates_only``.
            output_fmt: ``NCHW`` maps or ``NLC`` tokens (row-major over each level's map).
            intermediates_only: return only the list of levels.
            output_dict: ``{"image_intermediates": [...], "image_features": tokens}`` (features unless
                ``intermediates_only``), as timm's ViT.
        Returns:
            the levels, or ``(stage-3 tokens [B, N, C], levels)``, or the dict.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stage_ends), indices)
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        if stop_early and intermediates_only and max_index < 2:
            _, laterals = self._early_stages(x)
            tokens = None
        else:
            out = self.forward_tokens(x)
            tokens, laterals = out.tokens, out.laterals
        levels = [*laterals, None if tokens is None else tokens[:, :, None, None, :]]
        intermediates = [tokens_to_map(levels[i], grid) for i in take_indices]
        if output_fmt == "NLC":
            intermediates = [y.flatten(2).transpose(1, 2) for y in intermediates]
        if output_dict:
            result: dict[str, object] = {"image_intermediates": intermediates}
            if not intermediates_only:
                result["image_features"] = tokens
            return result
        return intermediates if intermediates_only else (tokens, intermediates)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """timm's pruning for feature extraction: the absolute stage indices of ``indices``; ``prune_head`` drops the
        classifier (``fc_norm``, ``head``) and the iTPN pyramid, which no stage output uses. Blocks are kept (every
        stage runs through :meth:`forward_tokens`); there is no final norm to prune."""
        take_indices, _ = feature_take_indices(len(self.stage_ends), indices)
        if prune_head:
            self.reset_classifier(0, "")
            self.pyramid = None
            self.num_outs = 1
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> stage-3 tokens ``[B, N, C]``."""
        return self.forward_tokens(x).tokens

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=1)
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_pyramid(self, images: torch.Tensor, num_outs: int | None = None) -> list[torch.Tensor]:
        """Multi-scale maps for dense heads: ``[P4, P8, P16]`` (strides 4, 8, 16, ``fpn_dim`` channels, ``NCHW``),
        followed by average-pooled P32 (``num_outs >= 4``) and P64 (``num_outs == 5``) as the official detection
        configs use them."""
        if self.pyramid is None:
            raise ConfigError("this HiViT has no pyramid; build it with num_outs 3, 4 or 5 (backbone_kwargs)")
        num_outs = self.num_outs if num_outs is None else num_outs
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        out = self.forward_tokens(images)
        p16, p8, p4 = (tokens_to_map(p, grid) for p in self.pyramid(out.tokens, out.laterals))
        maps = [p4, p8, p16]
        while len(maps) < num_outs:
            maps.append(F.avg_pool2d(maps[-1], kernel_size=2, stride=2))
        return maps


def _cfg(**kwargs) -> dict:
    return imagenet_cfg(first_conv="patch_embed.proj", license="mit", **kwargs)


default_cfgs = generate_default_cfgs(
    {
        "itpn_base_3324_patch16_224": _cfg(),
        "itpn_large_2240_patch16_224": _cfg(),
        "itpn_large_2240_patch16_256": _cfg(input_size=(3, 256, 256), crop_pct=1.0),
    }
)

ITPN_BASE = dict(embed_dim=512, mlp_depth=3, depth=24, num_heads=8, bridge_mlp_ratio=3.0, mlp_ratio=4.0)
ITPN_LARGE = dict(embed_dim=768, mlp_depth=2, depth=40, num_heads=12, bridge_mlp_ratio=3.0, mlp_ratio=4.0)


def _create(variant: str, pretrained: bool, arch: dict, **kwargs) -> HiViT:
    # features_only: timm's FeatureGetterNet over forward_intermediates, the three stages (strides 4, 8, 16)
    feature_cfg = dict(out_indices=kwargs.pop("out_indices", (0, 1, 2)), feature_cls="getter")
    return build_model_with_cfg(
        HiViT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg,
        **dict(arch, **kwargs),
    )


@register_model
def itpn_base_3324_patch16_224(pretrained: bool = False, **kwargs) -> HiViT:
    """iTPN-B / HiViT-B "3324": widths 128/256/512, blocks 3/3/24, 8 heads (79M with the 1000-class head)."""
    return _create("itpn_base_3324_patch16_224", pretrained, ITPN_BASE, **kwargs)


@register_model
def itpn_large_2240_patch16_224(pretrained: bool = False, **kwargs) -> HiViT:
    """iTPN-L / HiViT-L "2240": widths 192/384/768, blocks 2/2/40, 12 heads (288M)."""
    return _create("itpn_large_2240_patch16_224", pretrained, ITPN_LARGE, **kwargs)


@register_model
def itpn_large_2240_patch16_256(pretrained: bool = False, **kwargs) -> HiViT:
    """iTPN-L at 256 px (a 16x16 grid): Table 1's "HiViT-L/14", matched to a CLIP-L/14 teacher at 224."""
    return _create("itpn_large_2240_patch16_256", pretrained, ITPN_LARGE, **dict({"img_size": 256}, **kwargs))
