"""``data`` and ``sweep`` parse their flags before importing torch, Lightning or Optuna: ``--help`` is quick, and old
flag spellings are rewritten with a deprecation line."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    return proc, time.perf_counter() - start


@pytest.mark.parametrize("command, flag", [("data", "--no_decode"), ("sweep", "--no_prune")])
def test_help_is_quick(command, flag):
    proc, seconds = run("-m", "experiments", command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert flag in proc.stdout and proc.stderr == ""
    assert seconds < 3.0, f"{command} --help took {seconds:.1f} s"


def test_modules_import_nothing_heavy():
    heavy = "{'torch', 'lightning', 'optuna'}"
    code = f"import sys, experiments.data, experiments.sweep; print(sorted({heavy} & set(sys.modules)))"
    proc, _ = run("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_old_spellings_are_rewritten_with_a_deprecation_line():
    proc, _ = run("-m", "experiments", "sweep", "--no-prune", "--runs", "out", "--help")
    assert proc.returncode == 0
    assert proc.stderr.splitlines() == [
        "sweep: --no-prune is deprecated; use --no_prune",
        "sweep: --runs is deprecated; use --runs_dir",
    ]
    proc, _ = run("-m", "experiments", "data", "--batch-size", "8", "--help")
    assert proc.returncode == 0 and proc.stderr.splitlines() == ["data: --batch-size is deprecated; use --batch_size"]
