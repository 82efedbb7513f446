"""Launchers: the sbatch file matches the trainer; a two-node run started with `launch torchrun`'s command trains."""

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.distributed.run import get_args_parser as torchrun_parser

from experiments.__main__ import main as experiments_main
from experiments.errors import ConfigError
from experiments.launch import main as launch_main

REPO = Path(__file__).resolve().parents[2]
SMALL = str(REPO / "configs/visformer/visformer_small_in1k.yaml")


def test_sbatch_file_matches_trainer_and_requeues(tmp_path, capsys):
    out = tmp_path / "job.sbatch"
    assert launch_main(["slurm", "--config", SMALL, "--nodes", "4", "--gpus_per_node", "8", "--partition", "a100",
                        "--time", "2-00:00:00", "--output", str(out)]) == 0  # fmt: skip
    text = out.read_text()
    assert "#SBATCH --nodes=4" in text and "#SBATCH --ntasks-per-node=8" in text and "#SBATCH --gres=gpu:8" in text
    assert "#SBATCH --signal=SIGUSR1@90" in text and "#SBATCH --requeue" in text
    assert "#SBATCH --partition=a100" in text and "#SBATCH --time=2-00:00:00" in text
    srun = [line for line in text.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1
    assert srun[0].startswith(f"srun {shlex.quote(sys.executable)} -m experiments fit --config {SMALL} ")
    assert "--trainer.num_nodes 4" in srun[0] and "--trainer.devices 8" in srun[0]
    assert "--ckpt_path last" in srun[0] and "--run_name visformer_small_in1k" in srun[0]


def test_launch_with_devices_other_than_the_config_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="trainer.devices=8 per node but the launch asks for 4"):
        launch_main(
            ["slurm", "--config", SMALL, "--nodes", "1", "--gpus_per_node", "4", "--output", str(tmp_path / "x")]
        )


def test_unwritable_sbatch_path_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot write the sbatch file"):
        launch_main(["slurm", "--config", SMALL, "--nodes", "1", "--output", str(blocker / "job.sbatch")])


def test_script_runs_the_launching_python_unless_python_is_given(tmp_path, capsys):
    out = tmp_path / "job.sbatch"
    assert launch_main(["slurm", "--config", SMALL, "--nodes", "2", "--output", str(out)]) == 0
    srun = [line for line in out.read_text().splitlines() if line.startswith("srun ")]
    assert srun == [f"srun {shlex.quote(sys.executable)} -m experiments fit --config {SMALL} --trainer.num_nodes 2 "
                    "--trainer.devices 8 --run_name visformer_small_in1k --ckpt_path last"]  # fmt: skip
    assert launch_main(["slurm", "--config", SMALL, "--output", str(out), "--python", "/opt/env/bin/python"]) == 0
    assert "srun /opt/env/bin/python -m experiments fit --config " in out.read_text()
    capsys.readouterr()
    assert launch_main(["torchrun", "--config", SMALL, "--nodes", "2", "--node_rank", "1", "--master_addr", "h0",
                        "--trainer.max_epochs", "3"]) == 0  # fmt: skip
    words = shlex.split(capsys.readouterr().out)
    assert words[:3] == [sys.executable, "-m", "torch.distributed.run"]
    torchrun = torchrun_parser().parse_args(words[3:])  # what torchrun itself makes of the command
    assert (torchrun.nnodes, torchrun.nproc_per_node, torchrun.node_rank, torchrun.master_addr) == ("2", "8", 1, "h0")
    assert torchrun.module and torchrun.training_script == "experiments"
    assert torchrun.training_script_args == ["fit", "--config", SMALL, "--trainer.num_nodes", "2",
                                             "--trainer.devices", "8", "--run_name", "visformer_small_in1k",
                                             "--trainer.max_epochs", "3"]  # fmt: skip


