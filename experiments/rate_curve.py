"""``python -m experiments rate_curve --runs_dir DIR[=LABEL] [--runs_dir ...] --out FIG.png [--split val|test]``.

The compression-recovery trade-off of learning-by-compression (arXiv 2105.13978): every ``metrics.json`` under each
``--runs_dir`` folder (a sweep's ``runs/sweeps/<study>``, or any runs folder) is one point; each folder is one curve,
labelled by ``LABEL`` or the folder's name, and split into one curve per weak-label weight ``lambda_sem`` when the
folder holds more than one (a ``lambda_rate x lambda_sem`` grid: curves ``LABEL, lambda_sem=V``). Two panels: PSNR
vs bits per pixel and semantic recovery (frozen classifier's accuracy on reconstructions / on originals) vs bits per
pixel; a run without semantic metrics is left out of the second. Written atomically: the PNG, ``<out>.csv`` (one row
per run) and ``<out>.md`` (the same table in Markdown, also printed).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import yaml

from experiments.errors import ConfigError, OneLineArgumentParser
from experiments.flags import canonical_flags

COLUMNS = ("label", "run", "lambda_rate", "lambda_sem", "bpp", "psnr", "ms_ssim", "semantic_recovery", "weak_acc")


def _loss_weights(run_dir: Path) -> tuple[float | None, float | None]:
    """``(lambda_rate, lambda_sem)`` of the run's resolved ``config.yaml`` (None where absent)."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        return None, None
    try:
        init_args = yaml.safe_load(config.read_text())["model"]["init_args"]
        values = (init_args.get("lambda_rate"), init_args.get("lambda_sem"))
    except (KeyError, TypeError, AttributeError, yaml.YAMLError):
        return None, None
    return tuple(float(v) if v is not None else None for v in values)


def collect(folder: str | Path, label: str, split: str = "val") -> list[dict]:
    """One row per ``metrics.json`` under ``folder`` holding ``<split>/bpp`` (runs without it are skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--runs_dir {folder}: no such folder")
    rows = []
    for path in sorted(folder.rglob("metrics.json")):
        record = json.loads(path.read_text())
        metrics = record.get(split) or {}
        if f"{split}/bpp" not in metrics:
            continue
        lambda_rate, lambda_sem = _loss_weights(path.parent)
        row = {"label": label, "run": str(path.parent), "lambda_rate": lambda_rate, "lambda_sem": lambda_sem}
        for key in COLUMNS[4:]:
            row[key] = metrics.get(f"{split}/{key}")
        rows.append(row)
    return sorted(rows, key=lambda r: r["bpp"])


def split_by_lambda_sem(label: str, rows: list[dict]) -> dict[str, list[dict]]:
    """One curve per ``lambda_sem`` of ``rows`` (label ``LABEL, lambda_sem=V``, ascending ``V``; the row labels
    follow); rows of a single weight, or without one, stay one curve named ``label``."""
    weights = sorted({row["lambda_sem"] for row in rows}, key=lambda v: (v is not None, v or 0.0))
    if len(weights) < 2:
        return {label: rows}
    curves: dict[str, list[dict]] = {}
    for weight in weights:
        name = f"{label}, lambda_sem={_fmt(weight) if weight is not None else '?'}"
        curves[name] = [{**row, "label": name} for row in rows if row["lambda_sem"] == weight]
    return curves


def _parse_runs(spec: str) -> tuple[str, str]:
    folder, _, label = spec.partition("=")
    return folder, label or Path(folder.rstrip("/")).name


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot(curves: dict[str, list[dict]], split: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (("psnr", "PSNR (dB)"), ("semantic_recovery", "semantic recovery (acc. recovered / original)"))
    for ax, (key, name) in zip(axes, panels, strict=True):
        drawn = False
        for label, rows in curves.items():
            points = [(r["bpp"], r[key]) for r in rows if r[key] is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=label)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "not measured\n(no semantic_classifier)", ha="center", va="center",
                    transform=ax.transAxes)  # fmt: skip
        ax.set_xlabel(f"rate ({split}, bits per pixel)")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend()
    fig.suptitle("compression-recovery trade-off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def rate_curve(runs: list[str], out: str, split: str = "val") -> list[dict]:
    """Collect every folder of ``runs`` (``DIR`` or ``DIR=LABEL``), write the figure and tables; return the rows."""
    from experiments.io import atomic_write_bytes  # imports torch: not for `rate_curve --help`

    curves: dict[str, list[dict]] = {}
    for spec in runs:
        folder, label = _parse_runs(spec)
        rows = collect(folder, label, split)
        if not rows:
            raise ConfigError(f"--runs_dir {folder}: no metrics.json with '{split}/bpp' under it (a compression run?)")
        for name, curve in split_by_lambda_sem(label, rows).items():
            curves.setdefault(name, []).extend(curve)
    out_path = Path(out)
    atomic_write_bytes(out_path, plot(curves, split))
    rows = [row for label_rows in curves.values() for row in label_rows]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out_path.with_suffix(".csv"), text.getvalue().encode())
    atomic_write_bytes(out_path.with_suffix(".md"), markdown(rows).encode())
    return rows


def main(argv: list[str]) -> int:
    parser = OneLineArgumentParser(
        prog="python -m experiments rate_curve", description=__doc__.split("\n\n")[1], allow_abbrev=False
    )
    parser.add_argument("--runs_dir", action="append", required=True, help="runs folder, optionally =LABEL; repeatable")
    parser.add_argument("--out", required=True, help="PNG path; .csv and .md tables are written beside it")
    parser.add_argument("--split", choices=["val", "test"], default="val")
    args = parser.parse_args(
        canonical_flags(argv, parser._option_string_actions, {"--runs": "--runs_dir"}, "rate_curve")
    )
    rows = rate_curve(args.runs_dir, args.out, args.split)
    print(markdown(rows), end="")
    print(f"figure: {args.out}")
    return 0
