"""Toy-data framework: deterministic generators that WRITE each dataset in its real on-disk format.

A generator is a function ``write(root: Path, **options) -> None`` that fills a fresh folder. :func:`ensure_written`
runs it once per ``root``: into a temporary sibling folder that is renamed into place when complete, so an
interrupted run never leaves a half-written dataset that later looks valid. A ``.toy-complete`` file records the
options; asking for the same root with other options is an error rather than a silent mix. Writing prints a line
when it starts and one when it ends (generator, folder, files, seconds) on stdout, so a log shows where the time went.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from suite_base.errors import DataError

MARKER = ".toy-complete"


def ensure_written(root: str | os.PathLike, write: Callable[..., None], **options) -> Path:
    """Write the toy dataset at ``root`` with ``write(tmp_root, **options)`` unless it is already there."""
    root = Path(root)
    record = {"generator": f"{write.__module__}.{write.__name__}", "options": options}
    marker = root / MARKER
    if marker.is_file():
        found = json.loads(marker.read_text())
        if found != json.loads(json.dumps(record)):
            raise DataError(
                f"{root} holds a toy dataset written with {found}, not {record}. "
                f"Delete {root} or point data.root elsewhere."
            )
        return root
    if root.exists() and any(root.iterdir()):
        raise DataError(
            f"{root} exists, is not empty and is not a complete toy dataset; delete it or choose another root"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    umask = os.umask(0o022)  # read it (set and restore): mkdtemp gives 0700, os.mkdir would give 0777 & ~umask
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    name = write.__name__.removeprefix("write_")
    print(f"toy data: writing {name} into {root} ...", flush=True)
    start = time.perf_counter()
    try:
        write(tmp, **options)
        files = sum(1 for path in tmp.rglob("*") if path.is_file())
        (tmp / MARKER).write_text(json.dumps(record, indent=1))
        if root.exists() and not any(root.iterdir()):
            root.rmdir()
        os.replace(tmp, root)
    except OSError:
        # another process (a second node's prepare_data on a shared file system) finished first: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
        if not marker.is_file() or json.loads(marker.read_text()) != json.loads(json.dumps(record)):
            raise
        print(f"toy data: {root} was written by another process meanwhile; using it", flush=True)
        return root
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"toy data: wrote {name} into {root}: {files} files, {time.perf_counter() - start:.1f} s", flush=True)
    return root
