"""Video re-ID datasets: training clips of one tracklet each (restricted random sampling, identities relabelled
to 0..N-1), evaluation tracklets (queries first) cut into clips, the frame loader that replaces undecodable
frames with ``on_corrupt: skip``, and the collate function of evaluation batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from datamodules.images import load_rgb, log_skipped
from datamodules.tracklet_formats import Tracklet
from datamodules.tracklet_sampling import dense_clips, restricted_random_indices
from datamodules.tracklet_transforms import ClipTransform
from suite_base.errors import ConfigError, CorruptFileError, DataError

# ---------------------------------------------------------------------------------------------------------------
# Datasets


def load_frames(frames: Sequence[str], indices: Sequence[int], on_corrupt: str) -> list[Image.Image] | None:
    """The images ``frames[i]`` for ``i`` in ``indices`` (each file decoded once). With ``on_corrupt: skip`` an
    undecodable frame is replaced by the nearest decodable frame of the tracklet; None if none decodes."""
    cache: dict[int, Image.Image | None] = {}

    def get(i: int) -> Image.Image | None:
        if i not in cache:
            try:
                cache[i] = load_rgb(frames[i])
            except CorruptFileError as err:
                if on_corrupt == "raise":
                    raise
                log_skipped(err)
                cache[i] = None
        return cache[i]

    out = []
    for i in indices:
        image = get(i)
        if image is None:
            near = sorted(range(len(frames)), key=lambda j: (abs(j - i), j))
            image = next((im for j in near[1:] if (im := get(j)) is not None), None)
            if image is None:
                return None
        out.append(image)
    return out


class TrackletTrainDataset(Dataset):
    """Training clips: ``{"frames" [T, 3, H, W], "pid" (label 0..N-1), "camid"}``, ``T`` frames by restricted
    random sampling.

    Args:
        tracklets: the training tracklets.
        T: frames per clip (8).
        transform: frames -> ``[T, 3, H, W]`` (:class:`ClipTransform` with ``train=True``).
        seed: mixed into each item's frame choice together with a draw from torch's generator (which the DataLoader
            seeds per worker, and ``seed_everything`` per run), so epochs differ and runs repeat.
        on_corrupt: ``raise`` stops at an undecodable frame; ``skip`` uses a neighbouring frame instead.
    """

    def __init__(self, tracklets: Sequence[Tracklet], T: int = 8, transform: Callable | None = None, seed: int = 0,
                 on_corrupt: str = "raise") -> None:  # fmt: skip
        if not tracklets:
            raise DataError("the training split holds no tracklets")
        self.tracklets, self.T, self.seed, self.on_corrupt = list(tracklets), T, seed, on_corrupt
        self.transform = transform or ClipTransform(train=True)
        self.pids = sorted({t.pid for t in self.tracklets})
        relabel = {pid: label for label, pid in enumerate(self.pids)}
        self.labels = [relabel[t.pid] for t in self.tracklets]

    @property
    def num_classes(self) -> int:
        return len(self.pids)

    def __len__(self) -> int:
        return len(self.tracklets)

    def __getitem__(self, index: int) -> dict | None:
        tracklet = self.tracklets[index]
        rng = np.random.default_rng([self.seed, index, int(torch.randint(0, 2**62, ()))])
        indices = restricted_random_indices(len(tracklet.frames), self.T, rng)
        images = load_frames(tracklet.frames, indices, self.on_corrupt)
        if images is None:
            return None
        return {"frames": self.transform(images), "pid": self.labels[index], "camid": tracklet.camid}


class TrackletEvalDataset(Dataset):
    """Evaluation tracklets, queries first: ``{"frames" [C, T, 3, H, W], "pid", "camid", "is_query", "index"}``.

    Args:
        query, gallery: the evaluation tracklets.
        T: frames per clip.
        test_sampling: ``rrs`` one clip of the middle frame of each of ``T`` chunks (``C = 1``); ``dense``
            consecutive clips covering the tracklet (:func:`dense_clips`).
        max_clips: at most this many dense clips per tracklet, evenly spaced.
        transform: frames -> ``[n, 3, H, W]`` (:class:`ClipTransform` with ``train=False``).
        on_corrupt: ``raise`` or ``skip`` (a neighbouring frame replaces an undecodable one).
    """

    def __init__(self, query: Sequence[Tracklet], gallery: Sequence[Tracklet], T: int = 8,
                 test_sampling: Literal["rrs", "dense"] = "rrs", max_clips: int = 8,
                 transform: Callable | None = None, on_corrupt: str = "raise") -> None:  # fmt: skip
        if test_sampling not in ("rrs", "dense"):
            raise ConfigError(f"data.test_sampling must be 'rrs' or 'dense', got {test_sampling!r}")
        self.tracklets = list(query) + list(gallery)
        self.num_query, self.T, self.test_sampling, self.max_clips = len(query), T, test_sampling, max_clips
        self.transform = transform or ClipTransform(train=False)
        self.on_corrupt = on_corrupt

    def __len__(self) -> int:
        return len(self.tracklets)

    def clips(self, index: int) -> list[list[int]]:
        n = len(self.tracklets[index].frames)
        if self.test_sampling == "rrs":
            return [restricted_random_indices(n, self.T)]
        return dense_clips(n, self.T, self.max_clips)

    def __getitem__(self, index: int) -> dict | None:
        tracklet = self.tracklets[index]
        clips = self.clips(index)
        unique = sorted({i for clip in clips for i in clip})
        images = load_frames(tracklet.frames, unique, self.on_corrupt)
        if images is None:
            return None
        frames = self.transform(images)
        where = {i: k for k, i in enumerate(unique)}
        gather = torch.tensor([[where[i] for i in clip] for clip in clips])
        return {
            "frames": frames[gather],
            "pid": tracklet.pid,
            "camid": tracklet.camid,
            "is_query": index < self.num_query,
            "index": index,
        }


def collate_eval(items: list[dict | None]) -> dict:
    """Evaluation batch of ``B`` tracklets: ``frames [sum C, T, 3, H, W]`` (every tracklet's clips in turn),
    ``clip_owner [sum C]`` (position of each clip's tracklet in the batch), ``pid``, ``camid``, ``is_query``,
    ``index`` ``[B]``, and ``skipped`` (tracklets none of whose frames decoded, left out)."""
    kept = [item for item in items if item is not None]
    if not kept:
        raise DataError(f"no tracklet of an evaluation batch of {len(items)} decoded; check the dataset")
    owner = torch.cat([torch.full((len(item["frames"]),), b, dtype=torch.long) for b, item in enumerate(kept)])
    batch = {
        "frames": torch.cat([item["frames"] for item in kept]),
        "clip_owner": owner,
        "pid": torch.tensor([item["pid"] for item in kept], dtype=torch.long),
        "camid": torch.tensor([item["camid"] for item in kept], dtype=torch.long),
        "is_query": torch.tensor([item["is_query"] for item in kept], dtype=torch.bool),
        "index": torch.tensor([item["index"] for item in kept], dtype=torch.long),
        "skipped": torch.tensor(len(items) - len(kept)),
    }
    return batch
