"""Image-caption data in the Karpathy-split JSON format (``dataset_coco.json``, ``dataset_flickr30k.json``).

Layout read::

    <root>/<json_name>                       {"images": [{"filename", "filepath"?, "imgid", "split", "sentences"}]}
    <root>/<image_dir>/<filepath>/<filename> the images (COCO: filepath train2014 / val2014; Flickr30K: none)

Splits follow Karpathy & Fei-Fei (2015): ``train`` (COCO adds ``restval``), ``val`` and ``test`` (COCO 5K test
images / 25,010 captions; Flickr30K 1K / 5,000). Training items are (image, one caption) pairs, so an epoch sees every
caption once; evaluation items are images with ALL their captions, flattened by the collate into one caption list
with ``text_image_ids`` (the protocol ranks every test caption against every test image).

With ``dataset: toy`` the toy scenes (:mod:`datamodules.toy.scenes`) are written under ``root`` first, in the same
format, and read by the same code. Captions stay strings here; the model tokenizes them (and counts truncations).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.data import Dataset, default_collate

from datamodules.base import SuiteDataModule
from datamodules.images import load_rgb
from datamodules.toy import ensure_written
from datamodules.toy.scenes import write_toy_scenes
from experiments.errors import CorruptFileError, DataError

JSON_NAMES = {"coco": "dataset_coco.json", "flickr30k": "dataset_flickr30k.json", "toy": "dataset_toy.json"}
IMAGE_DIRS = {"coco": "", "flickr30k": "flickr30k-images", "toy": ""}
SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}


def read_karpathy(json_path: Path, image_root: Path, split: str, check_files: bool = True) -> list[dict]:
    """The entries of ``split`` as ``{"path", "imgid", "captions", "sentids"}``; every problem names its entry."""
    if not json_path.is_file():
        raise DataError(
            f"{json_path} does not exist. Expected the Karpathy split JSON ({', '.join(JSON_NAMES.values())})"
        )
    try:
        spec = json.loads(json_path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{json_path} is not valid JSON ({err}); re-download the Karpathy split file") from err
    if not isinstance(spec, dict) or not isinstance(spec.get("images"), list):
        raise DataError(f"{json_path} has no 'images' list; it is not a Karpathy split file")
    entries, missing = [], []
    for index, image in enumerate(spec["images"]):
        if image.get("split") not in SPLITS[split]:
            continue
        name = image.get("filename")
        where = f"{json_path}: images[{index}] (filename {name!r}, imgid {image.get('imgid')})"
        if not name:
            raise DataError(f"{where} has no 'filename'")
        sentences = image.get("sentences") or []
        raws = [s.get("raw", "").strip() for s in sentences if isinstance(s, dict)]
        if not raws or not all(raws):
            raise DataError(f"{where} has an empty caption list or an empty caption; fix or remove the entry")
        path = image_root / image.get("filepath", "") / name
        if check_files and not path.is_file():
            missing.append(f"{where}: {path}")
        entries.append(
            {
                "path": str(path),
                "imgid": int(image.get("imgid", index)),
                "captions": raws,
                "sentids": [int(s.get("sentid", -1)) for s in sentences],
            }
        )
    if missing:
        raise DataError(
            f"{len(missing)} images of split '{split}' are missing, e.g. {missing[0]}"
            + (f" and {missing[1]}" if len(missing) > 1 else "")
            + ". Point data.image_dir at the image folder or re-extract the images."
        )
    if not entries:
        raise DataError(f"{json_path} has no images in split '{split}' (split values: {SPLITS[split]})")
    return entries


class CaptionPairs(Dataset):
    """Training items: one per (image, caption) pair -> ``{"image", "caption", "image_id", "text_id"}``."""

    def __init__(self, entries: list[dict], transform) -> None:
        self.entries = entries
        self.pairs = [(i, j) for i, e in enumerate(entries) for j in range(len(e["captions"]))]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        i, j = self.pairs[index]
        entry = self.entries[i]
        return {
            "image": self.transform(_load(entry["path"])),
            "caption": entry["captions"][j],
            "image_id": entry["imgid"],
            "text_id": entry["sentids"][j],
        }


class CaptionImages(Dataset):
    """Evaluation items: one per image with all its captions."""

    def __init__(self, entries: list[dict], transform) -> None:
        self.entries, self.transform = entries, transform

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        return {
            "image": self.transform(_load(entry["path"])),
            "captions": entry["captions"],
            "image_id": entry["imgid"],
            "text_ids": entry["sentids"],
        }


def _load(path: str):
    try:
        return load_rgb(path)
    except CorruptFileError as err:
        raise DataError(f"{err}; replace the file or remove its entry from the JSON") from err


def collate_pairs(items: list[dict]) -> dict:
    """Stack images and ids; captions stay a list of strings."""
    return {
        "image": default_collate([it["image"] for it in items]),
        "captions": [it["caption"] for it in items],
        "image_ids": torch.tensor([it["image_id"] for it in items]),
        "text_image_ids": torch.tensor([it["image_id"] for it in items]),
        "text_ids": torch.tensor([it["text_id"] for it in items]),
    }


def collate_images(items: list[dict]) -> dict:
    """Stack images; flatten every image's captions into one list with the image id of each caption."""
    return {
        "image": default_collate([it["image"] for it in items]),
        "image_ids": torch.tensor([it["image_id"] for it in items]),
        "captions": [c for it in items for c in it["captions"]],
        "text_image_ids": torch.tensor([it["image_id"] for it in items for _ in it["captions"]]),
        "text_ids": torch.tensor([t for it in items for t in it["text_ids"]]),
    }


