"""Reading image folders from disk: ``<split>/<class>/<image>``, with clear errors and an ``on_corrupt`` policy."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate

from suite_base.errors import CorruptFileError, DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
OnCorrupt = Literal["raise", "skip"]


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` fully as RGB; a file PIL cannot decode raises :class:`CorruptFileError` naming it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        problem = f"{path}: cannot decode image ({err})"
        error = CorruptFileError(
            f"{problem}. Replace or delete the file, or set data.on_corrupt: skip to skip such files and count them."
        )
        error.problem = problem
        raise error from err


def corrupt_problem(err: CorruptFileError) -> str:
    """What is wrong with the file, without the advice to skip it: the line logged when ``on_corrupt: skip``
    already skips it."""
    return getattr(err, "problem", str(err))


def log_skipped(err: CorruptFileError) -> None:
    """The warning an ``on_corrupt: skip`` dataset logs for each file it skips."""
    log.warning("skipping %s (data.on_corrupt: skip; per-split counts in metrics.json)", corrupt_problem(err))


def list_classes(split_dir: Path, layout_hint: str) -> list[str]:
    """Sorted class folder names under ``split_dir``; errors name the folder and the expected layout."""
    if not split_dir.is_dir():
        raise DataError(f"{split_dir} does not exist. Expected layout: {layout_hint}")
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise DataError(f"{split_dir} has no class folders. Expected layout: {layout_hint}")
    return classes


def select_classes(classes: Sequence[str], class_subset: int | Sequence[str] | None) -> list[str]:
    """The classes a limited-data setting keeps: ``N`` evenly spaced over the sorted list, or explicit names."""
    if class_subset is None:
        return list(classes)
    if isinstance(class_subset, int):
        if not 1 <= class_subset <= len(classes):
            raise DataError(f"data.class_subset={class_subset} but the dataset has {len(classes)} classes")
        step = len(classes) / class_subset
        return [classes[int(i * step)] for i in range(class_subset)]
    missing = sorted(set(class_subset) - set(classes))
    if missing:
        raise DataError(f"data.class_subset names classes that are not folders: {missing[:10]}")
    return sorted(class_subset)


class ImageFolderDataset(Dataset):
    """Images in ``<split_dir>/<class>/<file>``; items are ``{"image": tensor, "target": int, "index": int}``.

    Args:
        split_dir: folder holding one sub-folder per class.
        classes: the class folder names to read, in label order.
        transform: PIL image -> tensor, or -> dict of tensors (``{"image", "teacher_image"}``), merged into the item.
        subset_fraction: keep this fraction of each class's images (chosen with ``seed``, deterministic).
        seed: seed of the subset choice.
        on_corrupt: ``raise`` stops on an undecodable file; ``skip`` returns ``None`` for it (the collate drops
            it and counts it) and logs the file once.
        layout_hint: the expected layout, quoted in errors.
        item_seed: when set, the transform's random draws (torch's generator) are seeded by ``(item_seed,
            index)``: an evaluation split's random views (BYOL's) are then a function of the sample, the same
            whichever process, worker or batch reads it (DDP validation agrees with one process).
    """

    def __init__(
        self,
        split_dir: str | os.PathLike,
        classes: Sequence[str],
        transform: Callable | None = None,
        subset_fraction: float = 1.0,
        seed: int = 0,
        on_corrupt: OnCorrupt = "raise",
        layout_hint: str = "<split>/<class>/<image>.JPEG",
        item_seed: int | None = None,
    ) -> None:
        if not 0 < subset_fraction <= 1:
            raise DataError(f"data.subset_fraction must be in (0, 1], got {subset_fraction}")
        if on_corrupt not in ("raise", "skip"):
            raise DataError(f"data.on_corrupt must be 'raise' or 'skip', got {on_corrupt!r}")
        self.split_dir = Path(split_dir)
        self.classes = list(classes)
        self.transform = transform
        self.on_corrupt = on_corrupt
        self.item_seed = item_seed
        self.samples: list[tuple[str, int]] = []
        for label, name in enumerate(self.classes):
            folder = self.split_dir / name
            if not folder.is_dir():
                raise DataError(
                    f"class folder {folder} is missing (it exists in the training split). "
                    f"Expected layout: {layout_hint}"
                )
            files = sorted(e.path for e in os.scandir(folder) if e.name.lower().endswith(IMAGE_EXTENSIONS))
            if not files:
                raise DataError(
                    f"class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}). "
                    "Add its images or remove the folder."
                )
            if subset_fraction < 1:
                keep = max(1, round(len(files) * subset_fraction))
                files = sorted(random.Random(f"{seed}:{name}").sample(files, keep))
            self.samples.extend((f, label) for f in files)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict | None:
        path, target = self.samples[index]
        try:
            image = load_rgb(path)
        except CorruptFileError as err:
            if self.on_corrupt == "raise":
                raise
            log_skipped(err)
            return None
        if self.transform is not None and self.item_seed is not None:
            with torch.random.fork_rng(devices=[]):  # the caller's generator state is left as it was
                torch.manual_seed(self.item_seed * 1_000_003 + index)
                image = self.transform(image)
        elif self.transform is not None:
            image = self.transform(image)
        if isinstance(image, dict):
            return {**image, "target": target, "index": index}
        return {"image": image, "target": target, "index": index}


def collate_skipping_corrupt(items: list[dict | None]) -> dict:
    """``default_collate`` over the decodable items; ``batch["skipped"]`` counts the dropped ones."""
    kept = [item for item in items if item is not None]
    if not kept:
        raise DataError(f"every sample of a batch of {len(items)} was corrupt; check the dataset")
    batch = default_collate(kept)
    batch["skipped"] = torch.tensor(len(items) - len(kept))
    return batch
