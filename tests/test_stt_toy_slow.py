"""STT's transfer claim at toy scale (make test-slow, several minutes on 2 cores): pre-training on synthetic
pedestrians of domain a, then fine-tuning on the differently rendered domain b, beats training on domain b from
scratch (same model, data, schedule and evaluation). docs/stt.md records the numbers."""

from __future__ import annotations

import json

import pytest

from experiments.cli import main as cli_main


@pytest.mark.slow
def test_toy_synthetic_pretraining_beats_scratch_on_a_new_domain(tmp_path):
    runs = tmp_path / "runs"
    common = ["--runs_dir", str(runs), "--trainer.enable_progress_bar", "false", "--test_after_fit", "true"]
    cli_main(["fit", "--config", "configs/stt/toy_pretrain.yaml", *common, "--run_name", "pre",
              "--data.init_args.root", str(tmp_path / "a")])  # fmt: skip
    pre = str(next((runs / "pre").glob("version_*/checkpoints/last.ckpt")))
    target = ["--data.init_args.root", str(tmp_path / "b")]
    cli_main(["fit", "--config", "configs/stt/toy_finetune.yaml", *common, *target, "--run_name", "fine",
              "--model.init_args.init_from", pre])  # fmt: skip
    cli_main(["fit", "--config", "configs/stt/toy_scratch.yaml", *common, *target, "--run_name", "scratch"])

    def test_metrics(name: str) -> dict:
        return json.loads(next((runs / name).glob("version_*/metrics.json")).read_text())["test"]

    fine, scratch = test_metrics("fine"), test_metrics("scratch")
    print(f"fine-tuned: rank-1 {fine['test/rank1']:.1f}, mAP {fine['test/mAP']:.1f}; "
          f"scratch: rank-1 {scratch['test/rank1']:.1f}, mAP {scratch['test/mAP']:.1f}")  # fmt: skip
    assert fine["test/mAP"] > scratch["test/mAP"] + 3.0
    assert fine["test/rank1"] >= scratch["test/rank1"]
