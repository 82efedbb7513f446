"""Full LOUPE on the toy captioned scenes, on the CPU in about a minute: retrieval far above chance with the Shapley
terms on, the terms and the estimators' losses finite, and the validation picture (phrases drawn as the boxes of
the regions they align to) written to the run folder."""

from __future__ import annotations

import csv
import json
import math

from experiments.cli import main as cli_main
from tests.lightning_modules.retrieval.test_retrieval_toy import chance_rsum


def test_toy_loupe_learns_retrieval_and_draws_its_grounding(tmp_path):
    args = [
        "fit", "--config", "configs/loupe/toy_loupe.yaml", "--runs_dir", str(tmp_path / "runs"), "--run_name", "toy",
        "--data.init_args.root", str(tmp_path / "scenes"), "--data.init_args.toy_train", "300",
        "--data.init_args.toy_eval", "50", "--data.init_args.batch_size", "32", "--data.init_args.num_workers", "0",
        "--trainer.check_val_every_n_epoch", "2", "--trainer.log_every_n_steps", "5",
        "--trainer.max_epochs", "20", "--trainer.max_steps", "130", "--trainer.enable_progress_bar", "false",
        "--model.init_args.optim.warmup_epochs", "0", "--model.init_args.optim.warmup_steps", "5",
        "--model.init_args.optim.base_lr", "1e-3", "--model.init_args.freeze_text_encoder", "true",
        "--model.init_args.shapley_batch", "2", "--model.init_args.num_regions", "2",
        "--model.init_args.num_candidates", "2", "--test_after_fit", "true",
    ]  # fmt: skip
    cli_main(args)
    run = next((tmp_path / "runs" / "toy").glob("version_*"))
    metrics = json.loads((run / "metrics.json").read_text())
    rsum, chance = metrics["test"]["test/rsum"], chance_rsum(50)
    print(f"toy LOUPE: test RSUM {rsum:.1f} (chance {chance:.1f})")
    assert rsum > 2.5 * chance, (rsum, chance)
    rows = [r for r in csv.DictReader((run / "metrics.csv").open()) if r.get("train/tsa")]
    assert rows and all(math.isfinite(float(r[k])) for r in rows for k in ("train/tsa", "train/fsa", "train/nse_token"))
    assert float(rows[-1]["train/phrases_per_caption"]) >= 1  # the toy captions' noun phrases are found
    pictures = sorted((run / "pictures").glob("val_grounding_epoch*.png"))
    assert pictures and pictures[-1].stat().st_size > 1000
