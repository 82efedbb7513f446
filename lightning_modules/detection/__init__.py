"""Downstream COCO detection and instance segmentation: torchvision Mask R-CNN on the suite's backbones."""

from lightning_modules.detection.backbones import (
    BackboneKind,
    PretrainedReport,
    PyramidBackbone,
    ResNetC4Backbone,
    ResNetC5BoxHead,
    TimmFPNBackbone,
    build_mask_rcnn,
    detection_backbone,
    load_backbone_weights,
    mask_rcnn,
)
from lightning_modules.detection.module import DetectionModule, coco_results, draw_detections

__all__ = [
    "BackboneKind",
    "DetectionModule",
    "coco_results",
    "draw_detections",
    "PretrainedReport",
    "PyramidBackbone",
    "ResNetC4Backbone",
    "ResNetC5BoxHead",
    "TimmFPNBackbone",
    "build_mask_rcnn",
    "detection_backbone",
    "load_backbone_weights",
    "mask_rcnn",
]
