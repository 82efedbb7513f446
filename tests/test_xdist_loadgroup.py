"""``make test-slow`` relies on pytest-xdist's ``--dist loadgroup`` to run every paper-config smoke test on one worker
(two of them side by side do not fit in 24 GiB). pytest 9.2 moved a node's id to where xdist 3.8 no longer renames
it, and the groups were then silently ignored; this test runs a tiny suite the way ``make test-slow`` does and checks
that the grouped tests shared a worker."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def test_loadgroup_keeps_a_group_on_one_worker(tmp_path):
    suite, seen = tmp_path / "suite", tmp_path / "seen"
    suite.mkdir()
    seen.mkdir()
    (suite / "test_tiny.py").write_text(
        textwrap.dedent(
            """
            import os
            import time
            from pathlib import Path

            import pytest

            def _record(kind, i):
                Path(os.environ["SEEN"], f"{kind}-{i}").write_text(os.environ["PYTEST_XDIST_WORKER"])
                time.sleep(0.2)  # long enough that both workers take part

            @pytest.mark.xdist_group("heavy")
            @pytest.mark.parametrize("i", range(6))
            def test_heavy(i):
                _record("heavy", i)

            @pytest.mark.parametrize("i", range(6))
            def test_light(i):
                _record("light", i)
            """
        )
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider", "-q", str(suite)],
        cwd=suite, capture_output=True, text=True, timeout=300, env={**os.environ, "SEEN": str(seen)},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    workers = {path.name: path.read_text() for path in seen.iterdir()}
    assert len(workers) == 12, workers
    heavy = {worker for name, worker in workers.items() if name.startswith("heavy")}
    assert len(heavy) == 1, f"the xdist_group tests ran on {sorted(heavy)}: pytest / pytest-xdist ignore the group"
    assert len(set(workers.values())) == 2, f"one worker ran everything: {workers}"
