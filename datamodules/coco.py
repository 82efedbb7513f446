"""COCO instances (detection and instance segmentation) in the official 2017 layout, read with pycocotools.

Layout read::

    <root>/train2017/<file_name>                   the images named by the JSON
    <root>/val2017/<file_name>
    <root>/annotations/instances_train2017.json    COCO instances format: images, annotations, categories
    <root>/annotations/instances_val2017.json

Items are ``(image, target)`` in torchvision's detection convention: ``image`` is ``[3, H, W]`` float in [0, 1]
(normalisation is left to the model: torchvision's ``GeneralizedRCNNTransform`` normalises, and would resize
again unless its ``min_size`` / ``max_size`` match the sizes here), ``target`` holds ``boxes`` ``[N, 4]`` float
(x1, y1, x2, y2 in pixels of the returned image), ``labels`` ``[N]`` int64 in ``1..K`` (0 is background),
``masks`` ``[N, H, W]`` uint8 (pycocotools' ``annToMask``), ``image_id`` (COCO's id, an int), ``area`` (COCO's
area, scaled with the image), ``iscrowd`` and ``orig_size`` (``[h, w]`` as on disk, to map predictions back for
COCO evaluation). COCO's category ids have gaps (80 ids in 1..90); they are mapped to contiguous labels in
increasing id order, and the mapping is kept both ways (:attr:`CocoDetection.category_to_label`,
:attr:`CocoDetection.label_to_category`) with the class names.

Cleaning, as Detectron2 and torchvision's references do it, every drop counted in ``dataset.dropped``:

- training targets leave out crowd annotations (``iscrowd: 1``, RLE regions over many objects); evaluation
  targets keep them (COCOeval ignores detections matched to crowd regions).
- boxes are clipped to the image; a box with width or height <= 1 px after clipping is dropped; so is a polygon
  segmentation without any part of >= 3 points (parts with fewer points are removed from one that has others).
- images with no annotation left are dropped from training (``drop_empty``) and kept for evaluation.
- images named in the JSON but absent on disk are an error listing them, or with ``on_missing: skip`` dropped,
  counted and warned about.

Transforms follow the paper pipelines of mmdetection / Detectron2: :class:`ResizeShortest` (short side 800, long
side at most 1333; the toy keeps its written size), :class:`RandomHorizontalFlip` for training, chained by
:class:`Compose`; all act on ``(image, target)`` together so boxes and masks follow the pixels. They live in
:mod:`datamodules.coco_transforms` with the detection collate, and are re-exported here.

With ``dataset: toy`` a toy COCO dataset is written under ``root`` first (:mod:`datamodules.toy.coco_shapes`), in
the same layout and format, and read by the same code.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.base import SuiteDataModule, require_root
from datamodules.coco_transforms import (
    Compose,
    RandomHorizontalFlip,
    ResizeShortest,
    Target,
    collate_detection,
)
from datamodules.images import load_rgb
from datamodules.toy.coco_shapes import CATEGORY_IDS, COCO_SHAPES, ensure_toy_coco
from suite_base.errors import ConfigError, DataError

__all__ = [
    "CocoDataModule",
    "CocoDetection",
    "Compose",
    "LAYOUT",
    "RandomHorizontalFlip",
    "ResizeShortest",
    "Target",
    "YEAR",
    "annotation_file",
    "collate_detection",
    "image_folder",
    "read_categories",
    "read_instances",
]

log = logging.getLogger(__name__)

YEAR = "2017"
LAYOUT = (
    f"<root>/train{YEAR}/*.jpg, <root>/val{YEAR}/*.jpg, <root>/annotations/instances_train{YEAR}.json and "
    f"<root>/annotations/instances_val{YEAR}.json (the COCO instances format)"
)


def annotation_file(root: str | os.PathLike, split: str) -> Path:
    """``<root>/annotations/instances_<split>2017.json``."""
    return Path(root) / "annotations" / f"instances_{split}{YEAR}.json"


def image_folder(root: str | os.PathLike, split: str) -> Path:
    """``<root>/<split>2017``."""
    return Path(root) / f"{split}{YEAR}"


def read_instances(path: Path) -> dict:
    """The parsed instances JSON, with its top-level lists and the fields the reader uses checked."""
    if not path.is_file():
        raise DataError(f"{path}: COCO annotation file not found. Expected layout: {LAYOUT}")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({err}); re-download or re-extract the annotations") from err
    for key in ("images", "annotations", "categories"):
        if not isinstance(spec, dict) or not isinstance(spec.get(key), list):
            raise DataError(f"{path} has no '{key}' list; it is not a COCO instances file (layout: {LAYOUT})")
    if not spec["categories"]:
        raise DataError(f"{path} lists no categories")
    fields = {
        "images": ("id", "file_name", "width", "height"),
        "annotations": ("id", "image_id", "category_id", "bbox"),
    }
    for key, required in fields.items():
        for index, entry in enumerate(spec[key]):
            absent = [field for field in required if field not in entry]
            if absent:
                raise DataError(f"{path}: {key}[{index}] lacks {', '.join(absent)} (entry: {str(entry)[:200]})")
    for index, category in enumerate(spec["categories"]):
        if "id" not in category or "name" not in category:
            raise DataError(f"{path}: categories[{index}] lacks its id or name")
    return spec


def read_categories(path: Path) -> list[dict]:
    """The categories of an instances JSON in increasing id order (the order of the contiguous labels 1..K)."""
    return sorted(read_instances(path)["categories"], key=lambda category: category["id"])


def _valid_polygon_parts(segmentation: list) -> list[list[float]]:
    """The parts of a polygon segmentation with at least 3 points (an even number of >= 6 coordinates)."""
    return [part for part in segmentation if isinstance(part, list) and len(part) >= 6 and len(part) % 2 == 0]


class CocoDetection(Dataset):
    """One split of COCO instances: ``(image [3, H, W] in [0, 1], target)`` per image (see the module docstring).

    Args:
        root: the dataset root (layout in the module docstring).
        split: ``train`` or ``val`` (any ``<split>`` with ``<split>2017/`` and ``instances_<split>2017.json``).
        transforms: callable on ``(image, target)`` returning both (e.g. :class:`Compose`).
        with_masks: also return ``masks`` (instance segmentation); without it segmentations are not checked.
        train: training targets (crowd annotations left out); default ``split == "train"``.
        on_missing: images named in the JSON but missing on disk: ``raise`` lists them; ``skip`` drops them,
            counts them in ``dropped["missing_image_file"]`` and warns.
        drop_empty: leave out images without any usable annotation; default ``train``.
        min_box_size: boxes with a side (after clipping to the image) of at most this many pixels are dropped.

    Attributes:
        coco: the pycocotools ``COCO`` index of the JSON (ground truth for COCOeval).
        category_to_label: COCO category id -> label in ``1..K``.
        label_to_category: label -> COCO category id.
        class_names: category names, index ``label - 1``.
        dropped: reason -> count of what was left out (annotations: ``crowd``, ``degenerate_box``,
            ``polygon_under_3_points``, ``no_segmentation``; polygon parts: ``polygon_part_under_3_points``;
            images: ``missing_image_file``, ``image_without_annotations``).
        missing: file names named by the JSON but missing on disk (with ``on_missing: skip``).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transforms: Callable[[Tensor, Target], tuple[Tensor, Target]] | None = None,
        with_masks: bool = True,
        train: bool | None = None,
        on_missing: Literal["raise", "skip"] = "raise",
        drop_empty: bool | None = None,
        min_box_size: float = 1.0,
    ) -> None:
        if on_missing not in ("raise", "skip"):
            raise ConfigError(f"data.on_missing must be 'raise' or 'skip', got {on_missing!r}")
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.with_masks = with_masks
        self.train = split == "train" if train is None else train
        self.drop_empty = self.train if drop_empty is None else drop_empty
        self.min_box_size = float(min_box_size)
        self.annotation_file = annotation_file(root, split)
        self.image_dir = image_folder(root, split)
        spec = read_instances(self.annotation_file)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            self.coco = COCO()
            self.coco.dataset = spec
            self.coco.createIndex()
        unlisted = sorted(set(self.coco.imgToAnns) - set(self.coco.imgs))
        if unlisted:
            raise DataError(
                f"{self.annotation_file}: annotations refer to {len(unlisted)} image ids missing from 'images', "
                f"e.g. {unlisted[:5]}; the file is inconsistent (re-download the annotations)"
            )
        categories = sorted(spec["categories"], key=lambda category: category["id"])
        self.category_to_label = {int(c["id"]): label for label, c in enumerate(categories, start=1)}
        self.label_to_category = {label: cat_id for cat_id, label in self.category_to_label.items()}
        self.class_names = [str(c["name"]) for c in categories]
        if not self.image_dir.is_dir():
            raise DataError(f"{self.image_dir}: image folder not found. Expected layout: {LAYOUT}")
        on_disk = set(os.listdir(self.image_dir))
        self.dropped: Counter[str] = Counter()
        self.missing: list[str] = []
        self.images: list[dict] = []
        for image_id in sorted(self.coco.imgs):
            info = self.coco.imgs[image_id]
            if info["file_name"] not in on_disk:
                self.missing.append(info["file_name"])
                continue
            annotations = [self._clean(ann, info) for ann in self.coco.imgToAnns.get(image_id, [])]
            annotations = [ann for ann in annotations if ann is not None]
            if not annotations and self.drop_empty:
                self.dropped["image_without_annotations"] += 1
                continue
            self.images.append({**info, "annotations": annotations})
        self._report_missing(len(self.coco.imgs), on_missing)
        if not self.images:
            raise DataError(
                f"{self.annotation_file}: no usable images in split '{split}' "
                f"({len(self.coco.imgs)} listed; left out: {dict(self.dropped) or 'none'})"
            )
        if self.dropped:
            log.info("%s: left out %s", self.annotation_file, dict(self.dropped))

    def _report_missing(self, listed: int, on_missing: str) -> None:
        if not self.missing:
            return
        first = ", ".join(self.missing[:5]) + (", ..." if len(self.missing) > 5 else "")
        message = (
            f"{len(self.missing)} of {listed} images named in {self.annotation_file} are missing from {self.image_dir}"
        )
        if on_missing == "raise":
            raise DataError(
                f"{message}: {first}. Re-extract the images (layout: {LAYOUT}), or set data.on_missing: skip to "
                "leave them out (counted)."
            )
        self.dropped["missing_image_file"] += len(self.missing)
        warnings.warn(f"{message}; skipped (data.on_missing: skip): {first}", stacklevel=3)

    def _clean(self, ann: dict, info: dict) -> dict | None:
        """One annotation as ``{"bbox" xyxy, "label", "area", "iscrowd", "segmentation"}``, or None when dropped."""
        cat_id = int(ann["category_id"])
        if cat_id not in self.category_to_label:
            raise DataError(
                f"{self.annotation_file}: annotation {ann['id']} has category_id {cat_id}, which is not among the "
                f"categories {sorted(self.category_to_label)}"
            )
        iscrowd = int(ann.get("iscrowd", 0))
        if iscrowd and self.train:
            self.dropped["crowd"] += 1
            return None
        bbox = ann["bbox"]
        if not isinstance(bbox, list | tuple) or len(bbox) != 4 or not all(isinstance(v, int | float) for v in bbox):
            raise DataError(f"{self.annotation_file}: annotation {ann['id']} has bbox {bbox!r}, not [x, y, w, h]")
        x, y, w, h = (float(v) for v in bbox)
        x1, y1 = max(x, 0.0), max(y, 0.0)
        x2, y2 = min(x + w, float(info["width"])), min(y + h, float(info["height"]))
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or min(x2 - x1, y2 - y1) <= self.min_box_size:
            self.dropped["degenerate_box"] += 1
            return None
        segmentation = ann.get("segmentation")
        if self.with_masks:
            if not segmentation:
                self.dropped["no_segmentation"] += 1
                return None
            if isinstance(segmentation, list):
                parts = _valid_polygon_parts(segmentation)
                if not parts:
                    self.dropped["polygon_under_3_points"] += 1
                    return None
                if len(parts) < len(segmentation):
                    self.dropped["polygon_part_under_3_points"] += len(segmentation) - len(parts)
                segmentation = parts
        return {
            "bbox": [x1, y1, x2, y2],
            "label": self.category_to_label[cat_id],
            "area": float(ann.get("area", w * h)),
            "iscrowd": iscrowd,
            "segmentation": segmentation,
        }

    @property
    def num_classes(self) -> int:
        """K, the number of categories (labels 1..K; 0 is background)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)

    def annotation_count(self) -> int:
        """Annotations kept over all images of the split."""
        return sum(len(image["annotations"]) for image in self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        record = self.images[index]
        path = self.image_dir / record["file_name"]
        pil = load_rgb(path)
        height, width = int(record["height"]), int(record["width"])
        if pil.size != (width, height):
            raise DataError(
                f"{path} is {pil.width}x{pil.height} px but {self.annotation_file} gives {width}x{height} for "
                f"image {record['id']}; the file and the annotations do not belong together"
            )
        image = torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
        annotations = record["annotations"]
        target: Target = {
            "boxes": torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([a["label"] for a in annotations], dtype=torch.int64),
            "image_id": int(record["id"]),
            "area": torch.tensor([a["area"] for a in annotations], dtype=torch.float32),
            "iscrowd": torch.tensor([a["iscrowd"] for a in annotations], dtype=torch.int64),
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
        }
        if self.with_masks:
            masks = [
                self.coco.annToMask({"image_id": record["id"], "segmentation": a["segmentation"]}) for a in annotations
            ]
            target["masks"] = (
                torch.from_numpy(np.stack(masks)).to(torch.uint8)
                if masks
                else torch.zeros((0, height, width), dtype=torch.uint8)
            )
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


class CocoDataModule(SuiteDataModule):
    """COCO 2017 instances (or the toy COCO) for detection and instance segmentation.

    Batches are ``(list of images, list of targets)`` (:func:`collate_detection`). ``test`` reads val2017: COCO's
    test-dev annotations are not public, and the papers report val2017.

    Args:
        root: dataset root (layout in the module docstring).
        dataset: ``coco`` reads ``root``; ``toy`` writes the toy COCO there first.
        batch_size: images per device per step (Mask R-CNN 1x: 2 per GPU, 16 in all).
        num_workers: loader workers per device.
        train_size: short side of training images; a list draws one per image (multi-scale). Default 800 for
            COCO, ``toy_img_size`` for the toy.
        test_size: short side at which the detector evaluates (800 for COCO, ``toy_img_size`` for the toy). The
            loaders give evaluation images and targets at their original size; the detector resizes the images and
            maps its predictions back (:class:`~lightning_modules.detection.module.DetectionModule`).
        max_size: cap on the long side. Default 1333 for COCO, ``toy_img_size`` for the toy (so the toy images,
            ``toy_img_size`` wide, keep their written size).
        hflip: horizontal flip probability for training.
        with_masks: targets carry instance masks (Mask R-CNN); False for box-only detectors.
        on_missing: ``raise`` on images named in the JSON but missing on disk, or ``skip`` them (counted).
        drop_empty: leave training images without usable annotations out (evaluation keeps every image).
        pin_memory: pin host memory.
        persistent_workers: keep workers between epochs.
        seed: seed of the toy dataset.
        toy_train: toy training images.
        toy_val: toy validation images.
        toy_img_size: width of the toy images (height: the same or 3/4 of it).
        toy_num_classes: toy categories (shape kinds).
    """

    def __init__(
        self,
        root: str = "data/coco",
        dataset: Literal["coco", "toy"] = "coco",
        batch_size: int = 2,
        num_workers: int = 4,
        train_size: int | list[int] | None = None,
        test_size: int | None = None,
        max_size: int | None = None,
        hflip: float = 0.5,
        with_masks: bool = True,
        on_missing: Literal["raise", "skip"] = "raise",
        drop_empty: bool = True,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
        toy_train: int = 200,
        toy_val: int = 50,
        toy_img_size: int = 128,
        toy_num_classes: int = 4,
    ) -> None:
        if dataset not in ("coco", "toy"):
            raise ConfigError(f"data.init_args.dataset must be coco or toy, got {dataset!r}")
        if on_missing not in ("raise", "skip"):
            raise ConfigError(f"data.init_args.on_missing must be raise or skip, got {on_missing!r}")
        super().__init__(root, dataset, batch_size, num_workers, pin_memory, persistent_workers, "raise", seed)
        default_short, default_max = (toy_img_size, toy_img_size) if dataset == "toy" else (800, 1333)
        self.train_size = default_short if train_size is None else train_size
        self.test_size = default_short if test_size is None else test_size
        self.max_size = default_max if max_size is None else max_size
        self.train_transforms = Compose([ResizeShortest(self.train_size, self.max_size), RandomHorizontalFlip(hflip)])
        # evaluation images stay at their original size: the detector resizes them to test_size / max_size and maps
        # its boxes and masks back, so predictions meet the ground truth in COCO's frame (DetectionModule)
        self.eval_transforms = Compose([])
        self.with_masks = with_masks
        self.on_missing = on_missing
        self.drop_empty = drop_empty
        self.toy_options = dict(
            train=toy_train, val=toy_val, img_size=toy_img_size, num_classes=toy_num_classes, seed=seed
        )
        self._categories: list[dict] | None = None
        if dataset == "coco":
            self.check_layout()

    def check_layout(self) -> None:
        """Cheap checks before a long job: the root, the image folders and the annotation files exist."""
        root = require_root(self.root, LAYOUT)
        for split in ("train", "val"):
            if not annotation_file(root, split).is_file():
                raise DataError(
                    f"{annotation_file(root, split)}: COCO annotation file not found. Expected layout: {LAYOUT}"
                )
            if not image_folder(root, split).is_dir():
                raise DataError(f"{image_folder(root, split)}: image folder not found. Expected layout: {LAYOUT}")

    def prepare_data(self) -> None:
        if self.dataset == "toy":
            ensure_toy_coco(self.root, **self.toy_options)

    def _dataset(self, split: str, train: bool) -> CocoDetection:
        return CocoDetection(
            self.root,
            split,
            transforms=self.train_transforms if train else self.eval_transforms,
            with_masks=self.with_masks,
            train=train,
            on_missing=self.on_missing,
            drop_empty=self.drop_empty if train else False,
        )

    def setup(self, stage: str) -> None:
        if self.dataset == "toy":
            # the generator ran in prepare_data; a process that skipped it (non-zero local rank) checks here
            self.check_layout()
        if stage == "fit":
            self.train_set = self._dataset("train", train=True)
        if stage in ("fit", "validate"):
            self.val_set = self._dataset("val", train=False)
        if stage in ("test", "predict"):
            self.test_set = self._dataset("val", train=False)

    @property
    def categories(self) -> list[dict]:
        """The categories in label order (labels 1..K): from the set-up data, else the val JSON, else (toy not yet
        written) the toy's own list."""
        if self._categories is None:
            for name in ("train_set", "val_set", "test_set"):
                data = getattr(self, name, None)
                if data is not None:
                    self._categories = [
                        {"id": data.label_to_category[label], "name": data.class_names[label - 1]}
                        for label in range(1, data.num_classes + 1)
                    ]
                    break
            else:
                val_json = annotation_file(self.root, "val")
                if self.dataset == "toy" and not val_json.is_file():
                    count = self.toy_options["num_classes"]
                    self._categories = [{"id": CATEGORY_IDS[i], "name": COCO_SHAPES[i][0]} for i in range(count)]
                else:
                    self._categories = read_categories(val_json)
        return self._categories

    @property
    def num_classes(self) -> int:
        """K, the categories without the background (a torchvision detector takes ``K + 1``)."""
        return len(self.categories)

    @property
    def class_names(self) -> list[str]:
        """Category names, index ``label - 1``."""
        return [str(category["name"]) for category in self.categories]

    @property
    def label_to_category(self) -> dict[int, int]:
        """Label in ``1..K`` -> COCO category id (to write predictions in COCO's result format)."""
        return {label: int(category["id"]) for label, category in enumerate(self.categories, start=1)}

    def synthetic_batch(self, batch_size: int) -> tuple[list[Tensor], list[Target]]:
        """A random training batch of this data's shapes (benchmarks): 4:3 images at the training size, 3 objects
        each."""
        short = max(self.train_size) if isinstance(self.train_size, list | tuple) else int(self.train_size)
        height, width = ResizeShortest(short, self.max_size).output_size(3 * short, 4 * short, short)
        images, targets = [], []
        for index in range(batch_size):
            xy = torch.rand(3, 2) * torch.tensor([width / 2, height / 2])
            wh = (torch.rand(3, 2) * 0.4 + 0.1) * torch.tensor([width, height])
            boxes = torch.cat([xy, xy + wh], dim=1)
            target: Target = {
                "boxes": boxes,
                "labels": torch.randint(1, self.num_classes + 1, (3,)),
                "image_id": index,
                "area": wh.prod(dim=1),
                "iscrowd": torch.zeros(3, dtype=torch.int64),
                "orig_size": torch.tensor([height, width]),
            }
            if self.with_masks:
                masks = torch.zeros(3, height, width, dtype=torch.uint8)
                for k, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
                    masks[k, y1:y2, x1:x2] = 1
                target["masks"] = masks
            images.append(torch.rand(3, height, width))
            targets.append(target)
        return images, targets

    def check_dataset(self, decode: bool = True) -> tuple[dict, list[str]]:
        """Validate both splits without training: images, annotations kept and left out (by reason), and problems
        (missing or unreadable files, malformed JSON, images whose size differs from the JSON), each naming its
        path. Returns (summary, problems)."""
        summary, problems = {}, []
        try:
            self.check_layout()
        except DataError as err:
            return summary, [str(err)]
        for split in ("train", "val"):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    data = CocoDetection(self.root, split, with_masks=self.with_masks, train=False, on_missing="skip")
            except DataError as err:
                problems.append(str(err))
                continue
            problems += [
                f"{data.image_dir / name}: named in {data.annotation_file} but missing" for name in data.missing
            ]
            summary[split] = {
                "images": len(data),
                "annotations": data.annotation_count(),
                "categories": data.num_classes,
            }
            summary[split].update({f"left out ({reason})": count for reason, count in sorted(data.dropped.items())})
            if decode:
                for record in data.images:
                    path = data.image_dir / record["file_name"]
                    try:
                        size = load_rgb(path).size
                    except DataError as err:
                        problems.append(str(err).split(". Replace")[0])
                        continue
                    if size != (record["width"], record["height"]):
                        problems.append(
                            f"{path}: {size[0]}x{size[1]} px, the JSON says {record['width']}x{record['height']}"
                        )
        return summary, problems

    def train_dataloader(self):
        return self.loader(self.train_set, train=True, collate_fn=collate_detection)

    def val_dataloader(self):
        return self.loader(self.val_set, train=False, collate_fn=collate_detection)

    def test_dataloader(self):
        return self.loader(self.test_set, train=False, collate_fn=collate_detection)

    def predict_dataloader(self):
        return self.loader(self.test_set, train=False, collate_fn=collate_detection)
