"""Image-text pre-training data in the webdataset tar-shard layout that public corpora ship in.

CC3M, CC12M and LAION, downloaded with img2dataset (``--output_format webdataset``), are numbered tar shards::

    <root>/00000.tar      000000000.jpg  000000000.txt  000000000.json  000000001.jpg  000000001.txt ...
    <root>/00001.tar      000010000.jpg  000010000.txt  ...

One sample is a run of consecutive tar members sharing a key: the member name up to the first dot of its base name
(the webdataset convention), e.g. ``000010000`` for ``000010000.jpg``. ``<key>.jpg`` (also ``.jpeg``, ``.png``,
``.webp``) is the image, ``<key>.txt`` the caption (UTF-8), ``<key>.json`` img2dataset's metadata (ignored here).
Samples lacking an image or a caption (img2dataset writes failed downloads without one) are skipped and counted.

Shards are read with :mod:`tarfile` as streams (``mode="r|*"``, also gzip-compressed ``.tar.gz``): split across
DDP ranks, then across DataLoader workers, so each rank and worker reads its own shards; each worker shuffles its
shards and its samples through a buffer, seeded from ``seed`` and torch's generator (``seed_everything`` fixes it).

An epoch is ``samples_per_epoch`` samples (default: the corpus size, from img2dataset's ``<shard>_stats.json``
``successes`` when every shard has one, else counted from the tar headers). Each worker yields its equal share,
cycling through its shards as webdataset's ``.repeat().with_epoch(n)`` does, so every DDP rank takes the same number
of steps and the learning-rate schedule knows the epoch length.

Batches are exactly :class:`datamodules.captions.CaptionsDataModule`'s training batches (its transforms and
:func:`~datamodules.captions.collate_pairs`): ``image``, ``captions`` (strings; the model tokenizes them),
``image_ids``, ``text_image_ids``, ``text_ids``. A sample's id is ``shard index * 1,000,000 + position in the shard``,
unique over the corpus; every image has one caption, so validation batches use the same format.

With ``dataset: toy`` the toy scenes are written under ``root`` first as shards in this layout
(:mod:`datamodules.toy.image_text_shards`) and read by the same code.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import random
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import IterableDataset, get_worker_info

from datamodules.base import SuiteDataModule, require_root
from datamodules.captions import CaptionsDataModule, collate_pairs
from datamodules.images import load_rgb
from datamodules.toy import ensure_written
from datamodules.toy.image_text_shards import write_toy_shards
from suite_base.errors import ConfigError, CorruptFileError, DataError

log = logging.getLogger(__name__)

LAYOUT = "webdataset tar shards <root>/00000.tar, 00001.tar, ... holding <key>.jpg + <key>.txt per sample (img2dataset)"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
SAMPLE_STRIDE = 1_000_000
BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern: str) -> list[str]:
    """Expand every ``{a..b}`` range (zero-padded to the width of ``a``, as webdataset's braceexpand does)."""
    match = BRACE.search(pattern)
    if match is None:
        return [pattern]
    first, last = match.group(1), match.group(2)
    if int(last) < int(first):
        raise ConfigError(f"shard pattern '{pattern}': the range {match.group(0)} is empty; write {{low..high}}")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [p for n in range(int(first), int(last) + 1) for p in expand_braces(f"{head}{n:0{len(first)}d}{tail}")]


def resolve_shards(root: Path, pattern: str, option: str) -> list[Path]:
    """The shard files matching ``pattern`` (a glob and/or ``{a..b}`` ranges) under ``root``, sorted; a pattern
    matching nothing raises naming the option, the pattern and the folder."""
    found: set[str] = set()
    missing = []
    for name in expand_braces(pattern):
        hits = [h for h in glob.glob(str(root / name)) if Path(h).is_file()]
        found.update(hits)
        if not hits:
            missing.append(name)
    if not found or (missing and BRACE.search(pattern)):
        what = (
            f"no file matches '{pattern}'"
            if not found
            else f"{len(missing)} shards of '{pattern}' are missing (e.g. {missing[0]})"
        )
        raise DataError(
            f"data.{option}: {what} under {root}. Expected layout: {LAYOUT}. Fix data.{option} (a glob like "
            "'*.tar' or a range like '{00000..00009}.tar') or point data.root at the shard folder."
        )
    return sorted(Path(p) for p in found)


def split_shards(shards: list, rank: int, world_size: int, worker: int, num_workers: int) -> list:
    """The shards of one DataLoader worker of one rank: every ``world_size * num_workers``-th, so that the workers
    of all ranks read disjoint shards covering the list."""
    return shards[rank * num_workers + worker :: world_size * num_workers]


def world() -> tuple[int, int]:
    """``(rank, world size)`` of torch.distributed, ``(0, 1)`` when it is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def split_key(name: str) -> tuple[str, str]:
    """``(key, extension)`` of a member name: webdataset's rule, the key ends at the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def count_samples(shard: Path) -> int:
    """Samples of one shard: img2dataset's ``<shard>_stats.json`` ``successes`` if present, else the distinct keys
    holding an image, read from the tar headers."""
    stats = shard.with_name(shard.name.split(".")[0] + "_stats.json")
    if stats.is_file():
        try:
            return int(json.loads(stats.read_text())["successes"])
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{stats}: no integer 'successes' ({err}); delete the file or fix it") from err
    try:
        with tarfile.open(shard, mode="r|*") as tar:
            return len({split_key(m.name)[0] for m in tar if m.isfile() and split_key(m.name)[1] in IMAGE_EXTS})
    except (tarfile.ReadError, EOFError, OSError) as err:
        raise DataError(f"{shard}: not a readable tar shard ({err}). Expected layout: {LAYOUT}") from err


def read_samples(shard: Path) -> Iterator[tuple[str, dict[str, tuple[str, bytes]]]]:
    """Stream ``(key, {extension: (member name, bytes)})`` groups of consecutive members of one shard."""
    key, group = None, {}
    try:
        with tarfile.open(shard, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                member_key, ext = split_key(member.name)
                if member_key != key and group:
                    yield key, group
                    group = {}
                key = member_key
                group[ext] = (member.name, tar.extractfile(member).read())
    except (tarfile.ReadError, EOFError, OSError) as err:
        raise DataError(
            f"{shard}: not a readable tar shard ({err}). Expected layout: {LAYOUT}. Re-download or delete the shard, "
            "or exclude it from the shard pattern."
        ) from err
    if group:
        yield key, group


def image_member(group: dict[str, tuple[str, bytes]]) -> tuple[str, bytes] | None:
    return next((group[ext] for ext in IMAGE_EXTS if ext in group), None)


def decode_image(shard: Path, member: str, data: bytes):
    """The RGB image of one member; an undecodable one raises :class:`CorruptFileError` naming shard and member."""
    try:
        return load_rgb(io.BytesIO(data))
    except CorruptFileError as err:
        raise CorruptFileError(
            f"{shard}: member {member}: cannot decode image ({err.__cause__}). Re-download the shard, or set "
            "data.on_corrupt: skip to skip such images and count them."
        ) from err


class ImageTextShards(IterableDataset):
    """Streams ``{"image", "caption", "image_id", "text_id"}`` items from tar shards (see the module docstring).

    ``skipped`` counts, in the process that iterates, the samples lacking an image or a caption and (with
    ``on_corrupt: skip``) the undecodable images; each shard's count is logged at INFO."""

    def __init__(self, shards: list[Path], transform, shuffle: int, seed: int, on_corrupt: str = "skip",
                 epoch_samples: int | None = None) -> None:  # fmt: skip
        self.shards, self.transform = list(shards), transform
        self.shuffle, self.seed, self.on_corrupt = shuffle, seed, on_corrupt
        self.epoch_samples = epoch_samples
        self.index = {shard: i for i, shard in enumerate(self.shards)}
        self.skipped = {"missing image": 0, "missing caption": 0, "undecodable": 0}

    def __len__(self) -> int:
        """Samples per epoch on this rank (with ``epoch_samples``; without, the length is unknown)."""
        if self.epoch_samples is None:
            raise TypeError("ImageTextShards without epoch_samples has no length")
        return self.epoch_samples // world()[1]

    def quota(self, worker: int, num_workers: int) -> int | None:
        """This worker's share of the rank's epoch (the first ``len % num_workers`` workers take one more)."""
        if self.epoch_samples is None:
            return None
        return len(self) // num_workers + (worker < len(self) % num_workers)

    def my_shards(self) -> tuple[list[Path], int | None]:
        rank, world_size = world()
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = split_shards(self.shards, rank, world_size, worker, num_workers)
        if not mine:
            log.warning(
                "rank %d worker %d reads no shard: %d shards for %d ranks x %d workers; use more shards or fewer "
                "workers",
                rank, worker, len(self.shards), world_size, num_workers,
            )  # fmt: skip
        return mine, self.quota(worker, num_workers)

    def samples(self, shard: Path) -> Iterator[dict]:
        """The shard's usable samples; each carries ``skipped``, the samples this process left out since the one
        it yielded before (the collate sums them into the batch's count, which reaches ``metrics.json``; those after
        a worker's last sample of an epoch count with its first of the next)."""
        skipped = dict.fromkeys(self.skipped, 0)
        since, self.carried = getattr(self, "carried", 0), 0
        for position, (_key, group) in enumerate(read_samples(shard)):
            image = image_member(group)
            missing = "missing image" if image is None else "missing caption" if "txt" not in group else None
            if missing is not None:
                skipped[missing] += 1
                since += 1
                continue
            try:
                img = decode_image(shard, *image)
            except CorruptFileError:
                if self.on_corrupt == "raise":
                    raise
                skipped["undecodable"] += 1
                since += 1
                continue
            sample_id = self.index[shard] * SAMPLE_STRIDE + position
            caption = group["txt"][1].decode("utf-8", errors="replace").strip()
            yield {"image": self.transform(img), "caption": caption, "image_id": sample_id, "text_id": sample_id,
                   "skipped": since}  # fmt: skip
            since = 0
        self.carried = since
        if any(skipped.values()):
            log.info("%s: skipped %s", shard, ", ".join(f"{n} samples with {k}" for k, n in skipped.items() if n))
        for k, n in skipped.items():
            self.skipped[k] += n

    def stream(self, shards: list[Path], quota: int | None, rng: random.Random) -> Iterator[dict]:
        """The samples of ``shards`` in order; with a ``quota``, exactly that many, cycling (reshuffled) if short."""
        produced = 0
        while True:
            for shard in shards:
                for item in self.samples(shard):
                    if quota is not None and produced >= quota:
                        return
                    produced += 1
                    yield item
            if quota is None or produced >= quota or produced == 0:
                return
            if self.shuffle:
                rng.shuffle(shards)

    def __iter__(self) -> Iterator[dict]:
        shards, quota = self.my_shards()
        rng = random.Random(self.seed * 1_000_003 + int(torch.randint(2**62, (1,))))
        if not self.shuffle:
            yield from self.stream(shards, quota, rng)
            return
        rng.shuffle(shards)
        buffer: list[dict] = []
        for item in self.stream(shards, quota, rng):
            if len(buffer) < self.shuffle:
                buffer.append(item)
                continue
            k = rng.randrange(len(buffer))
            buffer[k], item = item, buffer[k]
            yield item
        rng.shuffle(buffer)
        yield from buffer


class ImageTextShardsDataModule(SuiteDataModule):
    """Image-text pairs from webdataset tar shards (CC3M / CC12M / LAION via img2dataset), for LOUPE pre-training.

    Args:
        root: the shard folder (the toy shards are written there with ``dataset: toy``).
        dataset: ``shards`` reads ``root``; ``toy`` writes ``toy_shards`` toy shards there first.
        train_shards: training shards under ``root``: a glob (``*.tar``) or a range (``{00000..00331}.tar``).
        val_shards: validation shards (same syntax), or none for no validation loader.
        batch_size: per-device batch size.
        num_workers: loader workers per device (each reads its own shards: use at most shards / devices).
        image_size: image resolution.
        scale, hflip, mean, std: the training augmentation and normalisation, as in CaptionsDataModule.
        shuffle_buffer: samples held by each worker's shuffle buffer (0: shard order, no shuffle).
        samples_per_epoch: training samples per epoch over all ranks (default: the training shards' sample count).
        on_corrupt: ``skip`` (default: web corpora hold some bad images) counts undecodable images; ``raise`` stops.
        pin_memory, persistent_workers, seed: loader settings (``seed`` also seeds the shuffle and the toy).
        toy_shards, toy_per_shard, toy_img_size: the toy's shards, samples per shard and image side.
    """

    def __init__(
        self,
        root: str = "data/cc3m",
        dataset: Literal["shards", "toy"] = "shards",
        train_shards: str = "*.tar",
        val_shards: str | None = None,
        batch_size: int = 128,
        num_workers: int = 8,
        image_size: int = 224,
        scale: tuple[float, float] = (0.5, 1.0),
        hflip: float = 0.0,
        mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
        std: tuple[float, float, float] = IMAGENET_DEFAULT_STD,
        shuffle_buffer: int = 5000,
        samples_per_epoch: int | None = None,
        on_corrupt: Literal["skip", "raise"] = "skip",
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
        toy_shards: int = 4,
        toy_per_shard: int = 32,
        toy_img_size: int = 64,
    ) -> None:
        super().__init__(root, dataset, batch_size, num_workers, pin_memory, persistent_workers, on_corrupt, seed)
        if dataset not in ("shards", "toy"):
            raise ConfigError(f"data.dataset is '{dataset}'; use 'shards' (a shard folder) or 'toy'")
        self.train_shards, self.val_shards = train_shards, val_shards
        self.image_size, self.shuffle_buffer, self.samples_per_epoch = image_size, shuffle_buffer, samples_per_epoch
        # the retrieval DataModule's own transforms, so that pre-training and fine-tuning images match exactly
        captions = CaptionsDataModule(root=root, img_size=image_size, scale=scale, hflip=hflip, mean=mean, std=std)
        self.train_transform, self.eval_transform = captions.train_transform, captions.eval_transform
        self.toy_options = dict(shards=toy_shards, per_shard=toy_per_shard, img_size=toy_img_size, seed=seed)

    def prepare_data(self) -> None:
        if self.dataset == "toy":
            ensure_written(self.root, write_toy_shards, **self.toy_options)

    def shards(self, split: str) -> list[Path]:
        """The shard files of ``train`` or ``val`` (empty for ``val`` without ``val_shards``)."""
        root = require_root(self.root, LAYOUT, "your img2dataset output folder")
        pattern = self.train_shards if split == "train" else self.val_shards
        return [] if pattern is None else resolve_shards(root, pattern, f"{split}_shards")

    def check_dataset(self, decode: bool = True) -> tuple[dict, list[str]]:
        """Validate the shards without training: per split, shards and samples; samples missing an image or a
        caption, unreadable shards and (``decode``) images PIL cannot decode, each naming its shard and member.
        Returns (summary, problems)."""
        summary, problems = {}, []
        for split in ("train", "val"):
            try:
                shards = self.shards(split)
            except DataError as err:
                problems.append(str(err))
                continue
            if not shards:
                continue
            counts = summary[split] = {"shards": len(shards), "samples": 0, "missing image": 0,
                                       "missing caption": 0, "undecodable": 0}  # fmt: skip
            for shard in shards:
                try:
                    for key, group in read_samples(shard):
                        counts["samples"] += 1
                        image = image_member(group)
                        if image is None or "txt" not in group:
                            what = "image" if image is None else "caption"
                            counts[f"missing {what}"] += 1
                            names = ", ".join(name for name, _ in group.values())
                            problems.append(f"{shard}: sample {key} ({names}) has no {what}")
                            continue
                        if decode:
                            try:
                                decode_image(shard, *image)
                            except CorruptFileError as err:
                                counts["undecodable"] += 1
                                problems.append(str(err).split(" Re-download")[0])
                except DataError as err:
                    problems.append(str(err))
        return summary, problems

    def dataset_for(self, split: str) -> ImageTextShards:
        """Training: ``samples_per_epoch`` (or every sample once) per epoch, shuffled; validation: every sample once."""
        train, shards = split == "train", self.shards(split)
        epoch = (self.samples_per_epoch or sum(count_samples(s) for s in shards)) if train else None
        return ImageTextShards(
            shards, self.train_transform if train else self.eval_transform,
            self.shuffle_buffer if train else 0, self.seed, self.on_corrupt, epoch,
        )  # fmt: skip

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.train_set = self.dataset_for("train")
        if stage in ("fit", "validate") and self.val_shards is not None:
            self.val_set = self.dataset_for("val")

    def train_dataloader(self):
        # train=False: an IterableDataset takes no sampler shuffle; the shards shuffle through their buffer
        return self.loader(self.train_set, train=False, drop_last=True, collate_fn=collate_pairs)

    def val_dataloader(self):
        return self.loader(self.val_set, train=False, collate_fn=collate_pairs) if self.val_shards else []
