"""``python -m experiments sweep --config C.yaml --space S.yaml --trials N [options] [--key value ...]``.

Hyper-parameter search over dotted config keys with Optuna:

* the study lives in SQLite (``--storage``, default ``sqlite:///runs/sweeps.db``), so a killed sweep resumes: trials
  left RUNNING by a dead process are marked FAIL and the sweep runs until ``--trials`` trials have finished;
* bad trials are pruned from their intermediate validation metric (median pruner, ``--no_prune`` turns it off);
* a trial that raises is recorded as FAIL with its error (``user_attrs["error"]``) and the sweep goes on;
* one line per trial as it ends on stdout (its parameters, result, state and the best so far);
* at the end: a ranked table, ``<runs_dir>/sweeps/<study>/best.yaml`` (the best trial's full resolved config, which
  ``fit --config`` accepts) and ``optimization_history.png``.

Space file: one entry per dotted config key (as ``--print_config`` shows it)::

    model.init_args.optim.base_lr: {low: 1.0e-4, high: 1.0e-2, log: true}     # float range
    model.init_args.net.init_args.drop_path_rate: {low: 0.0, high: 0.2, step: 0.05}  # stepped float range
    data.init_args.batch_size: {choices: [32, 64]}                            # categorical
    model.init_args.net.init_args.kwargs.depth: {choices: [[2, 2, 2], [1, 2, 2]]}  # any YAML value
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from experiments.errors import ConfigError
from experiments.flags import canonical_flags

if TYPE_CHECKING:  # Optuna, torch and Lightning load after parsing, so --help is quick
    import lightning as L
    import optuna

FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")


def finished_states() -> tuple:
    from optuna.trial import TrialState

    return tuple(TrialState[name] for name in FINISHED_STATES)


def resolved_config(config: str, extra: list[str]) -> dict:
    """The full config as ``fit --print_config`` resolves it (defaults included)."""
    from experiments.cli import main as cli_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        cli_main(["fit", "--config", config, *extra, "--print_config"])
    text = out.getvalue()
    if not text.strip():
        raise ConfigError(f"could not resolve {config} with {extra}")
    return yaml.safe_load(text)


def get_dotted(cfg: dict, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[leaf] = value


def load_space(path: str, cfg: dict) -> dict[str, dict]:
    """Read and check the space file: every key must exist in the resolved config."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"space file '{path}' does not exist")
    space = yaml.safe_load(file.read_text()) or {}
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{path}: expected a mapping of dotted config keys to ranges or choices")
    for key, spec in space.items():
        try:
            get_dotted(cfg, key)
        except KeyError:
            raise ConfigError(
                f"{path}: key '{key}' is not in the config; keys are dotted paths as --print_config shows them, "
                "e.g. model.init_args.optim.base_lr"
            ) from None
        if not isinstance(spec, dict) or not ({"choices"} <= set(spec) or {"low", "high"} <= set(spec)):
            raise ConfigError(f"{path}: '{key}' needs either choices: [...] or low:/high: (optional log, step)")
    return space


def suggest(trial: optuna.Trial, key: str, spec: dict) -> Any:
    if "choices" in spec:
        # Optuna stores categorical choices as plain scalars; lists go through their YAML text
        choices = [c if isinstance(c, (int, float, str, bool)) or c is None else yaml.safe_dump(c).strip()
                   for c in spec["choices"]]  # fmt: skip
        value = trial.suggest_categorical(key, choices)
        return yaml.safe_load(value) if isinstance(value, str) and value not in spec["choices"] else value
    low, high = spec["low"], spec["high"]
    if isinstance(low, int) and isinstance(high, int) and not spec.get("log") and "step" not in spec:
        return trial.suggest_int(key, low, high)
    return trial.suggest_float(key, float(low), float(high), log=bool(spec.get("log", False)), step=spec.get("step"))


