"""What every DataModule shares: loader settings, the toy switch, and DataLoader construction."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.images import collate_skipping_corrupt
from suite_base.errors import DataError


def require_root(root: str | Path, layout: str, what: str = "your copy") -> Path:
    """``root`` as a Path, or the suite's standard DataError when it is not a folder: it names the path, the expected
    layout, and the two fixes (``--data.root`` at a copy, or ``--data.dataset toy``)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data.root '{root}' does not exist. Expected layout: {layout}. Point --data.root at {what}, "
            "or use --data.dataset toy to write the toy dataset there."
        )
    return root


def distributed_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: each given value as is, each ``None`` from torch.distributed when it is initialised
    (``0`` and ``1`` when it is not). For samplers that shard their batches across ranks."""
    dist = torch.distributed
    ready = dist.is_available() and dist.is_initialized()
    rank = rank if rank is not None else (dist.get_rank() if ready else 0)
    world_size = world_size if world_size is not None else (dist.get_world_size() if ready else 1)
    return rank, world_size


class SuiteDataModule(L.LightningDataModule):
    """Common loader options. Subclasses read one on-disk format from ``root``.

    Args:
        root: dataset folder in the real on-disk format (written there first when ``dataset: toy``).
        dataset: ``toy`` writes a small deterministic dataset in the same format under ``root``, once.
        batch_size: samples per device per step.
        num_workers: DataLoader worker processes per device.
        pin_memory: page-locked host memory for faster host-to-GPU copies.
        persistent_workers: keep workers alive across epochs.
        on_corrupt: ``raise`` stops at an undecodable file naming it; ``skip`` skips and counts it.
        seed: seed of data subsets and toy generation.
    """

    def __init__(
        self,
        root: str,
        dataset: str,
        batch_size: int,
        num_workers: int,
        pin_memory: bool,
        persistent_workers: bool,
        on_corrupt: str,
        seed: int,
    ) -> None:
        super().__init__()
        self.root = root
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.on_corrupt = on_corrupt
        self.seed = seed

    def loader(
        self,
        dataset: Dataset,
        train: bool,
        sampler: Sampler | None = None,
        drop_last: bool = False,
        collate_fn: Callable = collate_skipping_corrupt,
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            drop_last=drop_last,
            collate_fn=collate_fn,
        )

    def trainer_rank(self) -> tuple[int, int]:
        """``(global rank, world size)`` of the attached trainer; ``(0, 1)`` without one."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
