"""Video re-ID clip transform: the frames of one clip resized, augmented (flip, pad and crop, random erasing)
and normalised alike, each random decision drawn once per clip, as in the STT / torchreid recipe."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------------------------
# Clip transform


class ClipTransform:
    """Frames of one clip (PIL images) -> ``[T, 3, H, W]`` tensor, every frame transformed alike.

    Training (STT / torchreid recipe): Resize((H, W)), horizontal flip (p 0.5), zero-pad 10 and random crop (H, W),
    ToTensor, ImageNet normalisation, random erasing (p 0.5; area 2-40 %, aspect 0.3-3.33, filled with 0 = the
    ImageNet mean after normalisation). Each random decision (flip, crop offset, erasing box) is drawn once per clip
    from torch's generator and applied to all frames. Evaluation: Resize, ToTensor, normalisation.

    Args:
        height, width: output frame size (256 x 128).
        train: random augmentation or not.
        flip_p: horizontal flip probability.
        pad: zero padding before the random crop (pixels).
        erase_p: random erasing probability.
        erase_scale: erased area range, as a fraction of the frame.
        erase_ratio: erased box aspect ratio range.
        mean, std: normalisation.
    """

    def __init__(self, height: int = 256, width: int = 128, train: bool = True, flip_p: float = 0.5, pad: int = 10,
                 erase_p: float = 0.5, erase_scale: tuple[float, float] = (0.02, 0.4),
                 erase_ratio: tuple[float, float] = (0.3, 3.33), mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:  # fmt: skip
        self.height, self.width, self.train = height, width, train
        self.flip_p, self.pad, self.erase_p = flip_p, pad, erase_p
        self.erase_scale, self.erase_ratio = tuple(erase_scale), tuple(erase_ratio)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def to_tensor(self, frames: Sequence[Image.Image]) -> Tensor:
        size = (self.width, self.height)
        resized = [f if f.size == size else TF.resize(f, [self.height, self.width]) for f in frames]
        return torch.stack([TF.pil_to_tensor(f) for f in resized]).float().div_(255)

    def erase_box(self) -> tuple[int, int, int, int] | None:
        """``(top, left, h, w)`` of the erased box, or None when 10 draws do not fit the frame."""
        area = self.height * self.width
        log_ratio = (math.log(self.erase_ratio[0]), math.log(self.erase_ratio[1]))
        for _ in range(10):
            target = area * float(torch.empty(()).uniform_(*self.erase_scale))
            aspect = math.exp(float(torch.empty(()).uniform_(*log_ratio)))
            h, w = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < h < self.height and 0 < w < self.width:
                top = int(torch.randint(0, self.height - h + 1, ()))
                left = int(torch.randint(0, self.width - w + 1, ()))
                return top, left, h, w
        return None

    def __call__(self, frames: Sequence[Image.Image]) -> Tensor:
        x = self.to_tensor(frames)
        if self.train:
            if float(torch.rand(())) < self.flip_p:
                x = x.flip(-1)
            if self.pad > 0:
                x = F.pad(x, (self.pad,) * 4)
                top = int(torch.randint(0, 2 * self.pad + 1, ()))
                left = int(torch.randint(0, 2 * self.pad + 1, ()))
                x = x[..., top : top + self.height, left : left + self.width]
        x = (x - self.mean) / self.std
        if self.train and float(torch.rand(())) < self.erase_p:
            box = self.erase_box()
            if box is not None:
                top, left, h, w = box
                x[..., top : top + h, left : left + w] = 0
        return x.contiguous()
