"""Image-caption data: the Karpathy-split JSON format (retrieval) and the AttnGAN / DF-GAN metadata layout (editing).

**Karpathy JSON** (``dataset_coco.json``, ``dataset_flickr30k.json``; :class:`CaptionsDataModule`). Layout read::

    <root>/<json_name>                       {"images": [{"filename", "filepath"?, "imgid", "split", "sentences"}]}
    <root>/<image_dir>/<filepath>/<filename> the images (COCO: filepath train2014 / val2014; Flickr30K: none)

Splits follow Karpathy & Fei-Fei (2015): ``train`` (COCO adds ``restval``), ``val`` and ``test`` (COCO 5K test
images / 25,010 captions; Flickr30K 1K / 5,000). Training items are (image, one caption) pairs, so an epoch sees every
caption once; evaluation items are images with ALL their captions, flattened by the collate into one caption list
with ``text_image_ids`` (the protocol ranks every test caption against every test image).

With ``dataset: toy`` the toy scenes (:mod:`datamodules.toy.scenes`) are written under ``root`` first, in the same
format, and read by the same code. Captions stay strings here; the model tokenizes them (and counts truncations).

**AttnGAN / DF-GAN layout** (CUB-200-2011 and COCO-2014 as text-to-image and editing work ships them;
:class:`TextEditingDataModule`)::

    <root>/{train,test}/filenames.pickle     image names (CUB: ``002.Laysan_Albatross/Laysan_Albatross_0002_1027``)
    <root>/text/<name>.txt                   captions, one per line (10 per CUB image, 5 per COCO image)
    <root>/captions_DAMSM.pickle             [train_captions, test_captions, ixtoword, wordtoix]: the vocabulary
    <root>/CUB_200_2011/images/<name>.jpg    CUB, cropped around bounding_boxes.txt at 1.5x max(w, h)
    <root>/images/<name>.jpg                 COCO

Captions are tokenised as AttnGAN does (lower-case word characters) into ``wordtoix`` indices, at most 18 words.

This module holds the two DataModules; the readers live in :mod:`datamodules.caption_formats`, the datasets and
collates in :mod:`datamodules.caption_datasets`, and their public names are re-exported here.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

from datamodules.base import SuiteDataModule
from datamodules.caption_datasets import (
    CaptionImages,
    CaptionPairs,
    EditingImages,
    _decode_all,
    collate_editing,
    collate_images,
    collate_pairs,
    crop_around_box,
)
from datamodules.caption_formats import (
    ATTNGAN_IMAGES,
    ATTNGAN_LAYOUT,
    IMAGE_DIRS,
    JSON_NAMES,
    SPLITS,
    attngan_tokens,
    cub_boxes,
    encode_caption,
    read_attngan,
    read_karpathy,
    read_vocabulary,
)
from datamodules.toy import ensure_written
from datamodules.toy.scenes import write_toy_scenes
from suite_base.errors import DataError

__all__ = [
    "ATTNGAN_IMAGES",
    "ATTNGAN_LAYOUT",
    "CaptionImages",
    "CaptionPairs",
    "CaptionsDataModule",
    "EditingImages",
    "IMAGE_DIRS",
    "JSON_NAMES",
    "SPLITS",
    "TextEditingDataModule",
    "attngan_tokens",
    "collate_editing",
    "collate_images",
    "collate_pairs",
    "crop_around_box",
    "cub_boxes",
    "encode_caption",
    "read_attngan",
    "read_karpathy",
    "read_vocabulary",
]


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

    def check_dataset(self, decode: bool = True) -> tuple[dict, list[str]]:
        """Validate the three Karpathy splits without training: images and captions per split; malformed entries,
        missing images and (``decode``) images PIL cannot decode, each naming its path. Returns (summary, problems).
        """
        summary, problems = {}, []
        for split in SPLITS:
            found: list[str] = []
            try:
                entries = read_karpathy(self.json_path, self.image_root, split, problems=found)
            except DataError as err:
                return summary, [str(err)]
            problems += found
            if not entries and not found:
                problems.append(f"{self.json_path} has no images in split '{split}' (split values: {SPLITS[split]})")
            summary[split] = {"images": len(entries), "captions": sum(len(e["captions"]) for e in entries)}
            problems += _decode_all(entries) if decode else []
        return summary, problems

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


# ---- AttnGAN / DF-GAN metadata layout (text-guided image generation and editing: DE-Net) -------------------------


class TextEditingDataModule(SuiteDataModule):
    """CUB-200-2011 / COCO-2014 in the AttnGAN / DF-GAN metadata layout, or the toy edit scenes (same layout).

    Args:
        root: dataset folder (``data/birds``, ``data/coco``; the toy is written there).
        dataset: ``cub`` (images cropped around the bird box at 1.5x), ``coco`` or ``toy``.
        image_dir: image folder under ``root`` (default: ``CUB_200_2011/images``, ``images``, ``images``).
        image_ext: image file extension (default ``.jpg``; the toy's ``.png``).
        image_size: side of the images (256 in DE-Net).
        val_images: training images (drawn with ``seed``) held out as the validation split (DE-Net evaluates on a
            valid and a test split; how it made the valid split is unknown: docs/denet.md).
        max_words: caption words kept (AttnGAN's 18).
        batch_size, num_workers, pin_memory, persistent_workers, seed: loader settings.
        toy_train, toy_test, toy_img_size: the toy's images and side.
    """

    def __init__(
        self,
        root: str = "data/birds",
        dataset: Literal["cub", "coco", "toy"] = "cub",
        image_dir: str | None = None,
        image_ext: str | None = None,
        image_size: int = 256,
        val_images: int = 1000,
        max_words: int = 18,
        batch_size: int = 32,
        num_workers: int = 8,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
        toy_train: int = 400,
        toy_test: int = 100,
        toy_img_size: int = 32,
    ) -> None:
        super().__init__(root, dataset, batch_size, num_workers, pin_memory, persistent_workers, "raise", seed)
        default_dir, default_ext = ATTNGAN_IMAGES[dataset]
        self.image_dir, self.image_ext = image_dir or default_dir, image_ext or default_ext
        self.image_size, self.val_images, self.max_words = image_size, val_images, max_words
        self.toy_options = dict(train=toy_train, test=toy_test, img_size=toy_img_size, seed=seed)
        from torchvision import transforms as T

        norm = [T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
        self.train_transform = T.Compose([
            T.Resize(int(image_size * 76 / 64)), T.RandomCrop(image_size), T.RandomHorizontalFlip(), *norm,
        ])  # fmt: skip
        self.eval_transform = T.Compose([T.Resize(image_size), T.CenterCrop(image_size), *norm])

    def prepare_data(self) -> None:
        if self.dataset == "toy":
            from datamodules.toy.edit_scenes import write_toy_edit_scenes

            ensure_written(self.root, write_toy_edit_scenes, **self.toy_options)

    @property
    def wordtoix(self) -> dict[str, int]:
        if not hasattr(self, "_wordtoix"):
            self._wordtoix = read_vocabulary(Path(self.root))
        return self._wordtoix

    @property
    def vocab_size(self) -> int:
        return max(self.wordtoix.values()) + 1

    def entries(self, split: str) -> list[dict]:
        root = Path(self.root)
        if split == "test":
            return read_attngan(root, "test", self.image_dir, self.image_ext)
        entries = read_attngan(root, "train", self.image_dir, self.image_ext)
        if not 0 <= self.val_images < len(entries):
            raise DataError(f"data.val_images is {self.val_images} but the training split has {len(entries)} "
                            "images; hold out fewer")  # fmt: skip
        held = set(random.Random(self.seed).sample(range(len(entries)), self.val_images))
        return [e for i, e in enumerate(entries) if (i in held) == (split == "val")]

    def check_dataset(self, decode: bool = True) -> tuple[dict, list[str]]:
        """Validate the layout without training: images and captions of ``train`` (with the ``val_images`` held out
        of it) and ``test``; the vocabulary; missing caption files and images, captions (and edit targets) with no
        word of the vocabulary, CUB images without a bounding box, and (``decode``) images PIL cannot decode, each
        naming its path. Returns (summary, problems)."""
        summary, problems = {}, []
        root = Path(self.root)
        try:
            wordtoix = self.wordtoix
        except DataError as err:
            problems.append(str(err))
            wordtoix = None
        boxes = None
        if self.dataset == "cub":
            try:
                boxes = cub_boxes(root)
            except DataError as err:
                problems.append(str(err))
        for split in ("train", "test"):
            found: list[str] = []
            try:
                entries = read_attngan(root, split, self.image_dir, self.image_ext, problems=found)
            except DataError as err:
                problems.append(str(err))
                continue
            problems += found
            counts = summary[split] = {"images": len(entries), "captions": sum(len(e["captions"]) for e in entries)}
            if split == "train":
                counts["held out as val"] = self.val_images
                if not 0 <= self.val_images < len(entries):
                    problems.append(f"data.val_images is {self.val_images} but the training split has {len(entries)} "
                                    "images; hold out fewer")  # fmt: skip
            for entry in entries:
                text = root / "text" / f"{entry['name']}.txt"
                lines = [(f"{text} line {k + 1}", c) for k, c in enumerate(entry["captions"])]
                edits = root / "edits" / f"{entry['name']}.txt"
                if edits.is_file():
                    targets = [line.strip() for line in edits.read_text().splitlines() if line.strip()]
                    lines += [(f"{edits} line {k + 1}", c) for k, c in enumerate(targets)]
                for where, caption in lines if wordtoix is not None else []:
                    try:
                        encode_caption(caption, wordtoix, self.max_words, where)
                    except DataError as err:
                        problems.append(str(err))
                if boxes is not None and entry["name"] not in boxes:
                    problems.append(f"{entry['path']}: no box in {root / 'CUB_200_2011' / 'bounding_boxes.txt'}")
            problems += _decode_all(entries) if decode else []
        return summary, problems

    def dataset_for(self, split: str) -> EditingImages:
        boxes = cub_boxes(Path(self.root)) if self.dataset == "cub" else None
        train = split == "train"
        return EditingImages(self.entries(split), self.train_transform if train else self.eval_transform,
                             self.wordtoix, self.max_words, train, self.seed, Path(self.root), boxes)  # fmt: skip

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.train_set = self.dataset_for("train")
        if stage in ("fit", "validate"):
            self.val_set = self.dataset_for("val")
        if stage in ("test", "predict"):
            self.test_set = self.dataset_for("test")

    def train_dataloader(self):
        return self.loader(self.train_set, train=True, drop_last=True, collate_fn=collate_editing)

    def val_dataloader(self):
        return self.loader(self.val_set, train=False, collate_fn=collate_editing)

    def test_dataloader(self):
        return self.loader(self.test_set, train=False, collate_fn=collate_editing)
