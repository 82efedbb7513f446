"""The suite's LightningCLI: ``python -m experiments fit|validate|test|predict --config X.yaml [--key value ...]``.

* Subclass mode for model and data: a config names ``model.class_path`` / ``data.class_path``; any
  LightningModule / LightningDataModule of the suite (or elsewhere) plugs in. ``parser_mode="omegaconf"`` allows
  ``${...}`` interpolation inside configs. Unknown keys and wrong types fail naming the key.
* Every run writes ``<runs_dir>/<config-stem>/version_N/``: ``config.yaml`` (the resolved config), ``checkpoints/``
  (``last.ckpt`` and ``best.ckpt`` by the module's ``monitor``), TensorBoard and CSV logs, and ``metrics.json``
  (:class:`~experiments.callbacks.MetricsJSON`). Checkpoints and metrics are written atomically.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import re
import sys
import typing
import warnings
from pathlib import Path

import lightning as L
from jsonargparse import ArgumentParser, set_parsing_settings
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

import experiments.logs  # noqa: F401  (filters the specific Lightning warnings every run would print)
import lightning_modules  # noqa: F401  (registers the suite's backbones with timm)
from experiments.callbacks import MetricsJSON, PredictionsWriter, RNGStateCheckpoint
from experiments.configs import BASE_KEY, expand_config_args, merged_config
from experiments.errors import SuiteError, parse_error_line, unknown_key
from experiments.io import AtomicCheckpointIO
from experiments.progress import progress_callbacks

log = logging.getLogger(__name__)

# Each run gets a fresh version dir; the CSV logger's warning about a non-empty dir (config.yaml, TensorBoard
# events already there) is about its own metrics.csv only, which does not exist yet.
warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
# validate / test / predict --ckpt_path X run in a new version dir too, so Lightning's ModelCheckpoint always notes that
# its dirpath differs from the checkpoint's; what these runs read back (best_model_path, for metrics.json) is reloaded.
warnings.filterwarnings("ignore", message=r"The dirpath has changed from .* Only `best_model_path` will be reloaded")


def config_class_paths(argv: list[str]) -> dict[str, str]:
    """``{"model": class_path, "data": class_path}`` as the config files (``--config`` / ``-c``) and
    ``--model.class_path`` / ``--data.class_path`` in ``argv`` set them (later ones win)."""
    found: dict[str, str] = {}
    for i, token in enumerate(argv):
        name, eq, value = token.partition("=")
        value = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
        if name in ("--config", "-c"):
            try:
                raw = merged_config(value)
            except SuiteError:
                continue
            for section in ("model", "data"):
                if isinstance(raw.get(section), dict) and raw[section].get("class_path"):
                    found[section] = raw[section]["class_path"]
        elif name in ("--model.class_path", "--data.class_path"):
            found[name[2:].split(".")[0]] = value
    return found


def init_arg_keys(section: str, class_path: str) -> list[str]:
    """``section.init_args.<arg>`` for every argument of ``class_path``'s ``__init__`` (nested keys included)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, "init_args", fail_untyped=False)
    except Exception:  # a class the parser cannot describe: no suggestions for it
        return []
    keys = [f"{section}.{a.dest}" for a in parser._actions if a.dest.startswith("init_args.")]
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that does not resolve: the top-level keys only
        hints = {}
    for arg, hint in hints.items():  # one level down into the suite's own argument classes (optim: OptimConfig)
        for sub in (hint, *typing.get_args(hint)):
            if isinstance(sub, type) and sub.__module__.startswith(("lightning_modules", "datamodules")):
                keys += [f"{section}.init_args.{arg}.{name}" for name in inspect.signature(sub).parameters]
    return keys


def parse_error_text(message: str, argv: list[str], keys: list[str]) -> str:
    """:func:`~experiments.errors.parse_error_line` for a parse error of ``argv``: the candidates are ``keys`` (the
    parser's) and the init arguments of the configured model and data classes; it says where an unknown key was."""
    key = unknown_key(message)
    candidates = list(keys)
    for section, class_path in config_class_paths(argv).items():
        candidates += init_arg_keys(section, class_path)
    given = {token.split("=")[0] for token in argv}
    if key is None:
        where = ""
    elif f"--{key}" in given or f"--{key.replace('.init_args.', '.')}" in given:
        where = " on the command line"
    else:
        configs = [argv[i + 1] for i, token in enumerate(argv[:-1]) if token in ("--config", "-c")]
        where = f" in {', '.join(configs)}" if configs else ""
    return parse_error_line(message, key, candidates, where)


