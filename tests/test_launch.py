"""Launchers: the sbatch file matches the trainer; a two-node run started with `launch torchrun`'s command trains."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments.errors import ConfigError
from experiments.launch import main as launch_main

REPO = Path(__file__).resolve().parents[1]
SMALL = str(REPO / "configs/visformer/visformer_small_in1k.yaml")


def test_sbatch_file_matches_trainer_and_requeues(tmp_path, capsys):
    out = tmp_path / "job.sbatch"
    assert launch_main(["slurm", "--config", SMALL, "--nodes", "4", "--gpus-per-node", "8", "--partition", "a100",
                        "--time", "2-00:00:00", "--output", str(out)]) == 0  # fmt: skip
    text = out.read_text()
    assert "#SBATCH --nodes=4" in text and "#SBATCH --ntasks-per-node=8" in text and "#SBATCH --gres=gpu:8" in text
    assert "#SBATCH --signal=SIGUSR1@90" in text and "#SBATCH --requeue" in text
    assert "#SBATCH --partition=a100" in text and "#SBATCH --time=2-00:00:00" in text
    srun = [line for line in text.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1
    assert f"python -m experiments fit --config {SMALL}" in srun[0]
    assert "--trainer.num_nodes 4" in srun[0] and "--trainer.devices 8" in srun[0]
    assert "--ckpt_path last" in srun[0] and "--run_name visformer_small_in1k" in srun[0]


def test_launch_with_devices_other_than_the_config_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="trainer.devices=8 per node but the launch asks for 4"):
        launch_main(
            ["slurm", "--config", SMALL, "--nodes", "1", "--gpus-per-node", "4", "--output", str(tmp_path / "x")]
        )


def test_unwritable_sbatch_path_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot write the sbatch file"):
        launch_main(["slurm", "--config", SMALL, "--nodes", "1", "--output", str(blocker / "job.sbatch")])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_node_torchrun_trains_in_sync_on_disjoint_shards(tmp_path, capsys):
    """Two 'nodes' on this machine (two torchrun agents, one CPU process each, gloo), started with the command that
    `launch torchrun` prints: identical weights on both ranks after training, disjoint halves of the data."""
    extra = [
        "--data.root", str(tmp_path / "toy"), "--data.toy_num_classes", "3", "--model.num_classes", "3",
        "--data.toy_train_per_class", "16", "--data.toy_eval_per_class", "4", "--data.batch_size", "8",
        "--data.num_workers", "0", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks+=tests.helpers.RecordRankState",
    ]  # fmt: skip
    port = free_port()
    config = str(REPO / "configs/visformer/toy.yaml")
    assert launch_main(["torchrun", "--config", config, "--nodes", "2", "--master-addr", "127.0.0.1",
                        "--master-port", str(port), *extra]) == 0  # fmt: skip
    command = capsys.readouterr().out.strip()
    assert re.match(r"torchrun --nnodes=2 --nproc_per_node=1 --node_rank=\$NODE_RANK ", command)
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
