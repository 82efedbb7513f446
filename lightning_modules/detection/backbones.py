"""Backbones for torchvision's Mask R-CNN built from the suite's registry (COCO detection / instance segmentation).

Three kinds (:func:`detection_backbone`, the network a config injects as ``model.init_args.backbone``, or
``build_mask_rcnn(backbone_kind=...)`` in Python):

``itpn_pyramid``
    A suite HiViT with iTPN's pre-trained feature pyramid (:class:`PyramidBackbone`). The pyramid *is* the FPN, as in
    the official iTPN detection configs (mmdet ``neck=None``, ``num_outs=5``): P4, P8, P16 from the pyramid plus
    average-pooled P32 and P64, all at ``fpn_dim`` channels, named ``"0" "1" "2" "3" "pool"`` as torchvision's RPN
    and ``MultiScaleRoIAlign`` expect. Box head: 4conv1fc with BatchNorm (official: 4conv1fc + SyncBN).
``timm_fpn``
    Any timm / suite model with multi-scale stages (``feature_info`` + ``forward_intermediates``: ResNets,
    Visformer ...) under torchvision's ``FeaturePyramidNetwork`` with ``LastLevelMaxPool``, 256 channels
    (:class:`TimmFPNBackbone`). Box head: torchvision's 2fc ``TwoMLPHead`` (Swin/Visformer mmdet configs: shared 2fc).
``resnet_c4``
    Detectron2's R50-C4 (:class:`ResNetC4Backbone`, :class:`ResNetC5BoxHead`): stem + res2-res4 as the backbone
    (one stride-16 map, 1024 channels for ResNet-50), res5 applied to 14x14 RoIAlign features then global average
    pooling (2048-d) as the box head; the mask head is the same res5 (shared weights) -> 7x7 -> deconv -> 14x14.

Departures from the reference implementations (deliberate or forced by torchvision's ``RoIHeads``):

* The box regression loss is torchvision's smooth-L1, not iTPN's GIoU (weight 10).
* C4: Detectron2 runs res5 once per sampled proposal in training and feeds the positives' res5 maps to the mask
  head; torchvision's ``RoIHeads`` pools the mask branch separately, so the shared res5 runs a second time on the
  positive proposals (same weights and result, extra compute). At inference both do a second pass on the
  detections. torchvision's RoIAlign here uses ``aligned=False`` (Detectron2's ROIAlignV2 uses ``aligned=True``).
* BatchNorm in the ResNet stays trainable (the SSL detection protocol: SyncBN, no frozen stages); convert to
  SyncBN in the trainer for multi-GPU runs. torchvision's own ResNet detectors freeze BN instead.
* HiViT with ``rpe=True`` only accepts its ``img_size`` grid (the official CLIP-L det config resizes the tables);
  use ``rpe=False`` (the official pixel-B det recipe) for COCO's variable image sizes.
* Visformer's position embeddings are fixed-size in timm; :class:`TimmFPNBackbone` resamples them (bicubic) to the
  input's grid and pads inputs to the patch size, so variable detection sizes work.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from lightning_modules.backbones import create_backbone, read_backbone_state
from suite_base.errors import ConfigError

__all__ = [
    "BackboneKind",
    "PretrainedReport",
    "PyramidBackbone",
    "TimmFPNBackbone",
    "ResNetC4Backbone",
    "ResNetC5BoxHead",
    "load_backbone_weights",
    "detection_backbone",
    "mask_rcnn",
    "build_mask_rcnn",
]

log = logging.getLogger(__name__)

BackboneKind = Literal["itpn_pyramid", "timm_fpn", "resnet_c4"]
CLASSIFIER_PREFIXES = ("head.", "fc.", "fc_norm.", "classifier.", "head_drop.")


# ---- checkpoint loading ------------------------------------------------------------------------------------------
@dataclass
class PretrainedReport:
    """What loading a pre-training checkpoint into a detector's backbone did (classifier keys ignored)."""

    path: str | None = None
    missing: list[str] = field(default_factory=list)  # backbone keys the checkpoint did not provide
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the backbone has no place for
    loaded: int = 0


