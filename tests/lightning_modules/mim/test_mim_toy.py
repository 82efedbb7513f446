"""Toy MIM pre-training on the CPU, through the command line: the validation loss (fixed masks) falls steadily for the
iTPN pixel recipe, the iTPN CLIP recipe (tiny random teacher) and MVP, and the checkpoint loads into a classifier.

These fast runs use a random CLIP teacher and a few epochs; tests/lightning_modules/mim/test_mim_toy_slow.py runs the
pixel and CLIP
recipes for minutes and asserts that a linear probe on the pre-trained encoder beats the same probe at random init.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import timm
import torch

from datamodules.imagenet import ImageNetDataModule
from experiments.cli import main as cli_main
from experiments.configs import load_config
from lightning_modules.backbones import load_checkpoint_file
from lightning_modules.classification.probe import linear_probe

DATA = dict(toy_num_classes=4, toy_train_per_class=100, toy_eval_per_class=20, toy_img_size=64)


@pytest.fixture(scope="module")
def toy_shapes(tmp_path_factory):
    return tmp_path_factory.mktemp("mim") / "shapes"


def pretrain(config: str, root: Path, runs: Path, epochs: int, extra: list[str] = (), data: dict = DATA) -> Path:
    args = ["fit", "--config", config, "--runs_dir", str(runs), "--run_name", "toy"]
    args += [
        "--data.init_args.root",
        str(root),
        "--data.init_args.num_workers",
        "0",
        "--trainer.max_epochs",
        str(epochs),
    ]
    args += ["--data.init_args.batch_size", "32", "--trainer.enable_progress_bar", "false", *extra]
    for key, value in data.items():
        args += [f"--data.init_args.{key}", str(value)]
    cli_main(args)
    return next(runs.glob("toy/version_*"))


def losses(run: Path, key: str) -> list[float]:
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    return [float(r[key]) for r in rows if r.get(key)]


def classifier(config: str, num_classes: int) -> tuple[torch.nn.Module, dict]:
    """The config's encoder as a fresh timm classifier (no pyramid), and the config's model init_args."""
    model_args = load_config(config)["model"]["init_args"]
    encoder = model_args["encoder"]["init_args"]
    kwargs = {k: v for k, v in encoder["kwargs"].items() if k not in ("fpn_dim", "fpn_depth")}
    return timm.create_model(encoder["name"], num_classes=num_classes, **kwargs), model_args


def probe_accuracy(config: str, root: Path, checkpoint: Path | None, data: dict = DATA) -> float:
    backbone, model_args = classifier(config, num_classes=0)
    if checkpoint is not None:
        load_checkpoint_file(backbone, str(checkpoint))
    dm = ImageNetDataModule(
        root=str(root), dataset="toy", batch_size=100, num_workers=0, img_size=64, test_split="test", crop_pct=1.0,
        repeated_aug=False, pin_memory=False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), seed=0,
        **data,
    )  # fmt: skip
    if "pixels" == model_args.get("target"):
        dm.mean, dm.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    dm.setup("fit")
    dm.setup("test")
    train = dm.loader(dm._dataset("train", train=False), train=False)
    return linear_probe(backbone, train, dm.test_dataloader()).test_accuracy


@pytest.mark.parametrize(
    "config, epochs, drop",
    [
        ("configs/itpn/toy_pixel.yaml", 6, 0.9),
        ("configs/itpn/toy_clip.yaml", 4, 0.9),
        ("configs/mvp/toy.yaml", 4, 0.95),
    ],
    ids=["itpn-pixel", "itpn-clip", "mvp"],
)
def test_toy_pretraining_lowers_the_loss_steadily(config, epochs, drop, toy_shapes, tmp_path):
    random_teacher = (
        ["--model.init_args.teacher.init_args.name_or_path", "null"] if "clip" in config or "mvp" in config else []
    )
    run = pretrain(config, toy_shapes, tmp_path / "runs", epochs, random_teacher)
    assert not Path("None").exists()  # "null" reached the module as None, not as a folder name
    val = losses(run, "val/loss")
    assert len(val) == epochs and val[-1] < drop * val[0], val
    assert all(b <= a * 1.02 for a, b in zip(val, val[1:], strict=False)), f"validation loss not steady: {val}"
    # the pre-trained encoder loads into a classifier's backbone: its weights, not a fresh init, are what it holds
    backbone, _ = classifier(config, num_classes=10)
    load_checkpoint_file(backbone, str(run / "checkpoints" / "last.ckpt"))
    trained = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    torch.testing.assert_close(backbone.patch_embed.proj.weight, trained["encoder.patch_embed.proj.weight"])
    torch.testing.assert_close(
        backbone.blocks[-1].mlp.fc2.weight, trained[f"encoder.blocks.{len(backbone.blocks) - 1}.mlp.fc2.weight"]
    )
