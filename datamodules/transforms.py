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


class BYOLTwoViewTransform:
    """PIL image -> ``{"views": [2, 3, H, W]}``: BYOL's two asymmetric augmentations (Grill et al. 2020, Table 6).

    Both views: RandomResizedCrop (area ``scale``, bicubic), horizontal flip (p 0.5), colour jitter (brightness 0.4,
    contrast 0.4, saturation 0.2, hue 0.1) with p 0.8, grayscale with p 0.2, Gaussian blur (sigma 0.1-2.0, kernel
    about a tenth of the side: 23 px at 224) and solarisation (threshold 0.5); view 1 blurs with p 1.0 and never
    solarises, view 2 blurs with p 0.1 and solarises with p 0.2. Then normalisation.

    Args:
        img_size: side of both views (224; smaller for toy runs).
        scale: RandomResizedCrop area range (0.08-1).
        interpolation: crop resize filter.
        blur_kernel: Gaussian kernel size; None: the odd number nearest ``img_size / 10``.
        mean: normalisation mean.
        std: normalisation std.
        image_transform: if given, also return ``image`` = ``image_transform(img)`` (validation: a centre crop for
            feature metrics beside the two random views).
    """

    def __init__(
        self,
        img_size: int = 224,
        scale: tuple[float, float] = (0.08, 1.0),
        interpolation: str = "bicubic",
        blur_kernel: int | None = None,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        image_transform=None,
    ) -> None:
        kernel = blur_kernel if blur_kernel is not None else 2 * max(1, round(img_size / 20)) + 1
        if kernel % 2 == 0:
            kernel += 1

        def view(blur_p: float, solarize_p: float) -> T.Compose:
            return T.Compose([
                T.RandomResizedCrop(img_size, scale=tuple(scale), interpolation=INTERPOLATIONS[interpolation]),
                T.RandomHorizontalFlip(0.5),
                T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
                T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur_p),
                T.RandomSolarize(128, p=solarize_p),
                T.ToTensor(),
                T.Normalize(mean, std),
            ])  # fmt: skip

        self.view1, self.view2 = view(1.0, 0.0), view(0.1, 0.2)
        self.blur_kernel = kernel
        self.image_transform = image_transform

    def __call__(self, image: Image.Image) -> dict:
        out = {"views": torch.stack([self.view1(image), self.view2(image)])}
        if self.image_transform is not None:
            out["image"] = self.image_transform(image)
        return out
