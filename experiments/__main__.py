"""``python -m experiments <command>``.

fit | validate | test | predict   LightningCLI (see :mod:`experiments.cli`)
demo --config X.yaml              fit the toy config, test its best checkpoint, print the run and its metrics
table <paper> [--runs runs]       the paper's table: paper numbers beside measured ones
reproduce <paper> --scale toy|full [--runs runs] [--force] [--key value ...]   run every row of the paper's table,
                                  then print the table (finished steps skipped unless --force; failures listed);
                                  each --key value (--trainer.max_epochs 3) goes to every fit/test/predict step
                                  (not to evaluate steps: it says which); a row with `seeds: [0, 1, 2]` runs
                                  once per seed (--seed_everything S, run folder <name>__seedS) and prints mean ± std
launch slurm|torchrun --config X.yaml --nodes N --gpus-per-node G   write an sbatch file / print torchrun
data check --config X.yaml        validate the dataset a config points at, without training
data extract --config X.yaml      video datasets: embed every clip once with a frozen backbone (feature shards)
sweep --config X.yaml --space S.yaml --trials N   Optuna search over config keys (resumable, pruned)
bench --config X.yaml [--steps N] [--compile]     step time, samples/s, memory, FLOPs, MFU; loader alone
rate_curve --runs DIR[=LABEL] ... --out F.png    compression: PSNR / semantic recovery vs bits per pixel
evaluate --config X.yaml [--ckpt C] [--backbone B]   frozen-backbone linear / k-NN / dense evaluations
"""

from __future__ import annotations

import importlib
import json
import sys
import time

from experiments.errors import ConfigError, find_suite_error

LIGHTNING_COMMANDS = {"fit", "validate", "test", "predict"}
# commands whose module has main(argv) -> exit code
MODULE_COMMANDS = {
    "launch": "experiments.launch",
    "bench": "experiments.bench",
    "sweep": "experiments.sweep",
    "data": "experiments.data",
    "rate_curve": "experiments.rate_curve",
    "evaluate": "experiments.evaluate",
}
USAGE = __doc__


def demo(args: list[str]) -> int:
    from experiments.cli import main as cli_main

    start = time.time()
    cli = cli_main(["fit", *args, "--test_after_fit", "true"])
    metrics = json.loads((cli.run_dir / "metrics.json").read_text())
    num_classes = cli.datamodule.num_classes
    top1 = metrics["test"].get("test/top1")
    chance = 1.0 / num_classes
    print("\n=== demo finished ===")
    print(f"run dir      : {cli.run_dir}")
    print(f"best ckpt    : {metrics.get('best', {}).get('ckpt')}")
    print(f"test top-1   : {top1:.4f}  (chance {chance:.4f}, {top1 / chance:.1f}x chance, {num_classes} classes)")
    print(f"wall time    : {time.time() - start:.0f} s")
    return 0


def table(args: list[str]) -> int:
    import argparse

    from experiments.table import available_tables, render_table

    parser = argparse.ArgumentParser(prog="python -m experiments table")
    parser.add_argument("paper", help=f"one of: {', '.join(available_tables())}")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--scale", choices=["toy", "full", "any"], default="any")
    opts = parser.parse_args(args)
    print(render_table(opts.paper, opts.runs, opts.scale))
    return 0


def run_command(command: list[str], runs: str) -> None:
    """Run one ``python -m experiments`` argument list in this process, writing runs under ``runs``."""
    if command[0] == "evaluate":
        from experiments.evaluate import main as evaluate_main

        evaluate_main([*command[1:], "--runs_dir", runs])
    else:
        from experiments.cli import main as cli_main

        cli_main([*command, "--runs_dir", runs])


