"""Toy miniImageNet: small shapes on textured backgrounds, where the background is a shortcut in training only.

Written in miniImageNet's folder layout, ``<root>/{train,val,test}/<class>/<class><8 digits>.jpg`` (as
``n0153282900000005.jpg``), so :class:`datamodules.episodes.FewShotDataModule` reads it with the same code as the real
dataset. The classes are disjoint across splits (8 / 5 / 5 shapes by default, as the 64 / 16 / 20 of miniImageNet).

* **Foreground.** The class is an object: a shape in a typical colour (a hue it shares with one other class of its
  split, jittered per image), as real object classes have typical looks; telling every class apart needs the
  shape. Size (radius ``object_size`` = 26-36 % of the side by default: the object's box covers a quarter to a half
  of the image, as objects in miniImageNet are large) and position are drawn per image. With smaller objects
  (radius 18-28 %) few of SOC's 7 random views show mostly object and COSOC did not beat the cosine baseline, while
  the same baseline backbone reached 58 % on oracle object crops against 31 % on whole images (``docs/cosoc.md``).
* **Background.** Every training class owns ``STYLES_PER_CLASS`` background *styles* (two colours, a stripe period
  and orientation, jittered per image) and draws one of them with probability ``background_correlation``;
  otherwise a style of another training class. The background therefore predicts the class, but it looks
  different across the class's images, while the object is what they all share: the situation COS is built for. In
  ``val`` and ``test`` every image takes a random training style: the backgrounds look as in training but say
  nothing about the class. A model that learned the background shortcut (COSOC's point) transfers badly; one that
  looks at the object does well.

``objects.json`` beside the splits holds each image's object box ``[top, left, height, width]`` (pixels), for
diagnostics only: no training code reads it. Each image comes from its own seeded generator, so the dataset is a
pure function of the options.
"""

from __future__ import annotations

import colorsys
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from datamodules.toy.shapes import _polygon, draw_shape

TRAIN_SHAPES = ("circle", "bar", "cross", "triangle", "ring", "square", "star", "hexagon")
VAL_SHAPES = ("pentagon", "ell", "arrow", "hourglass", "semicircle")
TEST_SHAPES = ("crescent", "diamond", "tee", "frame", "saltire")
SPLIT_SHAPES = {"train": TRAIN_SHAPES, "val": VAL_SHAPES, "test": TEST_SHAPES}
SPLIT_OFFSETS = {"train": 0, "val": 1_000_003, "test": 2_000_003}
STYLES_PER_CLASS = 3


