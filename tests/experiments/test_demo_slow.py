"""`make demo` end to end (slow: about two minutes): the toy config reaches at least 3x chance test top-1."""

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_toy_visformer_reaches_three_times_chance(tmp_path, monkeypatch, capsys):
    from experiments.__main__ import main

    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "configs/visformer/toy.yaml", tmp_path / "toy.yaml")
    assert main(["demo", "--config", "toy.yaml", "--trainer.enable_progress_bar", "false"]) == 0
    out = capsys.readouterr().out
    assert "test top-1" in out and "run dir" in out
    metrics = json.loads(next((tmp_path / "runs" / "toy").glob("version_*/metrics.json")).read_text())
    assert metrics["test"]["test/top1"] >= 3 * 0.1, metrics  # 10 shape classes
