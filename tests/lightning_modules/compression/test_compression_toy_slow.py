"""Learning-by-compression's toy claim (make test-slow, about 8 minutes on 2 cores): along a lambda_rate sweep of
configs/compression/toy.yaml, trained with its weak labels (lambda_sem 0.004), more bits per pixel give a better PSNR
and a better semantic recovery (the frozen toy Visformer's accuracy on the reconstructions over its accuracy on the
originals). docs/compression.md records the label-free 5-point curve and the points with and without the labels;
this test runs 3 lambda_rate points at the config's lambda_sem and writes the figure next to them."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.__main__ import main as experiments_main
from experiments.cli import main as cli_main
from experiments.rate_curve import collect

DOCS_FIGURE = Path(__file__).resolve().parents[3] / "docs" / "figures" / "compression_toy_rate_curve_slow_test.png"


@pytest.mark.slow
def test_toy_rate_recovery_curve_is_monotone(tmp_path):
    runs = tmp_path / "runs"
    common = ["--runs_dir", str(runs), "--data.init_args.root", str(tmp_path / "shapes"),
              "--trainer.enable_progress_bar", "false"]  # fmt: skip
    cli_main(["fit", "--config", "configs/visformer/toy.yaml", *common, "--run_name", "judge"])
    judge = str(next((runs / "judge").glob("version_*/checkpoints/best.ckpt")))
    curve = ["--runs_dir", str(runs / "curve"), *common[2:], "--model.init_args.semantic_classifier", judge]
    lambdas = (0.0005, 0.008, 0.128)
    for lam in lambdas:
        cli_main(["fit", "--config", "configs/compression/toy.yaml", *curve, "--run_name", f"lambda_{lam}",
                  "--model.init_args.lambda_rate", str(lam)])  # fmt: skip
    rows = collect(runs / "curve", "toy")  # sorted by bpp
    for row in rows:
        print(f"lambda_rate {row['lambda_rate']} lambda_sem {row['lambda_sem']}: bpp {row['bpp']:.3f} "
              f"PSNR {row['psnr']:.2f} semantic recovery {row['semantic_recovery']:.3f} "
              f"weak acc {row['weak_acc']:.3f}")  # fmt: skip
    assert [r["lambda_rate"] for r in rows] == sorted(lambdas, reverse=True)  # more rate weight, fewer bits
    assert [r["psnr"] for r in rows] == sorted(r["psnr"] for r in rows)  # more bits, better PSNR
    recovery = [r["semantic_recovery"] for r in rows]
    assert recovery == sorted(recovery) and recovery[-1] > recovery[0] + 0.1, recovery
    DOCS_FIGURE.parent.mkdir(parents=True, exist_ok=True)
    out = str(DOCS_FIGURE)
    assert experiments_main(["rate_curve", "--runs", f"{runs / 'curve'}=toy conv codec", "--out", out]) == 0