def draw_extra_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour: tuple,
                     bg: tuple) -> None:  # fmt: skip
    """The toy shapes beyond :data:`datamodules.toy.shapes.SHAPES` (novel classes for val and test)."""
    w = 0.3 * r
    if shape == "pentagon":
        draw.polygon(_polygon(cx, cy, r, 5, -90), fill=colour)
    elif shape == "ell":
        draw.rectangle((cx - r, cy - r, cx - r + 2 * w, cy + r), fill=colour)
        draw.rectangle((cx - r, cy + r - 2 * w, cx + r, cy + r), fill=colour)
    elif shape == "arrow":
        draw.rectangle((cx - r, cy - w, cx, cy + w), fill=colour)
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r)], fill=colour)
    elif shape == "hourglass":
        draw.polygon([(cx - r, cy - r), (cx + r, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == "semicircle":
        draw.pieslice((cx - r, cy - r, cx + r, cy + r), 180, 360, fill=colour)
    elif shape == "tee":
        draw.rectangle((cx - r, cy - r, cx + r, cy - r + 2 * w), fill=colour)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
    elif shape == "frame":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
        draw.rectangle((cx - r + 1.6 * w, cy - r + 1.6 * w, cx + r - 1.6 * w, cy + r - 1.6 * w), fill=bg)
    elif shape == "saltire":
        draw.line((cx - r, cy - r, cx + r, cy + r), fill=colour, width=max(1, round(2 * w)))
        draw.line((cx - r, cy + r, cx + r, cy - r), fill=colour, width=max(1, round(2 * w)))
    else:
        draw_shape(draw, shape, cx, cy, r, colour, bg)


def background_styles(seed: int, count: int) -> list[dict]:
    """``count`` background styles: two base colours, a stripe period and angle (deterministic in ``seed``)."""
    rng = np.random.default_rng([seed, 77])
    hues = rng.permutation(count) / count + rng.uniform(0, 1 / count)
    styles = []
    for i in range(count):
        base = np.array([math.cos(2 * math.pi * (hues[i] + k / 3)) for k in range(3)]) * 80 + 128
        styles.append(dict(a=base, b=255 - base, period=rng.uniform(5, 14), angle=rng.uniform(0, math.pi)))
    return styles


def _background(rng: np.random.Generator, style: dict, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    angle = style["angle"] + rng.normal(0, 0.15)
    period = style["period"] * rng.uniform(0.8, 1.25)
    mix = 0.5 + 0.5 * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period + rng.uniform(0, 6))
    a = style["a"] + rng.normal(0, 14, 3)
    b = style["b"] + rng.normal(0, 14, 3)
    img = (1 - mix[..., None] * 0.5) * a + mix[..., None] * 0.5 * b + rng.normal(0, 6, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


# Object hues: classes share hues in pairs (train: 8 classes, 4 hues; val and test: 5 classes, 3 hues), so colour
# alone cannot tell every class apart and the shape has to be seen too.
CLASS_HUES = {
    **dict(zip(TRAIN_SHAPES, (0.0, 0.0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75), strict=True)),
    **dict(zip(VAL_SHAPES, (0.12, 0.12, 0.62, 0.62, 0.37), strict=True)),
    **dict(zip(TEST_SHAPES, (0.12, 0.12, 0.62, 0.62, 0.37), strict=True)),
}


def class_hue(shape: str) -> float:
    """The object hue of a class (:data:`CLASS_HUES`)."""
    return CLASS_HUES[shape]


OBJECT_SIZE = (0.26, 0.36)


def render_scene(shape: str, style: dict, seed: int, size: int,
                 object_size: tuple[float, float] = OBJECT_SIZE) -> tuple[Image.Image, list[int]]:  # fmt: skip
    """One image of ``shape`` on a background of ``style``, and the object's box ``[top, left, height, width]``;
    the radius is drawn in ``object_size`` (fractions of the side)."""
    rng = np.random.default_rng(seed)
    background = _background(rng, style, size)
    img = Image.fromarray(background)
    r = rng.uniform(*object_size) * size
    cx, cy = rng.uniform(r, size - r, size=2)
    bg_mean = background.reshape(-1, 3).mean(0)
    hue = (class_hue(shape) + rng.normal(0, 0.02)) % 1.0
    colour = 255 * np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 0.9), rng.uniform(0.7, 1.0)))
    draw_extra_shape(ImageDraw.Draw(img), shape, cx, cy, r, tuple(int(c) for c in colour),
                     tuple(int(c) for c in bg_mean))  # fmt: skip
    top, left = max(0, round(cy - r)), max(0, round(cx - r))
    return img, [top, left, min(size, round(cy + r)) - top, min(size, round(cx + r)) - left]


def write_fewshot_scenes(root: Path, train_per_class: int = 80, eval_per_class: int = 40, img_size: int = 48,
                         background_correlation: float = 0.9, seed: int = 0,
                         object_size: tuple[float, float] = OBJECT_SIZE) -> None:  # fmt: skip
    """Write the toy few-shot dataset (module docstring) under ``root``."""
    if not 0 <= background_correlation <= 1:
        raise ValueError(f"background_correlation must be in [0, 1], got {background_correlation}")
    if not 0 < object_size[0] <= object_size[1] < 0.5:
        raise ValueError(f"object_size must be 0 < low <= high < 0.5 (radius / side), got {object_size}")
    styles = background_styles(seed, len(TRAIN_SHAPES) * STYLES_PER_CLASS)
    own = STYLES_PER_CLASS
    objects: dict[str, list[int]] = {}
    for split, shapes in SPLIT_SHAPES.items():
        count = train_per_class if split == "train" else eval_per_class
        for label, shape in enumerate(shapes):
            folder = Path(root) / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                image_seed = seed * 10_000_019 + SPLIT_OFFSETS[split] + label * 100_003 + index
                pick = np.random.default_rng([image_seed, 1])
                if split == "train" and pick.random() < background_correlation:
                    style = styles[label * own + pick.integers(own)]
                elif split == "train":  # a style of another class
                    style = styles[(label * own + own + pick.integers(len(styles) - own)) % len(styles)]
                else:
                    style = styles[pick.integers(len(styles))]
                img, box = render_scene(shape, style, image_seed, img_size, tuple(object_size))
                name = f"{shape}{index:08d}.jpg"
                img.save(folder / name, quality=92)
                objects[f"{split}/{shape}/{name}"] = box
    (Path(root) / "objects.json").write_text(json.dumps(objects))


def box_object_share(box: list[float], obj: list[int], size: int) -> float:
    """Fraction of ``box`` (top, left, h, w; ``-1`` = the whole image) covered by the object box ``obj``."""
    top, left, h, w = box if box[0] >= 0 else (0, 0, size, size)
    o_top, o_left, o_h, o_w = obj
    ih = max(0.0, min(top + h, o_top + o_h) - max(top, o_top))
    iw = max(0.0, min(left + w, o_left + o_w) - max(left, o_left))
    return ih * iw / max(h * w, 1e-8)


def random_resized_box(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float] = (0.08, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:  # fmt: skip
    """torchvision's ``RandomResizedCrop.get_params`` (10 tries, then a centre crop), drawn from ``rng``:
    ``(top, left, height, width)``."""
    area = height * width
    log_ratio = np.log(ratio)
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def cos_object_share(cos: dict, root: str | Path, size: int, seed: int = 0) -> dict[str, float]:
    """How much of the crops COS keeps is object, on the toy scenes (``objects.json``): the mean share of the top-1
    and of all kept boxes, against RandomResizedCrop boxes (5 per image) as the reference."""
    objects = json.loads((Path(root) / "objects.json").read_text())
    rng = np.random.default_rng(seed)
    kept, top1, rand = [], [], []
    for path, boxes in zip(cos["paths"], cos["boxes"].tolist(), strict=True):
        obj = objects[path]
        shares = [box_object_share(b, obj, size) for b in boxes]
        kept += shares
        top1.append(shares[0])
        rand += [box_object_share(list(random_resized_box(rng, size, size)), obj, size) for _ in range(5)]
    return {"top1": float(np.mean(top1)), "kept": float(np.mean(kept)), "random": float(np.mean(rand))}
