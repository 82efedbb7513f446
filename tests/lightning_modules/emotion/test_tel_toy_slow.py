"""TEL's cross-modal consensus on the toy clips, paired over seeds (``make test-slow``, about 15 minutes on 2 cores):
video + subtitles with the consensus term vs the same run without it (same data, seed, batches and budget).
Numbers: docs/tel.md."""

from __future__ import annotations

import json
import statistics

import pytest

from experiments.cli import main as cli_main

SEEDS = (0, 1, 2)


def run(config: str, root, runs, seed: int) -> dict:
    name = f"seed{seed}"
    cli_main(["fit", "--config", config, "--runs_dir", str(runs), "--run_name", name, "--seed_everything", str(seed),
              "--data.init_args.root", str(root), "--data.init_args.num_workers", "0",
              "--trainer.enable_progress_bar", "false", "--test_after_fit", "true"])  # fmt: skip
    return json.loads(max((runs / name).glob("version_*/metrics.json")).read_text())["test"]


@pytest.mark.slow
def test_consensus_helps_localization_on_the_toy(tmp_path):
    root = tmp_path / "clips"
    with_c = [run("configs/tel/toy.yaml", root, tmp_path / "consensus", s) for s in SEEDS]
    without = [run("configs/tel/toy_no_consensus.yaml", root, tmp_path / "none", s) for s in SEEDS]
    for key in ("test/segment_map", "test/instance_map"):
        a, b = [m[key] for m in with_c], [m[key] for m in without]
        print(f"{key}: consensus {a} (mean {statistics.mean(a):.2f}), without {b} (mean {statistics.mean(b):.2f})")
    seg_gain = statistics.mean(m["test/segment_map"] for m in with_c) - statistics.mean(
        m["test/segment_map"] for m in without
    )
    assert seg_gain > 0, (with_c, without)
