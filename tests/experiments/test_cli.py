"""The command line: the printed recipe, clear errors on bad input, and the run directory every run writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiments.configs import load_config, run_config_files

REPO = Path(__file__).resolve().parents[2]
SMALL = "configs/visformer/visformer_small_in1k.yaml"


@pytest.fixture
def run_cli(capfd, monkeypatch):
    """``python -m experiments ARGS`` in-process from the repository root: (returncode, stdout, stderr)."""
    from experiments.__main__ import main

    monkeypatch.chdir(REPO)

    def run(*args):
        try:
            code = main(list(args))
        except SystemExit as exit_:
            code = exit_.code
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def test_module_entry_point_runs_as_a_process():
    out = subprocess.run(
        [sys.executable, "-m", "experiments", "fit", "--config", SMALL, "--data.root", "/nonexistent"],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith("error: data.root '/nonexistent'")


def test_print_config_shows_the_full_paper_recipe(run_cli):
    out = run_cli("fit", "--config", SMALL, "--print_config")
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    model, data, trainer = cfg["model"]["init_args"], cfg["data"]["init_args"], cfg["trainer"]
    net = model["net"]["init_args"]
    assert net["name"] == "visformer_small" and net["drop_path_rate"] == 0.1
    assert (model["mixup_alpha"], model["cutmix_alpha"], model["label_smoothing"]) == (0.8, 1.0, 0.1)
    optim = model["optim"]
    assert (optim["name"], optim["base_lr"], optim["base_batch_size"], optim["weight_decay"]) == (
        "adamw",
        5e-4,
        512,
        0.05,
    )
    assert (optim["warmup_epochs"], optim["warmup_lr"], optim["min_lr"]) == (5, 1e-6, 1e-5)
    assert data["auto_augment"] == "rand-m9-mstd0.5-inc1" and data["re_prob"] == 0.25 and data["repeated_aug"]
    assert trainer["max_epochs"] == 300 and trainer["precision"] == "bf16-mixed" and trainer["devices"] == 8
    assert trainer["strategy"] == "ddp" and data["batch_size"] * trainer["devices"] == 512


def test_every_config_parses(run_cli):
    for config in run_config_files(REPO / "configs"):  # bases (_*.yaml) are parsed within the configs extending them
        if config.parent.name in ("sweeps", "evaluation"):  # search spaces (test_sweep.py), evaluation protocols
            continue  # (python -m experiments evaluate, test_representation_eval.py)
        out = run_cli("fit", "--config", str(config.relative_to(REPO)), "--print_config")
        assert out.returncode == 0, f"{config}: {out.stderr[-2000:]}"


def test_nonexistent_data_root_names_path_and_layout(run_cli):
    out = run_cli("fit", "--config", SMALL, "--data.root", "/nonexistent")
    assert out.returncode == 2
    assert "/nonexistent" in out.stderr and "train/<wnid>/*.JPEG" in out.stderr


def test_misspelled_key_names_the_key(run_cli):
    out = run_cli("fit", "--config", SMALL, "--data.batchsize", "3")
    assert out.returncode != 0 and "batchsize" in out.stderr
    out = run_cli("fit", "--config", SMALL, "--model.init_args.optim.base_lrr", "1")
    assert out.returncode != 0 and "base_lrr" in out.stderr


def test_misspelled_key_in_a_config_file_names_the_key(run_cli, tmp_path):
    cfg = load_config(REPO / SMALL, resolve=False)  # merged over its bases: the copy stands alone
    cfg["model"]["init_args"]["drop_path_rat"] = 0.2
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    out = run_cli("fit", "--config", str(tmp_path / "bad.yaml"))
    assert out.returncode != 0 and "drop_path_rat" in out.stderr


def test_unknown_backbone_lists_close_matches(run_cli):
    out = run_cli(
        "fit", "--config", SMALL, "--model.init_args.net.init_args.name", "visformer_smal", "--data.root", "/tmp"
    )
    assert out.returncode == 2 and "visformer_small" in out.stderr and "Close matches" in out.stderr


def run_in(folder, argv):
    """``experiments.cli.main(argv)`` with ``folder`` as the working directory."""
    from experiments.cli import main

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        return main(argv)
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """One short toy fit through the CLI in a scratch folder: (folder, run dir, arguments without the epochs)."""
    work = tmp_path_factory.mktemp("cli")
    args = [
        "--config", str(REPO / "configs/visformer/toy.yaml"), "--data.root", str(work / "toy"),
        "--data.toy_train_per_class", "8", "--data.toy_eval_per_class", "4", "--data.toy_num_classes", "3",
        "--model.init_args.net.init_args.num_classes", "3", "--data.batch_size", "8", "--data.num_workers", "0",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    cli = run_in(work, ["fit", *args, "--trainer.max_epochs", "2"])
    return work, work / cli.run_dir, args


def test_fit_writes_the_run_directory(toy_run):
    work, run_dir, _ = toy_run
    assert run_dir == work / "runs" / "toy" / "version_0"
    assert (run_dir / "config.yaml").is_file()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["init_args"]["toy_num_classes"] == 3
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "metrics.csv").is_file() and list(run_dir.glob("events.out.tfevents.*"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["finished"] and metrics["epoch"] == 2 and "val/top1" in metrics["val"]
    assert metrics["best"]["metric"] == "val/top1" and metrics["scale"] == "toy"
    assert not list(run_dir.rglob("*.tmp")), "no temporary files left behind"


def test_test_subcommand_with_ckpt_path_writes_a_new_version(toy_run):
    work, run_dir, args = toy_run
    ckpt = str(run_dir / "checkpoints" / "best.ckpt")
    cli = run_in(work, ["test", *args, "--ckpt_path", ckpt])
    new_dir = work / cli.run_dir
    assert new_dir.parent == run_dir.parent and new_dir != run_dir
    metrics = json.loads((new_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["test/top1"] <= 1.0 and metrics["ckpt_path"] == ckpt
    assert json.loads((run_dir / "metrics.json").read_text())["test"] == {}, "the fit run's file is untouched"


def test_predict_writes_predictions_file(toy_run):
    import torch

    work, run_dir, args = toy_run
    cli = run_in(work, ["predict", *args, "--ckpt_path", str(run_dir / "checkpoints" / "best.ckpt")])
    saved = torch.load(work / cli.run_dir / "predictions.pt", weights_only=False)
    preds = torch.cat([b["pred"] for b in saved["predictions"]])
    probs = torch.cat([b["probs"] for b in saved["predictions"]])
    assert len(preds) == 3 * 4 and probs.shape == (12, 3)  # toy test split: 3 classes x 4 images
    torch.testing.assert_close(probs.sum(-1), torch.ones(12))


def test_paper_recipe_runs_a_step_on_imagenet_layout_data(tmp_path):
    """visformer_small_in1k.yaml's whole pipeline (RandAugment, erasing, repeated aug, mixup/cutmix, AdamW groups,
    warm-up) on a small folder in ImageNet's layout, CPU-sized: one training and one validation step."""
    from datamodules.toy import ensure_written
    from datamodules.toy.shapes import write_shapes_imagefolder

    root = ensure_written(tmp_path / "imagenet", write_shapes_imagefolder, num_classes=3, train_per_class=90,
                          eval_per_class=2, img_size=64, seed=0)  # fmt: skip
    cli = run_in(tmp_path, [
        "fit", "--config", str(REPO / SMALL), "--data.root", str(root), "--data.batch_size", "4",
        "--data.num_workers", "0", "--data.pin_memory", "false", "--model.init_args.net.init_args.num_classes", "3",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
        "--trainer.precision", "32-true", "--trainer.max_steps", "1",
        "--trainer.limit_val_batches", "1", "--model.init_args.optim.warmup_epochs", "0",
        "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    assert cli.trainer.global_step == 1
    cli.trainer.validate(cli.model, datamodule=cli.datamodule)
    assert cli.datamodule.train_dataloader().sampler.num_repeats == 3
    metrics = json.loads((tmp_path / cli.run_dir / "metrics.json").read_text())
    assert "val/top1" in metrics["val"]
