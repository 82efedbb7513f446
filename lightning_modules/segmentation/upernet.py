"""UPerNet (Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018) as mmseg's ``UPerHead``,
mmseg's auxiliary ``FCNHead``, and :class:`MultiScaleFeatures`, which turns a suite backbone into the list of
``NCHW`` maps the head reads.

``UPerHead`` (mmseg ``decode_heads/uper_head.py``, ``align_corners=False``):

1. PPM on the last (coarsest) level: for each pool scale ``s`` an ``AdaptiveAvgPool2d(s)`` -> 1x1 ConvModule to
   ``channels``, upsampled bilinearly back; concatenated with the level itself -> 3x3 ConvModule ``bottleneck``.
2. 1x1 lateral ConvModules on every other level; the PPM output is the last lateral.
3. Top-down: from coarse to fine, each lateral gets the bilinearly upsampled lateral above it added.
4. 3x3 ConvModules (``fpn_convs``) on every lateral but the last; all outputs upsampled to the finest level,
   concatenated -> 3x3 ConvModule ``fpn_bottleneck`` -> Dropout2d -> 1x1 classifier ``conv_seg``.

``ConvModule`` = Conv (no bias, a norm follows) -> BatchNorm2d -> ReLU; convert to SyncBatchNorm for multi-GPU runs
(Lightning's ``trainer.sync_batchnorm: true``), as mmseg's configs use SyncBN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.backbones import create_backbone
from suite_base.errors import ConfigError

__all__ = [
    "ConvModule",
    "PPM",
    "UPerHead",
    "FCNHead",
    "MultiScaleFeatures",
    "ViTMultiLevelNeck",
    "headless_backbone",
    "backbone_name",
]


def headless_backbone(name: str = "itpn_base_3324_patch16_224", kwargs: dict | None = None) -> nn.Module:
    """A model of timm's registry (the suite's included) without its classifier (``num_classes=0``), as a config
    injects it (``model.init_args.backbone``); ``kwargs``: its constructor arguments (iTPN: ``img_size: 512``,
    ``num_outs: 4``, ``drop_path_rate``, ``rpe`` ...; a timm CNN: ``channels``, ``output_stride`` ...)."""
    return create_backbone(name, num_classes=0, **(kwargs or {}))


def backbone_name(backbone: nn.Module) -> str:
    """The registry name a timm model was built as (its ``pretrained_cfg``), else its class name."""
    return (getattr(backbone, "pretrained_cfg", None) or {}).get("architecture") or type(backbone).__name__


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=False`` (mmseg's ``resize`` in UPerHead); no-op at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvModule(nn.Sequential):
    """mmcv's ``ConvModule`` with ``norm_cfg=BN`` and ``act_cfg=ReLU``: Conv2d (no bias) -> BatchNorm2d -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, padding: int = 0) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class PPM(nn.ModuleList):
    """Pyramid pooling branches: ``[resize(ConvModule1x1(AdaptiveAvgPool(s)(x)), x.shape)]`` for each scale ``s``."""

    def __init__(self, pool_scales: Sequence[int], in_channels: int, channels: int) -> None:
        super().__init__(
            nn.Sequential(nn.AdaptiveAvgPool2d(int(s)), ConvModule(in_channels, channels, 1)) for s in pool_scales
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [resize(branch(x), x.shape[-2:]) for branch in self]


class UPerHead(nn.Module):
    """mmseg's UPerHead over ``len(in_channels)`` levels, finest first (e.g. strides 4, 8, 16, 32).

    Args:
        in_channels: channels of each input level, finest first.
        channels: the head's width (512 in mmseg's UPerNet configs; 768 in iTPN's ADE20K configs).
        num_classes: output classes.
        pool_scales: PPM output sizes on the last level.
        dropout: Dropout2d before the classifier.
    ``forward(features)`` returns logits ``[B, num_classes, h, w]`` at the finest level's resolution.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        num_classes: int,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        if not in_channels:
            raise ConfigError("UPerHead needs at least one input level (in_channels is empty)")
        self.in_channels, self.channels, self.num_classes = in_channels, channels, num_classes
        self.psp_modules = PPM(pool_scales, in_channels[-1], channels)
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3, padding=1)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3, padding=1) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, padding=1)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)  # mmseg's BaseDecodeHead.init_weights
        nn.init.zeros_(self.conv_seg.bias)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        """PPM on the last level: ``bottleneck(cat([x, *PPM(x)]))``."""
        return self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))

    def fuse(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The fused ``[B, channels, h, w]`` map before dropout and the classifier (finest level's size)."""
        if len(features) != len(self.in_channels):
            raise ValueError(f"UPerHead got {len(features)} feature levels but was built for {len(self.in_channels)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features[:-1], strict=True)]
        laterals.append(self.psp_forward(features[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1], strict=True)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        return self.fpn_bottleneck(torch.cat([resize(o, size) for o in outs], dim=1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.fuse(features)))


class FCNHead(nn.Module):
    """mmseg's auxiliary ``FCNHead`` (``num_convs=1``, ``concat_input=False``): 3x3 ConvModule -> Dropout2d -> 1x1."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.convs = ConvModule(in_channels, channels, 3, padding=1)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.convs(x)))


class MultiScaleFeatures:
    """Multi-scale ``NCHW`` maps of a backbone, finest first, for :class:`UPerHead`.

    Not an ``nn.Module``: it only reads the backbone (which its owner registers), so the owner's state_dict keeps the
    backbone weights under one prefix.

    * **iTPN / HiViT with pyramid** (``num_outs`` 3..5): the official seg backbone (``seg/backbone/iTPN.py``), the
      one path that reads iTPN's own pyramid (timm's feature API gives HiViT's stage maps, not the pyramid).
      Each pyramid output is concatenated along channels with the backbone feature of the same stride: stride 4 =
      stage-1 output (the lateral taken just before the first PatchMerge, ``C/4`` channels), stride 8 = stage-2
      output (before the second merge, ``C/2``), stride 16 = stage-3 output tokens (``C``). With ``num_outs >= 4`` a
      stride-32 level is the 2x2 max-pool of the stride-16 concatenation. Channels: ``fpn_dim + (C/4, C/2, C, C)``,
      i.e. [384, 512, 768, 768] for iTPN-B, [448, 640, 1024, 1024] for iTPN-L (fpn_dim 256). ``num_outs = 5``
      (the detection setting) gives the same four levels: segmentation has no stride-64 level.
    * **any timm model** with ``feature_info`` and ``forward_intermediates`` (resnet*, visformer, convnext ..., and
      a HiViT without pyramid: its stages at strides 4, 8, 16): its feature levels at stride >= 4 (the stride-2 stem
      is dropped), at most the last four.

    * **a plain ViT** (BEiT / MVP, ``vit_out_indices``, e.g. ``[3, 5, 7, 11]``): the NCHW token maps of those blocks,
      all at stride 16; :class:`ViTMultiLevelNeck` (owned by the segmentation module) turns them into strides
      4 / 8 / 16 / 32. ``strides`` here are the neck's outputs.

    A backbone without outputs at two or more strides (and no ``vit_out_indices``) raises a :class:`ConfigError`
    naming it and what is missing.
    Attributes: ``out_channels``, ``strides`` (one per level), ``kind`` (``itpn``, ``timm`` or ``vit``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        name: str | None = None,
        max_levels: int = 4,
        vit_out_indices: Sequence[int] | None = None,
    ) -> None:
        name = name or backbone_name(backbone)
        self.backbone, self.name = backbone, name
        if vit_out_indices is not None:
            depth = len(getattr(backbone, "blocks", []))
            if not hasattr(backbone, "forward_intermediates") or not depth:
                raise ConfigError(
                    f"vit_out_indices needs a plain ViT with blocks and forward_intermediates(); backbone '{name}' "
                    f"({type(backbone).__name__}) has none. Leave vit_out_indices null for hierarchical backbones."
                )
            if len(vit_out_indices) != 4 or any(not 0 <= i < depth for i in vit_out_indices):
                raise ConfigError(
                    f"vit_out_indices {list(vit_out_indices)} must name 4 blocks of backbone '{name}' (0..{depth - 1})"
                    "; BEiT / MVP use [3, 5, 7, 11] for 12 blocks"
                )
            self.kind = "vit"
            self.indices = list(vit_out_indices)
            self.out_channels = [int(backbone.num_features)] * 4
            self.strides = [4, 8, 16, 32]
            return
        if getattr(backbone, "pyramid", None) is not None:  # iTPN: its pre-trained pyramid, not in timm's feature API
            self.kind = "itpn"
            fpn, dim = backbone.pyramid.fpn_dim, backbone.embed_dim
            levels = min(max(backbone.num_outs, 3), 4, max_levels)
            self.out_channels = [fpn + dim // 4, fpn + dim // 2, fpn + dim, fpn + dim][:levels]
            self.strides = [4, 8, 16, 32][:levels]
            return
        info = getattr(backbone, "feature_info", None)
        if not hasattr(backbone, "forward_intermediates") or not isinstance(info, list) or not info:
            missing = "forward_intermediates()" if not hasattr(backbone, "forward_intermediates") else "feature_info"
            raise ConfigError(
                f"backbone '{name}' ({type(backbone).__name__}) gives no multi-scale outputs: it has no {missing}. "
                "UPerHead needs feature maps at several strides: use a timm model with features "
                "(resnet*, visformer_*, convnext_* ...) or an iTPN/HiViT with num_outs: 4"
            )
        picked = [i for i, f in enumerate(info) if int(f["reduction"]) >= 4][-max_levels:]
        strides = [int(info[i]["reduction"]) for i in picked]
        if len(set(strides)) < 2:
            raise ConfigError(
                f"backbone '{name}' ({type(backbone).__name__}) gives no multi-scale outputs: all its feature levels "
                f"are at stride {sorted(set(int(f['reduction']) for f in info))}, UPerHead needs at least two "
                "strides (a plain ViT needs a neck that up/down-samples; use an iTPN/HiViT with num_outs: 4)"
            )
        self.kind = "timm"
        self.indices = picked
        self.out_channels = [int(info[i]["num_chs"]) for i in picked]
        self.strides = strides

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self.kind in ("timm", "vit"):
            return list(self.backbone.forward_intermediates(images, indices=self.indices, intermediates_only=True))
        # iTPN: each pyramid level concatenated with the stage output of its stride. One pass of forward_tokens gives
        # both (forward_intermediates would give the stage maps only and run the trunk a second time for the pyramid)
        from lightning_modules.backbones.hivit import tokens_to_map

        backbone = self.backbone
        grid = (images.shape[-2] // backbone.patch_size, images.shape[-1] // backbone.patch_size)
        out = backbone.forward_tokens(images)
        p16, p8, p4 = (tokens_to_map(p, grid) for p in backbone.pyramid(out.tokens, out.laterals))
        s4, s8 = (tokens_to_map(lat, grid) for lat in out.laterals)
        s16 = tokens_to_map(out.tokens[:, :, None, None, :], grid)
        maps = [torch.cat([p4, s4], 1), torch.cat([p8, s8], 1), torch.cat([p16, s16], 1)]
        if len(self.strides) > 3:
            maps.append(F.max_pool2d(maps[-1], kernel_size=2, stride=2))
        return maps


class ViTMultiLevelNeck(nn.Module):
    """BEiT's segmentation neck (``semantic_segmentation/backbone/beit.py``: ``fpn1`` ... ``fpn4``), used by MVP's
    ADE20K UPerNet: four stride-16 ViT block outputs -> strides 4 (two 2x2 transposed convolutions with BatchNorm and
    GELU between them), 8 (one transposed convolution), 16 (identity) and 32 (2x2 max-pool), channels unchanged."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
            nn.BatchNorm2d(dim),
            nn.GELU(),
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
        )
        self.fpn2 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(maps) != 4:
            raise ValueError(f"ViTMultiLevelNeck takes 4 maps (one per stride 4 / 8 / 16 / 32), got {len(maps)}")
        return [op(x) for op, x in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), maps, strict=True)]
