"""``load_from_checkpoint`` rebuilds every task's toy model from its checkpoint alone (issue 26).

Each toy config's model is built as ``python -m experiments fit --config <toy>`` builds it (SuiteCLI, nothing
trained), saved by a Trainer, and loaded back with ``<class>.load_from_checkpoint(path)`` and no other argument: the
injected networks come back from the ``class_path`` / ``init_args`` stored in the checkpoint's hyper-parameters. The
loaded model must have the same class, hyper-parameters and weights (tensor for tensor), and load again once saved.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

# one toy config per LightningModule class the configs use (and the variants that inject other networks)
TOY_CONFIGS = [
    "configs/visformer/toy.yaml",
    "configs/itpn/toy_pixel.yaml",
    "configs/itpn/toy_clip.yaml",
    "configs/mvp/toy.yaml",
    "configs/compression/toy.yaml",
    "configs/ediy/toy_byol.yaml",
    "configs/ediy/toy_ediy.yaml",
    "configs/cosoc/toy_cc.yaml",
    "configs/cosoc/toy_protonet.yaml",
    "configs/cosoc/toy_exemplar.yaml",
    "configs/cosoc/toy_cos.yaml",
    "configs/stt/toy.yaml",
    "configs/tel/toy.yaml",
    "configs/loupe/toy_itc.yaml",
    "configs/loupe/toy_loupe.yaml",
    "configs/denet/toy.yaml",
    "configs/denet/toy_damsm.yaml",
    "configs/downstream/toy_mask_rcnn.yaml",
    "configs/downstream/toy_upernet.yaml",
]
# second stages start from a first stage's checkpoint: (first stage's toy config, the key that names the checkpoint)
FIRST_STAGE = {
    "configs/cosoc/toy_cos.yaml": (
        "configs/cosoc/toy_exemplar.yaml",
        "--model.init_args.backbone.init_args.pretrained",
    ),
    "configs/denet/toy.yaml": ("configs/denet/toy_damsm.yaml", "--model.init_args.damsm.init_args.checkpoint"),
}


def built_model(config: str, runs: Path, overrides: list[str] = ()) -> L.LightningModule:
    """The config's model as ``fit`` builds it (the CLI's instantiator hands it the config's hyper-parameters)."""
    from experiments.cli import SuiteCLI

    args = ["--config", config, "--runs_dir", str(runs), "--trainer.logger", "false", *overrides]
    return SuiteCLI(args=args, run=False).model


def save(model: L.LightningModule, path: Path) -> Path:
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


@pytest.mark.parametrize("config", TOY_CONFIGS)
def test_load_from_checkpoint_rebuilds_the_toy_model(config, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    overrides = []
    if config in FIRST_STAGE:
        first, key = FIRST_STAGE[config]
        overrides = [key, str(save(built_model(first, tmp_path / "runs"), tmp_path / "first.ckpt"))]
    torch.manual_seed(0)
    model = built_model(config, tmp_path / "runs", overrides)
    path = save(model, tmp_path / "model.ckpt")
    assert os.path.getsize(path) > 0

    torch.manual_seed(1)  # another initialisation: only the checkpoint's weights can make them equal
    loaded = type(model).load_from_checkpoint(path, map_location="cpu")
    assert type(loaded) is type(model)
    assert dict(loaded.hparams) == dict(model.hparams)  # the config form, networks as class_path / init_args
    again = type(model).load_from_checkpoint(save(loaded, tmp_path / "again.ckpt"), map_location="cpu")  # saved again
    assert list(again.state_dict()) == list(model.state_dict())
    before, after = model.state_dict(), loaded.state_dict()
    assert list(after) == list(before), f"{config}: the rebuilt model has other weights"
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0, equal_nan=True, msg=f"{config}: {key} differs")
