"""The CLIP zero-shot protocol check: a `test` row runs `python -m experiments test` on a config with no training,
and the CLIP evaluator's metrics equal the retrieval metric computed by hand from its own embeddings."""

from __future__ import annotations

import json

import torch

from experiments.cli import main as cli_main
from experiments.table import Row, load_table
from lightning_modules.retrieval.clip import ClipZeroShotRetrieval
from lightning_modules.retrieval.metrics import ImageTextRetrieval

TINY = {
    "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                    "vocab_size": 30522, "max_position_embeddings": 77, "bos_token_id": 101, "eos_token_id": 102,
                    "pad_token_id": 0},
    "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                      "image_size": 32, "patch_size": 8},
    "projection_dim": 16,
}  # fmt: skip


def test_zero_shot_rows_run_the_test_subcommand():
    _, rows = load_table("loupe")
    clip_rows = [r for r in rows if r.stage == "test"]
    assert clip_rows and all(r.commands("full")[0][0] == "test" for r in clip_rows)
    assert "--test_after_fit" not in clip_rows[0].commands("full")[0]
    fit = Row(label="x", config="c.yaml", metric="m", paper=None)
    assert fit.commands("full")[0][0] == "fit"


def test_clip_zero_shot_evaluation_on_toy_scenes(tmp_path):
    args = [
        "test", "--config", "configs/loupe/zeroshot_clip_coco.yaml", "--runs_dir", str(tmp_path / "runs"),
        "--run_name", "clip", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
        "--model.init_args.clip.init_args.name_or_path", "",
        "--model.init_args.clip.init_args.config", json.dumps(TINY),
        "--data.init_args.root", str(tmp_path / "scenes"), "--data.init_args.dataset", "toy",
        "--data.init_args.img_size", "32", "--data.init_args.toy_train", "4", "--data.init_args.toy_eval", "12",
        "--data.init_args.batch_size", "5", "--data.init_args.num_workers", "0",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    cli = cli_main(args)
    record = json.loads(next((tmp_path / "runs" / "clip").glob("version_*/metrics.json")).read_text())
    assert record["finished"]
    measured = record["test"]
    # the same model and data, ranked in one go, give the same numbers
    model: ClipZeroShotRetrieval = cli.model
    metric = ImageTextRetrieval()
    with torch.no_grad():
        for batch in cli.datamodule.test_dataloader():
            image_emb, text_emb = model.embed(batch)
            metric.update(image_emb, batch["image_ids"], text_emb, batch["text_image_ids"], batch["text_ids"])
    expected = metric.compute()
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r10", "rsum"):
        assert abs(measured[f"test/{key}"] - float(expected[key])) < 1e-3, key
    recalls = sum(measured[f"test/{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    assert abs(recalls - measured["test/rsum"]) < 1e-3
