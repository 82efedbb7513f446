"""The COSOC cost benchmark runs at a tiny size, and the table chains Exemplar -> COS (predict) -> COSOC."""

from __future__ import annotations

import sys
from pathlib import Path

from experiments.table import load_table, reproduce_commands

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))


def test_cost_benchmark_tiny(tmp_path):
    import cosoc_times

    out = tmp_path / "bench.md"
    args = ["--device", "cpu", "--cos-images", "1", "--episodes", "1", "--channels", "4", "4", "4", "8",
            "--img-size", "16", "--markdown", str(out)]  # fmt: skip
    assert cosoc_times.main(args) == 0
    text = out.read_text()
    assert "## COSOC: COS and SOC costs" in text
    assert "ResNet-12 4/4/4/8 @ 16 px, fp32 | COS, per 1,000 images: 31,000 view features |" in text
    assert "SOC, 5-way 5-shot episode (15 queries, 7 views)" in text


def test_reproduce_runs_exemplar_then_cos_then_cosoc_with_the_exemplar_checkpoint():
    steps = reproduce_commands("cosoc", "toy")
    ckpt = "--model.init_args.backbone.init_args.pretrained 'runs/toy_cosoc_exemplar/version_*/checkpoints/last.ckpt'"
    assert "fit --config configs/cosoc/toy_exemplar.yaml --run_name toy_cosoc_exemplar" in steps[0]
    assert steps[1].startswith("python -m experiments predict --config configs/cosoc/toy_cos.yaml") and ckpt in steps[1]
    assert "configs/cosoc/toy_cosoc.yaml --run_name toy_cosoc_1shot" in steps[2] and ckpt in steps[2]
    assert sum("toy_exemplar.yaml" in s for s in steps) == 1  # the shared stages run once
    full = reproduce_commands("cosoc", "full")
    assert any(s.startswith("python -m experiments predict --config configs/cosoc/tiered_cos.yaml") for s in full)
    _, rows = load_table("cosoc")
    assert {r.metric for r in rows} == {"test/acc_runs", "test/ci95_runs"}
