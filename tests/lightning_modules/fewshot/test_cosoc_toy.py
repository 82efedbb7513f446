"""COSOC's whole toy pipeline through the command line (CPU, about a minute): Exemplar pre-training, COS (predict),
COSOC training with fusion sampling and SOC testing. COS must keep crops that are more object than random crops
are (measured against the toy's object boxes), and the test metrics carry both intervals. A command-line
``--model.init_args.evaluator`` wins over the checkpoint's hyper-parameters."""

from __future__ import annotations

import json

import torch

from datamodules.toy.fewshot_scenes import cos_object_share
from experiments.cli import main as cli_main


def test_toy_cosoc_pipeline_runs_and_cos_keeps_object_crops(tmp_path, capfd):
    root, runs, cos_file = tmp_path / "data", tmp_path / "runs", tmp_path / "cos.pt"
    common = ["--runs_dir", str(runs), "--data.init_args.root", str(root), "--data.init_args.num_workers", "0",
              "--data.init_args.toy_train_per_class", "30", "--data.init_args.toy_eval_per_class", "12",
              "--trainer.enable_progress_bar", "false"]  # fmt: skip
    small_eval = ["--data.init_args.val_episodes", "4", "--data.init_args.test_episodes", "10"]
    exemplar = str(runs / "ex" / "version_*" / "checkpoints" / "last.ckpt")
    start_from = ["--model.init_args.backbone.init_args.pretrained", exemplar]  # the Exemplar backbone
    cli_main(["fit", "--config", "configs/cosoc/toy_exemplar.yaml", *common, *small_eval, "--run_name", "ex",
              "--trainer.max_epochs", "4", "--trainer.check_val_every_n_epoch", "4"])  # fmt: skip
    cli_main(["predict", "--config", "configs/cosoc/toy_cos.yaml", *common, "--run_name", "cos",
              *start_from, "--model.init_args.output", str(cos_file)])  # fmt: skip
    cos = torch.load(cos_file, weights_only=True)
    assert len(cos["paths"]) == 8 * 30 and cos["boxes"].shape == (240, 3, 4)
    assert (cos["probs"] >= 0).all() and (cos["probs"].sum(1) <= 1 + 1e-6).all() and cos["probs"].sum() > 0
    share = cos_object_share(cos, root, size=48)
    print(f"COS object share: top-1 {share['top1']:.2f}, kept {share['kept']:.2f}, random crops {share['random']:.2f}")
    # objects cover a quarter to a half of the image, so random crops are already ~56 % object; after 4 Exemplar
    # epochs COS's top-1 crops are ~60 % (the full toy's 12 epochs: 78 %, asserted in test_cosoc_toy_slow.py)
    assert share["top1"] > share["random"] + 0.03, share
    assert next((runs / "cos").glob("version_*/pictures/predict_cos_crops.png")).stat().st_size > 1000
    cli_main(["fit", "--config", "configs/cosoc/toy_cosoc.yaml", *common, *small_eval, "--run_name", "cosoc",
              *start_from, "--data.init_args.cos_file", str(cos_file),
              "--trainer.max_epochs", "1", "--test_after_fit", "true"])  # fmt: skip
    metrics = json.loads(next((runs / "cosoc").glob("version_*/metrics.json")).read_text())["test"]
    assert {"test/acc", "test/ci95_episodes", "test/acc_runs", "test/ci95_runs"} <= set(metrics)
    assert abs(metrics["test/acc"] - metrics["test/acc_runs"]) < 1e-6  # equal runs: the same mean
    assert "few-shot test (soc), 10 episodes" in capfd.readouterr().err
    last = next((runs / "cosoc").glob("version_*/checkpoints/last.ckpt"))
    cli_main(["test", "--config", "configs/cosoc/toy_cosoc.yaml", *common, *small_eval, "--run_name", "cosoc_proto",
              "--data.init_args.cos_file", str(cos_file), "--ckpt_path", str(last),
              "--model.init_args.evaluator", "proto", "--data.init_args.eval_views", "1"])  # fmt: skip
    assert "few-shot test (proto), 10 episodes" in capfd.readouterr().err
