"""Sweeps: trials run, a failing trial is recorded and skipped, the best config fits, a killed sweep resumes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from experiments.errors import ConfigError
from experiments.sweep import run_sweep

REPO = Path(__file__).resolve().parents[2]
TOY = str(REPO / "configs/visformer/toy.yaml")


def tiny(root):
    return [
        "--data.root", str(root), "--data.toy_train_per_class", "8", "--data.toy_eval_per_class", "4",
        "--data.toy_num_classes", "3", "--model.init_args.net.init_args.num_classes", "3", "--data.batch_size", "8",
        "--data.num_workers", "0", "--trainer.max_epochs", "1", "--model.init_args.optim.warmup_epochs", "0",
    ]  # fmt: skip


def write_space(path, space):
    path.write_text(yaml.safe_dump(space))
    return str(path)


def test_sweep_records_failures_and_writes_a_best_config_that_fits(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # warmup_steps 1000000 is longer than the run: that trial fails with a ConfigError, the sweep goes on
    space = write_space(tmp_path / "space.yaml", {
        "model.init_args.optim.warmup_steps": {"choices": [0, 1000000, 1]},
    })  # fmt: skip
    storage = f"sqlite:///{tmp_path / 'sweeps.db'}"
    style = {k: v for k, v in matplotlib.rcParams.items() if not k.startswith("backend")}  # Agg is chosen on purpose
    study = run_sweep(TOY, space, 3, storage, "toy", "grid", "val/top1", "maximize", str(tmp_path / "runs"), 0, False,
                      tiny(tmp_path / "data"))  # fmt: skip
    # optuna's plot sets the ggplot style; the sweep keeps it to its own figure (later figures keep their look)
    assert {k: v for k, v in matplotlib.rcParams.items() if not k.startswith("backend")} == style
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]
    # one line per trial as it ends, in the order they ran, with the best so far
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("trial ")]
    assert len(lines) == 3, lines
    for n, (line, trial) in enumerate(zip(lines, study.trials, strict=True), 1):
        assert line.startswith(f"trial {n}/3 (trial_{trial.number:03d})  ")
        assert f"model.init_args.optim.warmup_steps={trial.params['model.init_args.optim.warmup_steps']}" in line
        assert f"  {trial.state.name}  " in line
    best = max(t.value for t in study.trials if t.value is not None)
    assert lines[-1].endswith(f"(best {best:.4f}, trial_{study.best_trial.number:03d})")
    failed_line = next(line for line in lines if "  FAIL  " in line)
    assert "val/top1=-" in failed_line and "error: ConfigError" in failed_line and "warm-up" in failed_line
    failed = next(t for t in study.trials if t.state == TrialState.FAIL)
    assert failed.params["model.init_args.optim.warmup_steps"] == 1000000
    assert "warm-up" in failed.user_attrs["error"]
    out = tmp_path / "runs" / "sweeps" / "toy"
    assert (out / "optimization_history.png").stat().st_size > 1000
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert (
        best["model"]["init_args"]["optim"]["warmup_steps"]
        == study.best_trial.params["model.init_args.optim.warmup_steps"]
    )
    from experiments.cli import main as cli_main

    cli = cli_main(["fit", "--config", str(out / "best.yaml"), "--trainer.enable_progress_bar", "false"])
    assert cli.trainer.global_step > 0 and cli.run_dir.parent.name == "toy_best"
    # the study is persistent: asking for the same 3 trials again runs nothing new
    again = run_sweep(TOY, space, 3, storage, "toy", "grid", "val/top1", "maximize", str(tmp_path / "runs"), 0, False,
                      tiny(tmp_path / "data"))  # fmt: skip
    assert len(again.trials) == 3


def test_trial_line_for_pruned_and_before_any_complete_trial():
    from experiments.sweep import trial_line

    study = optuna.create_study(direction="maximize")
    pruned = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    pruned.report(0.25, step=1)
    study.tell(pruned, state=TrialState.PRUNED)
    line = trial_line(study, study.trials[0], "val/top1", 3)
    lr = study.trials[0].params["lr"]
    assert (
        line == f"trial 1/3 (trial_000)  lr={lr:.4g}  val/top1=0.2500 at epoch 1  PRUNED  0 s  (no complete trial yet)"
    )
    done = study.ask()
    study.tell(done, 0.5)
    assert trial_line(study, study.trials[1], "val/top1", 3).endswith(
        "val/top1=0.5000  COMPLETE  0 s  (best 0.5000, trial_001)"
    )


def test_space_key_missing_from_config_is_named(tmp_path):
    space = write_space(tmp_path / "space.yaml", {"model.init_args.optim.base_lrr": {"low": 1e-4, "high": 1e-2}})
    with pytest.raises(ConfigError, match="base_lrr"):
        run_sweep(TOY, space, 1, f"sqlite:///{tmp_path / 's.db'}", None, "tpe", "val/top1", "maximize",
                  str(tmp_path / "runs"), 0, False, tiny(tmp_path / "data"))  # fmt: skip


def test_unwritable_storage_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    space = write_space(tmp_path / "space.yaml", {"model.init_args.optim.base_lr": {"low": 1e-4, "high": 1e-2}})
    with pytest.raises(ConfigError, match="cannot write the sweep storage"):
        run_sweep(TOY, space, 1, f"sqlite:///{blocker / 'sub' / 's.db'}", None, "tpe", "val/top1", "maximize",
                  str(tmp_path / "runs"), 0, False, tiny(tmp_path / "data"))  # fmt: skip


@pytest.mark.slow
def test_killed_sweep_resumes_from_its_sqlite_file(tmp_path):
    space = write_space(tmp_path / "space.yaml", {"model.init_args.optim.base_lr": {"low": 1e-4, "high": 1e-2}})
    db = tmp_path / "sweeps.db"
    cmd = [sys.executable, "-m", "experiments", "sweep", "--config", TOY, "--space", space, "--trials", "3",
           "--storage", f"sqlite:///{db}", "--study", "toy", "--sampler", "random", "--runs", str(tmp_path / "runs"),
           *tiny(tmp_path / "data")]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill it once one trial has completed
        time.sleep(1)
        if db.exists():
            try:
                study = optuna.load_study(study_name="toy", storage=f"sqlite:///{db}")
            except KeyError:  # the file exists before the sweep has written its study record
                continue
            if study.get_trials(states=(TrialState.COMPLETE,)):
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(optuna.load_study(study_name="toy", storage=f"sqlite:///{db}").get_trials(
        states=(TrialState.COMPLETE,)))  # fmt: skip
    assert 1 <= done_before < 3
    resumed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{db}")
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED))
    assert len(finished) == 3 and len(study.get_trials(states=(TrialState.RUNNING,))) == 0
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) >= done_before
    assert (tmp_path / "runs" / "sweeps" / "toy" / "best.yaml").is_file()


def test_example_spaces_name_keys_of_the_toy_config():
    import re

    from experiments.sweep import load_space, resolved_config

    for space in sorted((REPO / "configs" / "sweeps").glob("*.yaml")):
        # a space is checked against the config its header's example command names (the Visformer toy otherwise)
        named = re.search(r"--config (\S+\.yaml)", space.read_text())
        cfg = resolved_config(str(REPO / named.group(1)) if named else TOY, [])
        assert load_space(str(space), cfg), space
