"""LOUPE pre-training from webdataset shards (issue 23): the toy pre-training config trains on the CPU from toy
shards, and the toy zero-shot config evaluates that checkpoint on captions pre-training never saw."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from experiments.__main__ import main

REPO = Path(__file__).resolve().parents[3]


def run(*args: str) -> int:
    try:
        return main(list(args))
    except SystemExit as exit_:
        return exit_.code


def test_toy_shards_pretrain_then_zero_shot(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    runs = tmp_path / "runs"
    # run names given: SuiteCLI.run_name() does not see the config's name when its bases are stacked (reported)
    code = run("fit", "--config", "configs/loupe/toy_pretrain.yaml", "--data.init_args.root", str(tmp_path / "shards"),
               "--runs_dir", str(runs), "--run_name", "toy_pretrain")  # fmt: skip
    assert code in (0, None)
    shards = sorted(p.name for p in (tmp_path / "shards").glob("*.tar"))
    assert shards == ["00000.tar", "00001.tar", "00002.tar", "00003.tar"]  # the layout img2dataset writes
    (run_dir,) = (runs / "toy_pretrain").glob("version_*")
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["finished"] and record["global_step"] == 12  # 3 epochs x 4 batches of 64 from 3 shards x 96
    ckpt = run_dir / "checkpoints" / "last.ckpt"

    code = run("test", "--config", "configs/loupe/toy_zeroshot.yaml", "--data.init_args.root", str(tmp_path / "scenes"),
               "--runs_dir", str(runs), "--ckpt_path", str(ckpt), "--run_name", "toy_zeroshot")  # fmt: skip
    assert code in (0, None)
    (zs_dir,) = (runs / "toy_zeroshot").glob("version_*")
    zero_shot = json.loads((zs_dir / "metrics.json").read_text())["test"]
    recalls = [zero_shot[f"test/{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
    assert zero_shot["test/rsum"] == pytest.approx(sum(recalls), abs=1e-3)
    assert all(math.isfinite(v) for v in zero_shot.values())
    # the checkpoint is what is evaluated: the same config from its fresh initialisation ranks differently
    code = run("test", "--config", "configs/loupe/toy_zeroshot.yaml", "--data.init_args.root", str(tmp_path / "scenes"),
               "--runs_dir", str(runs), "--run_name", "fresh")  # fmt: skip
    assert code in (0, None)
    (fresh_dir,) = (runs / "fresh").glob("version_*")
    fresh = json.loads((fresh_dir / "metrics.json").read_text())["test"]
    assert fresh["test/rsum"] != zero_shot["test/rsum"]
    # fine-tuning configs start from the pre-training with init_from: the same weights, the same ranking
    code = run("test", "--config", "configs/loupe/toy_zeroshot.yaml", "--data.init_args.root", str(tmp_path / "scenes"),
               "--runs_dir", str(runs), "--run_name", "init_from", "--model.init_args.init_from",
               str(run_dir / "checkpoints" / "last*.ckpt"))  # fmt: skip
    assert code in (0, None)
    (init_dir,) = (runs / "init_from").glob("version_*")
    started = json.loads((init_dir / "metrics.json").read_text())["test"]
    assert started["test/rsum"] == pytest.approx(zero_shot["test/rsum"], abs=1e-4)
