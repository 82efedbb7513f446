"""Smoke test of the TEL proposal cross-validation script on toy clips (official format, 3 test movies)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from datamodules.toy.emotion_clips import write_toy_tel
from tests.lightning_modules.emotion.test_tel_select import untrained_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))


def test_proposal_cv_scores_every_rule_and_pools_held_out_folds(tmp_path):
    import tel_proposal_cv

    write_toy_tel(tmp_path / "tel", num_classes=6, train=20, val=0, test=60, seed=0)
    ckpt = untrained_checkpoint(tmp_path / "model.ckpt")
    out = tmp_path / "cv.json"
    assert tel_proposal_cv.main(["--ckpt", str(ckpt), "--root", str(tmp_path / "tel"), "--seeds", "0", "1",
                                 "--json", str(out)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    full = result["full_test"]
    assert set(full) == {*tel_proposal_cv.RULES, "prior"} and all(0 <= v <= 100 for v in full.values())
    for seed in result["seeds"]:
        assert len(seed["chosen"]) == 2 and set(seed["chosen"]) <= set(tel_proposal_cv.RULES)
        if len(set(seed["chosen"])) == 1:  # one rule on both folds: the pooled folds are the whole test split
            assert abs(seed["held_out_model"] - full[seed["chosen"][0]]) < 1e-6
