"""`make bench-loupe` at the smallest size: it runs end to end, respects the estimator budget and writes its row."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("loupe_shapley", ROOT / "benchmarks" / "loupe_shapley.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shapley_benchmark_runs_within_the_budget_and_writes_its_row(tmp_path, capsys):
    bench = load_benchmark()
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n## Other\n\ntext\n")
    args = ["--root", str(tmp_path / "scenes"), "--shapley-batch", "2", "--fit-batches", "2", "--fit-steps", "20",
            "--steps", "1", "--reference-samples", "4", "--budget", "0.25", "--markdown", str(out)]  # fmt: skip
    assert bench.main(args) == 0
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\n## Other\n\ntext\n")  # earlier sections kept
    rows = [line for line in text.splitlines() if line.startswith("| 2")]
    assert len(rows) == 1 and "budget 0.25" in rows[0]
    token, semantic = (int(x) for x in re.search(r"\((\d+)% / (\d+)% sampled\)", rows[0]).groups())
    assert token <= 25 and semantic <= 25, rows[0]  # fitted and warm: the budget caps the sampled share
    printed = capsys.readouterr().out
    assert "best candidate agrees" in printed and "as trained" in printed
    bench.append_markdown_section(str(out), ["| 2999-01-01 | later row |"])  # a later run adds to the same table
    lines = out.read_text().splitlines()
    assert lines.index("| 2999-01-01 | later row |") == lines.index(rows[0]) + 1
