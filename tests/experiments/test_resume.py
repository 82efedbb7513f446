"""Resuming: `fit --ckpt_path last` continues in the same run directory, and a killed run resumes bit-identically."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--config", str(REPO / "configs/visformer/toy.yaml"), "--data.toy_train_per_class", "12",
    "--data.toy_eval_per_class", "4", "--data.toy_num_classes", "3", "--model.init_args.net.init_args.num_classes", "3",
    "--data.batch_size", "8", "--data.num_workers", "0", "--trainer.enable_progress_bar", "false",
    "--model.init_args.optim.warmup_epochs", "0.5",
]  # fmt: skip


def fit_in(folder, *args):
    from experiments.cli import main

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        return main(["fit", *TINY, "--data.root", str(folder / "toy"), *args])
    finally:
        os.chdir(cwd)


def test_resume_last_continues_in_the_same_run_dir(tmp_path):
    first = fit_in(tmp_path, "--trainer.max_epochs", "1")
    resumed = fit_in(tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert resumed.run_dir == first.run_dir
    assert [p.name for p in first.run_dir.parent.iterdir()] == ["version_0"]
    assert (first.run_dir / "metrics.part0.csv").is_file(), "the first segment's CSV log is kept"
    assert json.loads((first.run_dir / "metrics.json").read_text())["epoch"] == 2
    assert torch.load(first.run_dir / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 2  # epochs completed


def test_resume_last_without_checkpoint_starts_fresh(tmp_path):
    cli = fit_in(tmp_path, "--trainer.max_epochs", "1", "--ckpt_path", "last")
    assert cli.run_dir.name == "version_0" and (cli.run_dir / "checkpoints" / "last.ckpt").is_file()


def run_fit_process(folder, run_name, *args):
    cmd = [sys.executable, "-m", "experiments", "fit", *TINY, "--data.root", str(folder / "toy"), "--run_name",
           run_name, "--trainer.max_epochs", "2", *args]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_killed_run_resumes_bit_identically(tmp_path):
    straight = run_fit_process(tmp_path, "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = run_fit_process(tmp_path, "interrupted", "--trainer.callbacks+=tests.helpers.KillAfterEpoch")
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = run_fit_process(tmp_path, "interrupted", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = tmp_path / "runs"
    assert [p.name for p in (runs / "interrupted").iterdir()] == ["version_0"]
    a = torch.load(runs / "straight/version_0/checkpoints/last.ckpt", weights_only=False)
    b = torch.load(runs / "interrupted/version_0/checkpoints/last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] > 0
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