class CaptionsDataModule(SuiteDataModule):
    """COCO / Flickr30K (Karpathy splits) or the toy scenes, for image-text retrieval.

    Args:
        root: folder holding the JSON (and the images under ``image_dir``).
        dataset: ``coco``, ``flickr30k`` or ``toy`` (written under ``root`` first).
        json_name: the split file name (default per dataset).
        image_dir: image folder under ``root`` (default: ``""`` for COCO, whose JSON names ``train2014/`` or
            ``val2014/`` per image, and ``flickr30k-images`` for Flickr30K).
        batch_size: per-device batch size (training pairs, evaluation images).
        num_workers: loader workers per device.
        img_size: image resolution.
        scale: RandomResizedCrop area range of training images.
        hflip: horizontal flip probability (0 by default: captions say "left of").
        mean: normalisation mean.
        std: normalisation std.
        pin_memory: pin host memory.
        persistent_workers: keep workers between epochs.
        seed: seed of the toy data.
        toy_train: toy training images.
        toy_eval: toy val and test images each.
        toy_img_size: side of the toy images.
    """

    def __init__(
        self,
        root: str = "data/coco",
        dataset: Literal["coco", "flickr30k", "toy"] = "coco",
        json_name: str | None = None,
        image_dir: str | None = None,
        batch_size: int = 128,
        num_workers: int = 8,
        img_size: int = 224,
        scale: tuple[float, float] = (0.5, 1.0),
        hflip: float = 0.0,
        mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
        std: tuple[float, float, float] = IMAGENET_DEFAULT_STD,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
        toy_train: int = 600,
        toy_eval: int = 100,
        toy_img_size: int = 64,
    ) -> None:
        super().__init__(root, dataset, batch_size, num_workers, pin_memory, persistent_workers, "raise", seed)
        self.json_path = Path(root) / (json_name or JSON_NAMES[dataset])
        self.image_root = Path(root) / (IMAGE_DIRS[dataset] if image_dir is None else image_dir)
        self.img_size = img_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.train_transform = create_transform(
            img_size, is_training=True, scale=tuple(scale), hflip=hflip, color_jitter=0.0, auto_augment=None,
            interpolation="bicubic", mean=self.mean, std=self.std,
        )  # fmt: skip
        self.eval_transform = create_transform(
            img_size, is_training=False, crop_pct=1.0, interpolation="bicubic", mean=self.mean, std=self.std
        )
        self.toy_options = dict(train=toy_train, val=toy_eval, test=toy_eval, img_size=toy_img_size, seed=seed)

    def prepare_data(self) -> None:
        if self.dataset == "toy":
            ensure_written(self.root, write_toy_scenes, **self.toy_options)

    def entries(self, split: str) -> list[dict]:
        return read_karpathy(self.json_path, self.image_root, split)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.train_set = CaptionPairs(self.entries("train"), self.train_transform)
        if stage in ("fit", "validate"):
            self.val_set = CaptionImages(self.entries("val"), self.eval_transform)
        if stage in ("test", "predict"):
            self.test_set = CaptionImages(self.entries("test"), self.eval_transform)

    def synthetic_batch(self, batch_size: int) -> dict:
        """A random training batch of this data's shapes (benchmarks)."""
        return {
            "image": torch.randn(batch_size, 3, self.img_size, self.img_size),
            "captions": ["a small red circle left of a large blue square"] * batch_size,
            "image_ids": torch.arange(batch_size),
            "text_image_ids": torch.arange(batch_size),
            "text_ids": torch.arange(batch_size),
        }

    def train_dataloader(self):
        return self.loader(self.train_set, train=True, drop_last=True, collate_fn=collate_pairs)

    def val_dataloader(self):
        return self.loader(self.val_set, train=False, collate_fn=collate_images)

    def test_dataloader(self):
        return self.loader(self.test_set, train=False, collate_fn=collate_images)
