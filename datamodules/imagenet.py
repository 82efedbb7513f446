"""ImageNet-style classification data: ``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG``.

Transforms are timm's ``create_transform`` (the DeiT recipe: RandomResizedCrop, RandAugment, colour jitter,
random erasing; eval: resize to ``size / crop_pct`` then centre crop). Repeated augmentation (Hoffer et al. 2020,
used by DeiT) is timm's ``RepeatAugSampler``. Limited-data settings: ``class_subset`` (N classes, or explicit
names; the paper's ImageNet-100 / ImageNet-10 style subsets) and ``subset_fraction`` (a fraction of each class's
images). With ``dataset: toy`` a toy dataset of shapes is written under ``root`` first (see
:mod:`datamodules.toy.shapes`), in the same layout, and read by the same code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import DistributedSampler

from datamodules.base import SuiteDataModule, require_root
from datamodules.images import ImageFolderDataset, list_classes, select_classes
from datamodules.toy import ensure_written
from datamodules.toy.shapes import write_shapes_imagefolder
from datamodules.transforms import BYOLTwoViewTransform, StudentTeacherTransform
from suite_base.errors import ConfigError, DataError

LAYOUT = "<root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG (one folder per class, same names in both)"


class DistributedRepeatAugSampler(RepeatAugSampler, DistributedSampler):
    """timm's ``RepeatAugSampler``, typed as a ``DistributedSampler`` so Lightning keeps it instead of wrapping it.

    Its behaviour is entirely timm's (it shards by ``rank`` / ``num_replicas`` itself and has ``set_epoch``);
    the second base only tells Lightning's ``use_distributed_sampler`` logic that sharding is already done.
    """


class ImageNetDataModule(SuiteDataModule):
    """ImageNet (or any folder-per-class image dataset) for classification.

    Args:
        root: dataset root holding ``train/`` and ``val/`` (and ``test/`` for the toy set).
        dataset: ``imagenet`` reads ``root`` as is; ``toy`` writes the toy shapes dataset there first.
        batch_size: per-device batch size.
        num_workers: loader workers per device.
        img_size: training / evaluation resolution.
        train_split: folder of the training images.
        val_split: folder of the validation images.
        test_split: folder used by ``test`` (ImageNet reports on ``val``).
        auto_augment: timm auto-augment policy (DeiT: ``rand-m9-mstd0.5-inc1``); None disables.
        color_jitter: colour jitter strength (timm ignores it when an auto-augment policy is set).
        interpolation: resize interpolation.
        hflip: horizontal flip probability.
        scale: RandomResizedCrop area range.
        re_prob: random erasing probability.
        re_mode: random erasing fill (``pixel``: per-pixel normal noise).
        re_count: random erasing boxes per image.
        crop_pct: evaluation centre-crop fraction (0.875 = resize 256, crop 224).
        std_aug: the paper's "base" setting: RandomResizedCrop + flip only (no RandAugment / erasing).
        repeated_aug: repeated augmentation sampler (3 augmented copies of each image per epoch, sharded).
        repeated_aug_repeats: copies per image.
        subset_fraction: fraction of each class's training images to use (deterministic with ``seed``).
        class_subset: number of classes (evenly spaced over the sorted class list) or a list of class names.
        on_corrupt: ``raise`` or ``skip`` undecodable images.
        drop_last: drop the last incomplete training batch (mixup needs even batches).
        pin_memory: pin host memory.
        persistent_workers: keep workers between epochs.
        seed: seed of subsets and of the toy dataset.
        mean: normalisation mean.
        std: normalisation std.
        toy_num_classes: toy dataset classes (shapes).
        toy_train_per_class: toy training images per class.
        toy_eval_per_class: toy val and test images per class.
        toy_img_size: side of the toy JPEGs.
        teacher_img_size: also return a ``teacher_image`` view (same crop box, [0, 1], this size) for distillation
            targets (iTPN / MVP CLIP recipe; then the train augmentation is colour jitter + flip + crop only).
        teacher_interpolation: resize filter of the teacher view (the official CLIP recipe: lanczos).
        train_transform: ``default`` (the options above) or ``byol``: BYOL's two asymmetric views
            (:class:`~datamodules.transforms.BYOLTwoViewTransform`, ``scale`` / ``interpolation`` / ``mean`` / ``std``
            apply) as ``views [B, 2, 3, H, W]``; evaluation batches then carry ``views`` and the centre crop ``image``.
    """

    def __init__(
        self,
        root: str = "data/imagenet",
        dataset: Literal["imagenet", "toy"] = "imagenet",
        batch_size: int = 64,
        num_workers: int = 8,
        img_size: int = 224,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        auto_augment: str | None = "rand-m9-mstd0.5-inc1",
        color_jitter: float = 0.4,
        interpolation: str = "bicubic",
        hflip: float = 0.5,
        scale: tuple[float, float] = (0.08, 1.0),
        re_prob: float = 0.25,
        re_mode: str = "pixel",
        re_count: int = 1,
        crop_pct: float = 0.875,
        std_aug: bool = False,
        repeated_aug: bool = True,
        repeated_aug_repeats: int = 3,
        subset_fraction: float = 1.0,
        class_subset: int | list[str] | None = None,
        on_corrupt: Literal["raise", "skip"] = "raise",
        drop_last: bool = True,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
        mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
        std: tuple[float, float, float] = IMAGENET_DEFAULT_STD,
        toy_num_classes: int = 10,
        toy_train_per_class: int = 300,
        toy_eval_per_class: int = 60,
        toy_img_size: int = 64,
        teacher_img_size: int | None = None,
        teacher_interpolation: str = "lanczos",
        train_transform: Literal["default", "byol"] = "default",
    ) -> None:
        super().__init__(root, dataset, batch_size, num_workers, pin_memory, persistent_workers, on_corrupt, seed)
        self.img_size = img_size
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.train_transform = create_transform(
            img_size,
            is_training=True,
            scale=tuple(scale),
            hflip=hflip,
            auto_augment=None if std_aug else auto_augment,
            color_jitter=0.0 if std_aug else color_jitter,
            interpolation=interpolation,
            re_prob=0.0 if std_aug else re_prob,
            re_mode=re_mode,
            re_count=re_count,
            mean=tuple(mean),
            std=tuple(std),
        )
        self.eval_transform = create_transform(
            img_size,
            is_training=False,
            interpolation=interpolation,
            crop_pct=crop_pct,
            mean=tuple(mean),
            std=tuple(std),
        )
        self.teacher_img_size = teacher_img_size
        if teacher_img_size is not None:
            views = dict(
                img_size=img_size,
                teacher_img_size=teacher_img_size,
                interpolation=interpolation,
                teacher_interpolation=teacher_interpolation,
                crop_pct=crop_pct,
                mean=tuple(mean),
                std=tuple(std),
            )
            jitter = 0.0 if std_aug else color_jitter
            self.train_transform = StudentTeacherTransform(
                train=True, scale=tuple(scale), color_jitter=jitter, hflip=hflip, **views
            )
            self.eval_transform = StudentTeacherTransform(train=False, **views)
        if train_transform not in ("default", "byol"):
            raise ConfigError(f"data.init_args.train_transform must be default or byol, got {train_transform!r}")
        self.two_views = train_transform == "byol"
        if self.two_views:
            if teacher_img_size is not None:
                raise ConfigError("data.init_args.train_transform byol and teacher_img_size cannot be combined")
            views = dict(img_size=img_size, scale=tuple(scale), interpolation=interpolation, mean=mean, std=std)
            self.train_transform = BYOLTwoViewTransform(**views)
            self.eval_transform = BYOLTwoViewTransform(**views, image_transform=self.eval_transform)
        self.mean, self.std = tuple(mean), tuple(std)
        self.repeated_aug = repeated_aug
        self.repeated_aug_repeats = repeated_aug_repeats
        self.subset_fraction = subset_fraction
        self.class_subset = class_subset
        self.drop_last = drop_last
        self.toy_options = dict(
            num_classes=toy_num_classes,
            train_per_class=toy_train_per_class,
            eval_per_class=toy_eval_per_class,
            img_size=toy_img_size,
            seed=seed,
        )
        self.classes: list[str] | None = None
        if dataset == "imagenet":
            self.check_layout()

    def check_layout(self) -> None:
        """Cheap checks before a long job: the root and its split folders exist."""
        root = require_root(self.root, LAYOUT)
        for split in dict.fromkeys(self.splits.values()):
            if not (root / split).is_dir():
                raise DataError(f"data.root '{root}' has no '{split}/' folder. Expected layout: {LAYOUT}")

    def synthetic_batch(self, batch_size: int) -> dict:
        """A random batch of this data's shapes (for benchmarks that leave data loading out)."""
        num_classes = self.toy_options["num_classes"] if self.dataset == "toy" else 1000
        if self.class_subset is not None:
            num_classes = self.class_subset if isinstance(self.class_subset, int) else len(self.class_subset)
        batch = {
            "image": torch.randn(batch_size, 3, self.img_size, self.img_size),
            "target": torch.randint(0, num_classes, (batch_size,)),
        }
        if self.teacher_img_size is not None:
            batch["teacher_image"] = torch.rand(batch_size, 3, self.teacher_img_size, self.teacher_img_size)
        if self.two_views:
            batch["views"] = torch.randn(batch_size, 2, 3, self.img_size, self.img_size)
        return batch

    def check_dataset(self, decode: bool = True) -> tuple[dict, list[str]]:
        """Validate the tree without training: per-split class and image counts, and every problem found (missing
        or empty class folders, files that do not decode), each naming its path. Returns (summary, problems)."""
        from datamodules.images import IMAGE_EXTENSIONS, load_rgb

        root, summary, problems = Path(self.root), {}, []
        try:
            self.check_layout()
            train_classes = list_classes(root / self.splits["train"], LAYOUT)
        except DataError as err:
            return summary, [str(err)]
        for split in dict.fromkeys(self.splits.values()):
            counts = {}
            for name in train_classes:
                folder = root / split / name
                if not folder.is_dir():
                    problems.append(f"{folder}: class folder missing (it exists in {self.splits['train']}/)")
                    continue
                files = sorted(p for p in folder.iterdir() if p.name.lower().endswith(IMAGE_EXTENSIONS))
                if not files:
                    problems.append(f"{folder}: no images")
                counts[name] = len(files)
                if decode:
                    for file in files:
                        try:
                            load_rgb(file)
                        except DataError as err:
                            problems.append(str(err).split(". Replace")[0])
            extra = sorted({p.name for p in (root / split).iterdir() if p.is_dir()} - set(train_classes))
            problems += [f"{root / split / name}: class folder not in {self.splits['train']}/" for name in extra]
            summary[split] = {"classes": len(counts), "images": sum(counts.values())}
        return summary, problems

    def prepare_data(self) -> None:
        if self.dataset == "toy":
            ensure_written(self.root, write_shapes_imagefolder, **self.toy_options)

    @property
    def num_classes(self) -> int:
        if self.classes is None:
            self.classes = select_classes(
                list_classes(Path(self.root) / self.splits["train"], LAYOUT), self.class_subset
            )
        return len(self.classes)

    def _dataset(self, stage: str, train: bool) -> ImageFolderDataset:
        _ = self.num_classes  # resolves self.classes
        return ImageFolderDataset(
            Path(self.root) / self.splits[stage],
            self.classes,
            transform=self.train_transform if train else self.eval_transform,
            subset_fraction=self.subset_fraction if train else 1.0,
            seed=self.seed,
            on_corrupt=self.on_corrupt,
            layout_hint=LAYOUT,
            item_seed=None if train else self.seed,  # evaluation's random views (BYOL's): one per sample
        )

    def setup(self, stage: str) -> None:
        if self.dataset == "toy":
            # the generator ran in prepare_data; a process that skipped it (non-zero local rank) checks here
            self.check_layout()
        if stage == "fit":
            self.train_set = self._dataset("train", train=True)
            self.val_set = self._dataset("val", train=False)
        elif stage == "validate":
            self.val_set = self._dataset("val", train=False)
        elif stage in ("test", "predict"):
            self.test_set = self._dataset("test", train=False)

    def train_dataloader(self):
        sampler = None
        if self.repeated_aug:
            trainer = self.trainer
            world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            sampler = DistributedRepeatAugSampler(
                self.train_set, num_replicas=world, rank=rank, shuffle=True, num_repeats=self.repeated_aug_repeats
            )
        return self.loader(self.train_set, train=True, sampler=sampler, drop_last=self.drop_last)

    def val_dataloader(self):
        return self.loader(self.val_set, train=False)

    def test_dataloader(self):
        return self.loader(self.test_set, train=False)

    def predict_dataloader(self):
        return self.loader(self.test_set, train=False)
