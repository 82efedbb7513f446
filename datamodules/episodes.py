"""Few-shot episodes: a seeded, DDP-aware N-way K-shot sampler.

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

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from experiments.errors import DataError


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
        if rank is None or world_size is None:
            dist = torch.distributed
            ready = dist.is_available() and dist.is_initialized()
            rank = dist.get_rank() if ready and rank is None else (rank or 0)
            world_size = dist.get_world_size() if ready and world_size is None else (world_size or 1)
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
