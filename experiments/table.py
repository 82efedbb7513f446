"""``python -m experiments table <paper> [--runs_dir runs/] [--scale toy|full|any]``: paper numbers beside measured
ones.

Rows come from ``experiments/tables/<paper>.yaml`` (label, config, metric key, paper value and its source). A row's
measured value is the newest finished ``metrics.json`` under ``<runs_dir>/<run name>/version_*`` whose config and scale
match; a row never run prints "not run", a paper value nobody could find prints "n/a". Paper numbers live only in
these YAML files. A row with ``seeds: [0, 1, 2]`` runs once per seed (run folder ``<run name>__seed<s>``) and prints
``mean ± std (n=K)`` over the seeds' newest finished runs.
"""

from __future__ import annotations

import json
import shlex
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from experiments.errors import ConfigError

TABLES = Path(__file__).parent / "tables"


@dataclass
class Row:
    label: str
    config: str
    metric: str
    paper: float | None
    source: str = ""
    toy: dict = field(default_factory=dict)
    pretrain: str | None = None  # pre-training config whose last checkpoint the row's (fine-tune) config starts from
    # "test": evaluate the config as it is (zero-shot rows), no training; "evaluate": the config is a frozen-backbone
    # evaluation config (python -m experiments evaluate), given the pre-training checkpoint with --ckpt
    stage: str = "fit"
    pretrain_arg: str = "pretrained"  # the model argument that receives the pre-training checkpoint
    pretrain_ckpt: str = "last"  # which checkpoint of the pre-training run: "last" or "best"
    # steps between pre-training and the row's config, each {stage: fit|test|predict, config, args} and given the
    # pre-training checkpoint like the row's config (COSOC: the COS predict step); toy ones under toy.after_pretrain
    after_pretrain: list = field(default_factory=list)
    seeds: list[int] | None = None  # run every step once per seed (--seed_everything, run folders <name>__seed<s>)

    def run_name(self, scale: str, seed: int | None = None) -> str:
        """The run folder name this row's runs use (``--run_name`` in its args, else the config stem; with ``seed``:
        that name plus ``__seed<seed>``)."""
        args = self.toy.get("args", []) if scale == "toy" else []
        if "--run_name" in args:
            return seeded_name(args[args.index("--run_name") + 1], seed)
        if scale != "toy" and self.pretrain:  # rows sharing a fine-tune recipe differ by their pre-training
            return seeded_name(f"{Path(self.config).stem}__{Path(self.pretrain).stem}", seed)
        return seeded_name(Path(self.toy.get("config", self.config) if scale == "toy" else self.config).stem, seed)

    def commands(self, scale: str, runs: str = "runs", seed: int | None = None) -> list[list[str]] | None:
        """``fit`` (``stage: test`` rows: ``test``; ``stage: evaluate`` rows: ``evaluate``) argument lists that produce
        this row at ``scale``, in order (None: no toy variant).

        A row with a pre-training step (``pretrain``, or ``toy.pretrain: {config, args}``) first pre-trains, then
        runs its config with ``--model.init_args.<pretrain_arg>`` (``pretrained``) set to the pre-training run's newest
        ``<pretrain_ckpt>.ckpt`` (``last``; ``evaluate`` rows get it as ``--ckpt``). Steps in ``after_pretrain``
        (``toy.after_pretrain``) run in between and receive the checkpoint as ``--model.init_args.<pretrain_arg>``.
        With ``seed`` every step runs in its own run folder ``<its run name>__seed<seed>`` (the fine-tune step reads
        that seed's pre-training checkpoint) with ``--seed_everything <seed>`` (see :func:`seed_step`).
        """
        if scale == "toy":
            if not self.toy:
                return None
            pre = self.toy.get("pretrain")
            pre_config, pre_args = (pre["config"], [str(a) for a in pre.get("args", [])]) if pre else (None, [])
            config, args = self.toy["config"], [str(a) for a in self.toy.get("args", [])]
        else:
            pre_config, pre_args, config, args = self.pretrain, [], self.config, []
            if self.pretrain or self.stage == "evaluate":  # evaluate names its run after the config's `name` key
                args = ["--run_name", self.run_name(scale)]
        steps = []
        between = self.toy.get("after_pretrain", []) if scale == "toy" else self.after_pretrain
        if pre_config is not None:
            steps.append(seed_step(["fit", "--config", pre_config, *pre_args], seed))
            ckpt = f"{runs}/{step_run_name(steps[-1])}/version_*/checkpoints/{self.pretrain_ckpt}.ckpt"
            pass_ckpt = [f"--model.init_args.{self.pretrain_arg}", ckpt]
            for step in between:
                step_args = [str(a) for a in step.get("args", [])]
                steps.append(seed_step([step.get("stage", "fit"), "--config", step["config"], *step_args, *pass_ckpt],
                                       seed))  # fmt: skip
            args += ["--ckpt", ckpt] if self.stage == "evaluate" else pass_ckpt
        if self.stage in ("test", "evaluate"):
            final = [self.stage, "--config", config, *args]
        else:
            final = ["fit", "--config", config, *args, "--test_after_fit", "true"]
        steps.append(seed_step(final, seed))
        return steps