def load_backbone_weights(model: nn.Module, path: str, strict: bool = True) -> PretrainedReport:
    """Load a suite checkpoint (a Lightning checkpoint's ``encoder.`` / ``backbone.`` weights, or a foreign layout
    mapped by the family's filter, see :func:`~lightning_modules.backbones.read_backbone_state`) into the trunk
    ``model`` (a HiViT with its pyramid, a timm ResNet / Visformer) before it is wrapped for detection.

    Returns a :class:`PretrainedReport`; with ``strict`` a ConfigError names missing keys or keys of another shape.
    """
    path, state = read_backbone_state(path, model)
    target = model.state_dict()
    wrong = [f"{k}: {list(v.shape)} vs {list(target[k].shape)}" for k, v in state.items()
             if k in target and v.shape != target[k].shape and not k.startswith(CLASSIFIER_PREFIXES)]  # fmt: skip
    if wrong:
        raise ConfigError(f"pretrained {path} does not fit backbone {type(model).__name__}: {wrong[:5]}")
    unexpected = [k for k in state if k not in target and not k.startswith(CLASSIFIER_PREFIXES)]
    state = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    missing, _ = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(CLASSIFIER_PREFIXES)]
    report = PretrainedReport(path, missing, unexpected, len(state))
    if missing:
        msg = f"pretrained {path}: {len(missing)} backbone keys missing from the checkpoint: {missing[:10]}"
        if strict:
            raise ConfigError(msg + " (pass strict_pretrained=False to keep their fresh init)")
        log.warning(msg)
    if unexpected:
        log.warning("pretrained %s: %d checkpoint keys unused: %s", path, len(unexpected), unexpected[:10])
    log.info("pretrained %s: loaded %d tensors into %s", path, len(state), type(model).__name__)
    return report


# ---- (a) iTPN pyramid --------------------------------------------------------------------------------------------
def pyramid_names(num_levels: int) -> list[str]:
    """torchvision's level names: ``"0" ... "n-2"`` and ``"pool"`` for the coarsest (RPN only, no RoI pooling)."""
    return [str(i) for i in range(num_levels - 1)] + ["pool"]


class PyramidBackbone(nn.Module):
    """A suite HiViT whose iTPN pyramid is the detector's FPN: ``forward(x)`` -> ``{"0": P4, "1": P8, "2": P16,
    "3": P32, "pool": P64}`` (``num_outs=5``), each with ``out_channels = fpn_dim`` channels. No extra FPN.

    This is the one path that reads iTPN's own pyramid (``forward_pyramid``): timm's feature API
    (``feature_info`` / ``forward_intermediates``) returns HiViT's three stage maps, which ``timm_fpn`` takes, not
    the pre-trained pyramid that the iTPN recipe fine-tunes as its FPN."""

    kind = "itpn_pyramid"

    def __init__(self, body: nn.Module, num_outs: int | None = None, name: str = ""):
        super().__init__()
        name = name or type(body).__name__
        if not hasattr(body, "forward_pyramid"):
            raise ConfigError(f"itpn_pyramid needs an iTPN/HiViT backbone; '{name}' is {type(body).__name__}")
        if body.pyramid is None:
            raise ConfigError("itpn_pyramid: the HiViT has no pyramid; build it with num_outs 4 or 5")
        self.body = body
        self.name = name
        self.num_outs = body.num_outs if num_outs is None else num_outs
        if self.num_outs not in (4, 5):
            raise ConfigError(f"itpn_pyramid needs num_outs 4 or 5 (strides 4..32 or 4..64), got {self.num_outs}")
        self.out_channels = body.pyramid.fpn_dim
        self.strides = [4 * 2**i for i in range(self.num_outs)]
        self.names = pyramid_names(self.num_outs)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.body.forward_pyramid(x, num_outs=self.num_outs)
        return OrderedDict(zip(self.names, maps, strict=True))

    def weights_target(self) -> nn.Module:
        """The network pre-trained weights load into, by its own key names (HiViT with its pyramid)."""
        return self.body


