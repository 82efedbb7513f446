"""The STT benchmark (make bench-stt) runs end to end at a tiny size and appends its rows to a Markdown file."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import stt_speed  # noqa: E402


def test_stt_bench_writes_loader_and_step_rows(tmp_path):
    md = tmp_path / "bench.md"
    args = ["--device", "cpu", "--height", "64", "--width", "32", "--seq-len", "2", "--batch-size", "4", "--backbone",
            "resnet18", "--narrow", "--workers", "0", "--loader-batches", "2", "--steps", "1", "--data",
            str(tmp_path / "peds"), "--markdown", str(md)]  # fmt: skip
    assert stt_speed.main(args) == 0
    text = md.read_text()
    assert "## STT: tracklet loader and training step" in text
    assert "tracklet loader" in text and "frames/s |" in text
    assert "STT training step, resnet18 (narrow), fp32" in text
    assert (tmp_path / "peds" / "info" / "tracks_train_info.mat").is_file()
