"""The toy-data framework: deterministic, written once, atomically, in the real layout."""

import functools
import hashlib

import pytest

from datamodules.toy import MARKER, ensure_written
from datamodules.toy.shapes import SHAPES, write_shapes_imagefolder
from experiments.errors import DataError

OPTIONS = dict(num_classes=3, train_per_class=4, eval_per_class=2, img_size=32, seed=7)


def digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*.JPEG")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_toy_generator_is_deterministic(tmp_path):
    a = ensure_written(tmp_path / "a", write_shapes_imagefolder, **OPTIONS)
    b = ensure_written(tmp_path / "b", write_shapes_imagefolder, **OPTIONS)
    assert digest(a) == digest(b)
    c = ensure_written(tmp_path / "c", write_shapes_imagefolder, **dict(OPTIONS, seed=8))
    assert digest(c) != digest(a)


def test_toy_imagenet_layout(tmp_path):
    root = ensure_written(tmp_path / "t", write_shapes_imagefolder, **OPTIONS)
    for split, count in {"train": 4, "val": 2, "test": 2}.items():
        classes = sorted(p.name for p in (root / split).iterdir())
        assert classes == sorted(SHAPES[:3])
        assert all(len(list((root / split / c).glob("*.JPEG"))) == count for c in classes)
    assert (root / MARKER).is_file()


def test_toy_written_once_and_options_mismatch_is_an_error(tmp_path):
    root = ensure_written(tmp_path / "t", write_shapes_imagefolder, **OPTIONS)
    first = (root / "train" / SHAPES[0]).stat().st_mtime_ns
    ensure_written(root, write_shapes_imagefolder, **OPTIONS)
    assert (root / "train" / SHAPES[0]).stat().st_mtime_ns == first
    with pytest.raises(DataError, match="toy dataset written with"):
        ensure_written(root, write_shapes_imagefolder, **dict(OPTIONS, num_classes=4))


def test_interrupted_toy_write_leaves_nothing(tmp_path):
    def failing(root, **options):
        write_shapes_imagefolder(root, **options)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_written(tmp_path / "t", failing, **OPTIONS)
    assert not (tmp_path / "t").exists()
    assert list(tmp_path.iterdir()) == []


def test_concurrent_writers_end_with_one_complete_copy(tmp_path):
    """Two nodes' prepare_data on a shared file system: the one that finishes second keeps the first one's copy."""
    root = tmp_path / "t"

    @functools.wraps(write_shapes_imagefolder)  # the same generator, as both nodes run the same code
    def racing(folder, **options):
        write_shapes_imagefolder(folder, **options)
        ensure_written(root, write_shapes_imagefolder, **options)  # the other writer wins meanwhile

    ensure_written(root, racing, **OPTIONS)
    assert (root / MARKER).is_file() and len(list(root.rglob("*.JPEG"))) == 3 * (4 + 2 + 2)
    assert [p.name for p in tmp_path.iterdir()] == ["t"]