class SuiteArgumentParser(LightningArgumentParser):
    """Parse errors as one line naming the key (and the nearest accepted keys) instead of the usage text and
    jsonargparse's nested "Union subtypes" dump; ``--debug`` (``EXPERIMENTS_DEBUG=1``) keeps the full message."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or os.environ.get("EXPERIMENTS_DEBUG"):
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        keys = [a.dest for a in parser._actions if a.option_strings and a.dest not in ("help", "config")]
        command = getattr(parser, "subcommand", None)
        prefix = f"{command}: " if command else ""
        sys.stderr.write(f"error: {prefix}{parse_error_text(message, sys.argv[1:], keys)}\n")
        self.exit(2)


class SuiteModelSummary(ModelSummary):
    """Lightning's layer summary without its FLOPs column and total: Lightning counts FLOPs only when a module sets
    ``example_input_array``, which the suite's modules do not, so they read 0 on every run."""

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes, total_flops,
                  **summarize_kwargs) -> None:  # fmt: skip
        columns = [column for column in summary_data if column[0] != "FLOPs"]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes, 0,
                                      *columns)  # fmt: skip
        logging.getLogger("lightning.pytorch.callbacks.model_summary").info("\n" + table.rpartition("\n")[0])


def next_version_dir(base: Path) -> Path:
    """``base/version_N`` with N one above the highest existing version (0 for a new base)."""
    versions = [int(m.group(1)) for p in base.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return base / f"version_{max(versions, default=-1) + 1}"


def resume_target(base: Path) -> tuple[Path, Path] | None:
    """(run dir, checkpoint) of the newest run under ``base`` with ``checkpoints/last.ckpt`` or a SLURM
    ``hpc_ckpt_*.ckpt`` (what Lightning saves on SIGUSR1 before a requeue); None when there is none."""
    found = []
    for run in base.glob("version_*"):
        for ckpt in [run / "checkpoints" / "last.ckpt", *run.glob("hpc_ckpt_*.ckpt")]:
            if ckpt.is_file():
                found.append((ckpt.stat().st_mtime, run, ckpt))
    return max(found)[1:] if found else None


def keep_previous_csv(run_dir: Path) -> None:
    """Lightning's CSV logger deletes an existing metrics.csv; a resumed run moves it aside instead."""
    csv = run_dir / "metrics.csv"
    if csv.is_file():
        part = 0
        while (run_dir / f"metrics.part{part}.csv").exists():
            part += 1
        os.replace(csv, run_dir / f"metrics.part{part}.csv")


class SuiteCLI(LightningCLI):
    """LightningCLI with the suite's run directories, loggers, checkpointing and metrics file."""

    def __init__(
        self, args: list[str] | None = None, run: bool = True, extra_callbacks: list[L.Callback] | None = None
    ) -> None:
        self.extra_callbacks = list(extra_callbacks or [])  # objects a caller passes in-process (sweep pruning)
        # ${model.x} in a config file means the file's own model.x, though the CLI parses it under fit.
        set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            # omegaconf+: ${...} resolves after the files and the command line merge: an override reaches every use
            parser_kwargs={"parser_mode": "omegaconf+", "allow_abbrev": False},  # --trainer.max_epoch is an error
            parser_class=SuiteArgumentParser,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )

    @classmethod
    def command_parser(cls) -> LightningArgumentParser:
        """The parser ``python -m experiments`` parses with (its fit, validate, test, predict subcommands), built
        without parsing or instantiating anything: ``command_parser().parse_args(expand_config_args(argv))`` is the
        namespace ``argv`` resolves to (tests and tools read resolved configs this way)."""

        class Built(Exception):
            """Stops __init__ with the parser, before anything is parsed."""

        class ParserOnly(cls):
            def parse_arguments(self, parser, args) -> None:
                raise Built(parser)

        try:
            ParserOnly(args=["fit"])
        except Built as built:
            return built.args[0]
        raise RuntimeError("SuiteCLI no longer calls parse_arguments: command_parser cannot get its parser")

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        kwargs.setdefault("allow_abbrev", False)  # the subcommand parsers too: no prefix of a key is taken for it
        kwargs.setdefault("prog", "python -m experiments")  # usage lines name the command, not __main__.py
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--runs_dir", type=str, default="runs", help="Where run directories are created.")
        parser.add_argument("--run_name", type=str | None, default=None, help="Run folder name (default: config stem).")
        parser.add_argument("--test_after_fit", type=bool, default=False, help="Test the best checkpoint after fit.")
        parser.add_argument(
            f"--{BASE_KEY}",
            type=str | list[str] | None,
            default=None,
            help="Config files a config extends (experiments/configs.py); read before the parser, null once merged.",
        )

    def parse_arguments(self, parser, args) -> None:
        """Each ``--config X`` becomes its bases and then X (:func:`~experiments.configs.expand_config_args`)."""
        self.config_files: list[str] = []
        if args is None or isinstance(args, list):  # (Lightning warns when both args and sys.argv are given)
            expanded = expand_config_args(sys.argv[1:] if args is None else list(args))
            # jsonargparse's omegaconf+ mode keeps no `config` key in the namespace: the files are noted here
            self.config_files = [expanded[i + 1] for i, token in enumerate(expanded[:-1]) if token == "--config"]
            self.config = parser.parse_args(expanded)
        else:
            super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Keep the config and the command line as the source of truth with ``--ckpt_path``: Lightning would
        overwrite the model's arguments with the checkpoint's hyper-parameters, so that ``test --ckpt_path X
        --model.init_args.evaluator soc`` silently ran the checkpoint's evaluator. The weights still come from the
        checkpoint."""

    # -- run directory ---------------------------------------------------------------------------------------
    def _subconfig(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def run_config(self) -> str | None:
        """The config file the run was started with (the last ``--config``; its bases come before it)."""
        configs = self._subconfig().get("config") or getattr(self, "config_files", [])
        return str(configs[-1]) if configs else None

    def run_name(self) -> str:
        cfg = self._subconfig()
        if cfg.get("run_name"):
            return cfg["run_name"]
        config = self.run_config()
        return Path(config).stem if config else "cli"

    def scale(self) -> str:
        data_args = self._subconfig().get("data", {}).get("init_args", {})
        return "toy" if data_args.get("dataset") == "toy" else "full"

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        cfg = self._subconfig()
        base = Path(cfg.get("runs_dir") or "runs").absolute() / self.run_name()
        self.run_dir = next_version_dir(base)
        if self.subcommand == "fit":
            self._resolve_resume(base)
        trainer_cfg = self.config_init[self.subcommand]["trainer"] if self.subcommand else self.config_init["trainer"]
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = [
                TensorBoardLogger(str(base.parent), name=base.name, version=self.run_dir.name, default_hp_metric=False),
                CSVLogger(str(base.parent), name=base.name, version=self.run_dir.name),
            ]
        callbacks = list(trainer_cfg.get("callbacks") or [])
        if trainer_cfg.get("enable_checkpointing") is not False and not any(
            isinstance(c, ModelCheckpoint) for c in callbacks
        ):
            callbacks.append(
                ModelCheckpoint(
                    dirpath=str(self.run_dir / "checkpoints"),
                    filename="best",
                    monitor=getattr(self.model, "monitor", None),
                    mode=getattr(self.model, "monitor_mode", "min"),
                    save_last=True,
                    save_top_k=1,
                    auto_insert_metric_name=False,
                )
            )
        callbacks.append(MetricsJSON(str(self.run_dir), self.run_config(), self.scale()))
        callbacks.append(RNGStateCheckpoint())
        if trainer_cfg.get("enable_model_summary") is not False and not any(
            isinstance(c, ModelSummary) for c in callbacks
        ):
            callbacks.append(SuiteModelSummary())
            kwargs["enable_model_summary"] = False  # else Lightning logs that it skips its default summary
        callbacks += self.extra_callbacks
        # a terminal gets Lightning's bar without v_num; a file (make demo > log, a SLURM .out) gets plain lines
        has_bar = any(isinstance(c, ProgressBar) for c in callbacks)
        if trainer_cfg.get("enable_progress_bar") is not False and not has_bar:
            progress, disable_bar = progress_callbacks()
            callbacks += progress
            if disable_bar:
                kwargs["enable_progress_bar"] = False
        if self.subcommand == "predict":
            callbacks.append(PredictionsWriter(str(self.run_dir)))
        kwargs["callbacks"] = callbacks
        if not trainer_cfg.get("plugins"):
            kwargs["plugins"] = [AtomicCheckpointIO()]
        kwargs["default_root_dir"] = str(self.run_dir)
        return super().instantiate_trainer(**kwargs)

    def _resolve_resume(self, base: Path) -> None:
        """``--ckpt_path last`` (or a checkpoint inside one of this config's runs) resumes in that run's directory."""
        init = self.config_init[self.subcommand]
        ckpt = init.get("ckpt_path")
        if ckpt == "last":
            found = resume_target(base)
            if found is None:
                log.warning("no checkpoint to resume under %s; starting a new run", base)
                init["ckpt_path"] = None
                return
            self.run_dir, path = found
            init["ckpt_path"] = str(path)
        elif ckpt and Path(ckpt).absolute().parent.name == "checkpoints" and Path(ckpt).absolute().parents[2] == base:
            self.run_dir = Path(ckpt).absolute().parents[1]
        else:
            return
        log.info("resuming %s from %s", self.run_dir, init["ckpt_path"])
        keep_previous_csv(self.run_dir)

    # -- after each subcommand -------------------------------------------------------------------------------
    def _report(self) -> None:
        if self.trainer.is_global_zero:
            print(f"\nrun dir: {self.run_dir}\nmetrics: {self.run_dir / 'metrics.json'}")  # the run's output: stdout

    def after_fit(self) -> None:
        if self._subconfig().get("test_after_fit"):
            ckpt = (
                "best"
                if self.trainer.checkpoint_callback and self.trainer.checkpoint_callback.best_model_path
                else None
            )
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)
        self._report()

    def after_validate(self) -> None:
        self._report()

    def after_test(self) -> None:
        self._report()

    def after_predict(self) -> None:
        self._report()


def main(args: list[str] | None = None, extra_callbacks: list[L.Callback] | None = None) -> SuiteCLI:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args is not None:  # LightningCLI reads sys.argv; passing both makes it warn
        sys.argv = [sys.argv[0], *args]
    return SuiteCLI(extra_callbacks=extra_callbacks)
