"""``python -m experiments data check --config C.yaml [--data.key value ...] [--no-decode]``.

Builds only the config's DataModule (no model, no trainer, no GPU) and asks it to validate its dataset: layout,
counts per split, unreadable files. Every problem is printed with its path; the exit code is 1 when there is any.
"""

from __future__ import annotations

import argparse

import lightning as L

from experiments.errors import ConfigError, DataError, find_suite_error
from experiments.sections import build_sections


def build_datamodule(config: str, overrides: list[str]) -> L.LightningDataModule:
    """Instantiate the ``data`` section of ``config`` with ``--data.*`` overrides."""
    return build_sections(config, ("data",), overrides)["data"]


def check(config: str, overrides: list[str], decode: bool = True) -> int:
    try:
        datamodule = build_datamodule(config, overrides)
    except Exception as err:  # the DataModule's own early checks (missing root ...), wrapped by jsonargparse
        cause = find_suite_error(err)
        if not isinstance(cause, DataError):
            raise
        print(f"problem: {cause}")
        return 1
    if not hasattr(datamodule, "check_dataset"):
        raise ConfigError(f"{type(datamodule).__name__} has no check_dataset(); nothing to validate")
    if getattr(datamodule, "dataset", None) == "toy":
        datamodule.prepare_data()
    summary, problems = datamodule.check_dataset(decode=decode)
    print(f"dataset: {getattr(datamodule, 'root', '?')} ({type(datamodule).__name__})")
    for split, counts in summary.items():
        print(f"  {split}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for problem in problems:
        print(f"problem: {problem}")
    print(f"{len(problems)} problem(s)")
    return 1 if problems else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments data", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("action", choices=["check"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--no-decode", action="store_true", help="skip decoding every image (layout and counts only)")
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("--") and not o.startswith("--data.")]
    if bad:
        raise ConfigError(f"data check takes only --data.* overrides, got {bad}")
    return check(args.config, overrides, decode=not args.no_decode)
