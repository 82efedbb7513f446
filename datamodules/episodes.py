"""Few-shot data: miniImageNet / tieredImageNet / any ImageFolder split, COSOC's views, and a seeded, DDP-aware
N-way K-shot episode sampler.

Layouts (:func:`read_split`):

* **folder** (miniImageNet as COSOC / BF3S ship it, tieredImageNet, any ImageFolder split):
  ``<root>/{train,val,test}/<class>/<image>``.
* **csv** (Ravi & Larochelle's miniImageNet): ``<root>/images/<file>`` plus ``<root>/{train,val,test}.csv`` with a
  ``filename,label`` header.

``layout: auto`` takes ``csv`` when ``<root>/<split>.csv`` exists, else ``folder``.

COSOC's views (the official code's transforms) live in :mod:`datamodules.episode_views` and are re-exported here.

Episodes
--------

An episode draws ``n_way`` classes and, from each, ``k_shot + n_query`` distinct images. Its indices are laid out
**support first, then queries, each class-major**::

    [c0 s0, c0 s1, ..., c0 s(K-1), c1 s0, ..., c(N-1) s(K-1),   c0 q0, ..., c0 q(Q-1), c1 q0, ..., c(N-1) q(Q-1)]

so ``support.view(N, K, ...)`` and ``query.view(N, Q, ...)`` give class x shot grids and the episode label of the
``i``-th support image is ``i // K``. (COSOC's official SOC code had to reorder a shot-major layout; this layout is the
one every consumer here assumes.)

Episode ``e`` is drawn from its own generator seeded with ``(seed, e)``: the same seed gives the same episodes in
any order, on any number of processes. Under DDP rank ``r`` of ``W`` takes episodes ``r, r + W, ...`` (the episode
count is rounded up to a multiple of ``W`` so that every rank runs the same number of steps; the extra episodes are
new draws, not repeats).
"""

from __future__ import annotations

import csv
import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, default_collate

from datamodules.base import SuiteDataModule, distributed_rank
from datamodules.episode_views import (
    ContrastivePair,
    COSViews,
    EvalView,
    FusionSampling,
    MultiView,
    enlarge_box,
    normalize,
    train_view,
)
from datamodules.images import IMAGE_EXTENSIONS, list_classes, load_rgb, log_skipped
from datamodules.toy import ensure_written
from datamodules.toy.fewshot_scenes import OBJECT_SIZE, write_fewshot_scenes
from suite_base.cos import relative_key
from suite_base.errors import ConfigError, CorruptFileError, DataError

__all__ = [
    "COSViews",
    "ContrastivePair",
    "EpisodeSampler",
    "EvalView",
    "FewShotDataModule",
    "FewShotImages",
    "FusionSampling",
    "LAYOUTS",
    "MultiView",
    "check_episodes",
    "collate_episode",
    "detect_layout",
    "enlarge_box",
    "load_cos_file",
    "match_cos_entries",
    "normalize",
    "read_split",
    "train_view",
]

log = logging.getLogger(__name__)


