"""``make smoke-paper`` as slow tests (issue 27): every non-toy config under ``configs/`` takes 2 training steps, 1
validation step and its metric's ``compute()`` on synthetic data of its shapes (``python -m experiments smoke``), each
config its own test. A failure names the config and its error.

All of them run on one pytest-xdist worker, one after another (``xdist_group`` under ``make test-slow``'s
``--dist loadgroup``): half of the paper configs need 8-21 GiB each on the CPU, and two of them side by side on the
two workers would not fit in this machine's 24 GiB; the other worker runs the toy comparisons meanwhile."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from experiments.smoke import paper_configs, run_one

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("smoke-paper")]


@pytest.mark.parametrize("config", paper_configs())
def test_the_paper_config_trains_two_steps_and_validates(config, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    result = run_one(config, timeout=float(os.environ.get("SMOKE_TIMEOUT_S", 1800)))
    assert result["ok"], f"{config}: {result['error']}\n{result.get('trace', '')}"
    assert result["metric"], f"{config}: no validation metric"
