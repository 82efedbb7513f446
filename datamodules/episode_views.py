"""Views of few-shot images (the official COSOC code's transforms) for :mod:`datamodules.episodes`: evaluation and
multi-view crops, the contrastive pair, the COS views with their boxes, and the fusion sampling of boxes."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor

from datamodules.toy.fewshot_scenes import random_resized_box


def normalize(mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    return T.Compose([T.ToTensor(), T.Normalize(tuple(mean), tuple(std))])


class EvalView:
    """Validation / test view of the official ``miniImageNet``: ``Resize([92, 92])``, centre crop 84, normalise."""

    def __init__(self, img_size: int, resize: int, mean, std) -> None:
        self.ops = T.Compose([T.Resize((resize, resize)), T.CenterCrop(img_size), normalize(mean, std)])

    def __call__(self, image: Image.Image) -> Tensor:
        return self.ops(image)


class MultiView:
    """SOC's test views (official ``miniImageNet_multi_crop``): ``views`` x (RandomResizedCrop + flip), stacked."""

    def __init__(self, views: int, img_size: int, mean, std) -> None:
        self.views = views
        self.ops = T.Compose([T.RandomResizedCrop(img_size), T.RandomHorizontalFlip(), normalize(mean, std)])

    def __call__(self, image: Image.Image) -> Tensor:
        return torch.stack([self.ops(image) for _ in range(self.views)])


def train_view(img_size: int, mean, std) -> T.Compose:
    """Supervised training view (official ``miniImageNet`` train): RandomResizedCrop + flip."""
    return T.Compose([T.RandomResizedCrop(img_size), T.RandomHorizontalFlip(), normalize(mean, std)])


class ContrastivePair:
    """Two views for Exemplar / MoCo-v2 pre-training (official ``miniImageNet_contra``): colour jitter
    (0.8, 0.8, 0.8, 0.2) with p 0.3, grayscale p 0.2, flip, Gaussian blur (3, sigma 1-2) with p 0.2,
    RandomResizedCrop."""

    def __init__(self, img_size: int, mean, std) -> None:
        self.ops = T.Compose([
            T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.3),
            T.RandomGrayscale(p=0.2),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.GaussianBlur(3, (1.0, 2.0))], p=0.2),
            T.RandomResizedCrop(img_size),
            normalize(mean, std),
        ])  # fmt: skip

    def __call__(self, image: Image.Image) -> dict[str, Tensor]:
        return {"image": self.ops(image), "image_k": self.ops(image)}


class COSViews:
    """COS's views of one image (official ``COS.py``): the whole image resized, then ``crops`` RandomResizedCrops
    (scale 0.08-1), all at ``img_size``, with their boxes ``(top, left, height, width)`` in the image's pixels
    (``-1`` marks the whole image). The crops of image ``index`` are a pure function of ``(seed, index)``."""

    def __init__(self, crops: int, img_size: int, mean, std, seed: int = 0) -> None:
        self.crops, self.img_size, self.seed = crops, img_size, seed
        self.norm = normalize(mean, std)

    def __call__(self, image: Image.Image, index: int) -> dict[str, Tensor]:
        rng = np.random.default_rng([self.seed, index])
        boxes = [(-1, -1, -1, -1)] + [random_resized_box(rng, image.height, image.width) for _ in range(self.crops)]
        size = (self.img_size, self.img_size)
        views = [TF.resize(image, size)] + [TF.resized_crop(image, *b, size) for b in boxes[1:]]
        return {"views": torch.stack([self.norm(v) for v in views]), "boxes": torch.tensor(boxes, dtype=torch.float)}


def enlarge_box(box: Sequence[float], height: int, width: int, ratio: float = 1.2) -> tuple[list[float], float]:
    """COSOC's ``crop_func``: the box ``(top, left, h, w)`` grown ``ratio`` times around its top-left-shifted centre
    and clipped to the image (``-1``: the whole image); returns the box and its area as a fraction of the image."""
    top, left, h, w = (float(v) for v in box)
    if top == -1:
        top, left, h, w = 0.0, 0.0, float(height), float(width)
    else:
        top, left = max(0.0, top - h * (ratio - 1) / 2), max(0.0, left - w * (ratio - 1) / 2)
        h, w = min(ratio * h, height - top), min(ratio * w, width - left)
    return [top, left, h, w], h * w / (height * width)


class FusionSampling:
    """COSOC's fusion sampling (official ``miniImageNet_prob_crop``). With probability ``1 - sum(p)`` a plain
    RandomResizedCrop; otherwise one of the image's COS boxes (box ``k`` with probability ``p_k``), enlarged
    x``enlarge`` and cut out, then RandomResizedCrop with area scale ``(min_scale / area_ratio, 1)`` so the smallest
    crop is still ``min_scale`` of the *image*; then flip and normalise."""

    def __init__(self, img_size: int, mean, std, enlarge: float = 1.2, min_scale: float = 0.08) -> None:
        self.img_size, self.enlarge, self.min_scale = img_size, enlarge, min_scale
        self.plain = T.RandomResizedCrop(img_size)
        self.finish = T.Compose([T.RandomHorizontalFlip(), normalize(mean, std)])

    def __call__(self, image: Image.Image, boxes: Tensor, probs: Tensor) -> Tensor:
        u, cumulative = random.random(), (1 - probs.sum()).item()
        if u < cumulative:
            return self.finish(self.plain(image))
        k = min(int(torch.searchsorted(torch.cumsum(probs, 0) + cumulative, torch.tensor(u), right=True)),
                len(probs) - 1)  # fmt: skip
        (top, left, h, w), area = enlarge_box(boxes[k].tolist(), image.height, image.width, self.enlarge)
        region = TF.crop(image, round(top), round(left), max(1, round(h)), max(1, round(w)))
        low = min(1.0, self.min_scale / max(area, 1e-8))
        return self.finish(T.RandomResizedCrop(self.img_size, scale=(low, 1.0))(region))
