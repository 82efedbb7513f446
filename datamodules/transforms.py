"""Transforms that timm's ``create_transform`` does not cover.

:class:`StudentTeacherTransform` is the two-view crop of iTPN's CLIP recipe (``itpn_clip/transforms.py`` /
``datasets.py`` of the official code, BEiT-v2's ``DataAugmentationForBEiT``): colour jitter and a horizontal flip
on the image, then ONE random-resized-crop box cut twice: bicubic at the student's size (normalised) and lanczos at
the teacher's size (left in [0, 1]; the teacher normalises it itself).
"""

from __future__ import annotations

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

INTERPOLATIONS = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "lanczos": InterpolationMode.LANCZOS,
    "nearest": InterpolationMode.NEAREST,
}


class StudentTeacherTransform:
    """PIL image -> ``{"image": normalised student view, "teacher_image": [0, 1] teacher view}``, same crop box.

    Args:
        img_size: student resolution.
        teacher_img_size: teacher resolution (224 for CLIP-B/16 and for CLIP-L/14 with a 256-pixel student).
        train: random crop / flip / jitter (train) or resize + centre crop (eval).
        scale: RandomResizedCrop area range (iTPN CLIP recipe: 0.08-1).
        color_jitter: brightness / contrast / saturation jitter (0.4); 0 disables.
        hflip: horizontal flip probability.
        interpolation: student interpolation (bicubic).
        teacher_interpolation: teacher interpolation (lanczos).
        crop_pct: evaluation centre-crop fraction.
        mean: student normalisation mean.
        std: student normalisation std.
    """

    def __init__(
        self,
        img_size: int,
        teacher_img_size: int,
        train: bool = True,
        scale: tuple[float, float] = (0.08, 1.0),
        color_jitter: float = 0.4,
        hflip: float = 0.5,
        interpolation: str = "bicubic",
        teacher_interpolation: str = "lanczos",
        crop_pct: float = 0.875,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.5, 0.5, 0.5),
    ) -> None:
        self.img_size, self.teacher_img_size, self.train = img_size, teacher_img_size, train
        self.scale, self.crop_pct = tuple(scale), crop_pct
        self.jitter = T.ColorJitter(color_jitter, color_jitter, color_jitter) if train and color_jitter > 0 else None
        self.hflip = hflip if train else 0.0
        self.interp = INTERPOLATIONS[interpolation]
        self.teacher_interp = INTERPOLATIONS[teacher_interpolation]
        self.normalize = T.Normalize(mean, std)

    def __call__(self, image: Image.Image) -> dict:
        if self.jitter is not None:
            image = self.jitter(image)
        if self.hflip and torch.rand(()) < self.hflip:
            image = TF.hflip(image)
        if self.train:
            top, left, h, w = T.RandomResizedCrop.get_params(image, self.scale, (3 / 4, 4 / 3))
        else:
            side = min(image.size)
            h = w = round(side * self.crop_pct)
            top, left = (image.size[1] - h) // 2, (image.size[0] - w) // 2
        student = TF.resized_crop(image, top, left, h, w, [self.img_size] * 2, self.interp)
        teacher = TF.resized_crop(image, top, left, h, w, [self.teacher_img_size] * 2, self.teacher_interp)
        return {"image": self.normalize(TF.to_tensor(student)), "teacher_image": TF.to_tensor(teacher)}
