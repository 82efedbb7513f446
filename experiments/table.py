"""``python -m experiments table <paper> [--runs runs/] [--scale toy|full|any]``: paper numbers beside measured ones.

Rows come from ``experiments/tables/<paper>.yaml`` (label, config, metric key, paper value and its source). A row's
measured value is the newest finished ``metrics.json`` under ``<runs>/<run name>/version_*`` whose config and scale
match; a row never run prints "not run", a paper value nobody could find prints "n/a". Paper numbers live only in
these YAML files.
"""

from __future__ import annotations

import json
import shlex
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

    def run_name(self, scale: str) -> str:
        """The run folder name this row's runs use (``--run_name`` in its args, else the config stem)."""
        args = self.toy.get("args", []) if scale == "toy" else []
        if "--run_name" in args:
            return args[args.index("--run_name") + 1]
        if scale != "toy" and self.pretrain:  # rows sharing a fine-tune recipe differ by their pre-training
            return f"{Path(self.config).stem}__{Path(self.pretrain).stem}"
        return Path(self.toy.get("config", self.config) if scale == "toy" else self.config).stem

    def commands(self, scale: str, runs: str = "runs") -> list[list[str]] | None:
        """``fit`` (``stage: test`` rows: ``test``; ``stage: evaluate`` rows: ``evaluate``) argument lists that produce
        this row at ``scale``, in order (None: no toy variant).

        A row with a pre-training step (``pretrain``, or ``toy.pretrain: {config, args}``) first pre-trains, then
        runs its config with ``--model.init_args.<pretrain_arg>`` (``pretrained``) set to the pre-training run's newest
        ``<pretrain_ckpt>.ckpt`` (``last``; ``evaluate`` rows get it as ``--ckpt``). Steps in ``after_pretrain``
        (``toy.after_pretrain``) run in between and receive the checkpoint as ``--model.init_args.<pretrain_arg>``.
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
            steps.append(["fit", "--config", pre_config, *pre_args])
            name = pre_args[pre_args.index("--run_name") + 1] if "--run_name" in pre_args else Path(pre_config).stem
            ckpt = f"{runs}/{name}/version_*/checkpoints/{self.pretrain_ckpt}.ckpt"
            pass_ckpt = [f"--model.init_args.{self.pretrain_arg}", ckpt]
            for step in between:
                step_args = [str(a) for a in step.get("args", [])]
                steps.append([step.get("stage", "fit"), "--config", step["config"], *step_args, *pass_ckpt])
            args += ["--ckpt", ckpt] if self.stage == "evaluate" else pass_ckpt
        if self.stage in ("test", "evaluate"):
            steps.append([self.stage, "--config", config, *args])
        else:
            steps.append(["fit", "--config", config, *args, "--test_after_fit", "true"])
        return steps


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
        rows.append(Row(**{k: raw[k] for k in keys if k in raw}))
    return spec, rows


def find_measurement(row: Row, runs: Path, scale: str) -> tuple[float | None, str | None, str | None]:
    """(value, scale, run dir) of the newest finished run of ``row``; Nones when there is none."""
    scales = ("toy", "full") if scale == "any" else (scale,)
    best = None
    for s in scales:
        for metrics_file in (runs / row.run_name(s)).glob("version_*/metrics.json"):
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
    """Shell commands that produce every row of ``paper`` at ``scale`` (rows without a toy variant are skipped)."""
    _, rows = load_table(paper)
    commands = []
    for row in rows:
        for args in row.commands(scale) or []:
            line = shlex.join(["python", "-m", "experiments", *args])
            if line not in commands:  # rows may share a pre-training run
                commands.append(line)
    return commands
