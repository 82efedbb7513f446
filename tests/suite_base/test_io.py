"""Atomic writes: a failed write leaves the previous file intact and no temporary files."""

import json

import pytest
import torch

from experiments.io import AtomicCheckpointIO, atomic_write_json


def test_atomic_json_replaces_whole_file(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"b": 2})
    assert json.loads(path.read_text()) == {"b": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_failed_checkpoint_save_keeps_previous_checkpoint(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        io.save_checkpoint({"step": 2, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    """Checkpoints, metrics.json and toy folders get the modes open() and mkdir() would give them (group- and
    world-readable under umask 022), not mkstemp's 0600 / mkdtemp's 0700."""
    import os
    import stat

    from datamodules.toy import ensure_written

    def write(root, n):
        (root / "x.txt").write_text(str(n))

    before = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "metrics.json", {"a": 1})
        AtomicCheckpointIO().save_checkpoint({"w": torch.ones(1)}, tmp_path / "last.ckpt")
        toy = ensure_written(tmp_path / "toy", write, n=1)
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "last.ckpt").stat().st_mode) == file_mode
    assert stat.S_IMODE(toy.stat().st_mode) == dir_mode
    assert stat.S_IMODE((toy / "x.txt").stat().st_mode) == file_mode
