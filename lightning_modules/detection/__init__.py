"""Downstream COCO detection and instance segmentation: torchvision Mask R-CNN on the suite's backbones."""

from lightning_modules.detection.backbones import (
    BackboneKind,
    PretrainedReport,
    PyramidBackbone,
    ResNetC4Backbone,
    ResNetC5BoxHead,
    TimmFPNBackbone,
    build_mask_rcnn,
    load_backbone_weights,
)

__all__ = [
    "BackboneKind",
    "PretrainedReport",
    "PyramidBackbone",
    "ResNetC4Backbone",
    "ResNetC5BoxHead",
    "TimmFPNBackbone",
    "build_mask_rcnn",
    "load_backbone_weights",
]
