"""The reference goldens (../shared/golden/): inputs and what the authors' released code computes on them."""

import os
from pathlib import Path

import pytest
import torch

SHARED = Path(os.environ.get("VISION_SUITE_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))


def load_golden(name: str) -> dict:
    """A reference golden from ``$VISION_SUITE_SHARED/golden/`` (default ``../shared/golden/`` beside the checkout):
    inputs and the outputs the authors' released code computes on them. Skips the test, naming the path, when the
    file is absent (the suite never needs ``../shared`` at run time)."""
    path = SHARED / "golden" / name
    if not path.is_file():
        pytest.skip(f"reference golden {path} is absent (set VISION_SUITE_SHARED to the folder holding golden/)")
    golden = torch.load(path, weights_only=False, map_location="cpu")
    assert isinstance(golden, dict) and golden, f"{path} holds {type(golden).__name__}, not the dict of inputs/outputs"
    return golden
