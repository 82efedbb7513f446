"""Toy ImageNet: small JPEGs of coloured shapes on textured backgrounds, in ImageNet's folder layout.

``<root>/{train,val,test}/<class>/<class>_<index>.JPEG``. The class is the shape (circle, square, triangle ...);
shape colour, background texture and colours, position and size are drawn at random for every image,
independently of the class, so the task is learnable from shape but not from colour. Each image is drawn from
its own seeded generator, so the dataset is a pure function of the options (byte-identical across runs).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "bar", "cross", "triangle", "ring", "square", "star", "hexagon", "crescent", "diamond")
SPLIT_OFFSETS = {"train": 0, "val": 1_000_003, "test": 2_000_003}


def _polygon(cx: float, cy: float, radius: float, sides: int, start_deg: float) -> list[tuple[float, float]]:
    angles = np.deg2rad(start_deg + np.arange(sides) * 360.0 / sides)
    return list(zip((cx + radius * np.cos(angles)).tolist(), (cy + radius * np.sin(angles)).tolist(), strict=True))


def _star(cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    angles = np.deg2rad(-90 + np.arange(10) * 36.0)
    radii = np.where(np.arange(10) % 2 == 0, radius, radius * 0.42)
    return list(zip((cx + radii * np.cos(angles)).tolist(), (cy + radii * np.sin(angles)).tolist(), strict=True))


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour: tuple, bg: tuple) -> None:
    """Draw one filled ``shape`` of radius ``r`` centred at (cx, cy)."""
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle((cx - 0.8 * r, cy - 0.8 * r, cx + 0.8 * r, cy + 0.8 * r), fill=colour)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3, -90), fill=colour)
    elif shape == "diamond":
        draw.polygon(_polygon(cx, cy, r, 4, 0), fill=colour)
    elif shape == "cross":
        w = 0.32 * r
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
    elif shape == "star":
        draw.polygon(_star(cx, cy, r), fill=colour)
    elif shape == "ring":
        draw.ellipse(box, fill=colour)
        draw.ellipse((cx - 0.5 * r, cy - 0.5 * r, cx + 0.5 * r, cy + 0.5 * r), fill=bg)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, 0), fill=colour)
    elif shape == "crescent":
        draw.ellipse(box, fill=colour)
        draw.ellipse((cx - 0.4 * r, cy - r, cx + 1.6 * r, cy + r), fill=bg)
    elif shape == "bar":
        draw.rectangle((cx - r, cy - 0.3 * r, cx + r, cy + 0.3 * r), fill=colour)
    else:
        raise ValueError(f"unknown toy shape {shape!r}; known: {SHAPES}")


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random background: two colours mixed by stripes or a checkerboard, plus pixel noise. ``[H, W, 3]`` uint8."""
    a, b = rng.integers(0, 256, size=(2, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    period = rng.uniform(4, 16)
    theta = rng.uniform(0, math.pi)
    if rng.random() < 0.5:
        mix = 0.5 + 0.5 * np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period)
    else:
        mix = ((xx // int(period) + yy // int(period)) % 2).astype(np.float64)
    mix = mix[..., None] * rng.uniform(0.1, 0.35)
    img = (1 - mix) * a + mix * b + rng.normal(0, 8, size=(size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def render(shape: str, seed: int, size: int) -> Image.Image:
    """One toy image of ``shape``; a pure function of (shape, seed, size)."""
    rng = np.random.default_rng(seed)
    background = _texture(rng, size)
    img = Image.fromarray(background)
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.24, 0.38) * size
    cx, cy = rng.uniform(r, size - r, size=2)
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    # keep the shape visible: push its colour away from the mean background colour
    bg_mean = background.reshape(-1, 3).mean(0)
    if np.abs(np.array(colour) - bg_mean).sum() < 150:
        colour = tuple(int(255 - c) for c in bg_mean)
    draw_shape(draw, shape, cx, cy, r, colour, tuple(int(c) for c in bg_mean))
    return img


def write_shapes_imagefolder(
    root: Path,
    num_classes: int = 10,
    train_per_class: int = 300,
    eval_per_class: int = 60,
    img_size: int = 64,
    seed: int = 0,
) -> None:
    """Write ``train`` / ``val`` / ``test`` ImageNet-style folders of ``num_classes`` shape classes as JPEGs."""
    if not 2 <= num_classes <= len(SHAPES):
        raise ValueError(f"toy shapes support 2..{len(SHAPES)} classes, got {num_classes}")
    counts = {"train": train_per_class, "val": eval_per_class, "test": eval_per_class}
    for split, count in counts.items():
        for label, shape in enumerate(SHAPES[:num_classes]):
            folder = Path(root) / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                image_seed = seed * 10_000_019 + SPLIT_OFFSETS[split] + label * 100_003 + index
                render(shape, image_seed, img_size).save(folder / f"{shape}_{index:05d}.JPEG", quality=90)
