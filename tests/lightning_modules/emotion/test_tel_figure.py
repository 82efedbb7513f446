"""The committed TEL timeline figure (docs/figures/tel_timelines.png) regenerates from its saved predictions
(docs/figures/tel_timelines.json) and the real test split, compared by size only; a saved clip that does not match
test.json is a clear error naming the predictions file."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from experiments.errors import DataError

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))

import tel_timelines  # noqa: E402

FIGURE, PREDICTIONS = ROOT / "docs" / "figures" / "tel_timelines.png", ROOT / "docs" / "figures" / "tel_timelines.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def official_dir() -> Path:
    for candidate in (os.environ.get("TEL_ANNOTATIONS"), ROOT.parent / "shared" / "data" / "tel"):
        if candidate and (Path(candidate) / "test.json").is_file():
            return Path(candidate)
    pytest.skip("official TEL test.json not found: set TEL_ANNOTATIONS to the folder of test.json")


def test_figure_regenerates_to_the_committed_size(tmp_path):
    from PIL import Image

    root = official_dir()
    out = tmp_path / "tel_timelines.png"
    size = tel_timelines.draw(PREDICTIONS, root, out)
    data, committed = out.read_bytes(), FIGURE.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) < 200 * 1024 and len(committed) < 200 * 1024
    with Image.open(FIGURE) as image:
        assert image.format == "PNG" and size == image.size
    assert abs(len(data) - len(committed)) <= 0.05 * len(committed), (len(data), len(committed))


def test_saved_clip_not_in_test_split_names_the_file(tmp_path):
    root = official_dir()
    doc = json.loads(PREDICTIONS.read_text())
    wrong = tmp_path / "wrong_key.json"
    doc["clips"][0]["key"] = "tt0000000/no_such_clip"
    wrong.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"wrong_key\.json: clip 'tt0000000/no_such_clip' is not in .*test\.json"):
        tel_timelines.draw(wrong, root, tmp_path / "x.png")
    doc = json.loads(PREDICTIONS.read_text())
    doc["clips"][0]["probs"] = doc["clips"][0]["probs"][:-1]  # one subtitle short
    short = tmp_path / "short.json"
    short.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"short\.json: clip .* probabilities of shape"):
        tel_timelines.draw(short, root, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
