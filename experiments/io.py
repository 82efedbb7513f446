"""The command line's atomic writes: Lightning checkpoints and benchmark tables.

The plain atomic writers (``atomic_write_bytes``, ``atomic_write_json``, ``file_mode``) live in :mod:`suite_base.io`,
below every layer, and are re-exported here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from suite_base.io import atomic_write_bytes, atomic_write_json, current_umask, file_mode  # noqa: F401


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