def as_cli_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def pruning_callback(trial: optuna.Trial, metric: str) -> L.Callback:
    """A Lightning callback that reports ``metric`` after every validation and stops the trial when the pruner says
    so."""
    import lightning as L
    import optuna

    class OptunaPruning(L.Callback):
        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking or metric not in trainer.callback_metrics:
                return
            trial.report(float(trainer.callback_metrics[metric]), step=trainer.current_epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {trainer.current_epoch}")

    return OptunaPruning()


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial, metric: str, trials: int) -> str:
    """One line for a finished trial: ``trial 3/3 (trial_002)  key=value ...  metric=0.5120  COMPLETE  12 s
    (best 0.5300, trial_001)``; a pruned trial shows its last reported value, a failed one its error."""
    done = len(study.get_trials(deepcopy=False, states=finished_states()))
    parts = [f"trial {done}/{trials} (trial_{trial.number:03d})"]
    parts += [f"{key}={_short(value)}" for key, value in trial.params.items()]
    if trial.state.name == "PRUNED" and trial.intermediate_values:  # its last report, which the pruner judged
        step = max(trial.intermediate_values)
        parts.append(f"{metric}={trial.intermediate_values[step]:.4f} at epoch {step}")
    elif trial.value is not None:
        parts.append(f"{metric}={trial.value:.4f}")
    else:
        parts.append(f"{metric}=-")
    parts.append(trial.state.name)
    if trial.duration is not None:
        parts.append(f"{trial.duration.total_seconds():.0f} s")
    error = str(trial.user_attrs.get("error", "")).strip().splitlines()
    if trial.state.name == "FAIL" and error:
        parts.append(f"error: {error[0][:150]}")
    try:
        best = study.best_trial
        parts.append(f"(best {best.value:.4f}, trial_{best.number:03d})")
    except ValueError:  # no complete trial yet
        parts.append("(no complete trial yet)")
    return "  ".join(parts)