class EpisodeSampler(Sampler[list[int]]):
    """Batch sampler of episodes over a dataset whose item ``i`` has class ``labels[i]``.

    Args:
        labels: class of every item.
        n_way, k_shot, n_query: classes per episode, support and query images per class.
        episodes: episodes per pass (all ranks together).
        seed: seed of the episodes; ``epoch`` (:meth:`set_epoch`) shifts it for training.
        rank, world_size: this process's share (default: read from ``torch.distributed`` when initialised).
    """

    def __init__(self, labels: Sequence[int], n_way: int = 5, k_shot: int = 1, n_query: int = 15,
                 episodes: int = 600, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None) -> None:  # fmt: skip
        rank, world_size = distributed_rank(rank, world_size)
        labels = np.asarray(labels)
        self.classes = np.unique(labels)
        self.by_class = [np.flatnonzero(labels == c) for c in self.classes]
        if n_way > len(self.classes):
            raise DataError(f"{n_way}-way episodes need {n_way} classes; the split has {len(self.classes)}")
        need = k_shot + n_query
        small = [(int(c), len(ix)) for c, ix in zip(self.classes, self.by_class, strict=True) if len(ix) < need]
        if small:
            raise DataError(f"{len(small)} classes have fewer than {need} images (k_shot + n_query), e.g. class "
                            f"{small[0][0]} with {small[0][1]}; lower n_query or drop those classes")  # fmt: skip
        self.n_way, self.k_shot, self.n_query = n_way, k_shot, n_query
        self.seed, self.epoch, self.rank, self.world_size = seed, 0, rank, world_size
        self.total = -(-episodes // world_size) * world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def episode(self, index: int) -> list[int]:
        """The item indices of episode ``index`` (layout in the module docstring)."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        chosen = rng.choice(len(self.classes), self.n_way, replace=False)
        picks = [rng.choice(self.by_class[c], self.k_shot + self.n_query, replace=False) for c in chosen]
        support = [int(i) for p in picks for i in p[: self.k_shot]]
        query = [int(i) for p in picks for i in p[self.k_shot :]]
        return support + query

    def __iter__(self) -> Iterator[list[int]]:
        for index in range(self.rank, self.total, self.world_size):
            yield self.episode(index)

    def __len__(self) -> int:
        return self.total // self.world_size


# ---------------------------------------------------------------------------------------------------------------
# Reading the splits

LAYOUTS = {
    "folder": "<root>/{train,val,test}/<class>/<image>.jpg (miniImageNet folder version, tieredImageNet, ImageFolder)",
    "csv": "<root>/images/<file>.jpg and <root>/{train,val,test}.csv with the header 'filename,label' (Ravi split)",
}
MINI_IMAGENET_MEAN, MINI_IMAGENET_STD = (0.4712, 0.4499, 0.4031), (0.2726, 0.2634, 0.2794)
TIERED_IMAGENET_MEAN, TIERED_IMAGENET_STD = (0.4783, 0.4564, 0.4101), (0.2634, 0.2577, 0.2709)


def detect_layout(root: str | os.PathLike, split: str, layout: str = "auto") -> str:
    if layout not in ("auto", *LAYOUTS):
        raise ConfigError(f"data.layout must be auto, folder or csv, got {layout!r}")
    if layout != "auto":
        return layout
    return "csv" if (Path(root) / f"{split}.csv").is_file() else "folder"


def read_split(root: str | os.PathLike, split: str, layout: str = "auto") -> tuple[list[str], list[str]]:
    """``(image paths, class names)`` of one split, in a fixed order (sorted by class, then file)."""
    root = Path(root)
    layout = detect_layout(root, split, layout)
    if layout == "csv":
        table = root / f"{split}.csv"
        if not table.is_file():
            raise DataError(f"{table} does not exist. Expected layout: {LAYOUTS['csv']}")
        with open(table, newline="") as f:
            rows = list(csv.reader(f))
        if not rows or [c.strip() for c in rows[0][:2]] != ["filename", "label"]:
            raise DataError(f"{table}: the first line must be the header 'filename,label', got {rows[:1]}")
        bad = [i + 2 for i, r in enumerate(rows[1:]) if len(r) < 2]
        if bad:
            raise DataError(f"{table}: line {bad[0]} does not have the two fields filename,label")
        images = root / "images"
        present = {e.name for e in os.scandir(images)} if images.is_dir() else set()
        missing = [r[0] for r in rows[1:] if r[0] not in present]
        if missing:
            raise DataError(
                f"{table} names {len(missing)} images missing from {images}/ (e.g. {missing[0]}); copy them there "
                f"or remove their lines. Expected layout: {LAYOUTS['csv']}"
            )
        pairs = sorted((r[1], r[0]) for r in rows[1:])
        return [str(images / f) for _, f in pairs], [c for c, _ in pairs]
    split_dir = root / split
    classes = list_classes(split_dir, LAYOUTS["folder"])
    paths, names = [], []
    for name in classes:
        files = sorted(e.path for e in os.scandir(split_dir / name) if e.name.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise DataError(f"class folder {split_dir / name} holds no images; add them or remove the folder")
        paths += files
        names += [name] * len(files)
    return paths, names


def check_episodes(labels: Sequence[int], classes: Sequence[str], n_way: int, k_shot: int, n_query: int,
                   where: str) -> None:  # fmt: skip
    """Errors, naming the split and the class, for way/shot/query settings a split cannot serve."""
    if min(n_way, k_shot, n_query) < 1:
        raise ConfigError(f"{where}: n_way, k_shot and n_query must be >= 1, got {n_way}, {k_shot}, {n_query}")
    if n_way > len(classes):
        raise DataError(f"{where}: {n_way}-way episodes need {n_way} classes but the split has {len(classes)}; "
                        "lower n_way or use a split with more classes")  # fmt: skip
    counts = np.bincount(np.asarray(labels), minlength=len(classes))
    short = np.flatnonzero(counts < k_shot + n_query)
    if short.size:
        c = int(short[0])
        raise DataError(
            f"{where}: class '{classes[c]}' has {counts[c]} images, fewer than k_shot + n_query = {k_shot + n_query} "
            f"({short.size} classes are short); lower k_shot/n_query or remove the class"
        )


# ---------------------------------------------------------------------------------------------------------------
# Datasets


class FewShotImages(Dataset):
    """Images of one split with integer labels (in class-name order). Items: ``{"image", "target", "index"}``
    (``image`` from ``transform``: a tensor, a ``[V, 3, H, W]`` stack, or a dict merged into the item).

    ``mode``: ``plain`` applies ``transform(image)``; ``cos`` applies ``transform(image, index)`` (:class:`COSViews`);
    ``fusion`` applies ``transform(image, boxes, probs)`` with this image's entry of ``cos`` (:class:`FusionSampling`).
    """

    def __init__(self, paths: Sequence[str], names: Sequence[str], transform: Callable, mode: str = "plain",
                 cos: dict | None = None, on_corrupt: str = "raise", root: str | None = None) -> None:  # fmt: skip
        self.paths, self.transform, self.mode, self.on_corrupt = list(paths), transform, mode, on_corrupt
        self.classes = sorted(set(names))
        index = {c: i for i, c in enumerate(self.classes)}
        self.labels = [index[n] for n in names]
        self.cos_rows: list[int] | None = None
        if mode == "fusion":
            self.cos = cos
            self.cos_rows = match_cos_entries(cos, self.paths, root)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict | None:
        try:
            image = load_rgb(self.paths[index])
        except CorruptFileError as err:
            if self.on_corrupt == "raise":
                raise
            log_skipped(err)
            return None
        if self.mode == "cos":
            out = self.transform(image, index)
        elif self.mode == "fusion":
            row = self.cos_rows[index]
            out = self.transform(image, self.cos["boxes"][row], self.cos["probs"][row])
        else:
            out = self.transform(image)
        item = dict(out) if isinstance(out, dict) else {"image": out}
        return {**item, "target": self.labels[index], "index": index}


def match_cos_entries(cos: dict | None, paths: Sequence[str], root: str | None) -> list[int]:
    """Row of each training image in a COS file; a clear error if the file does not cover the split."""
    if cos is None:
        raise ConfigError(
            "data.train_mode: fusion needs data.cos_file (written by the COS stage: configs/cosoc/<data>_cos.yaml)"
        )
    where = {k: i for i, k in enumerate(cos["paths"])}
    keys = [relative_key(p, root) for p in paths]
    missing = [k for k in keys if k not in where]
    if missing:
        raise DataError(
            f"the COS file {cos.get('file', '')} has no entry for {len(missing)} of {len(keys)} training images "
            f"(e.g. {missing[0]}); it was written for another dataset or split: rerun the COS stage on this data"
        )
    return [where[k] for k in keys]


def load_cos_file(path: str | os.PathLike) -> dict:
    """Read a COS file (:mod:`lightning_modules.fewshot.cos`) and check its fields."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"COS file {path} does not exist; run the COS stage first "
                        "(python -m experiments predict --config configs/cosoc/<data>_cos.yaml)")  # fmt: skip
    cos = torch.load(path, map_location="cpu", weights_only=True)
    need = {"paths", "boxes", "probs"}
    if not isinstance(cos, dict) or not need <= set(cos):
        raise DataError(f"{path} is not a COS file: it needs the keys {sorted(need)}")
    if len(cos["paths"]) != len(cos["boxes"]) or cos["boxes"].shape[:2] != cos["probs"].shape:
        raise DataError(f"{path}: paths, boxes and probs disagree in length; rerun the COS stage")
    return {**cos, "file": str(path)}


