"""The DE-Net step benchmark runs (smallest size) and the table's toy steps pass DAMSM's best checkpoint to DE-Net."""

from __future__ import annotations

import sys
from pathlib import Path

from experiments.table import reproduce_commands

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))


def test_step_benchmark_smallest_size(tmp_path, capsys):
    import denet_step

    out = tmp_path / "bench.md"
    assert denet_step.main(["--image-size", "8", "--batch-size", "2", "--ngf", "4", "--cond-dim", "8", "--vocab", "5",
                            "--damsm-backbone", "resnet10t", "--damsm-input", "32", "--device", "cpu", "--steps", "1",
                            "--warmup", "0", "--markdown", str(out)]) == 0  # fmt: skip
    text = out.read_text()
    assert "## DE-Net training step" in text and "| 8 px, batch 2, ngf 4, DAMSM resnet10t@32 | fp32 |" in text


def test_reproduce_pretrains_damsm_then_passes_its_best_checkpoint():
    steps = reproduce_commands("denet", "toy")
    assert "configs/denet/toy_damsm.yaml" in steps[0]
    assert "--model.init_args.damsm.init_args.checkpoint 'runs/toy_damsm/version_*/checkpoints/best.ckpt'" in steps[1]
