"""Whole-image inference of a segmentation model by overlapping windows (mmseg's ``mode='slide'``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from suite_base.errors import ConfigError

Size = tuple[int, int]


def sliding_window_inference(
    model_fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    num_classes: int,
    crop: Size = (512, 512),
    stride: Size = (341, 341),
    pad_value: float = 0.0,
) -> torch.Tensor:
    """mmseg's ``slide`` inference: ``[B, num_classes, H, W]`` logits of ``image [B, 3, H, W]``.

    Windows of ``crop = (height, width)`` start every ``stride`` pixels; the last row / column of windows is moved back
    to end at the image border, so every pixel is covered. ``model_fn`` runs on each window of the whole batch and
    must return ``[B, num_classes, h, w]`` logits (a lower resolution is resized bilinearly to the window, like mmseg's
    ``encode_decode``); overlapping windows' logits are summed and divided by the per-pixel window count. Where the
    image is smaller than the crop, the window is padded at the bottom / right with ``pad_value`` (0 = the mean colour
    of a normalised image) to the crop size, and the logits of the padding are dropped. The sums are kept in float32
    (or the logits' dtype if wider).
    """
    if image.ndim != 4:
        raise ValueError(
            f"sliding_window_inference expects an image batch [B, 3, H, W], got shape {tuple(image.shape)}"
        )
    batch, _, height, width = image.shape
    (crop_h, crop_w), (stride_h, stride_w) = crop, stride
    if min(crop_h, crop_w, stride_h, stride_w) < 1:
        raise ConfigError(f"sliding window crop {crop} and stride {stride} must be positive")
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    logits = None
    count = torch.zeros(1, 1, height, width, device=image.device)
    for row in range(rows):
        for col in range(cols):
            bottom, right = min(row * stride_h + crop_h, height), min(col * stride_w + crop_w, width)
            top, left = max(bottom - crop_h, 0), max(right - crop_w, 0)
            window = image[:, :, top:bottom, left:right]
            win_h, win_w = window.shape[-2:]
            window = F.pad(window, (0, crop_w - win_w, 0, crop_h - win_h), value=pad_value)
            out = model_fn(window)
            if out.ndim != 4 or out.shape[:2] != (batch, num_classes):
                raise ConfigError(
                    f"model_fn returned logits of shape {tuple(out.shape)} for a window batch of {batch}; "
                    f"expected [{batch}, {num_classes}, h, w] (num_classes = {num_classes})"
                )
            if out.shape[-2:] != (crop_h, crop_w):
                out = F.interpolate(out, size=(crop_h, crop_w), mode="bilinear", align_corners=False)
            if logits is None:
                dtype = torch.promote_types(out.dtype, torch.float32)
                logits = torch.zeros(batch, num_classes, height, width, dtype=dtype, device=out.device)
            logits[:, :, top:bottom, left:right] += out[:, :, :win_h, :win_w]
            count[:, :, top:bottom, left:right] += 1
    return logits / count.to(logits)
