"""Toy image-text pre-training shards in the webdataset / img2dataset layout.

img2dataset (``--output_format webdataset``) writes CC3M, CC12M and LAION as numbered tar shards ``00000.tar``,
``00001.tar``, ... Each sample is a run of consecutive tar members sharing one key (the member name up to its first
dot, the webdataset convention): ``<key>.jpg`` (the image), ``<key>.txt`` (the caption, UTF-8) and ``<key>.json``
(metadata: ``key``, ``caption``, ``width``, ``height``, ``status``); next to each shard, ``<shard>_stats.json``
(``count``, ``successes``, ...). img2dataset's keys are the shard number (5 digits) followed by the index in the
shard (4 digits), e.g. ``000030012``.

The images and captions are the toy captioned scenes of :mod:`datamodules.toy.scenes` (one caption per image, as
web corpora have), rendered by the same generator. Each shard is built in memory and written atomically (a
temporary name renamed into place); tar headers carry no time or owner, so the bytes are a pure function of the
options.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np

from datamodules.toy.scenes import captions, render_scene
from suite_base.io import atomic_write_bytes, atomic_write_json

SHARD_SEED_STRIDE = 1_000_003


def toy_sample(seed: int, img_size: int) -> tuple[bytes, str]:
    """The JPEG bytes and the caption of one toy scene."""
    img, objects = render_scene(seed, img_size)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue(), captions(objects, np.random.default_rng(seed + 7), count=1)[0]


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Append ``name`` holding ``data`` with a fixed header (mode 0644, no time, no owner)."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def shard_bytes(samples: list[tuple[str, bytes, str]], img_size: int) -> bytes:
    """A tar shard of ``(key, jpeg, caption)`` samples: ``<key>.jpg``, ``<key>.txt``, ``<key>.json`` each."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, jpeg, caption in samples:
            meta = {"key": key, "caption": caption, "width": img_size, "height": img_size, "status": "success"}
            add_member(tar, f"{key}.jpg", jpeg)
            add_member(tar, f"{key}.txt", caption.encode())
            add_member(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
    return buffer.getvalue()


def write_toy_shards(root: Path, shards: int = 4, per_shard: int = 32, img_size: int = 64, seed: int = 0) -> None:
    """Write ``root/00000.tar`` ... ``root/<shards - 1>.tar``, ``per_shard`` toy scenes each, img2dataset's layout."""
    root = Path(root)
    for shard in range(shards):
        samples = []
        for index in range(per_shard):
            jpeg, caption = toy_sample(seed * 10_000_019 + shard * SHARD_SEED_STRIDE + index, img_size)
            samples.append((f"{shard:05d}{index:04d}", jpeg, caption))
        atomic_write_bytes(root / f"{shard:05d}.tar", shard_bytes(samples, img_size))
        stats = {"count": per_shard, "successes": per_shard, "failed_to_download": 0, "failed_to_resize": 0}
        atomic_write_json(root / f"{shard:05d}_stats.json", stats)