# ---- (b) timm stages + torchvision FPN ---------------------------------------------------------------------------
def _visformer_intermediates(model: nn.Module, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
    """timm Visformer's ``forward_intermediates`` with the position embeddings resampled to the input's grid (timm's
    are fixed to ``img_size``)."""
    stages = [
        (model.patch_embed1, model.pos_embed1, model.stage1),
        (model.patch_embed2, model.pos_embed2, model.stage2),
        (model.patch_embed3, model.pos_embed3, model.stage3),
    ]
    out = []
    if model.stem is not None:
        x = model.stem(x)
    for i, (embed, pos, stage) in enumerate(stages[: max(indices) + 1]):
        if embed is not None:
            x = embed(x)
        if pos is not None:
            if pos.shape[-2:] != x.shape[-2:]:
                pos = F.interpolate(pos, size=x.shape[-2:], mode="bicubic", align_corners=False)
            x = model.pos_drop(x + pos)
        x = stage(x)
        if i in indices:
            out.append(x)
    return out


class TimmFPNBackbone(nn.Module):
    """Multi-scale stages of a timm / suite model -> torchvision ``FeaturePyramidNetwork`` + ``LastLevelMaxPool``.

    Args:
        body: the timm model (its classifier is unused); it needs ``feature_info`` and ``forward_intermediates``
            (HiViT has them too: its three stages at strides 4, 8, 16, without iTPN's pyramid).
        name: the backbone's name for error messages.
        out_channels: FPN width (256).
        min_stride: stages with a smaller stride are skipped (the stride-2 stem output of ResNets).
        out_indices: ``feature_info`` indices to use instead of all stages with stride >= ``min_stride``.
    """

    kind = "timm_fpn"

    def __init__(
        self,
        body: nn.Module,
        name: str = "",
        out_channels: int = 256,
        min_stride: int = 4,
        out_indices: Sequence[int] | None = None,
    ):
        super().__init__()
        name = name or type(body).__name__
        info = getattr(body, "feature_info", None)
        if not info or not hasattr(body, "forward_intermediates"):
            raise ConfigError(
                f"backbone '{name}' has no multi-scale outputs (missing timm feature_info / forward_intermediates); "
                "use kind 'itpn_pyramid' (model.init_args.backbone.init_args.kind) for iTPN or a hierarchical model "
                "(ResNet, Visformer ...)"
            )
        info = [dict(i) for i in info] if not hasattr(info, "get_dicts") else info.get_dicts()
        if out_indices is None:
            out_indices = [i for i, f in enumerate(info) if f["reduction"] >= min_stride]
        strides = [info[i]["reduction"] for i in out_indices]
        if len(set(strides)) < 2 or sorted(strides) != strides or len(set(strides)) != len(strides):
            raise ConfigError(
                f"backbone '{name}' has no multi-scale outputs: its stages have strides {strides} (at least 2 "
                "increasing strides are needed for an FPN); a plain ViT needs a pyramid (kind 'itpn_pyramid')"
            )
        self.body = body
        self.name = name
        self.out_indices = list(out_indices)
        self.in_channels = [info[i]["num_chs"] for i in self.out_indices]
        self.strides = strides + [strides[-1] * 2]  # LastLevelMaxPool adds one level
        self.is_visformer = type(body).__name__ == "Visformer"
        if self.is_visformer:
            for embed in (body.patch_embed1, body.patch_embed2, body.patch_embed3):
                if embed is not None and hasattr(embed, "strict_img_size"):
                    embed.strict_img_size = False
                    embed.dynamic_img_pad = True
        self.fpn = FeaturePyramidNetwork(self.in_channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        self.names = pyramid_names(len(self.strides))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.is_visformer:
            return _visformer_intermediates(self.body, x, self.out_indices)
        return self.body.forward_intermediates(x, indices=self.out_indices, intermediates_only=True)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.features(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))

    def weights_target(self) -> nn.Module:
        """The network pre-trained weights load into, by its own key names (the timm model)."""
        return self.body


# ---- (c) ResNet C4 -----------------------------------------------------------------------------------------------
def _resnet_parts(body: nn.Module, name: str) -> tuple[list[nn.Module], list[nn.Module], nn.Module]:
    """(stem modules, [layer1, layer2, layer3], layer4) of a timm- or torchvision-layout ResNet."""
    needed = ("conv1", "bn1", "maxpool", "layer1", "layer2", "layer3", "layer4")
    missing = [n for n in needed if not hasattr(body, n)]
    act = getattr(body, "act1", None) or getattr(body, "relu", None)
    if missing or act is None:
        raise ConfigError(
            f"resnet_c4 needs a ResNet with conv1/bn1/act1 (or relu)/maxpool/layer1-4; backbone '{name}' lacks "
            f"{missing or ['act1/relu']}"
        )
    return [body.conv1, body.bn1, act, body.maxpool], [body.layer1, body.layer2, body.layer3], body.layer4


class ResNetC4Backbone(nn.Module):
    """Stem + res2-res4 of a ResNet (Detectron2's C4 backbone): ``{"0": C4}`` at stride 16 (1024 channels for
    ResNet-50). Build it together with its box head by :meth:`split` (or :meth:`from_resnet`)."""

    kind = "resnet_c4"

    def __init__(self, stem: Sequence[nn.Module], layers: Sequence[nn.Module], out_channels: int, name: str = "resnet"):
        super().__init__()
        self.stem = nn.Sequential(*stem)
        self.layer1, self.layer2, self.layer3 = layers
        self.out_channels = out_channels
        self.strides = [16]
        self.names = ["0"]
        self.name = name

    @classmethod
    def from_resnet(cls, body: nn.Module, name: str = "resnet") -> ResNetC4Backbone:
        """The C4 backbone of ``body`` carrying its res5 box head (``res5_head``) and ``body`` itself, for
        :func:`mask_rcnn` and the loading of pre-trained weights. Neither is registered as a submodule: res5's
        weights belong to the detector's box head, and ``body``'s are the C4 backbone's and the box head's own."""
        net, head = cls.split(body, name)
        net.__dict__["res5_head"] = head
        net.__dict__["resnet"] = body
        return net

    def weights_target(self) -> nn.Module:
        """The whole ResNet (its modules shared with this backbone and the res5 head): pre-trained ResNet weights
        load into it by the ResNet's key names."""
        resnet = self.__dict__.get("resnet")
        if resnet is None:
            raise ConfigError("this C4 backbone was built by split(); build it with from_resnet() to load weights")
        return resnet

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return OrderedDict([("0", x)])

    @staticmethod
    def split(body: nn.Module, name: str = "resnet") -> tuple[ResNetC4Backbone, ResNetC5BoxHead]:
        """``(C4 backbone, res5 box head)`` sharing the modules (and so the loaded weights) of ``body``."""
        stem, layers, layer4 = _resnet_parts(body, name)
        with torch.no_grad():
            was_training = body.training
            body.eval()
            probe = torch.zeros(1, 3, 64, 64)
            for m in stem:
                probe = m(probe)
            for m in layers:
                probe = m(probe)
            c4 = probe.shape[1]
            c5 = layer4(probe).shape[1]
            body.train(was_training)
        return ResNetC4Backbone(stem, layers, c4, name), ResNetC5BoxHead(layer4, c5)


class ResNetC5BoxHead(nn.Module):
    """Detectron2's ``Res5ROIHeads`` box branch: res5 on 14x14 RoIAlign features (-> 7x7) then global average
    pooling -> ``[K, out_channels]`` (2048 for ResNet-50). ``res5`` is shared with the C4 mask head."""

    def __init__(self, res5: nn.Module, out_channels: int):
        super().__init__()
        self.res5 = res5
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res5(x).mean(dim=(2, 3))


# ---- Mask R-CNN --------------------------------------------------------------------------------------------------
def _anchor_generator(strides: Sequence[int], single_level: bool, anchor_sizes, aspect_ratios) -> AnchorGenerator:
    ratios = tuple(float(r) for r in aspect_ratios)
    if single_level:  # C4: every size on the one stride-16 map (Detectron2 R50-C4)
        sizes = tuple(anchor_sizes or (32, 64, 128, 256, 512))
        return AnchorGenerator((sizes,), (ratios,))
    if anchor_sizes is None:  # 8 x stride per level: 32, 64, 128, 256, 512 for strides 4 ... 64
        anchor_sizes = [8 * s for s in strides]
    if len(anchor_sizes) != len(strides):
        raise ConfigError(f"anchor_sizes {list(anchor_sizes)} must give one size per level ({len(strides)} levels)")
    return AnchorGenerator(tuple((int(s),) for s in anchor_sizes), (ratios,) * len(strides))


def detection_backbone(
    kind: BackboneKind = "itpn_pyramid",
    name: str = "itpn_base_3324_patch16_224",
    kwargs: dict | None = None,
    fpn_channels: int = 256,
) -> nn.Module:
    """The detector's backbone as a config injects it (``model.init_args.backbone``): a headless model of timm's
    registry (``num_classes=0`` is forced) in the wrapper of ``kind``.

    Args:
        kind: ``itpn_pyramid`` (:class:`PyramidBackbone`: HiViT + iTPN's pyramid as the FPN; ``num_outs``
            defaults to 5), ``timm_fpn`` (:class:`TimmFPNBackbone`: timm stages + torchvision FPN) or ``resnet_c4``
            (:class:`ResNetC4Backbone` carrying its res5 box head).
        name: registry name (``itpn_base_3324_patch16_224``, ``visformer_small``, ``resnet50`` ...).
        kwargs: the model's constructor arguments (iTPN det: ``rpe: false``, ``drop_path_rate``, ``fpn_depth: 1``
            ...; ``timm_fpn`` also takes ``out_indices``, the ``feature_info`` levels to use).
        fpn_channels: width of the torchvision FPN of ``timm_fpn`` (256); iTPN's pyramid width is ``kwargs.fpn_dim``.
    Every wrapper has ``kind``, ``name``, ``out_channels``, ``strides``, ``names`` and ``weights_target()``."""
    kwargs = dict(kwargs or {})
    kwargs["num_classes"] = 0
    if kind == "itpn_pyramid":
        kwargs.setdefault("num_outs", 5)
        return PyramidBackbone(create_backbone(name, **kwargs), name=name)
    if kind == "timm_fpn":
        out_indices = kwargs.pop("out_indices", None)
        body = create_backbone(name, **kwargs)
        return TimmFPNBackbone(body, name, out_channels=fpn_channels, out_indices=out_indices)
    if kind == "resnet_c4":
        return ResNetC4Backbone.from_resnet(create_backbone(name, **kwargs), name)
    raise ConfigError(f"backbone kind must be itpn_pyramid, timm_fpn or resnet_c4, got {kind!r}")


def mask_rcnn(
    net: nn.Module,
    num_classes: int = 81,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    box_head: Literal["2fc", "4conv1fc"] | None = None,
    anchor_sizes: Sequence[int] | None = None,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    head_channels: int = 256,
    representation_size: int = 1024,
    **rcnn_kwargs,
) -> MaskRCNN:
    """torchvision ``MaskRCNN`` on ``net``, a backbone of :func:`detection_backbone`; arguments as
    :func:`build_mask_rcnn`'s. The RPN, RoI heads and their predictors are built here for ``net``'s levels."""
    kind = net.kind
    if kind == "resnet_c4":
        res5_head = net.__dict__.get("res5_head")
        if res5_head is None:
            raise ConfigError(
                "a resnet_c4 backbone needs its res5 box head: build it with ResNetC4Backbone.from_resnet"
            )
    box_head = box_head or ("4conv1fc" if kind == "itpn_pyramid" else "2fc")
    mask_roi_pool = mask_head = mask_predictor = None
    anchors = _anchor_generator(net.strides, kind == "resnet_c4", anchor_sizes, aspect_ratios)
    rcnn_kwargs.setdefault("size_divisible", max(32, net.strides[-1]))
    if kind == "resnet_c4":
        box_roi_pool = MultiScaleRoIAlign(["0"], output_size=14, sampling_ratio=0)
        box_head_module = res5_head
        box_predictor = FastRCNNPredictor(res5_head.out_channels, num_classes)
        mask_roi_pool = MultiScaleRoIAlign(["0"], output_size=14, sampling_ratio=0)
        mask_head = res5_head.res5  # shared res5 weights (Detectron2's Res5ROIHeads)
        # Detectron2's C4 mask head: deconv 2x2/s2 (7 -> 14) -> ReLU -> 1x1 class logits
        mask_predictor = MaskRCNNPredictor(res5_head.out_channels, head_channels, num_classes)
    else:
        roi_names = net.names[:-1]  # RoIs pool from strides 4 ... 32; "pool" feeds the RPN only
        box_roi_pool = MultiScaleRoIAlign(roi_names, output_size=7, sampling_ratio=2)
        channels = net.out_channels
        if box_head == "4conv1fc":
            box_head_module = FastRCNNConvFCHead(
                (channels, 7, 7), [head_channels] * 4, [representation_size], norm_layer=nn.BatchNorm2d
            )
        elif box_head == "2fc":
            box_head_module = TwoMLPHead(channels * 7 * 7, representation_size)
        else:
            raise ConfigError(f"box_head must be '2fc' or '4conv1fc', got {box_head!r}")
        box_predictor = FastRCNNPredictor(representation_size, num_classes)
        mask_roi_pool = MultiScaleRoIAlign(roi_names, output_size=14, sampling_ratio=2)
        mask_head = MaskRCNNHeads(channels, [head_channels] * 4, 1)
        mask_predictor = MaskRCNNPredictor(head_channels, head_channels, num_classes)

    detector = MaskRCNN(
        net,
        num_classes=None,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        box_roi_pool=box_roi_pool,
        box_head=box_head_module,
        box_predictor=box_predictor,
        mask_roi_pool=mask_roi_pool,
        mask_head=mask_head,
        mask_predictor=mask_predictor,
        **rcnn_kwargs,
    )
    detector.backbone_kind = kind
    return detector


def build_mask_rcnn(
    backbone_kind: BackboneKind,
    backbone: str,
    backbone_kwargs: dict | None = None,
    num_classes: int = 81,
    pretrained: str | None = None,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    box_head: Literal["2fc", "4conv1fc"] | None = None,
    anchor_sizes: Sequence[int] | None = None,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    strict_pretrained: bool = True,
    head_channels: int = 256,
    representation_size: int = 1024,
    fpn_channels: int = 256,
    **rcnn_kwargs,
) -> MaskRCNN:
    """torchvision ``MaskRCNN`` on a backbone of the suite's registry.

    Args:
        backbone_kind: ``itpn_pyramid`` (HiViT + iTPN pyramid as the FPN), ``timm_fpn`` (stages + torchvision FPN)
            or ``resnet_c4`` (Detectron2 R50-C4).
        backbone: registry name (``itpn_base_3324_patch16_224``, ``visformer_small``, ``resnet50`` ...).
        backbone_kwargs: extra constructor arguments (``num_classes=0`` is forced; ``num_outs`` defaults to 5 for
            iTPN; e.g. ``rpe=False, drop_path_rate=0.05, fpn_depth=1`` as in the official det configs).
        num_classes: including background (81 for COCO's 80 categories).
        pretrained: suite pre-training checkpoint (a glob picks the newest) loaded into the trunk (and the iTPN
            pyramid); the result is ``detector.pretrained_report`` (:class:`PretrainedReport`).
        min_size, max_size: torchvision's ``GeneralizedRCNNTransform`` resize; give the datamodule's sizes so the
            images are not resized again.
        box_head: ``4conv1fc`` (BatchNorm; iTPN default) or ``2fc`` (``timm_fpn`` default); ignored for C4.
        anchor_sizes: one size per level (default 8 x stride: 32 ... 512) or, for C4, all sizes of its one level.
        aspect_ratios: anchor aspect ratios (0.5, 1, 2).
        strict_pretrained: raise a ConfigError when backbone keys are missing from ``pretrained``.
        head_channels: conv width of the 4conv box head, the 4conv mask head and the mask deconvolution (256).
        representation_size: fc width of the box head (1024).
        fpn_channels: width of the torchvision FPN of ``timm_fpn`` (256); iTPN's pyramid width is the backbone's
            ``fpn_dim``.
        rcnn_kwargs: passed to ``MaskRCNN`` (``box_detections_per_img``, ``image_mean``, ``size_divisible`` ...).
            ``size_divisible`` defaults to the coarsest stride (64 for 5 levels) so pooled levels stay aligned.
    """
    net = detection_backbone(backbone_kind, backbone, backbone_kwargs, fpn_channels)
    report = load_backbone_weights(net.weights_target(), pretrained, strict_pretrained) if pretrained else None
    detector = mask_rcnn(
        net,
        num_classes,
        min_size,
        max_size,
        box_head=box_head,
        anchor_sizes=anchor_sizes,
        aspect_ratios=aspect_ratios,
        head_channels=head_channels,
        representation_size=representation_size,
        **rcnn_kwargs,
    )
    detector.pretrained_report = report or PretrainedReport()
    return detector