def make_sampler(name: str, space: dict, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    if name == "grid":
        if any("choices" not in spec for spec in space.values()):
            raise ConfigError("--sampler grid needs choices: [...] for every key of the space")
        grid = {k: [c if isinstance(c, (int, float, str, bool)) or c is None else yaml.safe_dump(c).strip()
                    for c in spec["choices"]] for k, spec in space.items()}  # fmt: skip
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    raise ConfigError(f"unknown sampler '{name}'; use grid, random or tpe")


def open_study(storage: str, name: str, sampler, direction: str, prune: bool) -> optuna.Study:
    import optuna

    if storage.startswith("sqlite:///"):
        path = Path(storage.removeprefix("sqlite:///"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(exist_ok=True)  # fail here, with the path, rather than deep inside SQLAlchemy
        except OSError as err:
            raise ConfigError(
                f"cannot write the sweep storage {path}: {err}; pass --storage sqlite:///<writable>"
            ) from err
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1) if prune else optuna.pruners.NopPruner()
    return optuna.create_study(study_name=name, storage=storage, sampler=sampler, direction=direction,
                               pruner=pruner, load_if_exists=True)  # fmt: skip


def ranked_table(study: optuna.Study, metric: str) -> str:
    rows = sorted(
        study.trials,
        key=lambda t: (
            t.state.name != "COMPLETE",
            -(t.value or 0) if study.direction.name == "MAXIMIZE" else (t.value or 0),
        ),
    )
    lines = [f"| rank | trial | state | {metric} | params |", "|---|---|---|---|---|"]
    for rank, t in enumerate(rows, 1):
        value = "-" if t.value is None else f"{t.value:.4f}"
        params = ", ".join(f"{k}={v}" for k, v in t.params.items())
        lines.append(f"| {rank} | {t.number} | {t.state.name} | {value} | {params} |")
    return "\n".join(lines)


def run_sweep(
    config: str,
    space_file: str,
    trials: int,
    storage: str,
    study_name: str | None,
    sampler_name: str,
    metric: str,
    direction: str,
    runs_dir: str,
    seed: int,
    prune: bool,
    extra: list[str],
) -> optuna.Study:
    import optuna
    from optuna.trial import TrialState

    from experiments.cli import main as cli_main

    base_cfg = resolved_config(config, extra)
    space = load_space(space_file, base_cfg)
    name = study_name or Path(config).stem
    study = open_study(storage, name, make_sampler(sampler_name, space, seed), direction, prune)
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(stale._trial_id, "error", "interrupted (its process died)")
        study.tell(stale.number, state=TrialState.FAIL)  # the sweep goes on without it
    out_dir = Path(runs_dir) / "sweeps" / name

    def objective(trial: optuna.Trial) -> float:
        params = {key: suggest(trial, key, spec) for key, spec in space.items()}
        overrides = [arg for key, value in params.items() for arg in (f"--{key}", as_cli_value(value))]
        try:
            cli = cli_main(
                ["fit", "--config", config, *extra, *overrides, "--runs_dir", str(out_dir),
                 "--run_name", f"trial_{trial.number:03d}", "--trainer.enable_progress_bar", "false"],
                extra_callbacks=[pruning_callback(trial, metric)],
            )  # fmt: skip
        except optuna.TrialPruned:
            raise
        except BaseException as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}")
            raise
        trial.set_user_attr("run_dir", str(cli.run_dir))
        value = cli.trainer.callback_metrics.get(metric)
        if value is None:
            raise ConfigError(f"the run logged no '{metric}'; pass --metric with a key it logs (e.g. val/top1)")
        return float(value)

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        print(trial_line(study, trial, metric, trials), flush=True)

    finished = len(study.get_trials(deepcopy=False, states=finished_states()))
    remaining = max(0, trials - finished)
    if remaining:
        study.optimize(objective, n_trials=remaining, catch=(Exception,), callbacks=[report])
    print(ranked_table(study, metric))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    out_dir.mkdir(parents=True, exist_ok=True)
    if complete:
        best_cfg = copy.deepcopy(base_cfg)
        for key, spec in space.items():
            value = study.best_trial.params[key]
            if "choices" in spec and isinstance(value, str) and value not in spec["choices"]:
                value = yaml.safe_load(value)
            set_dotted(best_cfg, key, value)
        best_cfg["run_name"] = f"{name}_best"
        (out_dir / "best.yaml").write_text(yaml.safe_dump(best_cfg, sort_keys=False))
        print(f"best trial {study.best_trial.number}: {metric}={study.best_value:.4f}; config: {out_dir / 'best.yaml'}")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization.matplotlib import plot_optimization_history

        # optuna's plot switches the process's global style to ggplot (plt.style.use): keep that to this figure, or
        # every figure drawn later in the process (TEL timelines, rate curves) changes look
        with plt.rc_context(), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # "is experimental" on every sweep
            axes = plot_optimization_history(study)
            axes.figure.savefig(out_dir / "optimization_history.png", dpi=120, bbox_inches="tight")
            plt.close(axes.figure)
    return study


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments sweep", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--config", required=True)
    parser.add_argument("--space", required=True)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--storage", default="sqlite:///runs/sweeps.db")
    parser.add_argument("--study", default=None, help="study name (default: config stem)")
    parser.add_argument("--sampler", choices=["grid", "random", "tpe"], default="tpe")
    parser.add_argument("--metric", default="val/top1")
    parser.add_argument("--direction", choices=["maximize", "minimize"], default="maximize")
    parser.add_argument("--runs_dir", default="runs", help="runs root; trials go to <runs_dir>/sweeps/<study>/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_prune", action="store_true")
    # old spellings: --no-prune, and --runs (the fit commands' flag is --runs_dir)
    argv = canonical_flags(argv, parser._option_string_actions, aliases={"--runs": "--runs_dir"}, prog="sweep")
    args, extra = parser.parse_known_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_sweep(args.config, args.space, args.trials, args.storage, args.study, args.sampler, args.metric,
              args.direction, args.runs_dir, args.seed, not args.no_prune, extra)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
