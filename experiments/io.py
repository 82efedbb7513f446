"""Atomic writes: a file is written under a temporary name in its folder and renamed into place.

A crash mid-write leaves the previous file intact, never a truncated one. Files get the mode ``open()`` would give
them under the user's umask (0644 under umask 022), not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO


def current_umask() -> int:
    """The process umask (read by setting and restoring it: the only portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (``tempfile.mkstemp`` always gives 0600, which
    would keep checkpoints and metrics private to their owner on a shared cluster)."""
    return 0o666 & ~current_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that saves to a temporary file and renames it over the target."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, file_mode())
        os.close(fd)
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def append_table_rows(path: str | os.PathLike, header: str, rows: list[str]) -> None:
    """Add Markdown ``rows`` at the end of the table of the section that ``header`` opens (its first line is the
    section title; the rest is its text, the table's header row and ``|---|`` line). The section is appended to the
    file the first time; everything else in the file is kept. Written atomically."""
    target = Path(path)
    text = target.read_text() if target.is_file() else "# Benchmarks\n"
    title = header.splitlines()[0]
    if title not in text.splitlines():
        text = text.rstrip("\n") + "\n\n" + header
    lines = text.splitlines()
    at = lines.index(title)
    while at + 1 < len(lines) and not lines[at + 1].startswith("|---"):
        at += 1
    at += 1
    while at + 1 < len(lines) and lines[at + 1].startswith("|"):
        at += 1
    lines[at + 1 : at + 1] = rows
    atomic_write_bytes(target, ("\n".join(lines) + "\n").encode())
