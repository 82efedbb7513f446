"""The toy configs' CLIP teacher: written (trained on the toy shapes) before it is built, by the command line layer.

The MIM module loads its teacher like any CLIP checkpoint; at toy scale the checkpoint is a small tower trained once
on the toy shapes (:mod:`datamodules.toy.clip_teacher`). Writing it needs the shapes' loader from the ImageNet
DataModule, which neither the task (``lightning_modules``) nor the toy generators (``datamodules.toy``) may import,
so the toy configs build the teacher through :class:`ToyClipTeacher`, which writes it first::

    teacher:
      class_path: experiments.toy_teacher.ToyClipTeacher
      init_args: {name_or_path: data/toy_clip_teacher, toy_data_root: data/toy_shapes, ...}
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from torch.utils.data import DataLoader

from datamodules.imagenet import ImageNetDataModule
from datamodules.toy import ensure_written
from datamodules.toy.clip_teacher import write_toy_clip_teacher
from lightning_modules.mim.teacher import ClipTeacher, none_if_null


def shapes_train_loader(data_root: str, img_size: int, batch_size: int, seed: int) -> Callable[[], DataLoader]:
    """The toy shapes' training loader the toy teacher is trained with (random crops of scale 0.6-1, flips, CLIP
    normalisation, no other augmentation, single-process, seeded)."""
    dm = ImageNetDataModule(
        root=data_root, dataset="imagenet", batch_size=batch_size, num_workers=0, img_size=img_size, test_split="test",
        auto_augment=None, color_jitter=0.0, scale=(0.6, 1.0), re_prob=0.0, crop_pct=1.0, repeated_aug=False,
        pin_memory=False, persistent_workers=False, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, seed=seed,
    )  # fmt: skip
    dm.setup("fit")
    return dm.train_dataloader


def ensure_toy_clip_teacher(path: str | Path, data_root: str) -> Path:
    """Train the toy teacher on ``data_root``'s shapes and save it at ``path`` unless it is there (once per folder;
    the folder records the generator and ``data_root``, as every toy dataset does)."""
    writer = functools.update_wrapper(
        functools.partial(write_toy_clip_teacher, loaders=shapes_train_loader), write_toy_clip_teacher
    )
    return ensure_written(path, writer, data_root=data_root)


class ToyClipTeacher(ClipTeacher):
    """:class:`~lightning_modules.mim.teacher.ClipTeacher` loaded from the toy teacher at ``name_or_path``, which is
    first trained on the toy shapes under ``toy_data_root`` when it is missing (about 100 s on 2 CPU cores). With
    ``name_or_path`` null it is the random tower of ``config``, and nothing is written."""

    def __init__(
        self,
        name_or_path: str | None = "data/toy_clip_teacher",
        config: dict[str, Any] | None = None,
        teacher_dim: int = 64,
        image_size: int = 64,
        input_scaling: Literal["beit", "clip"] = "clip",
        seed: int = 0,
        toy_data_root: str | None = "data/toy_shapes",
    ) -> None:
        name_or_path, toy_data_root = none_if_null(name_or_path), none_if_null(toy_data_root)
        if name_or_path is not None and toy_data_root is not None:
            ensure_toy_clip_teacher(name_or_path, toy_data_root)
        super().__init__(
            name_or_path=name_or_path,
            config=config,
            teacher_dim=teacher_dim,
            image_size=image_size,
            input_scaling=input_scaling,
            seed=seed,
            toy_data_root=toy_data_root,
        )
