"""``python -m experiments <command>``.

fit | validate | test | predict   LightningCLI (see :mod:`experiments.cli`)
demo --config X.yaml              fit the toy config, test its best checkpoint, print the run and its metrics
table <paper> [--runs_dir runs]   the paper's table: paper numbers beside measured ones
reproduce <paper> --scale toy|full [--runs_dir runs] [--force] [--dry_run] [--key value ...]
                                  run every row of the paper's table, then print the table (finished steps
                                  skipped unless --force; failures listed); each --key value
                                  (--trainer.max_epochs 3) goes to every fit/test/predict step (not to evaluate
                                  steps: it says which); a row with `seeds: [0, 1, 2]` runs once per seed
                                  (--seed_everything S, run folder <name>__seedS) and prints mean ± std
launch slurm|torchrun --config X.yaml --nodes N --gpus_per_node G   write an sbatch file / print torchrun
data check --config X.yaml        validate the dataset a config points at, without training
data extract --config X.yaml      video datasets: embed every clip once with a frozen backbone (feature shards)
sweep --config X.yaml --space S.yaml --trials N   Optuna search over config keys (resumable, pruned)
bench --config X.yaml [--steps N] [--data.batch_size B] [--compile]
                                  step time, samples/s, memory, FLOPs, MFU; loader alone
rate_curve --runs_dir DIR[=LABEL] ... --out F.png   compression: PSNR / semantic recovery vs bits per pixel
evaluate --config X.yaml [--ckpt C] [--backbone B]   frozen-backbone linear / k-NN / dense evaluations
smoke --config X.yaml ... | --paper   2 CPU training steps + 1 validation step per config on synthetic data of its
                                  shapes, random stand-ins for external weights; a pass/fail table (make smoke-paper)
gpu_check [--dry_run]             every task's paper config on one GPU at bf16: step time, MFU, memory, loader
                                  (make gpu-check; --dry_run: toy configs on the CPU)

Every command also takes --log_level DEBUG|INFO|WARNING|ERROR (the suite's log lines on stderr; default INFO) and
--debug (a full traceback instead of the one-line "error: ..." that ends a command with exit code 2 when a config,
a flag or the data is wrong). Flags are spelled with underscores (--runs_dir, --dry_run); older spellings still work
with a deprecation line.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import sys
import time

from experiments.errors import ConfigError, OneLineArgumentParser, find_suite_error, one_line
from experiments.flags import canonical_flags
from experiments.logs import LEVELS, suite_logging

LIGHTNING_COMMANDS = {"fit", "validate", "test", "predict"}
# commands whose module has main(argv) -> exit code
MODULE_COMMANDS = {
    "launch": "experiments.launch",
    "bench": "experiments.bench",
    "sweep": "experiments.sweep",
    "data": "experiments.data",
    "rate_curve": "experiments.rate_curve",
    "evaluate": "experiments.evaluate",
    "smoke": "experiments.smoke",
    "gpu_check": "experiments.gpu_check",
}
USAGE = __doc__
RUNS_ALIAS = {"--runs": "--runs_dir"}  # table / reproduce called it --runs before flags were spelled one way


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
    from experiments.table import available_tables, render_table

    parser = OneLineArgumentParser(prog="python -m experiments table", allow_abbrev=False)
    parser.add_argument("paper", help=f"one of: {', '.join(available_tables())}")
    parser.add_argument("--runs_dir", default="runs", help="the runs folder the rows' metrics.json are read from")
    parser.add_argument("--scale", choices=["toy", "full", "any"], default="any")
    opts = parser.parse_args(canonical_flags(args, parser._option_string_actions, RUNS_ALIAS, "table"))
    print(render_table(opts.paper, opts.runs_dir, opts.scale))
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
        if key == "--run_name":
            raise ConfigError(f"reproduce: {key} cannot be overridden (each row names its own run folder; use "
                              "--runs_dir for the folder they go in)")  # fmt: skip
        if key == "--seed_everything" and seeded:
            raise ConfigError("reproduce: --seed_everything cannot be overridden here: the table has rows with "
                              "`seeds`, which set it per run")  # fmt: skip
        i += 1 if "=" in token else 2
    return extra


def reproduce(args: list[str]) -> int:
    import shlex

    from experiments.table import finished_run, load_table, planned_steps, render_table

    parser = OneLineArgumentParser(
        prog="python -m experiments reproduce",
        allow_abbrev=False,  # an override must never be read as an abbreviation of --scale / --runs
        epilog="Further --key value pairs are appended to every fit/test/predict step of every row.",
    )
    parser.add_argument("paper")
    parser.add_argument("--scale", choices=["toy", "full"], default="toy")
    parser.add_argument("--runs_dir", default="runs")
    parser.add_argument("--force", action="store_true", help="rerun steps whose run already finished")
    parser.add_argument("--dry_run", action="store_true", help="print the commands (overrides included), run nothing")
    opts, extra = parser.parse_known_args(canonical_flags(args, parser._option_string_actions, RUNS_ALIAS, "reproduce"))
    _, rows = load_table(opts.paper)
    overrides = check_overrides(extra, any(row.seeds for row in rows))
    for row in rows:
        if row.commands(opts.scale) is None:
            print(f"skip: {row.label} (no {opts.scale} variant)", file=sys.stderr)
    failures: list[str] = []
    steps = list(planned_steps(rows, opts.scale, opts.runs_dir))
    started = time.time()
    for number, (row, seed, command) in enumerate(steps, 1):
        step = f"[{number}/{len(steps)}]"
        if command[0] == "evaluate":  # its own parser takes none of the LightningCLI keys, nor a seed
            if overrides:
                print(f"note: {row.label}: overrides {' '.join(overrides)} not passed to its evaluate step "
                      "(experiments/evaluate.py has its own flags)", file=sys.stderr)  # fmt: skip
            if seed is not None:
                print(f"note: {row.label}: its evaluate step takes no --seed_everything (the evaluation config's "
                      f"`seed` holds); seed {seed} changes only the steps before it", file=sys.stderr)  # fmt: skip
        else:
            command = [*command, *overrides]
        done = None if opts.force else finished_run(command, opts.runs_dir)
        if done is not None:
            print(f"done: {row.label}: {done} already ran python -m experiments {' '.join(command)} (--force reruns) "
                  f"{step}", file=sys.stderr)  # fmt: skip
            continue
        if opts.dry_run:
            print(f"python -m experiments {shlex.join([*command, '--runs_dir', opts.runs_dir])}  # {row.label}")
            continue
        print(f"run {step}: {row.label}: python -m experiments {' '.join(command)}", file=sys.stderr)
        step_start = time.time()
        try:
            run_command(command, opts.runs_dir)
        except (Exception, SystemExit) as err:  # one failing row must not stop the others; summarised at the end
            message = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            failures.append(f"{row.label}: {type(err).__name__}: {message}")
            print(f"failed {step}: {failures[-1]}", file=sys.stderr)
            continue
        print(f"finished {step}: {row.label} in {time.time() - step_start:.0f} s "
              f"({time.time() - started:.0f} s since reproduce started)", file=sys.stderr)  # fmt: skip
    if opts.dry_run:
        return 0
    print(render_table(opts.paper, opts.runs_dir, opts.scale))
    if failures:
        print(f"{len(failures)} step(s) failed:", *failures, sep="\n  ", file=sys.stderr)
        return 1
    return 0


def pop_global_flags(argv: list[str]) -> tuple[list[str], str, bool]:
    """``argv`` without the flags every command takes, wherever they stand before ``--``: ``--log_level LEVEL``
    (``--log_level=LEVEL``) and ``--debug``; returns (the rest, the level, whether --debug was given)."""
    rest, level, debug, i = [], "INFO", False, 0
    while i < len(argv):
        token = argv[i]
        name, eq, value = token.partition("=")
        if token == "--":
            rest += argv[i:]
            break
        if name in ("--log_level", "--log-level"):
            if not eq:
                value = argv[i + 1] if i + 1 < len(argv) else ""
                i += 1
            level = value.upper()
            if level not in LEVELS:
                raise ConfigError(f"--log_level {value!r}: choose one of {', '.join(LEVELS)}")
        elif token == "--debug":
            debug = True
        else:
            rest.append(token)
        i += 1
    return rest, level, debug


def dispatch(command: str, rest: list[str]) -> int:
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
    commands = [*sorted(LIGHTNING_COMMANDS), "demo", "table", "reproduce", *MODULE_COMMANDS]
    near = difflib.get_close_matches(command, commands, n=2)
    hint = f"did you mean {' or '.join(near)}?" if near else f"one of {', '.join(commands)}"
    print(f"error: unknown command {command!r}; {hint} (python -m experiments --help)", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run one command. A suite error (bad config, flag or data) ends it with one ``error: ...`` line and exit code 2,
    wherever it was raised (a DataLoader worker included); ``--debug`` shows the traceback instead."""
    try:
        argv, level, debug = pop_global_flags(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not argv or argv[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if argv else 2
    previous = os.environ.get("EXPERIMENTS_DEBUG")
    if debug:
        os.environ["EXPERIMENTS_DEBUG"] = "1"  # read by the parsers (experiments.cli) and worker processes
    try:
        with suite_logging(level):
            return dispatch(argv[0], argv[1:])
    except KeyboardInterrupt:
        if os.environ.get("EXPERIMENTS_DEBUG"):
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("EXPERIMENTS_DEBUG"):
            raise
        err = find_suite_error(exc)
        if err is not None:
            print(f"error: {one_line(err)}", file=sys.stderr)
            return 2
        if isinstance(exc, argparse.ArgumentError):  # a config section parsed outside LightningCLI (bench, data)
            from experiments.cli import parse_error_text

            print(f"error: {argv[0]}: {parse_error_text(str(exc), argv[1:], [])}", file=sys.stderr)
            return 2
        raise
    finally:
        if previous is None:
            os.environ.pop("EXPERIMENTS_DEBUG", None)
        else:
            os.environ["EXPERIMENTS_DEBUG"] = previous


if __name__ == "__main__":
    sys.exit(main())
