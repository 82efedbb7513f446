"""`experiments bench`: timing, FLOPs and the Markdown row, on the toy config and on a real-data config without data."""

from pathlib import Path

import pytest

from experiments.bench import append_markdown, markdown_row, run

REPO = Path(__file__).resolve().parents[2]
TINY = ["--data.init_args.toy_num_classes", "3", "--model.init_args.net.init_args.num_classes", "3",
        "--data.init_args.toy_train_per_class", "8", "--data.init_args.toy_eval_per_class", "2",
        "--data.init_args.num_workers", "0"]  # fmt: skip


def test_bench_reports_steps_flops_and_loader(tmp_path):
    r = run(str(REPO / "configs/visformer/toy.yaml"), 2, 1, 4, False, None, 2,
            [*TINY, "--data.init_args.root", str(tmp_path / "toy")])  # fmt: skip
    assert r["device"] == "cpu" and r["precision"] == "32-true" and r["batch"] == 4
    assert r["step_s"] > 0 and r["samples_per_s"] == pytest.approx(4 / r["step_s"])
    # the toy Visformer's forward pass: ~0.03 GFLOPs per 64 px image (2 x MACs of its convolutions and matmuls)
    assert 0.005 < r["fwd_gflops_per_sample"] < 0.2
    assert r["mfu"] is None and r["loader"]["samples_per_s"] > 0
    out = tmp_path / "bench.md"
    append_markdown(str(out), markdown_row(r))
    append_markdown(str(out), markdown_row(r))
    text = out.read_text()
    assert text.count("| cpu | toy.yaml | 32-true | 4 | no |") == 2 and text.count("## Benchmarks by config") == 1


def test_bench_on_a_real_data_config_without_its_data_still_measures_the_model():
    r = run(str(REPO / "configs/visformer/visformer_tiny_in1k.yaml"), 1, 1, 2, False, None, 2, [])
    # Visformer-Ti: 1.27 GMACs = 2.54 GFLOPs per 224 px image
    assert r["fwd_gflops_per_sample"] == pytest.approx(2.536, rel=0.01)
    assert "does not exist" in r["loader"]["skipped"]


def test_mfu_uses_the_cards_bf16_peak(monkeypatch, tmp_path):
    import experiments.bench as bench

    monkeypatch.setattr(bench, "device_peak_flops", lambda: ("NVIDIA H100 80GB HBM3", 989e12))
    r = run(str(REPO / "configs/visformer/toy.yaml"), 2, 1, 4, False, "32-true", 0,
            [*TINY, "--data.init_args.root", str(tmp_path / "toy")])  # fmt: skip
    expected = 3 * r["fwd_gflops_per_sample"] * 1e9 * r["samples_per_s"] / 989e12
    assert r["mfu"] == pytest.approx(expected) and "%" in markdown_row(r).split(" | ")[-2]
    assert bench.PEAK_BF16_FLOPS["H100"] == 989e12
