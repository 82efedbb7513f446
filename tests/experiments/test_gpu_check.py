"""``make gpu-check`` in its CPU dry run (issue 27): every task of the plan measured on its toy config (2 steps, batch
2), the compiled rows through TorchDynamo, rows with positive step times and FLOPs appended to the Markdown file."""

from __future__ import annotations

import re
from pathlib import Path

from experiments import gpu_check

REPO = Path(__file__).resolve().parents[2]


def test_the_dry_run_measures_every_task_of_the_plan(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n## Another section\n\nkept\n")
    assert gpu_check.main(["--dry_run", "--markdown", str(out)]) == 0
    text = out.read_text()
    assert "## Another section\n\nkept" in text and gpu_check.SECTION in text
    rows = [line for line in text.splitlines() if line.startswith("| 2")]
    expected = sum(2 if compiled else 1 for _, _, compiled in gpu_check.DRY_PLAN)
    assert len(rows) == expected
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        step_ms, flops = float(cells[7].removesuffix(" ms")), float(cells[9])
        assert step_ms > 0 and flops > 0, row
    assert [c for c in rows if "| yes |" in c], "no compiled row"
    assert re.search(r"CPU dry run: \d+ rows in \d+ s\.", text)


def test_the_gpu_plan_names_existing_paper_configs():
    for task, config, _ in gpu_check.GPU_PLAN:
        assert (REPO / config).is_file(), f"{task}: {config} does not exist"
    assert {t for t, _, c in gpu_check.GPU_PLAN if c} == {"Visformer-S", "iTPN-B CLIP pre-training"}
