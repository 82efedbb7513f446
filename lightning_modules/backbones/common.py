"""What every backbone family registered here shares: timm's pretrained-config defaults for ImageNet models."""

from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


def imagenet_cfg(**overrides) -> dict:
    """A timm ``pretrained_cfg`` for a 1000-class, 224-px ImageNet model (no download url: weights are local files)."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "classifier": "head",
        **overrides,
    }
