"""``python -m experiments launch slurm|torchrun --config C.yaml --nodes N --gpus_per_node G [fit's --key value ...]``.

* ``slurm`` writes an sbatch file whose ``srun`` starts one task per GPU running ``python -m experiments fit`` with
  matching ``--trainer.num_nodes`` / ``--trainer.devices``. ``--signal=SIGUSR1@90`` and ``--requeue`` let
  Lightning's SLURM environment save a checkpoint and requeue the job before the time limit or on pre-emption;
  the job runs ``fit --ckpt_path last`` under a fixed ``--run_name``, so the requeued job resumes in the same run
  directory.
* ``torchrun`` prints the torchrun command (``python -m torch.distributed.run``) for clusters without SLURM (run it
  on every node with its ``--node_rank``).

Both run the Python that ran ``launch`` (``--python`` names another). Options that are not launch's own go to
``fit``; they and the config are checked with fit's own parser before anything is written or printed: a key that
fit does not take fails here (exit code 2), not after the job leaves the queue. Old hyphenated spellings
(``--gpus-per-node``) still work, with a deprecation line.

No launcher logic beyond writing these commands: process groups, ranks and sharding are Lightning's.
"""

from __future__ import annotations

import argparse
import difflib
import shlex
import sys
from pathlib import Path

from experiments.configs import load_config
from experiments.errors import ConfigError
from experiments.flags import canonical_flags

# fit keys that launch sets itself from its own options
SET_BY_LAUNCH = {"--trainer.num_nodes": "--nodes", "--trainer.devices": "--gpus_per_node"}
RESUME = ["--ckpt_path", "last"]  # the sbatch job's fit resumes a requeued run


def config_trainer(config: str) -> dict:
    return load_config(config, resolve=False).get("trainer", {}) or {}


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
            "data.batch_size so the global batch stays the paper's and pass --allow_device_change."
        )


def fit_arguments(config: str, nodes: int, devices: int, run_name: str, extra: list[str]) -> list[str]:
    """``fit`` and its arguments, as ``python -m experiments`` takes them."""
    return [
        "fit", "--config", config, "--trainer.num_nodes", str(nodes), "--trainer.devices", str(devices),
        "--run_name", run_name, *extra,
    ]  # fmt: skip


def check_not_launch_options(extra: list[str], fit_options: set[str], own: list[str]) -> None:
    """ConfigError for an option that fit does not take but that is close to one of launch's own (``--partiton``),
    or for a fit key that launch sets itself (``--trainer.devices``)."""
    for token in extra:
        name = token.split("=", 1)[0]
        if name in SET_BY_LAUNCH:
            raise ConfigError(f"launch sets {name} itself; pass {SET_BY_LAUNCH[name]} instead")
        if not name.startswith("--") or "." in name or name in fit_options:
            continue
        close = difflib.get_close_matches(name[2:], [o[2:] for o in own], n=1, cutoff=0.75)
        if close:
            raise ConfigError(f"launch: unknown option {name}; did you mean --{close[0]}? (other options must be "
                              "fit's keys, e.g. --trainer.max_epochs)")  # fmt: skip


def check_fit_arguments(fit: list[str], extra: list[str], own: list[str]) -> None:
    """Parse ``fit`` (config file included) with SuiteCLI's parser, the one ``fit`` itself uses, instantiating
    nothing: fit's own error and exit code 2 (SystemExit) when fit would refuse them."""
    from experiments.cli import SuiteCLI

    class Parsed(Exception):
        """Stops SuiteCLI's __init__ once the arguments parsed, before it seeds and instantiates anything."""

    class ParseOnly(SuiteCLI):
        def parse_arguments(self, parser, args) -> None:
            check_not_launch_options(extra, set(self._subcommand_parsers["fit"]._option_string_actions), own)
            super().parse_arguments(parser, args)
            raise Parsed

    argv = sys.argv
    sys.argv = [argv[0], *fit]  # as experiments.cli.main passes them: SuiteCLI reads sys.argv (its errors too)
    try:
        ParseOnly()
    except Parsed:
        return
    finally:
        sys.argv = argv


