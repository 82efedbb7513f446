"""Toy COCO: scenes of 1-3 polygonal shapes, written in the COCO 2017 instances layout and JSON format.

Layout written (the one :mod:`datamodules.coco` reads)::

    <root>/train2017/<image_id:012d>.jpg
    <root>/val2017/<image_id:012d>.jpg
    <root>/annotations/instances_train2017.json
    <root>/annotations/instances_val2017.json

Each JSON holds ``images`` (id, file_name, width, height), ``categories`` (id, name, supercategory) and
``annotations`` (id, image_id, category_id, bbox ``[x, y, w, h]``, area, iscrowd 0, segmentation as one polygon
``[[x1, y1, x2, y2, ...]]``). Category ids are NOT contiguous (:data:`CATEGORY_IDS`: 1, 2, 3, 5, ...), as in real COCO,
so a reader must map them to labels rather than use them as indices.

The category is the shape kind. Every shape is a polygon whose vertices are known exactly (the circle is a 24-gon),
and it is painted by sampling pixel centres ``(x + 0.5, y + 0.5)`` inside that polygon, the rule pycocotools'
rasteriser follows, so the annotation's mask matches the painted pixels up to isolated boundary pixels (IoU >= 0.94
for every shape from 64 px images up) and the JPEG's edge blur (kept small: full-resolution chroma, quality 95).
Vertices are kept off pixel-centre rows and columns, and the diamond is turned 5 degrees off the pixel diagonals,
because an edge running exactly through a line of pixel centres is a tie that rasterisers break differently (a whole
row of pixels in or out). Shapes never overlap (a centre-distance test with a gap), so every polygon is also the
visible extent of its object. Images are ``img_size`` wide and ``img_size`` or ``3/4 img_size`` high (drawn per
image), as real COCO images vary in aspect. Each image comes from its own seeded generator: the dataset is a pure
function of the options. Write it through :func:`ensure_toy_coco` (the suite's ``ensure_written``: complete or
absent, never half-written).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.toy import ensure_written
from datamodules.toy.shapes import _polygon, _texture

# (shape, sides, first vertex angle in degrees): a square is a 4-gon with a vertex at 45 degrees (axis-aligned),
# a diamond one with a vertex at 5 degrees (see the module docstring); the circle is approximated by a 24-gon
COCO_SHAPES: tuple[tuple[str, int, float], ...] = (
    ("square", 4, 45.0),
    ("triangle", 3, -90.0),
    ("diamond", 4, 5.0),
    ("hexagon", 6, 0.0),
    ("circle", 24, 0.0),
    ("pentagon", 5, -90.0),
)
# category id of each shape above, with gaps like COCO's (whose 80 ids run 1..90)
CATEGORY_IDS: tuple[int, ...] = (1, 2, 3, 5, 7, 8)
SPLIT_OFFSETS = {"train": 0, "val": 5_000_011}
# image ids: unique across splits, as in COCO (where the file name is the zero-padded id)
IMAGE_ID_OFFSETS = {"train": 1, "val": 900_001}


def polygon_mask(points: list[tuple[float, float]], height: int, width: int) -> np.ndarray:
    """``[height, width]`` bool: pixels whose centre ``(x + 0.5, y + 0.5)`` lies inside the polygon (even-odd rule)."""
    ys = np.arange(height, dtype=np.float64)[:, None] + 0.5
    xs = np.arange(width, dtype=np.float64)[None, :] + 0.5
    inside = np.zeros((height, width), dtype=bool)
    for (x1, y1), (x2, y2) in zip(points, points[1:] + points[:1], strict=True):
        if y1 == y2:  # a horizontal edge is never crossed by a horizontal ray
            continue
        crosses = (y1 > ys) != (y2 > ys)  # [H, 1]: the edge spans this row's centre
        x_at_row = x1 + (ys - y1) * (x2 - x1) / (y2 - y1)  # [H, 1]
        inside ^= crosses & (xs < x_at_row)
    return inside


def _off_centre(coordinate: float) -> float:
    """``coordinate`` rounded to 2 decimals (COCO's JSON precision), moved off pixel centres (``k + 0.5``).

    A vertex or a horizontal edge exactly on a row of pixel centres is a tie that rasterisers break differently
    (a whole row of pixels in or out); 0.05 px away, every rasteriser that samples pixel centres agrees.
    """
    value = round(coordinate, 2)
    if abs(value - np.floor(value) - 0.5) < 0.05:
        value = round(value + 0.1, 2)
    return float(value)


def _place(rng: np.random.Generator, height: int, width: int, count: int) -> list[tuple[float, float, float]]:
    """Up to ``count`` non-overlapping (cx, cy, r) discs fully inside the image (rejection sampling, bounded)."""
    side = min(height, width)
    placed: list[tuple[float, float, float]] = []
    for _ in range(count):
        for _attempt in range(50):
            r = rng.uniform(0.12, 0.22) * side
            cx = rng.uniform(r + 1, width - r - 1)
            cy = rng.uniform(r + 1, height - r - 1)
            if all(np.hypot(cx - ox, cy - oy) > r + o_r + 2 for ox, oy, o_r in placed):
                placed.append((cx, cy, r))
                break
    return placed


def render_coco_scene(seed: int, num_classes: int, img_size: int) -> tuple[Image.Image, list[dict]]:
    """One scene and its objects; a pure function of the arguments.

    Returns the RGB image and one dict per object: ``class_index`` (into :data:`COCO_SHAPES`), ``polygon`` (the
    vertices, rounded to 2 decimals as in COCO's JSON), ``mask`` (``[H, W]`` bool, exactly the pixels painted)
    and ``colour``.
    """
    rng = np.random.default_rng(seed)
    width = img_size
    height = img_size if rng.random() < 0.5 else (3 * img_size) // 4
    background = _texture(rng, img_size)[:height, :width]
    bg_mean = background.reshape(-1, 3).mean(0)
    pixels = background.copy()
    objects = []
    for cx, cy, r in _place(rng, height, width, int(rng.integers(1, 4))):
        class_index = int(rng.integers(0, num_classes))
        _, sides, start = COCO_SHAPES[class_index]
        points = [(_off_centre(x), _off_centre(y)) for x, y in _polygon(cx, cy, r, sides, start)]
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - bg_mean).sum() < 150:  # keep the shape visible: push it away from the background
            colour = 255 - bg_mean.astype(np.int64)
        mask = polygon_mask(points, height, width)
        pixels[mask] = colour.astype(np.uint8)
        objects.append({"class_index": class_index, "polygon": points, "mask": mask, "colour": tuple(colour.tolist())})
    return Image.fromarray(pixels), objects


def _annotation(ann_id: int, image_id: int, obj: dict) -> dict:
    """The COCO annotation of one rendered object: bbox tight around the polygon, area = painted pixels."""
    xs = [x for x, _ in obj["polygon"]]
    ys = [y for _, y in obj["polygon"]]
    x0, y0 = min(xs), min(ys)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": CATEGORY_IDS[obj["class_index"]],
        "bbox": [x0, y0, round(max(xs) - x0, 2), round(max(ys) - y0, 2)],
        "area": float(obj["mask"].sum()),
        "iscrowd": 0,
        "segmentation": [[c for point in obj["polygon"] for c in point]],
    }


def write_toy_coco(
    root: str | Path,
    train: int = 200,
    val: int = 50,
    img_size: int = 128,
    num_classes: int = 4,
    seed: int = 0,
) -> dict[str, dict[str, int]]:
    """Write the toy COCO dataset under ``root``; returns ``{split: {"images": n, "annotations": m}}``.

    Args:
        root: output folder (filled in place; :func:`ensure_toy_coco` makes that atomic).
        train: training images (``train2017/``).
        val: validation images (``val2017/``).
        img_size: image width; heights are ``img_size`` or ``3/4 img_size``.
        num_classes: shape categories, the first ``num_classes`` of :data:`COCO_SHAPES`.
        seed: base seed; image ``i`` of a split uses its own generator derived from it.
    """
    if not 2 <= num_classes <= len(COCO_SHAPES):
        raise ValueError(f"toy COCO supports 2..{len(COCO_SHAPES)} classes, got {num_classes}")
    if img_size < 24:
        raise ValueError(f"toy COCO images must be at least 24 px wide (shapes need a few pixels), got {img_size}")
    root = Path(root)
    categories = [
        {"id": CATEGORY_IDS[i], "name": COCO_SHAPES[i][0], "supercategory": "shape"} for i in range(num_classes)
    ]
    report: dict[str, dict[str, int]] = {}
    ann_id = 1
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("val", val)):
        folder = root / f"{split}2017"
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            image_id = IMAGE_ID_OFFSETS[split] + index
            img, objects = render_coco_scene(seed * 10_000_019 + SPLIT_OFFSETS[split] + index, num_classes, img_size)
            file_name = f"{image_id:012d}.jpg"
            img.save(folder / file_name, quality=95, subsampling=0)
            images.append({"id": image_id, "file_name": file_name, "width": img.width, "height": img.height})
            for obj in objects:
                annotations.append(_annotation(ann_id, image_id, obj))
                ann_id += 1
        spec = {
            "info": {"description": "Vision Suite toy COCO (polygonal shapes)", "version": "1.0", "year": 2017},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(spec))
        report[split] = {"images": len(images), "annotations": len(annotations)}
    return report


def ensure_toy_coco(root: str | Path, **options) -> Path:
    """Write the toy COCO dataset at ``root`` once (options as :func:`write_toy_coco`)."""
    return ensure_written(root, write_toy_coco, **options)
