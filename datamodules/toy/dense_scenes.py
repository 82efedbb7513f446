"""Toy dense scenes: multi-object images with per-pixel class maps, for region-level evaluations.

``<root>/{train,val}/images/<index>.png`` (RGB) and ``<root>/{train,val}/labels/<index>.png`` (8-bit, same name):
0 = background, ``1..num_classes`` = the shape class (:data:`DENSE_SHAPES` order: compact shapes first, so that the
first classes can own whole feature-map cells; the thin bar and cross come last). Each image holds
2-4 shapes of different classes, one per quadrant (so objects never overlap and every one is large enough to own
part of a coarse feature grid), in random colours on a textured background: the class is the shape, never the
colour. Each image is drawn from its own seeded generator, so the dataset is a pure function of the options; write
it through :func:`ensure_dense_scenes` (the suite's ``ensure_written``: complete or absent, never half-written).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from datamodules.toy import ensure_written
from datamodules.toy.shapes import _texture, draw_shape

DENSE_SHAPES = ("circle", "square", "hexagon", "diamond", "star", "triangle", "ring", "crescent", "cross", "bar")
SPLIT_OFFSETS = {"train": 0, "val": 3_000_017}


def render_dense_scene(seed: int, num_classes: int, size: int = 64) -> tuple[Image.Image, np.ndarray]:
    """One scene and its ``[size, size]`` uint8 label map; a pure function of the arguments."""
    rng = np.random.default_rng(seed)
    background = _texture(rng, size)
    bg_mean = tuple(int(c) for c in background.reshape(-1, 3).mean(0))
    img = Image.fromarray(background)
    label = Image.new("L", (size, size), 0)
    draw, draw_label = ImageDraw.Draw(img), ImageDraw.Draw(label)
    n = int(rng.integers(2, min(4, num_classes) + 1))
    classes = rng.choice(num_classes, size=n, replace=False)
    quadrants = rng.choice(4, size=n, replace=False)
    half = size / 2
    for cls, quadrant in zip(classes, quadrants, strict=True):
        r = rng.uniform(0.40, 0.48) * half
        cx = (quadrant % 2) * half + rng.uniform(r, half - r)
        cy = (quadrant // 2) * half + rng.uniform(r, half - r)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if np.abs(np.array(colour) - np.array(bg_mean)).sum() < 150:  # keep the shape visible
            colour = tuple(255 - c for c in bg_mean)
        draw_shape(draw, DENSE_SHAPES[cls], cx, cy, r, colour, bg_mean)
        # the same geometry on the label map; the hole of a ring / bite of a crescent is background again
        draw_shape(draw_label, DENSE_SHAPES[cls], cx, cy, r, int(cls) + 1, 0)
    return img, np.asarray(label, dtype=np.uint8)


def write_dense_scenes(
    root: Path, num_classes: int = 4, train: int = 200, val: int = 50, img_size: int = 64, seed: int = 0
) -> None:
    """Write ``root/{train,val}/{images,labels}/<index>.png``."""
    if not 2 <= num_classes <= len(DENSE_SHAPES):
        raise ValueError(f"toy dense scenes support 2..{len(DENSE_SHAPES)} classes, got {num_classes}")
    for split, count in (("train", train), ("val", val)):
        images, labels = Path(root) / split / "images", Path(root) / split / "labels"
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            img, label = render_dense_scene(seed * 10_000_019 + SPLIT_OFFSETS[split] + index, num_classes, img_size)
            img.save(images / f"{index:05d}.png")
            Image.fromarray(label, mode="L").save(labels / f"{index:05d}.png")


def ensure_dense_scenes(root: str | Path, **options) -> Path:
    """Write the toy dense scenes at ``root`` once (options as :func:`write_dense_scenes`)."""
    return ensure_written(root, write_dense_scenes, **options)


class DenseScenesDataset(Dataset):
    """``{"image": [3, S, S] normalised float, "mask": [H, W] long}`` of ``<root>/<split>/{images,labels}``.

    Images are resized to ``img_size`` (bilinear) when given; masks keep the resolution they were written at.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        img_size: int | None = None,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
    ) -> None:
        from suite_base.errors import DataError

        self.images = sorted((Path(root) / split / "images").glob("*.png"))
        if not self.images:
            raise DataError(f"{Path(root) / split / 'images'}: no PNG images (layout <root>/<split>/images/*.png)")
        self.labels = [Path(root) / split / "labels" / p.name for p in self.images]
        missing = [str(p) for p in self.labels if not p.is_file()]
        if missing:
            raise DataError(f"label maps missing for {len(missing)} images, first: {missing[0]}")
        self.img_size = img_size
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        img = Image.open(self.images[index]).convert("RGB")
        if self.img_size is not None and img.size != (self.img_size, self.img_size):
            img = img.resize((self.img_size, self.img_size), Image.BILINEAR)
        image = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mask = torch.from_numpy(np.asarray(Image.open(self.labels[index]), dtype=np.int64))
        return {"image": (image - self.mean) / self.std, "mask": mask}
