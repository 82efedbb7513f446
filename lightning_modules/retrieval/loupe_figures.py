"""LOUPE's figures: images with each noun phrase drawn as the box of the region it aligns to
(:mod:`lightning_modules.retrieval.loupe`)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def draw_phrase_boxes(
    images: Tensor, boxes: Tensor, texts: list[list[str]], captions: list[str], size: int = 192
) -> Tensor:
    """``[N, 3, size + 14 * (P + 1), size]`` panels: each image upscaled with one coloured box per phrase and, below
    it, the caption and the phrases in their box colours."""
    rows = max((len(t) for t in texts), default=0) + 1
    panels = []
    for img, bxs, phrases, caption in zip(images, boxes, texts, captions, strict=True):
        array = (img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        canvas = Image.new("RGB", (size, size + 14 * rows), (255, 255, 255))
        canvas.paste(Image.fromarray(array).resize((size, size), Image.NEAREST), (0, 0))
        draw = ImageDraw.Draw(canvas)
        draw.text((2, size + 1), caption[: size // 6], fill=(0, 0, 0))
        for k, (phrase, box) in enumerate(zip(phrases, bxs.tolist(), strict=False)):
            colour = PALETTE[k % len(PALETTE)]
            cx, cy, w, h = (v * size for v in box)
            draw.rectangle([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], outline=colour, width=2)
            draw.text((2, size + 1 + 14 * (k + 1)), phrase, fill=colour)
        panels.append(torch.from_numpy(np.asarray(canvas)).permute(2, 0, 1).float() / 255)
    return torch.stack(panels)
