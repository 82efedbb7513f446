"""The COS file's image keys: written by the COS stage (the few-shot task), read by the episode data."""

from __future__ import annotations

import os
from pathlib import Path


def relative_key(path: str, root: str | None) -> str:
    """The COS-file key of an image: its path relative to the dataset root (POSIX separators)."""
    return Path(os.path.relpath(path, root)).as_posix() if root else Path(path).as_posix()
