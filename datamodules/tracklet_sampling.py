"""Video re-ID sampling: which frames of a tracklet form a clip (restricted random sampling for training and
evaluation, dense consecutive clips for evaluation) and which tracklets form a training batch (the
identity-balanced P x K sampler, sharded over DDP ranks by itself)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from datamodules.base import distributed_rank
from suite_base.errors import ConfigError, DataError

# ---------------------------------------------------------------------------------------------------------------
# Frame sampling


def restricted_random_indices(n_frames: int, T: int, rng: np.random.Generator | None = None) -> list[int]:
    """Restricted random sampling: ``range(n_frames)`` cut into ``T`` near-equal consecutive chunks
    (``np.array_split``), one frame from each: random with ``rng`` (training), the middle of the chunk without
    (evaluation). A tracklet shorter than ``T`` repeats frames, so the result is always ``T`` sorted indices."""
    if n_frames < 1 or T < 1:
        raise DataError(f"restricted random sampling needs n_frames >= 1 and T >= 1, got {n_frames} and {T}")
    if n_frames < T:
        # every frame at least once, the extra slots spread evenly: floor(i * n / T)
        return [i * n_frames // T for i in range(T)]
    out = []
    for chunk in np.array_split(np.arange(n_frames), T):
        k = int(rng.integers(len(chunk))) if rng is not None else len(chunk) // 2
        out.append(int(chunk[k]))
    return out


def dense_clips(n_frames: int, T: int, max_clips: int | None = None) -> list[list[int]]:
    """Consecutive clips of ``T`` frames covering the tracklet (the last one padded with its final frame); at most
    ``max_clips`` of them, evenly spaced over the tracklet (None: all)."""
    if n_frames < 1 or T < 1:
        raise DataError(f"dense sampling needs n_frames >= 1 and T >= 1, got {n_frames} and {T}")
    clips = [[min(s + t, n_frames - 1) for t in range(T)] for s in range(0, n_frames, T)]
    if max_clips is not None and len(clips) > max_clips:
        keep = np.linspace(0, len(clips) - 1, max_clips).round().astype(int)
        clips = [clips[i] for i in keep]
    return clips


# ---------------------------------------------------------------------------------------------------------------
# Identity-balanced sampler


class PKSampler(Sampler[int]):
    """``P`` identities x ``K`` tracklets per batch (``batch_size = P * K``), identity-major: batch positions
    ``p * K .. p * K + K - 1`` hold identity ``p``'s tracklets.

    Per epoch, each identity's tracklets are shuffled and cut into groups of ``K`` (an identity with fewer than
    ``K`` tracklets gives one group drawn with replacement; leftovers smaller than ``K`` wait for another epoch);
    each batch takes one group from each of ``P`` distinct identities that still have groups. When fewer than ``P``
    identities have groups left, the used-up identities are re-shuffled. An epoch has
    ``max(1, groups // P // W)`` batches per rank (``W`` ranks). The order depends only on ``(seed, epoch)``
    (:meth:`set_epoch`); rank ``r`` takes batches ``r, r + W, ...``, so ranks get disjoint batches of equal count.
    Use it with ``DataLoader(batch_size=P * K, drop_last=True)``.

    Args:
        labels: identity of every tracklet (any integers).
        batch_size: ``P * K`` (32 = 8 identities x 4 tracklets in STT).
        num_instances: ``K`` (4).
        seed: seed of the order.
        num_replicas, rank: DDP world size and rank (default: from ``torch.distributed`` when initialised, else 1/0).
    """

    def __init__(self, labels: Sequence[int], batch_size: int = 32, num_instances: int = 4, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None) -> None:  # fmt: skip
        if num_instances < 1 or batch_size < num_instances or batch_size % num_instances:
            raise ConfigError(f"data.batch_size ({batch_size}) must be a multiple of data.num_instances "
                              f"({num_instances}) >= 1: each batch is P identities x K tracklets")  # fmt: skip
        rank, num_replicas = distributed_rank(rank, num_replicas)
        if not 0 <= rank < num_replicas:
            raise ConfigError(f"rank {rank} is not in [0, {num_replicas})")
        labels = np.asarray(labels)
        pids, inverse = np.unique(labels, return_inverse=True)
        self.by_pid = [np.flatnonzero(inverse == i) for i in range(len(pids))]
        self.K, self.P = num_instances, batch_size // num_instances
        if len(pids) < self.P:
            raise DataError(
                f"a batch needs {self.P} identities (batch_size {batch_size} / num_instances {num_instances}) but "
                f"the training split has {len(pids)}; lower data.batch_size"
            )
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0
        self.num_replicas, self.rank = num_replicas, rank
        groups = sum(max(1, len(ix) // self.K) for ix in self.by_pid)
        self.batches_per_rank = max(1, groups // self.P // num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _groups(self, rng: np.random.Generator, ix: np.ndarray) -> list[list[int]]:
        ix = rng.choice(ix, self.K, replace=True) if len(ix) < self.K else rng.permutation(ix)
        return [ix[j * self.K : (j + 1) * self.K].tolist() for j in range(len(ix) // self.K)]

    def batches(self) -> list[list[int]]:
        """Every rank's batches of this epoch, in order (rank ``r`` takes ``r::W``)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        pools = [self._groups(rng, ix) for ix in self.by_pid]
        out: list[list[int]] = []
        while len(out) < self.batches_per_rank * self.num_replicas:
            available = [p for p, pool in enumerate(pools) if pool]
            if len(available) < self.P:
                for p, pool in enumerate(pools):
                    if not pool:
                        pools[p] = self._groups(rng, self.by_pid[p])
                available = list(range(len(pools)))
            chosen = rng.choice(available, self.P, replace=False)
            out.append([i for p in chosen for i in pools[p].pop()])
        return out

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches()[self.rank :: self.num_replicas]:
            yield from batch

    def __len__(self) -> int:
        return self.batches_per_rank * self.batch_size
