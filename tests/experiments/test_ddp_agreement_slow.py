"""Validation metrics agree between 1 and 2 processes (issue 27): for each task family, the toy config's ``validate``
runs from one checkpoint with 2 CPU processes under DDP (gloo) and with 1, and every ``val/`` metric must be equal to
float tolerance. A ``DistributedSampler`` pads the last rank by repeating samples and each rank sees half the data, so
this catches metrics that count a padded sample twice, gather without de-duplicating, or average per-rank means of
unequal halves.

The checkpoint is the toy config's model after a few training steps (so scores are not ties of a random model). Each
test writes its data, runs and checkpoint into its own ``tmp_path`` (``make test-slow`` runs them in any order).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

# family -> (toy config, its first stage's toy config and the key naming that stage's checkpoint, or None)
FAMILIES = {
    "classification": ("configs/visformer/toy.yaml", None),
    "mim": ("configs/itpn/toy_pixel.yaml", None),
    "retrieval": ("configs/loupe/toy_loupe.yaml", None),
    "emotion": ("configs/tel/toy.yaml", None),
    "editing": ("configs/denet/toy.yaml",
                ("configs/denet/toy_damsm.yaml", "--model.init_args.damsm.init_args.checkpoint")),
    "fewshot": ("configs/cosoc/toy_cc.yaml", None),
    "reid": ("configs/stt/toy.yaml", None),
    "ssl": ("configs/ediy/toy_ediy.yaml", None),
    "compression": ("configs/compression/toy.yaml", None),
    "detection": ("configs/downstream/toy_mask_rcnn.yaml", None),
    "segmentation": ("configs/downstream/toy_upernet.yaml", None),
}  # fmt: skip
# MIM's validation masks are drawn from each sample's dataset index, SSL's validation views seeded by it: before,
# they were drawn per rank (batch index, the worker's generator) and 2 processes disagreed (val/loss 0.9905 vs 0.9901,
# E-DIY 5.071 vs 5.032)
CASES = [pytest.param(family, *FAMILIES[family], id=family) for family in sorted(FAMILIES)]
TRAIN_STEPS = 4


def run_cli(args: list[str], cwd: Path, timeout: int = 1200, processes: int = 1) -> dict:
    """``python -m experiments <args>`` in a child process; returns its metrics.json (path printed on stdout). With
    ``processes`` > 1, Lightning must report that many DDP processes."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "experiments", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    if processes > 1:
        started = f"Starting with {processes} processes"
        assert started in done.stdout + done.stderr, f"{' '.join(args)}: no '{started}' line; not DDP?"
    lines = [line for line in done.stdout.splitlines() if line.startswith("metrics: ")]
    assert lines, f"no metrics line in the output of {' '.join(args)}:\n{done.stdout[-2000:]}"
    return json.loads(Path(lines[-1].removeprefix("metrics: ")).read_text())


def trained_checkpoint(config: str, tmp: Path, extra: list[str]) -> Path:
    """The config's model after ``TRAIN_STEPS`` optimizer steps (no validation, no warm-up, a cosine schedule), saved
    as ``last.ckpt``."""
    from experiments.configs import load_config
    from experiments.smoke import accepts, import_class

    name = Path(config).stem
    if accepts(import_class(load_config(str(REPO / config))["model"]["class_path"]), "optim"):
        # a warm-up longer than the run, or step milestones beyond it, are refused: the 4 steps only move the weights
        extra = [*extra, "--model.init_args.optim.warmup_steps", "0", "--model.init_args.optim.schedule", "cosine"]
    record = run_cli(["fit", "--config", str(REPO / config), *extra, "--runs_dir", str(tmp / "runs"),
                      "--run_name", f"train_{name}", "--trainer.max_steps", str(TRAIN_STEPS),
                      "--trainer.limit_val_batches", "0", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                      "--trainer.precision", "32-true"], tmp)  # fmt: skip
    assert record["global_step"] >= 1
    last = sorted((tmp / "runs" / f"train_{name}").glob("version_*/checkpoints/last.ckpt"))
    assert last, f"fit of {config} wrote no last.ckpt"
    return last[-1]


def validate(config: str, ckpt: Path, tmp: Path, extra: list[str], devices: int) -> dict:
    """The whole validation set (a config's ``limit_val_batches`` takes its first batches, which are other images
    when each of 2 processes reads every other sample)."""
    strategy = ["--trainer.strategy", "ddp"] if devices > 1 else ["--trainer.strategy", "auto"]
    record = run_cli(["validate", "--config", str(REPO / config), *extra, "--ckpt_path", str(ckpt),
                      "--runs_dir", str(tmp / "runs"), "--run_name", f"validate_{devices}", "--trainer.accelerator",
                      "cpu", "--trainer.devices", str(devices), "--trainer.num_nodes", "1", *strategy,
                      "--trainer.precision", "32-true", "--trainer.limit_val_batches", "1.0"], tmp,
                     processes=devices)  # fmt: skip
    return record["val"]


@pytest.mark.parametrize(("family", "config", "first_stage"), CASES)
def test_validation_metrics_agree_between_one_and_two_processes(family, config, first_stage, tmp_path):
    extra = ["--data.init_args.root", str(tmp_path / "data")]
    if first_stage is not None:
        first_config, key = first_stage
        extra += [key, str(trained_checkpoint(first_config, tmp_path, extra))]  # the same data (DE-Net's vocabulary)
    ckpt = trained_checkpoint(config, tmp_path, extra)
    one = validate(config, ckpt, tmp_path, extra, devices=1)
    two = validate(config, ckpt, tmp_path, extra, devices=2)
    assert one, f"{config}: validate logged no val/ metric"
    assert sorted(one) == sorted(two), f"{family}: metric names differ between 1 and 2 processes"
    differ = {
        key: (one[key], two[key]) for key in one if not math.isclose(one[key], two[key], rel_tol=1e-4, abs_tol=1e-5)
    }
    assert not differ, f"{family} ({config}): 1 process vs 2 processes differ: {differ}"