@pytest.mark.parametrize(
    "option, value, key, nearest",
    [
        ("--trainer.max_epoch", "3", "trainer.max_epoch", "trainer.max_epochs"),  # a prefix is not the key
        ("--data.init_args.batch_sise", "64", "data.init_args.batch_sise", "data.init_args.batch_size"),
    ],
)
def test_misspelled_fit_option_is_refused_before_anything_is_written(tmp_path, capsys, option, value, key, nearest):
    out = tmp_path / "job.sbatch"
    with pytest.raises(SystemExit) as exit_:
        launch_main(["slurm", "--config", SMALL, "--output", str(out), option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 3 and key in err[0] and nearest in err[0], err
    assert not out.exists()


def test_misspelled_key_in_the_config_file_is_refused(tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text(f"base: {Path(SMALL).resolve()}\ntrainer:\n  max_epohcs: 3\n")
    out = tmp_path / "job.sbatch"
    with pytest.raises(SystemExit) as exit_:
        launch_main(["slurm", "--config", str(config), "--output", str(out)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 3 and "max_epohcs" in err[0] and "typo.yaml" in err[0] and "trainer.max_epochs" in err[0], err
    assert not out.exists()


def test_misspelled_launch_option_names_the_nearest_launch_option(tmp_path, capsys):
    out = tmp_path / "job.sbatch"
    argv = ["launch", "slurm", "--config", SMALL, "--output", str(out), "--partiton", "gpu", "--time", "1:00:00"]
    assert experiments_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown option --partiton; did you mean --partition?" in err[0]
    assert not out.exists()
    with pytest.raises(ConfigError, match="launch sets --trainer.devices itself; pass --gpus_per_node instead"):
        launch_main(["slurm", "--config", SMALL, "--output", str(out), "--trainer.devices", "4"])
    assert not out.exists()


def test_hyphenated_flags_still_work_with_a_deprecation_line(tmp_path, capsys):
    out = tmp_path / "job.sbatch"
    assert launch_main(["slurm", "--config", SMALL, "--gpus-per-node", "8", "--run-name", "r1", "--cpus-per-task",
                        "4", "--output", str(out)]) == 0  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert "launch: --gpus-per-node is deprecated; use --gpus_per_node" in err
    assert "launch: --run-name is deprecated; use --run_name" in err
    assert "launch: --cpus-per-task is deprecated; use --cpus_per_task" in err
    text = out.read_text()
    assert "#SBATCH --cpus-per-task=4" in text and "--run_name r1 " in text and "#SBATCH --job-name=r1" in text


def test_help_is_quick_and_names_the_current_flags():
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "experiments", "launch", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    elapsed = time.perf_counter() - start
    assert done.returncode == 0 and "--gpus_per_node" in done.stdout and "--python" in done.stdout
    assert elapsed < 3, f"launch --help took {elapsed:.1f} s"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_node_torchrun_trains_in_sync_on_disjoint_shards(tmp_path, capsys):
    """Two 'nodes' on this machine (two torchrun agents, one CPU process each, gloo), started with the command that
    `launch torchrun` prints: identical weights on both ranks after training, disjoint halves of the data."""
    extra = [
        "--data.root", str(tmp_path / "toy"), "--data.toy_num_classes", "3",
        "--model.init_args.net.init_args.num_classes", "3",
        "--data.toy_train_per_class", "16", "--data.toy_eval_per_class", "4", "--data.batch_size", "8",
        "--data.num_workers", "0", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks+=tests.helpers.RecordRankState",
    ]  # fmt: skip
    port = free_port()
    config = str(REPO / "configs/visformer/toy.yaml")
    assert launch_main(["torchrun", "--config", config, "--nodes", "2", "--master_addr", "127.0.0.1",
                        "--master_port", str(port), *extra]) == 0  # fmt: skip
    command = capsys.readouterr().out.strip()
    torchrun = rf"{re.escape(shlex.quote(sys.executable))} -m torch.distributed.run"
    assert re.match(rf"{torchrun} --nnodes=2 --nproc_per_node=1 --node_rank=\$NODE_RANK ", command)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "RANK_STATE_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # fmt: skip
    nodes = [
        subprocess.Popen(
            ["bash", "-c", command],
            cwd=tmp_path,
            env={**env, "NODE_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), "\n".join(log[-3000:] for log in logs)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2 and ranks[0]["num_nodes"] == 2
    for key, value in ranks[0]["state_dict"].items():
        assert torch.equal(value, ranks[1]["state_dict"][key]), key
    shard0, shard1 = set(ranks[0]["indices"]), set(ranks[1]["indices"])
    assert not shard0 & shard1 and len(shard0) == len(shard1) == 24 and shard0 | shard1 == set(range(48))
