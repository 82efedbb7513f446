"""Image classification: a toy fit that learns, mixup/soft targets, linear probe and weight EMA."""

import json

import pytest
import torch
from torch import nn

from lightning_modules.backbones import registered_model
from lightning_modules.classification import ImageClassifier
from lightning_modules.optim import OptimConfig

TOY = "configs/visformer/toy.yaml"


def test_toy_visformer_fit_learns_above_chance(tmp_path, monkeypatch):
    """The toy config's pipeline (same module, data and loss) on 4 shape classes: test top-1 at least 2x chance."""
    from experiments.cli import main

    monkeypatch.chdir(tmp_path)
    import shutil
    from pathlib import Path

    shutil.copy(Path(__file__).parents[3] / TOY, tmp_path / "toy.yaml")
    cli = main([
        "fit", "--config", "toy.yaml",
        "--data.root", str(tmp_path / "shapes4"), "--model.init_args.net.init_args.num_classes", "4",
        "--data.toy_train_per_class", "400", "--data.toy_eval_per_class", "50", "--data.batch_size", "32",
        "--data.num_workers", "0", "--trainer.max_epochs", "7", "--trainer.enable_progress_bar", "false",
        "--test_after_fit", "true",
    ])  # fmt: skip
    metrics = json.loads((cli.run_dir / "metrics.json").read_text())
    assert metrics["scale"] == "toy" and metrics["finished"]
    assert metrics["test"]["test/top1"] >= 0.5, metrics  # chance is 0.25
    assert metrics["val"]["val/top1"] >= 0.5, metrics


def tiny_net(num_classes: int = 4) -> nn.Module:
    tiny = dict(img_size=32, embed_dim=48, depth=[1, 1, 1], num_heads=3, init_channels=8)
    return registered_model("visformer_tiny", num_classes=num_classes, drop_path_rate=0.1, kwargs=tiny)


def tiny_classifier(num_classes: int = 4, **kwargs) -> ImageClassifier:
    defaults = dict(mixup_alpha=0.0, cutmix_alpha=0.0, optim=OptimConfig(warmup_steps=0))
    return ImageClassifier(tiny_net(num_classes), **{**defaults, **kwargs})


def test_soft_target_loss_under_mixup_matches_hand_computation():
    torch.manual_seed(0)
    model = tiny_classifier(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1)
    images, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    mixed, soft = model.mixup(images.clone(), targets)
    assert soft.shape == (4, 4)
    torch.testing.assert_close(soft.sum(-1), torch.ones(4))
    # mixup pairs sample i with sample B-1-i: the soft target puts lam*(1-eps)+eps/C on its own class
    own = soft[torch.arange(4), targets]
    flipped = soft[torch.arange(4), targets.flip(0)]
    torch.testing.assert_close(own + flipped, torch.full((4,), 1 - 0.1 + 2 * 0.1 / 4))
    logits = model(mixed)
    expected = -(soft * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(model.soft_loss(logits, soft), expected)


def test_odd_batch_under_mixup_is_a_clear_error():
    model = tiny_classifier(mixup_alpha=0.8)
    with pytest.raises(ValueError, match="even batch"):
        model.training_step({"image": torch.randn(3, 3, 32, 32), "target": torch.tensor([0, 1, 2])}, 0)


def test_linear_probe_trains_only_the_classifier():
    model = tiny_classifier(linear_probe=True)
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {"head.1.weight", "head.1.bias"}  # head.0: MAE's BatchNorm without affine
    assert not model.backbone.head[0].affine
    plain = tiny_classifier(linear_probe=True, probe_batchnorm=False)
    assert {n for n, p in plain.backbone.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}


def test_weight_ema_follows_the_weights():
    model = tiny_classifier(ema_decay=0.5)
    with torch.no_grad():
        model.backbone.head.weight.fill_(1.0)
        model.ema.module.head.weight.fill_(0.0)
    model.ema.update(model.backbone, step=100)
    torch.testing.assert_close(model.ema.module.head.weight, torch.full_like(model.backbone.head.weight, 0.5))
    assert not any(p.requires_grad for p in model.ema.parameters())
    assert sum(k.startswith("ema.") for k in model.state_dict()) > 0


def test_compile_switch_keeps_weights_once_in_state_dict():
    model = tiny_classifier(compile=True)
    assert all(k.startswith("backbone.") for k in model.state_dict())


def test_fewer_model_classes_than_data_classes_is_a_config_error(toy_imagenet):
    import lightning as L

    from datamodules.imagenet import ImageNetDataModule
    from experiments.errors import ConfigError

    dm = ImageNetDataModule(root=str(toy_imagenet), batch_size=4, num_workers=0, img_size=32, auto_augment=None,
                            re_prob=0.0, repeated_aug=False, pin_memory=False)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", fast_dev_run=1, logger=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match="num_classes=3 but the dataset has 4"):
        trainer.fit(tiny_classifier(num_classes=3), datamodule=dm)


def test_the_network_is_injected_and_its_num_classes_is_the_modules():
    model = tiny_classifier(num_classes=6, mixup_alpha=0.8)
    assert model.num_classes == 6 and model.backbone.num_classes == 6
    assert model.mixup.num_classes == 6 and model(torch.randn(2, 3, 32, 32)).shape == (2, 6)
    assert "top5" in str(list(model.val_metrics.keys()))  # more than 5 classes: top-5 accuracy too
    assert "net" not in model.hparams and model.hparams["mixup_alpha"] == 0.8  # a Python-built net is not pickled
    with pytest.raises(TypeError):
        ImageClassifier(tiny_net(), 0.1)  # the module's own settings are keyword-only


def test_a_network_without_classes_is_a_config_error():
    from experiments.errors import ConfigError

    with pytest.raises(ConfigError, match="model.init_args.net: Sequential has no num_classes"):
        ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)))


def test_the_toy_config_builds_the_network_and_its_class_count_reaches_the_data(tmp_path, monkeypatch):
    from pathlib import Path

    from experiments.cli import SuiteCLI

    monkeypatch.chdir(Path(__file__).parents[3])
    args = ["--config", TOY, "--runs_dir", str(tmp_path), "--trainer.logger", "false",
            "--model.init_args.net.init_args.num_classes", "4"]  # fmt: skip
    cli = SuiteCLI(args=args, run=False)
    assert cli.model.num_classes == 4 and type(cli.model.backbone).__name__ == "Visformer"
    assert cli.datamodule.toy_options["num_classes"] == 4
    assert cli.model.hparams["net"]["init_args"]["kwargs"]["embed_dim"] == 96  # the config form, for checkpoints
