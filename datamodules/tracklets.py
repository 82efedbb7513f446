"""Video person re-identification data (STT, arXiv 2103.16469): the DataModule of MARS, DukeMTMC-VideoReID and
LS-VID tracklets. Its parts live in :mod:`datamodules.tracklet_formats` (readers, layouts),
:mod:`datamodules.tracklet_sampling` (frame sampling, the P x K sampler), :mod:`datamodules.tracklet_transforms`
(clip-consistent augmentation) and :mod:`datamodules.tracklet_datasets`; this module re-exports their public
names.

-------

* training: ``{"frames" [B, T, 3, H, W], "pid" [B] (label 0..N-1), "camid" [B], "skipped"}``; ``B = P x K`` laid
  out identity-major (``K`` tracklets of the 1st identity, then of the 2nd ...), see :class:`PKSampler`;
* evaluation: queries then gallery tracklets, each cut into ``C`` clips (``C = 1`` for ``rrs``); see
  :func:`collate_eval`. Under DDP a ``DistributedSampler(shuffle=False)`` shards them and pads the last rank by
  repeating a few tracklets; the metric keeps one copy per ``index``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from torch.utils.data import DataLoader, DistributedSampler

from datamodules.base import SuiteDataModule
from datamodules.images import load_rgb
from datamodules.toy import ensure_written
from datamodules.tracklet_datasets import (
    TrackletEvalDataset,
    TrackletTrainDataset,
    collate_eval,
    load_frames,
)
from datamodules.tracklet_formats import (
    DATASETS,
    LAYOUTS,
    NAMES,
    FolderIndex,
    Tracklet,
    TrackletSplits,
    filter_single_camera_queries,
    read_duke,
    read_lsvid,
    read_mars,
    read_tracklets,
    split_summary,
)
from datamodules.tracklet_sampling import PKSampler, dense_clips, restricted_random_indices
from datamodules.tracklet_transforms import IMAGENET_MEAN, IMAGENET_STD, ClipTransform
from suite_base.errors import ConfigError, DataError

__all__ = [
    "ClipTransform",
    "DATASETS",
    "FolderIndex",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LAYOUTS",
    "NAMES",
    "PKSampler",
    "Tracklet",
    "TrackletDataModule",
    "TrackletEvalDataset",
    "TrackletSplits",
    "TrackletTrainDataset",
    "collate_eval",
    "dense_clips",
    "filter_single_camera_queries",
    "load_frames",
    "read_duke",
    "read_lsvid",
    "read_mars",
    "read_tracklets",
    "restricted_random_indices",
    "split_summary",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# The DataModule


class TrackletDataModule(SuiteDataModule):
    """Video re-ID tracklets for STT: P x K training clips and query + gallery evaluation tracklets.

    Training: :class:`PKSampler` batches of ``batch_size = P x K`` clips of ``seq_len`` frames (restricted random
    sampling, clip-consistent augmentation); the configs set ``trainer.use_distributed_sampler: false`` because the
    sampler shards itself. Validation and test serve :class:`TrackletEvalDataset` (queries, then gallery) with
    :func:`collate_eval`. Under DDP they are sharded by ``DistributedSampler(shuffle=False)``, which pads the last
    rank by repeating a few tracklets: the metric keeps one copy per ``index``.

    Queries whose identity has no gallery tracklet from another camera are left out (counted and logged).

    Args:
        root: dataset root (layouts in the module docstring); the toy dataset is written here.
        dataset: ``mars``, ``duke`` or ``lsvid``; ``toy`` writes synthetic pedestrians in the MARS layout.
        height, width: frame size (256 x 128).
        seq_len: frames per clip ``T`` (8).
        pad: zero padding before the training random crop; None: 10 pixels at 256 px height (torchreid's setting),
            scaled with ``height`` (2 at the toy's 64x32).
        num_instances: tracklets per identity in a batch ``K`` (4).
        batch_size: clips per training step per device, ``P x K`` (32: 8 identities x 4).
        test_sampling: ``rrs`` (one clip of chunk middles) or ``dense`` (consecutive clips, averaged).
        max_clips: at most this many dense clips per tracklet (8).
        eval_batch_size: tracklets per evaluation step (16).
        gallery_includes_query: queries also in the gallery (the other published convention).
        num_workers, pin_memory, persistent_workers: DataLoader options.
        on_corrupt: ``raise`` stops at an undecodable frame naming it; ``skip`` uses a neighbouring frame.
        seed: seed of the sampler, the frame choice and the toy data.
        toy_train_ids, toy_test_ids: identities of the toy train and test splits.
        toy_tracklets_per_id: toy tracklets per identity.
        toy_domain: ``a`` or ``b``: two toy domains (appearance styles) for cross-dataset runs.
        test_root: cross-domain evaluation: query and gallery come from this dataset root instead of ``root`` (train
            on one dataset, test on another); None evaluates on ``root``'s own query and gallery.
        test_dataset: the layout of ``test_root`` (``mars``, ``duke``, ``lsvid`` or ``toy``); None: ``dataset``.
        toy_test_domain: the toy domain written at ``test_root`` when ``test_dataset`` is ``toy``.
    """

    def __init__(
        self,
        root: str = "data/MARS",
        dataset: Literal["mars", "duke", "lsvid", "toy"] = "mars",
        height: int = 256,
        width: int = 128,
        seq_len: int = 8,
        pad: int | None = None,
        num_instances: int = 4,
        batch_size: int = 32,
        test_sampling: Literal["rrs", "dense"] = "rrs",
        max_clips: int = 8,
        eval_batch_size: int = 16,
        gallery_includes_query: bool = False,
        num_workers: int = 8,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        on_corrupt: Literal["raise", "skip"] = "raise",
        seed: int = 0,
        toy_train_ids: int = 40,
        toy_test_ids: int = 20,
        toy_tracklets_per_id: int = 4,
        toy_domain: Literal["a", "b"] = "a",
        test_root: str | None = None,
        test_dataset: Literal["mars", "duke", "lsvid", "toy"] | None = None,
        toy_test_domain: Literal["a", "b"] = "b",
    ) -> None:
        super().__init__(root, dataset, batch_size, num_workers, pin_memory, persistent_workers, on_corrupt, seed)
        if dataset not in DATASETS:
            raise ConfigError(f"data.dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
        if test_sampling not in ("rrs", "dense"):
            raise ConfigError(f"data.test_sampling must be 'rrs' or 'dense', got {test_sampling!r}")
        if on_corrupt not in ("raise", "skip"):
            raise ConfigError(f"data.on_corrupt must be 'raise' or 'skip', got {on_corrupt!r}")
        for key, value in (("toy_domain", toy_domain), ("toy_test_domain", toy_test_domain)):
            if value not in ("a", "b"):
                raise ConfigError(f"data.{key} must be 'a' or 'b', got {value!r}")
        test_dataset = test_dataset or dataset
        if test_dataset not in DATASETS:
            raise ConfigError(f"data.test_dataset must be one of {', '.join(DATASETS)}, got {test_dataset!r}")
        if test_root is not None and test_dataset != "toy" and not Path(test_root).is_dir():
            raise DataError(f"data.test_root '{test_root}' does not exist. Expected {NAMES[test_dataset]} layout: "
                            f"{LAYOUTS[test_dataset]}")  # fmt: skip
        if min(height, width, seq_len, max_clips, eval_batch_size) < 1:
            raise ConfigError(f"data.height, width, seq_len, max_clips and eval_batch_size must be >= 1, got "
                              f"{height}, {width}, {seq_len}, {max_clips}, {eval_batch_size}")  # fmt: skip
        if num_instances < 1 or batch_size % num_instances:
            raise ConfigError(f"data.batch_size ({batch_size}) must be a multiple of data.num_instances "
                              f"({num_instances}): each batch is P identities x K tracklets")  # fmt: skip
        if dataset != "toy" and not Path(root).is_dir():
            raise DataError(f"data.root '{root}' does not exist. Expected {NAMES[dataset]} layout: {LAYOUTS[dataset]}. "
                            "Point --data.root at your copy, or use --data.dataset toy")  # fmt: skip
        self.height, self.width, self.seq_len, self.num_instances = height, width, seq_len, num_instances
        self.pad = round(10 * height / 256) if pad is None else pad
        self.test_sampling, self.max_clips, self.eval_batch_size = test_sampling, max_clips, eval_batch_size
        self.gallery_includes_query = gallery_includes_query
        self.toy_options = dict(train_ids=toy_train_ids, test_ids=toy_test_ids, tracklets_per_id=toy_tracklets_per_id,
                                height=height, width=width, domain=toy_domain, seed=seed)  # fmt: skip
        self.test_root, self.test_dataset = test_root, test_dataset
        self.toy_test_options = {**self.toy_options, "domain": toy_test_domain}
        self._splits: TrackletSplits | None = None
        self._eval_splits: TrackletSplits | None = None
        self.single_camera_queries = 0
        self.train_dataset: TrackletTrainDataset | None = None
        self.eval_dataset: TrackletEvalDataset | None = None

    def prepare_data(self) -> None:
        if self.dataset == "toy":
            from datamodules.toy.pedestrians import write_synthetic_tracklets

            ensure_written(self.root, write_synthetic_tracklets, **self.toy_options)
        if self.test_root is not None and self.test_dataset == "toy":
            from datamodules.toy.pedestrians import write_synthetic_tracklets

            ensure_written(self.test_root, write_synthetic_tracklets, **self.toy_test_options)

    # -- splits ---------------------------------------------------------------------------------------------------
    @property
    def splits(self) -> TrackletSplits:
        """The splits (read once), with single-camera queries left out."""
        if self._splits is None:
            raw = read_tracklets(self.root, self.dataset, self.gallery_includes_query)
            splits, single = filter_single_camera_queries(raw)
            if single:
                log.info("%s: %d of %d queries have no gallery tracklet of their identity from another camera; left "
                         "out of the evaluation", self.root, single, len(raw.query))  # fmt: skip
            if not splits.train:
                raise DataError(f"{self.root}: the training split holds no tracklets")
            if not splits.query or not splits.gallery:
                raise DataError(f"{self.root}: the evaluation needs query and gallery tracklets; found "
                                f"{len(splits.query)} usable queries ({single} left out for having one camera) and "
                                f"{len(splits.gallery)} gallery tracklets")  # fmt: skip
            self._splits, self.single_camera_queries = splits, single
        return self._splits

    @property
    def eval_splits(self) -> TrackletSplits:
        """The query and gallery of the evaluation: ``splits`` itself, or those of ``test_root`` (cross-domain)."""
        if self.test_root is None:
            return self.splits
        if self._eval_splits is None:
            raw = read_tracklets(self.test_root, self.test_dataset, self.gallery_includes_query)
            splits, single = filter_single_camera_queries(raw)
            if not splits.query or not splits.gallery:
                raise DataError(f"{self.test_root}: the evaluation needs query and gallery tracklets; found "
                                f"{len(splits.query)} usable queries ({single} left out for having one camera) and "
                                f"{len(splits.gallery)} gallery tracklets")  # fmt: skip
            log.info("cross-domain evaluation on %s (%s): %d queries (%d single-camera left out), %d gallery",
                     self.test_root, self.test_dataset, len(splits.query), single, len(splits.gallery))  # fmt: skip
            self._eval_splits = splits
        return self._eval_splits

    @property
    def num_classes(self) -> int:
        """Training identities (the classifier's outputs)."""
        return len({t.pid for t in self.splits.train})

    @property
    def num_query(self) -> int:
        """Query tracklets in the evaluation (after the single-camera filter)."""
        return len(self.eval_splits.query)

    def setup(self, stage: str | None = None) -> None:
        splits = self.splits
        if stage in ("fit", None):
            transform = ClipTransform(self.height, self.width, train=True, pad=self.pad)
            self.train_dataset = TrackletTrainDataset(splits.train, self.seq_len, transform, self.seed,
                                                      self.on_corrupt)  # fmt: skip
        if stage in ("fit", "validate", "test", None):
            evaluation = self.eval_splits
            transform = ClipTransform(self.height, self.width, train=False)
            self.eval_dataset = TrackletEvalDataset(evaluation.query, evaluation.gallery, self.seq_len,
                                                    self.test_sampling, self.max_clips, transform,
                                                    self.on_corrupt)  # fmt: skip

    # -- checks ---------------------------------------------------------------------------------------------------
    def check_dataset(self, decode: bool = True) -> tuple[dict, list[str]]:
        """``python -m experiments data check``: identities, cameras, tracklets and frames per split, the queries
        left out for having a single camera, and every problem found (each naming its file). Returns
        ``(summary, problems)``."""
        try:
            raw = read_tracklets(self.root, self.dataset, self.gallery_includes_query)
        except DataError as err:
            return {}, [str(err)]
        splits, single = filter_single_camera_queries(raw)
        summary = {name: split_summary(getattr(splits, name)) for name in ("train", "query", "gallery")}
        summary["query"]["single_camera_left_out"] = single
        problems = []
        for name in ("train", "query", "gallery") if decode else ():
            for tracklet in getattr(raw, name):
                for frame in tracklet.frames:
                    try:
                        load_rgb(frame)
                    except DataError as err:
                        problems.append(str(err).split(". Replace")[0])
        if not splits.query:
            problems.append(f"{self.root}: no query has a gallery tracklet of its identity from another camera")
        return summary, problems

    def describe(self) -> str:
        """A short multi-line summary (ids, cameras, tracklets, frames per split), without decoding frames."""
        summary, problems = self.check_dataset(decode=False)
        lines = [f"{self.dataset} at {self.root}"]
        lines += [f"  {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) for name, counts in summary.items()]
        lines += [f"  problem: {p}" for p in problems]
        return "\n".join(lines)

    # -- loaders --------------------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        rank, world = self.trainer_rank()
        sampler = PKSampler(self.train_dataset.labels, self.batch_size, self.num_instances, self.seed,
                            num_replicas=world, rank=rank)  # fmt: skip
        return self.loader(self.train_dataset, train=True, sampler=sampler, drop_last=True)

    def eval_dataloader(self) -> DataLoader:
        if self.eval_dataset is None:
            self.setup("test")
        rank, world = self.trainer_rank()
        sampler = None
        if world > 1:
            sampler = DistributedSampler(self.eval_dataset, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(
            self.eval_dataset,
            batch_size=self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=collate_eval,
        )

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader()

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader()