def collate_episode(items: list[dict | None], n_way: int, k_shot: int, n_query: int) -> dict:
    """Stack an episode's items (layout in the module docstring); an undecodable image cannot be skipped."""
    if any(item is None for item in items):
        raise DataError("an episode holds an image that does not decode (logged above); episodes need every image: "
                        "fix or remove the file")  # fmt: skip
    batch = default_collate(items)
    batch.update(n_way=n_way, k_shot=k_shot, n_query=n_query)
    return batch


# ---------------------------------------------------------------------------------------------------------------
# The DataModule


class FewShotDataModule(SuiteDataModule):
    """Few-shot learning data (COSOC's stages, ProtoNet and cosine-classifier baselines).

    Training batches depend on ``train_mode``:

    * ``classes``: ``{"image", "target"}`` over the training classes, RandomResizedCrop + flip (cosine classifier).
    * ``fusion``: the same with COSOC's fusion sampling from ``cos_file`` (:class:`FusionSampling`).
    * ``contrastive``: ``{"image", "image_k", "target"}`` pairs (Exemplar / MoCo-v2 pre-training).
    * ``episodes``: episodes of ``train_way`` x (``train_shot`` + ``train_query``) (ProtoNet).

    ``predict`` serves COS: ``{"views" [B, 1 + cos_crops, 3, S, S], "boxes", "target", "index"}`` over the training
    split. Validation and test are episodes (one per batch) of ``n_way`` x (``k_shot`` + ``n_query``); each image is
    one centre view, or ``eval_views`` random views (SOC) when ``eval_views > 1``.

    Args:
        root: dataset root (layouts in the module docstring).
        dataset: ``miniimagenet``, ``tieredimagenet`` or ``folder`` read ``root``; ``toy`` writes the toy few-shot
            scenes there first (:mod:`datamodules.toy.fewshot_scenes`).
        layout: ``auto``, ``folder`` or ``csv``.
        train_split, val_split, test_split: split names (folders or csv stems).
        img_size: crop side (84).
        resize: evaluation resize before the centre crop (92).
        mean, std: normalisation (None: the dataset's statistics, miniImageNet's for folder and toy).
        train_mode: see above.
        cos_file: the COS stage's output, for ``train_mode: fusion``.
        fusion_enlarge: COS box enlargement (1.2).
        fusion_min_scale: smallest crop area as a fraction of the image (0.08).
        cos_crops: random crops per image for COS (30; plus the whole image).
        n_way, k_shot, n_query: evaluation episodes (5-way, 1 or 5 shot, 15 queries).
        val_episodes: validation episodes (600).
        test_episodes: test episodes (2,000 x 5 runs = 10,000).
        eval_views: views per evaluation image (1: centre crop; 7: SOC).
        train_way, train_shot, train_query, train_episodes: ProtoNet's training episodes per epoch.
        batch_size: images per training step (classes / fusion / contrastive) or COS images per predict step.
        toy_train_per_class, toy_eval_per_class, toy_img_size, toy_background_correlation: the toy dataset.
    """

    def __init__(
        self,
        root: str = "data/miniImageNet",
        dataset: Literal["miniimagenet", "tieredimagenet", "folder", "toy"] = "miniimagenet",
        layout: Literal["auto", "folder", "csv"] = "auto",
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        img_size: int = 84,
        resize: int = 92,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        train_mode: Literal["classes", "fusion", "contrastive", "episodes"] = "classes",
        cos_file: str | None = None,
        fusion_enlarge: float = 1.2,
        fusion_min_scale: float = 0.08,
        cos_crops: int = 30,
        n_way: int = 5,
        k_shot: int = 1,
        n_query: int = 15,
        val_episodes: int = 600,
        test_episodes: int = 10_000,
        eval_views: int = 1,
        train_way: int = 5,
        train_shot: int = 5,
        train_query: int = 15,
        train_episodes: int = 1000,
        batch_size: int = 128,
        num_workers: int = 8,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        on_corrupt: Literal["raise", "skip"] = "raise",
        drop_last: bool = True,
        seed: int = 0,
        toy_train_per_class: int = 80,
        toy_eval_per_class: int = 40,
        toy_img_size: int = 48,
        toy_background_correlation: float = 0.9,
    ) -> None:
        super().__init__(root, dataset, batch_size, num_workers, pin_memory, persistent_workers, on_corrupt, seed)
        if eval_views < 1 or cos_crops < 0:
            raise ConfigError(f"data.eval_views must be >= 1 and data.cos_crops >= 0 (got {eval_views}, {cos_crops})")
        if fusion_enlarge < 1 or not 0 < fusion_min_scale <= 1:
            raise ConfigError(f"data.fusion_enlarge must be >= 1 and fusion_min_scale in (0, 1] "
                              f"(got {fusion_enlarge}, {fusion_min_scale})")  # fmt: skip
        tiered = dataset == "tieredimagenet"
        self.mean = tuple(mean or (TIERED_IMAGENET_MEAN if tiered else MINI_IMAGENET_MEAN))
        self.std = tuple(std or (TIERED_IMAGENET_STD if tiered else MINI_IMAGENET_STD))
        self.layout = layout
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.img_size, self.resize = img_size, resize
        self.train_mode, self.cos_file = train_mode, cos_file
        self.fusion = dict(enlarge=fusion_enlarge, min_scale=fusion_min_scale)
        self.cos_crops = cos_crops
        self.episode_shape = dict(n_way=n_way, k_shot=k_shot, n_query=n_query)
        self.val_episodes, self.test_episodes, self.eval_views = val_episodes, test_episodes, eval_views
        self.train_shape = dict(n_way=train_way, k_shot=train_shot, n_query=train_query)
        self.train_episodes = train_episodes
        self.drop_last = drop_last
        self.toy_options = dict(
            train_per_class=toy_train_per_class,
            eval_per_class=toy_eval_per_class,
            img_size=toy_img_size,
            background_correlation=toy_background_correlation,
            seed=seed,
            object_size=list(OBJECT_SIZE),  # recorded, so that a toy written with other object sizes is not reused
        )
        self.sets: dict[str, FewShotImages] = {}
        if dataset != "toy" and not Path(root).is_dir():
            raise DataError(f"data.root '{root}' does not exist. Expected layout: {LAYOUTS['folder']}, or "
                            f"{LAYOUTS['csv']}. Point --data.root at your copy, or use --data.dataset toy")  # fmt: skip

    def prepare_data(self) -> None:
        if self.dataset == "toy":
            ensure_written(self.root, write_fewshot_scenes, **self.toy_options)

    # -- datasets -------------------------------------------------------------------------------------------------
    def split_dataset(self, stage: str, transform: Callable, mode: str = "plain") -> FewShotImages:
        paths, names = read_split(self.root, self.splits[stage], self.layout)
        cos = load_cos_file(self.cos_file) if mode == "fusion" else None
        return FewShotImages(paths, names, transform, mode, cos, self.on_corrupt, root=self.root)

    def eval_transform(self) -> Callable:
        if self.eval_views > 1:
            return MultiView(self.eval_views, self.img_size, self.mean, self.std)
        return EvalView(self.img_size, self.resize, self.mean, self.std)

    def train_dataset(self) -> FewShotImages:
        if self.train_mode == "fusion":
            return self.split_dataset("train", FusionSampling(self.img_size, self.mean, self.std, **self.fusion),
                                      "fusion")  # fmt: skip
        if self.train_mode == "contrastive":
            return self.split_dataset("train", ContrastivePair(self.img_size, self.mean, self.std))
        return self.split_dataset("train", train_view(self.img_size, self.mean, self.std))

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.sets["train"] = self.train_dataset()
            self.sets["val"] = self.split_dataset("val", self.eval_transform())
        elif stage == "validate":
            self.sets["val"] = self.split_dataset("val", self.eval_transform())
        elif stage == "test":
            self.sets["test"] = self.split_dataset("test", self.eval_transform())
        elif stage == "predict":
            views = COSViews(self.cos_crops, self.img_size, self.mean, self.std, self.seed)
            self.sets["predict"] = self.split_dataset("train", views, "cos")
        for name, data in self.sets.items():
            if name in ("val", "test"):
                check_episodes(data.labels, data.classes, where=f"{self.splits[name]} split of {self.root}",
                               **self.episode_shape)  # fmt: skip
            elif name == "train" and self.train_mode == "episodes":
                check_episodes(data.labels, data.classes, where=f"{self.splits['train']} split of {self.root}",
                               **self.train_shape)  # fmt: skip

    def check_dataset(self, decode: bool = True) -> tuple[dict, list[str]]:
        """``python -m experiments data check``: per-split class and image counts, and every problem found (missing
        or undecodable images, classes too small for the episodes, a COS file that does not cover the training
        split), each naming its file or class."""
        summary, problems = {}, []
        for stage, split in self.splits.items():
            try:
                paths, names = read_split(self.root, split, self.layout)
            except DataError as err:
                problems.append(str(err))
                continue
            classes = sorted(set(names))
            summary[split] = {"classes": len(classes), "images": len(paths)}
            shape = self.train_shape if stage == "train" else self.episode_shape
            if stage != "train" or self.train_mode == "episodes":
                labels = [classes.index(n) for n in names]
                try:
                    check_episodes(labels, classes, where=f"{split} split of {self.root}", **shape)
                except (DataError, ConfigError) as err:
                    problems.append(str(err))
            if stage == "train" and self.train_mode == "fusion":
                try:
                    match_cos_entries(load_cos_file(self.cos_file or ""), paths, self.root)
                except (DataError, ConfigError) as err:
                    problems.append(str(err))
            for path in paths if decode else []:
                try:
                    load_rgb(path)
                except DataError as err:
                    problems.append(str(err).split(". Replace")[0])
        return summary, problems

    @property
    def num_classes(self) -> int:
        """Training classes (the cosine classifier's outputs)."""
        return len(set(read_split(self.root, self.splits["train"], self.layout)[1]))

    # -- loaders --------------------------------------------------------------------------------------------------
    def episode_loader(self, data: FewShotImages, shape: dict, episodes: int, seed: int) -> DataLoader:
        rank, world = self.trainer_rank()
        sampler = EpisodeSampler(data.labels, episodes=episodes, seed=seed, rank=rank, world_size=world, **shape)
        return DataLoader(
            data, batch_sampler=sampler, num_workers=self.num_workers, pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=functools.partial(collate_episode, **shape),
        )  # fmt: skip

    def shard(self, data: Dataset, shuffle: bool) -> DistributedSampler | None:
        """This rank's share under DDP (the configs set ``trainer.use_distributed_sampler: false``, because
        Lightning cannot re-create the episode batch sampler; the image loaders shard here instead)."""
        rank, world = self.trainer_rank()
        if world == 1:
            return None
        return DistributedSampler(data, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.seed)

    def train_dataloader(self) -> DataLoader:
        data = self.sets["train"]
        if self.train_mode == "episodes":
            return self.episode_loader(data, self.train_shape, self.train_episodes, self.seed)
        return self.loader(data, train=True, sampler=self.shard(data, True), drop_last=self.drop_last)

    def val_dataloader(self) -> DataLoader:
        return self.episode_loader(self.sets["val"], self.episode_shape, self.val_episodes, self.seed + 1)

    def test_dataloader(self) -> DataLoader:
        return self.episode_loader(self.sets["test"], self.episode_shape, self.test_episodes, self.seed + 2)

    def predict_dataloader(self) -> DataLoader:
        data = self.sets["predict"]
        return self.loader(data, train=False, sampler=self.shard(data, False))
