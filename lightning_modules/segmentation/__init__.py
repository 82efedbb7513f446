"""Semantic segmentation: UPerNet over the suite's multi-scale features (ADE20K transfer)."""

from lightning_modules.segmentation.module import SegmentationModule
from lightning_modules.segmentation.upernet import (
    FCNHead,
    MultiScaleFeatures,
    UPerHead,
    ViTMultiLevelNeck,
    headless_backbone,
)

__all__ = ["SegmentationModule", "UPerHead", "ViTMultiLevelNeck", "FCNHead", "MultiScaleFeatures", "headless_backbone"]