def seeded_name(name: str, seed: int | str | None) -> str:
    """A seed's run folder name: ``<name>__seed<seed>`` (``name`` itself without a seed)."""
    return name if seed is None else f"{name}__seed{seed}"


def step_run_name(step: list[str]) -> str:
    """The run folder name of one step's argument list: its ``--run_name``, else its config's stem."""
    return step[step.index("--run_name") + 1] if "--run_name" in step else Path(step[step.index("--config") + 1]).stem


def finished_run(step: list[str], runs: str | Path) -> Path | None:
    """The newest run folder under ``runs`` that already did ``step``: its ``metrics.json`` names the step's config and
    is finished, with test metrics when the step tests (``test``, or ``fit --test_after_fit true``); None otherwise."""
    if step[0] not in ("fit", "test") or "--config" not in step:
        return None
    config = step[step.index("--config") + 1]
    tests = step[0] == "test" or ("--test_after_fit" in step and step[step.index("--test_after_fit") + 1] == "true")
    newest = None
    for metrics_file in (Path(runs) / step_run_name(step)).glob("version_*/metrics.json"):
        try:
            record = json.loads(metrics_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if record.get("config") != config or not record.get("finished") or (tests and not record.get("test")):
            continue
        if newest is None or metrics_file.stat().st_mtime > newest.stat().st_mtime:
            newest = metrics_file
    return None if newest is None else newest.parent


def seed_step(step: list[str], seed: int | None) -> list[str]:
    """``step`` for one seed: run folder ``<run name>__seed<seed>`` (an existing ``--run_name`` is renamed in place)
    and ``--seed_everything <seed>``, except for ``evaluate``, whose parser has no seed flag (the evaluation config's
    ``seed`` key holds). Without a seed, ``step`` unchanged."""
    if seed is None:
        return step
    name = seeded_name(step_run_name(step), seed)
    if "--run_name" in step:
        step = list(step)
        step[step.index("--run_name") + 1] = name
    else:
        step = [*step, "--run_name", name]
    return step if step[0] == "evaluate" else [*step, "--seed_everything", str(seed)]


def planned_steps(rows: list[Row], scale: str, runs: str = "runs") -> Iterator[tuple[Row, int | None, list[str]]]:
    """``(row, seed, argument list)`` of every step that produces ``rows`` at ``scale``, each distinct step once (rows
    may share a pre-training run, or all their steps: two metrics of one config). Rows without seeds first, in table
    order; then the seeded rows seed by seed, so that rows sharing a step that writes a fixed file (COSOC's COS
    predict step) read the output of their own seed. Rows without a variant at ``scale`` yield nothing."""
    seeds = sorted({seed for row in rows for seed in row.seeds or []})
    plan = [(row, None) for row in rows if not row.seeds]
    plan += [(row, seed) for seed in seeds for row in rows if seed in (row.seeds or [])]
    done: set[str] = set()
    for row, seed in plan:
        for step in row.commands(scale, runs, seed) or []:
            if shlex.join(step) not in done:
                done.add(shlex.join(step))
                yield row, seed, step


def available_tables() -> list[str]:
    return sorted(p.stem for p in TABLES.glob("*.yaml"))


def load_table(paper: str) -> tuple[dict, list[Row]]:
    path = TABLES / f"{paper}.yaml"
    if not path.is_file():
        raise ConfigError(f"no table '{paper}'; known tables: {', '.join(available_tables())}")
    spec = yaml.safe_load(path.read_text())
    rows = []
    for i, raw in enumerate(spec.get("rows", [])):
        missing = {"label", "config", "metric", "paper"} - set(raw)
        keys = (
            "label",
            "config",
            "metric",
            "paper",
            "source",
            "toy",
            "pretrain",
            "stage",
            "pretrain_arg",
            "pretrain_ckpt",
            "after_pretrain",
            "seeds",
        )
        unknown = set(raw) - set(keys)
        if missing or unknown:
            raise ConfigError(f"{path}: row {i} lacks {sorted(missing)} / has unknown keys {sorted(unknown)}")
        if raw.get("stage", "fit") not in ("fit", "test", "evaluate"):
            raise ConfigError(f"{path}: row {i} has stage {raw['stage']!r}; use fit, test or evaluate")
        for step in [*raw.get("after_pretrain", []), *(raw.get("toy") or {}).get("after_pretrain", [])]:
            if step.get("stage", "fit") not in ("fit", "test", "predict") or "config" not in step:
                raise ConfigError(f"{path}: row {i} has an after_pretrain step {step}; it needs a config and a stage "
                                  "of fit, test or predict")  # fmt: skip
        seeds = raw.get("seeds")
        if "seeds" in raw and (
            not isinstance(seeds, list)
            or not seeds
            or any(type(s) is not int for s in seeds)
            or len(set(seeds)) != len(seeds)
        ):
            raise ConfigError(f"{path}: row {i} ({raw['label']!r}) has seeds {seeds!r}; give a non-empty list of "
                              "distinct integers, e.g. seeds: [0, 1, 2]")  # fmt: skip
        rows.append(Row(**{k: raw[k] for k in keys if k in raw}))
    return spec, rows


def find_measurement(
    row: Row, runs: Path, scale: str, seed: int | None = None
) -> tuple[float | None, str | None, str | None]:
    """(value, scale, run dir) of the newest finished run of ``row`` (of its ``seed``); Nones when there is none."""
    scales = ("toy", "full") if scale == "any" else (scale,)
    best = None
    for s in scales:
        for metrics_file in (runs / row.run_name(s, seed)).glob("version_*/metrics.json"):
            record = json.loads(metrics_file.read_text())
            value = {**record.get("val", {}), **record.get("test", {})}.get(row.metric)
            if value is None or record.get("scale") != s or not record.get("finished"):
                continue
            mtime = metrics_file.stat().st_mtime
            if best is None or mtime > best[0]:
                best = (mtime, value, s, str(metrics_file.parent))
    return (None, None, None) if best is None else best[1:]


def format_paper_value(row: Row) -> str:
    if row.paper is None:
        return "n/a"
    mark = ""
    if row.source.startswith("AGG"):
        mark = " (aggregator)"
    elif "unverified" in row.source.lower():
        mark = " (unverified)"
    return f"{row.paper:g}{mark}"


def measure_seeds(row: Row, runs: Path, scale: str, factor: float = 1.0) -> tuple[str, str | None, str | None]:
    """(measured cell, scale, run folders) of a seeded row: ``mean ± std (n=K)`` (sample std) over the newest finished
    run of each seed, all at one scale (``any``: the scale with the most seeds found, full on a tie), then how many
    of the listed seeds have no run; "not run" when none has."""
    scales = ("full", "toy") if scale == "any" else (scale,)
    found = {s: [find_measurement(row, runs, s, seed)[0] for seed in row.seeds] for s in scales}
    best = max(scales, key=lambda s: sum(v is not None for v in found[s]))
    values = [v * factor for v in found[best] if v is not None]
    if not values:
        return "not run", None, None
    if len(values) == 1:
        cell = f"{values[0]:.2f} (n=1)"
    else:
        cell = f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"
    missing = [str(seed) for seed, v in zip(row.seeds, found[best], strict=True) if v is None]
    if missing:
        cell += f", {len(missing)} of {len(row.seeds)} seeds missing ({', '.join(missing)})"
    return cell, best, str(runs / seeded_name(row.run_name(best), "*"))


def render_table(paper: str, runs: str | Path = "runs", scale: str = "any") -> str:
    """The Markdown table for ``paper``."""
    spec, rows = load_table(paper)
    factor = float(spec.get("metric_scale", 1))
    lines = [
        f"### {spec.get('title', paper)}",
        "",
        "| row | metric | paper | measured | scale | run dir |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row.seeds:
            measured, found_scale, run_dir = measure_seeds(row, Path(runs), scale, factor)
        else:
            value, found_scale, run_dir = find_measurement(row, Path(runs), scale)
            measured = "not run" if value is None else f"{value * factor:.2f}"
        lines.append(
            f"| {row.label} | {row.metric} | {format_paper_value(row)} | {measured} | {found_scale or '-'} "
            f"| {run_dir or '-'} |"
        )
    lines.append("")
    lines.append("Toy-scale numbers measure the pipeline on toy data; they are not comparable to the paper's.")
    return "\n".join(lines)


def reproduce_commands(paper: str, scale: str) -> list[str]:
    """Shell commands that produce every row of ``paper`` at ``scale`` (rows without a toy variant are skipped), in the
    order and with the seeds of :func:`planned_steps`."""
    _, rows = load_table(paper)
    return [shlex.join(["python", "-m", "experiments", *args]) for _, _, args in planned_steps(rows, scale)]
