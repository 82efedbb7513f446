"""Toy ADE20K: small scenes of labelled "stuff" bands and "thing" shapes, in ADEChallengeData2016's on-disk layout.

``<root>/images/{training,validation}/ADE_{train,val}_<8-digit index from 1>.jpg`` (RGB JPEG) and
``<root>/annotations/{training,validation}/<same stem>.png`` (8-bit single-channel PNG, same size): as in ADE20K,
label 0 is "other / unlabelled" and ``1..num_classes`` are the classes, so the reader's ``reduce_zero_label`` path
(0 -> ignore 255, k -> k - 1) is exercised exactly as on the real data.

Every image is ``img_size`` tall and ``round(img_size * aspect)`` wide (landscape, like most ADE20K photos; one size
for the whole toy so evaluation batches can stack). It is cut into 3-4 horizontal bands with wavy borders, like
sky / wall / floor. One band is left unlabelled (label 0, a low-contrast random texture); each other band is one
"stuff" class, drawn as a class-specific pattern (stripe orientation x smooth or thin-line stripes) in random
colours. On top, a :func:`~datamodules.toy.dense_scenes.render_dense_scene` square (2-4 shapes, one per quadrant) is
placed at a random horizontal offset; its shapes are the "thing" classes. So labels ``1..S`` are stuff classes
(``S = min(8, num_classes // 2)``) and ``S + 1..num_classes`` are shape classes; the class is always the pattern or
the shape, never the colour. Each image is drawn from its own seeded generators, so the dataset is a pure function
of the options; write it through :func:`ensure_toy_ade` (complete or absent, never half-written).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.toy import ensure_written
from datamodules.toy.dense_scenes import DENSE_SHAPES, render_dense_scene
from datamodules.toy.shapes import _texture

SPLITS = {"training": ("train", 0), "validation": ("val", 5_000_011)}
STUFF_PATTERNS = 8  # 4 stripe orientations x (smooth, thin-line) profiles


def toy_ade_classes(num_classes: int) -> tuple[int, int]:
    """``(stuff, shapes)``: how many of the ``num_classes`` labels are stuff patterns and how many shapes."""
    stuff = min(STUFF_PATTERNS, num_classes // 2)
    shapes = num_classes - stuff
    if stuff < 2 or not 2 <= shapes <= len(DENSE_SHAPES):
        raise ValueError(f"toy ADE20K supports 4..{STUFF_PATTERNS + len(DENSE_SHAPES)} classes, got {num_classes}")
    return stuff, shapes


def _stuff_texture(rng: np.random.Generator, pattern: int, height: int, width: int) -> np.ndarray:
    """``[H, W, 3]`` uint8 stripes of ``pattern``: orientation ``pattern % 4`` x 45 degrees, profile smooth (sinusoid)
    for ``pattern < 4`` else thin hard lines; random period, phase and two contrasting random colours."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    theta = (pattern % 4) * math.pi / 4
    period = rng.uniform(6.0, 10.0) * max(height, 32) / 64
    u = (xx * math.cos(theta) + yy * math.sin(theta)) / period + rng.uniform(0, 1)
    if pattern < 4:
        mix = 0.5 + 0.5 * np.sin(2 * math.pi * u)
    else:
        mix = (u % 1.0 < 0.3).astype(np.float64)
    a, b = rng.integers(0, 256, size=(2, 3))
    if np.abs(a - b).sum() < 200:  # keep the pattern visible
        b = 255 - a
    img = (1 - mix[..., None]) * a + mix[..., None] * b + rng.normal(0, 6, size=(height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def render_toy_ade(
    seed: int, num_classes: int, img_size: int = 64, aspect: float = 4 / 3
) -> tuple[Image.Image, np.ndarray]:
    """One toy scene (RGB, ``img_size`` x ``round(img_size * aspect)``) and its uint8 label map in ADE20K's coding
    (0 = unlabelled, ``1..num_classes`` = classes); a pure function of the arguments."""
    stuff, shapes = toy_ade_classes(num_classes)
    height, width = img_size, max(img_size, round(img_size * aspect))
    rng = np.random.default_rng((seed, 1))  # a stream independent of render_dense_scene's (seeded with ``seed``)
    bands = min(int(rng.integers(3, 5)), stuff + 1)
    weights = rng.uniform(0.6, 1.4, size=bands)
    edges = np.cumsum(weights)[:-1] / weights.sum() * height  # the bands-1 inner borders
    yy, xx = np.mgrid[0:height, 0:width]
    band = np.zeros((height, width), dtype=np.int64)
    for edge in edges:  # wavy borders: each pixel's band is the number of borders above it
        amplitude, wavelength = rng.uniform(0, 0.03) * height, rng.uniform(0.5, 1.5) * width
        band += yy >= edge + amplitude * np.sin(2 * math.pi * xx / wavelength + rng.uniform(0, 2 * math.pi))
    unlabelled = int(rng.integers(bands))
    band_classes = iter(rng.choice(stuff, size=bands - 1, replace=False).tolist())
    image = np.zeros((height, width, 3), dtype=np.uint8)
    label = np.zeros((height, width), dtype=np.uint8)
    for index in range(bands):
        where = band == index
        if index == unlabelled:
            image[where] = _texture(rng, max(height, width))[:height, :width][where]
        else:
            pattern = next(band_classes)
            image[where] = _stuff_texture(rng, pattern, height, width)[where]
            label[where] = pattern + 1
    scene, scene_label = render_dense_scene(seed, shapes, height)
    x0 = int(rng.integers(0, width - height + 1))
    things = scene_label > 0
    image[:, x0 : x0 + height][things] = np.asarray(scene)[things]
    label[:, x0 : x0 + height][things] = scene_label[things] + stuff
    return Image.fromarray(image), label


def write_toy_ade(
    root: Path,
    train: int = 200,
    val: int = 50,
    img_size: int = 64,
    num_classes: int = 8,
    seed: int = 0,
    aspect: float = 4 / 3,
) -> None:
    """Write ``train`` + ``val`` scenes under ``root`` in the ADEChallengeData2016 layout (JPEG quality 90 images,
    PNG label maps)."""
    toy_ade_classes(num_classes)  # reject an unsupported class count before writing anything
    for split, count in (("training", train), ("validation", val)):
        prefix, offset = SPLITS[split]
        images, annotations = Path(root) / "images" / split, Path(root) / "annotations" / split
        images.mkdir(parents=True, exist_ok=True)
        annotations.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            img, label = render_toy_ade(seed * 10_000_019 + offset + index, num_classes, img_size, aspect)
            stem = f"ADE_{prefix}_{index + 1:08d}"
            img.save(images / f"{stem}.jpg", quality=90)
            Image.fromarray(label).save(annotations / f"{stem}.png")


def ensure_toy_ade(root: str | Path, **options) -> Path:
    """Write the toy ADE20K at ``root`` once (options as :func:`write_toy_ade`)."""
    return ensure_written(root, write_toy_ade, **options)