def check_overrides(extra: list[str], seeded: bool) -> list[str]:
    """``extra`` if it is ``--key value`` / ``--key=value`` pairs that ``reproduce`` may pass on; ConfigError if not."""
    i = 0
    while i < len(extra):
        token = extra[i]
        pair = token.startswith("--") and ("=" in token or (i + 1 < len(extra) and not extra[i + 1].startswith("--")))
        if not pair:
            raise ConfigError(f"reproduce: {token!r} is not part of a --key value override; overrides follow the "
                              "paper, e.g. reproduce tel --scale full --trainer.max_epochs 3")  # fmt: skip
        key = token.split("=", 1)[0]
        if key in ("--run_name", "--runs_dir"):
            raise ConfigError(f"reproduce: {key} cannot be overridden (each row names its own run folder; use --runs "
                              "for the folder they go in)")  # fmt: skip
        if key == "--seed_everything" and seeded:
            raise ConfigError("reproduce: --seed_everything cannot be overridden here: the table has rows with "
                              "`seeds`, which set it per run")  # fmt: skip
        i += 1 if "=" in token else 2
    return extra


def reproduce(args: list[str]) -> int:
    import argparse
    import shlex

    from experiments.table import finished_run, load_table, planned_steps, render_table

    parser = argparse.ArgumentParser(
        prog="python -m experiments reproduce",
        allow_abbrev=False,  # an override must never be read as an abbreviation of --scale / --runs
        epilog="Further --key value pairs are appended to every fit/test/predict step of every row.",
    )
    parser.add_argument("paper")
    parser.add_argument("--scale", choices=["toy", "full"], default="toy")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--force", action="store_true", help="rerun steps whose run already finished")
    parser.add_argument("--dry-run", action="store_true", help="print the commands (overrides included), run nothing")
    opts, extra = parser.parse_known_args(args)
    _, rows = load_table(opts.paper)
    overrides = check_overrides(extra, any(row.seeds for row in rows))
    for row in rows:
        if row.commands(opts.scale) is None:
            print(f"skip: {row.label} (no {opts.scale} variant)", file=sys.stderr)
    failures: list[str] = []
    for row, seed, command in planned_steps(rows, opts.scale, opts.runs):
        if command[0] == "evaluate":  # its own parser takes none of the LightningCLI keys, nor a seed
            if overrides:
                print(f"note: {row.label}: overrides {' '.join(overrides)} not passed to its evaluate step "
                      "(experiments/evaluate.py has its own flags)", file=sys.stderr)  # fmt: skip
            if seed is not None:
                print(f"note: {row.label}: its evaluate step takes no --seed_everything (the evaluation config's "
                      f"`seed` holds); seed {seed} changes only the steps before it", file=sys.stderr)  # fmt: skip
        else:
            command = [*command, *overrides]
        done = None if opts.force else finished_run(command, opts.runs)
        if done is not None:
            print(f"done: {row.label}: {done} already ran python -m experiments {' '.join(command)} (--force reruns)",
                  file=sys.stderr)  # fmt: skip
            continue
        if opts.dry_run:
            print(f"python -m experiments {shlex.join([*command, '--runs_dir', opts.runs])}  # {row.label}")
            continue
        print(f"run: {row.label}: python -m experiments {' '.join(command)}", file=sys.stderr)
        try:
            run_command(command, opts.runs)
        except (Exception, SystemExit) as err:  # one failing row must not stop the others; summarised at the end
            message = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            failures.append(f"{row.label}: {type(err).__name__}: {message}")
            print(f"failed: {failures[-1]}", file=sys.stderr)
    if opts.dry_run:
        return 0
    print(render_table(opts.paper, opts.runs, opts.scale))
    if failures:
        print(f"{len(failures)} step(s) failed:", *failures, sep="\n  ", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command in LIGHTNING_COMMANDS:
            from experiments.cli import main as cli_main

            cli_main([command, *rest])
            return 0
        if command == "demo":
            return demo(rest)
        if command == "table":
            return table(rest)
        if command == "reproduce":
            return reproduce(rest)
        if command in MODULE_COMMANDS:
            return importlib.import_module(MODULE_COMMANDS[command]).main(rest)
    except Exception as exc:
        err = find_suite_error(exc)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