def sbatch_script(
    config: str,
    nodes: int,
    gpus_per_node: int,
    run_name: str,
    partition: str | None = None,
    time: str | None = None,
    cpus_per_task: int = 10,
    extra: list[str] | None = None,
    python: str | None = None,
) -> str:
    """The sbatch file: one task per GPU, Lightning's requeue signal, resume from the run's last checkpoint."""
    fit = fit_arguments(config, nodes, gpus_per_node, run_name, [*RESUME, *(extra or [])])
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
        f"srun {shlex.quote(python or sys.executable)} -m experiments {shlex.join(fit)}",
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
    python: str | None = None,
) -> str:
    """The torchrun command to run on every node (one process per device), as ``python -m torch.distributed.run``
    so that the launcher and its workers run ``python``."""
    fit = fit_arguments(config, nodes, procs_per_node, run_name, extra or [])
    launcher = [
        "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc_per_node={procs_per_node}",
        f"--node_rank={node_rank}", f"--master_addr={master_addr}", f"--master_port={master_port}",
    ]  # fmt: skip
    # keep $VARS unquoted so the shell on each node expands them
    return f"{shlex.quote(python or sys.executable)} {' '.join(launcher)} -m experiments {shlex.join(fit)}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments launch", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("target", choices=["slurm", "torchrun"], help="write an sbatch file / print a torchrun command")
    parser.add_argument("--config", required=True, help="the fit config (checked with fit's parser)")
    parser.add_argument("--nodes", type=int, default=1, help="number of nodes (fit's --trainer.num_nodes)")
    parser.add_argument("--gpus_per_node", type=int, default=None,
                        help="devices (processes) per node (fit's --trainer.devices; default: config's)")  # fmt: skip
    parser.add_argument("--accelerator", default="gpu", help="what the devices are (for messages and checks)")
    parser.add_argument("--partition", help="SLURM partition")
    parser.add_argument("--time", help="SLURM time limit, e.g. 2-00:00:00")
    parser.add_argument("--cpus_per_task", type=int, default=10, help="SLURM CPUs per task (default: 10)")
    parser.add_argument("--run_name", help="run folder under runs/ (default: config stem)")
    parser.add_argument("--output", help="sbatch file to write (default: runs/slurm/<run_name>.sbatch)")
    parser.add_argument("--master_addr", default="$MASTER_ADDR", help="torchrun: address of node 0")
    parser.add_argument("--master_port", type=int, default=29500, help="torchrun: port on node 0")
    parser.add_argument("--node_rank", default="$NODE_RANK", help="torchrun: this node's rank (default: $NODE_RANK)")
    parser.add_argument("--python", help="interpreter the job runs (default: the one running launch, "
                        f"{sys.executable})")  # fmt: skip
    parser.add_argument("--allow_device_change", action="store_true", help="accept a device count the config lacks")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    own = [o for o in parser._option_string_actions if o.startswith("--") and o != "--help"]
    args, extra = parser.parse_known_args(canonical_flags(argv, parser._option_string_actions, prog="launch"))
    devices = args.gpus_per_node or config_trainer(args.config).get("devices")
    if not isinstance(devices, int):
        raise ConfigError(f"{args.config} gives no integer trainer.devices; pass --gpus_per_node")
    if not args.allow_device_change:
        check_devices(args.config, args.nodes, devices, args.accelerator)
    run_name = args.run_name or Path(args.config).stem
    python = args.python or sys.executable
    resume = RESUME if args.target == "slurm" else []
    check_fit_arguments(fit_arguments(args.config, args.nodes, devices, run_name, [*resume, *extra]), extra, own)
    if args.target == "slurm":
        script = sbatch_script(args.config, args.nodes, devices, run_name, args.partition, args.time,
                               args.cpus_per_task, extra, python)  # fmt: skip
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
                               args.node_rank, extra, python))  # fmt: skip
    return 0
