"""``python -m experiments launch slurm|torchrun --config C.yaml --nodes N --gpus-per-node G ...``.

* ``slurm`` writes an sbatch file whose ``srun`` starts one task per GPU running ``python -m experiments fit`` with
  matching ``--trainer.num_nodes`` / ``--trainer.devices``. ``--signal=SIGUSR1@90`` and ``--requeue`` let
  Lightning's SLURM environment save a checkpoint and requeue the job before the time limit or on pre-emption;
  the job runs ``fit --ckpt_path last`` under a fixed ``--run_name``, so the requeued job resumes in the same run
  directory.
* ``torchrun`` prints the ``torchrun`` command for clusters without SLURM (run it on every node with its
  ``--node_rank``).

No launcher logic beyond writing these commands: process groups, ranks and sharding are Lightning's.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import yaml

from experiments.errors import ConfigError


def config_trainer(config: str) -> dict:
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"config '{config}' does not exist")
    return (yaml.safe_load(path.read_text()) or {}).get("trainer", {}) or {}


def check_devices(config: str, nodes: int, devices: int, accelerator: str) -> None:
    """The config's per-node device count fixes the global batch (and so the scaled lr): a mismatch is an error."""
    if nodes < 1 or devices < 1:
        raise ConfigError(f"--nodes ({nodes}) and the devices per node ({devices}) must be >= 1")
    wanted = config_trainer(config).get("devices")
    if isinstance(wanted, int) and wanted != devices:
        raise ConfigError(
            f"{config} sets trainer.devices={wanted} per node but the launch asks for {devices} {accelerator}s "
            "per node; "
            f"the global batch and the scaled learning rate depend on it. Launch with {wanted} per node, or override "
            "data.batch_size so the global batch stays the paper's and pass --allow-device-change."
        )


def fit_arguments(config: str, nodes: int, devices: int, run_name: str, extra: list[str]) -> list[str]:
    return [
        "-m", "experiments", "fit", "--config", config, "--trainer.num_nodes", str(nodes),
        "--trainer.devices", str(devices), "--run_name", run_name, *extra,
    ]  # fmt: skip


def sbatch_script(
    config: str,
    nodes: int,
    gpus_per_node: int,
    run_name: str,
    partition: str | None = None,
    time: str | None = None,
    cpus_per_task: int = 10,
    extra: list[str] | None = None,
) -> str:
    """The sbatch file: one task per GPU, Lightning's requeue signal, resume from the run's last checkpoint."""
    fit = fit_arguments(config, nodes, gpus_per_node, run_name, ["--ckpt_path", "last", *(extra or [])])
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={run_name}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={gpus_per_node}",
        f"#SBATCH --gres=gpu:{gpus_per_node}",
        f"#SBATCH --cpus-per-task={cpus_per_task}",
        "#SBATCH --signal=SIGUSR1@90",
        "#SBATCH --requeue",
        f"#SBATCH --output=runs/slurm/{run_name}-%j.out",
    ]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    if time:
        lines.append(f"#SBATCH --time={time}")
    lines += [
        "",
        "# Lightning reads SLURM's environment: ranks, world size and the master address come from srun.",
        "export HF_HUB_OFFLINE=1",
        "mkdir -p runs/slurm",
        f"srun python {shlex.join(fit)}",
        "",
    ]
    return "\n".join(lines)


def torchrun_command(
    config: str,
    nodes: int,
    procs_per_node: int,
    run_name: str,
    master_addr: str = "$MASTER_ADDR",
    master_port: int = 29500,
    node_rank: str = "$NODE_RANK",
    extra: list[str] | None = None,
) -> str:
    """The torchrun command to run on every node (one process per device)."""
    fit = fit_arguments(config, nodes, procs_per_node, run_name, extra or [])
    launcher = [
        "torchrun", f"--nnodes={nodes}", f"--nproc_per_node={procs_per_node}", f"--node_rank={node_rank}",
        f"--master_addr={master_addr}", f"--master_port={master_port}",
    ]  # fmt: skip
    # keep $VARS unquoted so the shell on each node expands them
    return " ".join(launcher) + " " + shlex.join(fit)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments launch", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("target", choices=["slurm", "torchrun"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=None, help="devices (processes) per node")
    parser.add_argument("--accelerator", default="gpu", help="what the devices are (for messages and checks)")
    parser.add_argument("--partition")
    parser.add_argument("--time", help="SLURM time limit, e.g. 2-00:00:00")
    parser.add_argument("--cpus-per-task", type=int, default=10)
    parser.add_argument("--run-name", help="run folder under runs/ (default: config stem)")
    parser.add_argument("--output", help="sbatch file to write (default: runs/slurm/<run-name>.sbatch)")
    parser.add_argument("--master-addr", default="$MASTER_ADDR")
    parser.add_argument("--master-port", type=int, default=29500)
    parser.add_argument("--node-rank", default="$NODE_RANK")
    parser.add_argument("--allow-device-change", action="store_true", help="accept a device count the config lacks")
    args, extra = parser.parse_known_args(argv)
    devices = args.gpus_per_node or config_trainer(args.config).get("devices")
    if not isinstance(devices, int):
        raise ConfigError(f"{args.config} gives no integer trainer.devices; pass --gpus-per-node")
    if not args.allow_device_change:
        check_devices(args.config, args.nodes, devices, args.accelerator)
    run_name = args.run_name or Path(args.config).stem
    if args.target == "slurm":
        script = sbatch_script(args.config, args.nodes, devices, run_name, args.partition, args.time,
                               args.cpus_per_task, extra)  # fmt: skip
        out = Path(args.output or f"runs/slurm/{run_name}.sbatch")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(script)
        except OSError as err:
            raise ConfigError(f"cannot write the sbatch file {out}: {err}") from err
        print(f"wrote {out}; submit with: sbatch {out}", file=sys.stderr)
        print(script)
    else:
        print(torchrun_command(args.config, args.nodes, devices, run_name, args.master_addr, args.master_port,
                               args.node_rank, extra))  # fmt: skip
    return 0
