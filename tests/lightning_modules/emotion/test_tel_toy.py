"""TEL on the toy clips (video + subtitles, weak labels): localization far above chance after about a minute on the
CPU, and the timeline picture is written."""

from __future__ import annotations

import json

import numpy as np

from datamodules.tel_annotations import read_tel
from experiments.cli import main as cli_main

BUDGET = [
    "--data.init_args.toy_train", "96", "--data.init_args.toy_val", "16", "--data.init_args.toy_test", "40",
    "--data.init_args.num_workers", "0", "--trainer.max_epochs", "4", "--trainer.check_val_every_n_epoch", "4",
    "--trainer.enable_progress_bar", "false", "--model.init_args.optim.warmup_epochs", "0",
    "--model.init_args.optim.warmup_steps", "3", "--test_after_fit", "true",
]  # fmt: skip


def chance_segment_map(test_json, num_classes: int) -> float:
    """Expected segment-level mAP of random scores: per class, AP = its share of positive units."""
    labels = np.concatenate([c.unit_labels()[:, :num_classes] for c in read_tel(test_json)])
    present = labels.any(0)
    return 100 * float(labels.mean(0)[present].mean())


def toy_metrics(config: str, root, runs, extra=()) -> dict:
    cli_main(["fit", "--config", config, "--runs_dir", str(runs), "--run_name", "toy",
              "--data.init_args.root", str(root), *BUDGET, *extra])  # fmt: skip
    return json.loads(max((runs / "toy").glob("version_*/metrics.json")).read_text())["test"]


def test_toy_tel_localizes_emotions_far_above_chance(tmp_path):
    root = tmp_path / "clips"
    metrics = toy_metrics("configs/tel/toy.yaml", root, tmp_path / "runs")
    chance = chance_segment_map(root / "test.json", 6)
    print(f"toy TEL: segment mAP {metrics['test/segment_map']:.1f} (chance {chance:.1f}), "
          f"instance mAP {metrics['test/instance_map']:.1f}")  # fmt: skip
    assert metrics["test/segment_map"] > 3 * chance, (metrics, chance)
    assert metrics["test/instance_map"] > 30, metrics
    assert list((tmp_path / "runs" / "toy").glob("version_*/pictures/test_timelines_*.png"))
