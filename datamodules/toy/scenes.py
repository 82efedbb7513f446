"""Toy captioned scenes in the Karpathy-split JSON format (``dataset_toy.json`` + an image folder).

Each 64 px image holds 1-3 shapes (circle, square, triangle, star, cross) in distinct colours (red, green, blue,
yellow, purple, white) and sizes (small, large) at distinct places, on a textured background. Each image gets five
captions in varied words that describe the objects and, for two or more, where they are relative to each other
("a small red circle left of a large blue square", "there is a blue square to the right of a red circle", ...).
Because every scene mixes the same vocabulary, retrieval is only solvable by binding each colour and size to its
shape and the shapes to their places: exactly the fine-grained alignment LOUPE's region-phrase losses target.

The JSON follows ``dataset_coco.json``: ``{"dataset": "toy", "images": [{"filepath", "filename", "imgid", "split",
"sentids", "sentences": [{"raw", "tokens", "imgid", "sentid"}, ...]}, ...]}``. Generation is a pure function of the
options (per-image seeded generators).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from datamodules.toy.shapes import _texture, draw_shape

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 50, 200),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
SPLIT_OFFSETS = {"train": 0, "val": 5_000_011, "test": 9_000_019}
RELATIONS = {  # (dx sign, dy sign) of the second object relative to the first -> phrases
    "left": ["left of", "to the left of", "on the left of"],
    "right": ["right of", "to the right of", "on the right of"],
    "above": ["above", "over"],
    "below": ["below", "under", "beneath"],
}


def _phrase(obj: dict, rng: np.random.Generator) -> str:
    size = obj["size"] + " " if rng.random() < 0.6 else ""  # every colour and size word takes "a"
    return f"a {size}{obj['colour']} {obj['shape']}"


def _relation(a: dict, b: dict) -> str:
    """Where ``a`` is relative to ``b`` (the dominant axis)."""
    dx, dy = a["x"] - b["x"], a["y"] - b["y"]
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "above" if dy < 0 else "below"


def captions(objects: list[dict], rng: np.random.Generator, count: int = 5) -> list[str]:
    """``count`` varied captions of a scene."""
    out = []
    for k in range(count):
        order = list(rng.permutation(len(objects)))
        objs = [objects[i] for i in order]
        if len(objs) == 1:
            templates = ["{a}", "{a} on a patterned background", "there is {a}", "a picture of {a}", "{a} alone"]
            out.append(templates[k % len(templates)].format(a=_phrase(objs[0], rng)))
            continue
        a, b = objs[0], objs[1]
        rel = rng.choice(RELATIONS[_relation(a, b)])
        pair = f"{_phrase(a, rng)} {rel} {_phrase(b, rng)}"
        if len(objs) == 3:
            c = objs[2]
            pair = rng.choice([f"{pair} and {_phrase(c, rng)}", f"{pair}, with {_phrase(c, rng)} nearby"])
        prefix = rng.choice(["", "there is ", "a scene with ", "an image of "])
        out.append(prefix + pair)
    return out


def render_scene(seed: int, size: int = 64) -> tuple[Image.Image, list[dict]]:
    """One scene: the image and its objects (shape, colour, size word, centre)."""
    rng = np.random.default_rng(seed)
    # a dim, low-contrast texture, so that every object colour stands out
    img = Image.fromarray((_texture(rng, size) * 0.3 + 70).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    n = int(rng.integers(1, 4))
    colours = rng.choice(list(COLOURS), size=n, replace=False)
    shapes = rng.choice(SHAPES, size=n, replace=True)
    cells = rng.choice(9, size=n, replace=False)  # a 3x3 grid keeps objects apart
    objects = []
    for colour, shape, cell in zip(colours, shapes, cells, strict=True):
        big = rng.random() < 0.5
        r = size * (0.16 if big else 0.10)
        cx = (cell % 3 + 0.5) * size / 3 + rng.uniform(-0.05, 0.05) * size
        cy = (cell // 3 + 0.5) * size / 3 + rng.uniform(-0.05, 0.05) * size
        draw_shape(draw, str(shape), cx, cy, r, COLOURS[str(colour)], (0, 0, 0))
        objects.append(
            {"shape": str(shape), "colour": str(colour), "size": "large" if big else "small", "x": cx, "y": cy}
        )
    return img, objects


def write_toy_scenes(
    root: Path, train: int = 600, val: int = 100, test: int = 100, img_size: int = 64, seed: int = 0
) -> None:
    """Write ``root/dataset_toy.json`` and ``root/images/*.jpg`` (Karpathy format, five captions per image)."""
    (Path(root) / "images").mkdir(parents=True, exist_ok=True)
    images, sentid = [], 0
    for split, count in (("train", train), ("val", val), ("test", test)):
        for index in range(count):
            image_seed = seed * 10_000_019 + SPLIT_OFFSETS[split] + index
            img, objects = render_scene(image_seed, img_size)
            filename = f"toy_{split}_{index:05d}.jpg"
            img.save(Path(root) / "images" / filename, quality=92)
            imgid = len(images)
            raws = captions(objects, np.random.default_rng(image_seed + 7))
            sentences = []
            for raw in raws:
                sentences.append(
                    {"raw": raw, "tokens": raw.replace(",", " ,").split(), "imgid": imgid, "sentid": sentid}
                )
                sentid += 1
            images.append(
                {"filepath": "images", "filename": filename, "imgid": imgid, "split": split,
                 "sentids": [s["sentid"] for s in sentences], "sentences": sentences, "objects": objects}
            )  # fmt: skip
    (Path(root) / "dataset_toy.json").write_text(json.dumps({"dataset": "toy", "images": images}))
