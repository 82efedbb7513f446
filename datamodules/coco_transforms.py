"""Transforms of COCO detection items (:mod:`datamodules.coco`), acting on ``(image, target)`` together so boxes and
masks follow the pixels, and the detection collate."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from suite_base.errors import ConfigError

Target = dict[str, Tensor | int]


class Compose:
    """Apply ``(image, target) -> (image, target)`` transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Tensor, Target], tuple[Tensor, Target]]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class ResizeShortest:
    """Resize so the short side is ``short``, unless the long side would then exceed ``max_size`` (Detectron2's
    ``ResizeShortestEdge``, mmdetection's ``Resize(scale=(1333, 800), keep_ratio=True)``).

    The scale is ``min(short / min(h, w), max_size / max(h, w))``; output sides are rounded to the nearest pixel
    and boxes are scaled by the exact per-axis ratios (new / old side), areas by their product. The image is
    resampled bilinearly (antialiased when shrinking), masks by nearest neighbour. ``short`` may be a sequence:
    one value is drawn per image (multi-scale training, e.g. Detectron2's 3x schedule's (640, ..., 800)).
    """

    def __init__(self, short: int | Sequence[int] = 800, max_size: int = 1333) -> None:
        self.shorts = [int(short)] if isinstance(short, int | float) else [int(s) for s in short]
        if not self.shorts or min(self.shorts) < 1 or max_size < 1:
            raise ConfigError(f"ResizeShortest needs positive sizes, got short={short!r}, max_size={max_size!r}")
        self.max_size = int(max_size)

    def output_size(self, height: int, width: int, short: int) -> tuple[int, int]:
        """``(new_height, new_width)`` for an image of ``height x width`` and short side ``short``."""
        scale = min(short / min(height, width), self.max_size / max(height, width))
        return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        short = self.shorts[int(torch.randint(len(self.shorts), ()))] if len(self.shorts) > 1 else self.shorts[0]
        height, width = image.shape[-2:]
        new_height, new_width = self.output_size(height, width, short)
        if (new_height, new_width) == (height, width):
            return image, target
        image = F.interpolate(
            image[None], size=(new_height, new_width), mode="bilinear", align_corners=False, antialias=True
        )[0].clamp_(0.0, 1.0)
        target = dict(target)
        sx, sy = new_width / width, new_height / height
        if "boxes" in target:
            target["boxes"] = target["boxes"] * torch.tensor([sx, sy, sx, sy], dtype=target["boxes"].dtype)
        if "area" in target:
            target["area"] = target["area"] * (sx * sy)
        if "masks" in target:
            masks = target["masks"]
            if masks.shape[0]:
                masks = F.interpolate(masks[None].float(), size=(new_height, new_width), mode="nearest")[0]
                target["masks"] = masks.to(torch.uint8)
            else:
                target["masks"] = masks.new_zeros((0, new_height, new_width))
        return image, target

    def __repr__(self) -> str:
        return f"ResizeShortest(short={self.shorts}, max_size={self.max_size})"


class RandomHorizontalFlip:
    """Mirror the image left-right with probability ``p``; boxes become ``(W - x2, y1, W - x1, y2)``, masks flip."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        if self.p <= 0 or float(torch.rand(())) >= self.p:
            return image, target
        width = image.shape[-1]
        target = dict(target)
        if "boxes" in target:
            boxes = target["boxes"]
            target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        return image.flip(-1), target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def collate_detection(batch: Sequence[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """Images of different sizes stay a list (the detector batches them itself), with the list of targets."""
    images, targets = [], []
    for image, target in batch:
        images.append(image)
        targets.append(target)
    return images, targets
