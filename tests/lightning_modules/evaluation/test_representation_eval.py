"""Shared representation evaluations (lightning_modules/evaluation, ``python -m experiments evaluate``): weighted
k-NN on a hand case, majority cell labelling, the dense protocol telling an oracle representation from a random one, the
command end to end on the toy data, and the named error for a checkpoint that does not fit the backbone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

import lightning_modules  # noqa: F401  (registers the suite's backbones)
from datamodules.toy.dense_scenes import DenseScenesDataset, ensure_dense_scenes
from experiments.__main__ import main as experiments_main
from experiments.configs import load_config
from experiments.errors import ConfigError
from experiments.evaluate import build_backbone
from experiments.table import Row, find_measurement
from lightning_modules.evaluation import (
    cell_class_fractions,
    cell_labels,
    dense_evaluation,
    dense_probe,
    feature_map,
    knn_accuracy,
    knn_predict,
    knn_votes,
)

TOY_KWARGS = {"channels": [32, 64, 128, 256]}

# ---------------------------------------------------------------------------------------------------------- k-NN

TRAIN_X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [-1.0, 0.0]])  # cosine to [1, 0]: 1, 0, 0, -1
TRAIN_Y = torch.tensor([0, 1, 1, 2])


def test_knn_hand_case_votes_and_labels():
    test_x = torch.tensor([[3.0, 0.0], [0.0, 0.5], [-2.0, 0.1]])
    votes = knn_votes(TRAIN_X, TRAIN_Y, test_x, num_classes=3, k=3, temperature=0.5)
    # [3, 0]: neighbours 0 (sim 1, class 0), 1 and 2 (sim 0, class 1); weights exp(sim / T)
    assert torch.allclose(votes[0], torch.tensor([math.exp(2.0), 2.0, 0.0]))
    # [0, 0.5]: neighbours 1, 2 (sim 1, class 1, the norm does not matter) and 0 (sim 0, class 0)
    assert torch.allclose(votes[1], torch.tensor([1.0, 2 * math.exp(2.0), 0.0]))
    # [-2, 0.1]: cos to the training points -0.9988, 0.0499, 0.0499, 0.9988: neighbours 3, 1, 2
    s = 2.0 / math.sqrt(4.01)
    assert torch.allclose(votes[2], torch.tensor([0.0, 2 * math.exp(0.1 / math.sqrt(4.01) / 0.5), math.exp(s / 0.5)]))
    assert knn_predict(TRAIN_X, TRAIN_Y, test_x, 3, k=3, temperature=0.5).tolist() == [0, 1, 2]


def test_knn_temperature_weights_against_a_majority():
    test_x = torch.tensor([[1.0, 0.0]])
    # T = 0.07: the single similarity-1 neighbour (exp(14.3)) outvotes two similarity-0 ones (2 x exp(0))
    assert knn_predict(TRAIN_X, TRAIN_Y, test_x, 3, k=3, temperature=0.07).tolist() == [0]
    # a large T flattens the weights to a plain majority: class 1 (two votes) wins
    assert knn_predict(TRAIN_X, TRAIN_Y, test_x, 3, k=3, temperature=100.0).tolist() == [1]
    # k = 1 is the nearest neighbour; k above the training size uses all of it
    assert knn_predict(TRAIN_X, TRAIN_Y, test_x, 3, k=1).tolist() == [0]
    assert knn_votes(TRAIN_X, TRAIN_Y, test_x, 3, k=50, temperature=1.0).sum().item() == pytest.approx(
        math.e + 2 + math.exp(-1)
    )


def test_knn_chunking_and_accuracy():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=gen) * 3
    train_y = torch.arange(5).repeat_interleave(40)
    test_y = torch.arange(5).repeat_interleave(10)
    train_x = centres[train_y] + torch.randn(200, 16, generator=gen)
    test_x = centres[test_y] + torch.randn(50, 16, generator=gen)
    full = knn_votes(train_x, train_y, test_x, 5)
    assert torch.allclose(full, knn_votes(train_x, train_y, test_x, 5, chunk_size=7))
    assert full.sum(1).gt(0).all()
    assert knn_accuracy(train_x, train_y, test_x, test_y) > 0.95
    assert knn_accuracy(train_x, train_y[torch.randperm(200, generator=gen)], test_x, test_y) < 0.6


# --------------------------------------------------------------------------------------------------------- dense


def test_cell_labels_majority_per_cell():
    mask = torch.tensor(
        [
            [1, 1, 0, 0],
            [1, 0, 0, 0],
            [2, 1, 2, 0],
            [2, 1, 0, 0],
        ]
    )[None]
    fractions = cell_class_fractions(mask, (2, 2), num_classes=2)
    assert fractions.shape == (1, 3, 2, 2)
    assert torch.allclose(fractions[0, :, 0, 0], torch.tensor([0.25, 0.75, 0.0]))
    assert torch.allclose(fractions[0, :, 1, 0], torch.tensor([0.0, 0.5, 0.5]))
    # top-left: class 1 (3 of 4); top-right: background; bottom-left: a 1-2 tie goes to 1; bottom-right: 3 of 4 bg
    assert cell_labels(mask, (2, 2), 2)[0].tolist() == [[1, 0], [1, 0]]
    # a 1x1 grid is the image's majority; a grid at pixel resolution is the mask itself
    assert cell_labels(mask, (1, 1), 2)[0].tolist() == [[0]]
    assert torch.equal(cell_labels(mask, (4, 4), 2), mask)


@pytest.fixture(scope="module")
def dense_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense") / "scenes"
    ensure_dense_scenes(root, num_classes=4, train=60, val=20, img_size=64, seed=0)
    return root


def test_dense_scenes_written_deterministically(dense_root, tmp_path):
    image = np.asarray(Image.open(dense_root / "train" / "images" / "00003.png"))
    label = np.asarray(Image.open(dense_root / "train" / "labels" / "00003.png"))
    assert image.shape == (64, 64, 3) and label.shape == (64, 64)
    for index in range(20):
        present = set(np.unique(np.asarray(Image.open(dense_root / "val" / "labels" / f"{index:05d}.png")))) - {0}
        assert 2 <= len(present) <= 4 and present <= {1, 2, 3, 4}
    again = tmp_path / "again"
    ensure_dense_scenes(again, num_classes=4, train=4, val=1, img_size=64, seed=0)
    assert (again / "train" / "images" / "00003.png").read_bytes() == (
        dense_root / "train" / "images" / "00003.png"
    ).read_bytes()
    sample = DenseScenesDataset(dense_root, "val", img_size=128)[0]
    assert sample["image"].shape == (3, 128, 128) and sample["mask"].shape == (64, 64)
    assert sample["mask"].dtype == torch.int64


def _loaders(root):
    return [
        torch.utils.data.DataLoader(DenseScenesDataset(root, split, img_size=128), batch_size=32)
        for split in ("train", "val")
    ]


def test_dense_protocol_tells_oracle_from_random(dense_root):
    torch.manual_seed(0)
    backbone = timm.create_model("resnet18", num_classes=0, **TOY_KWARGS)
    train_loader, val_loader = _loaders(dense_root)
    random = dense_evaluation(backbone, train_loader, val_loader, num_classes=4, max_iter=100)
    assert random.grid == (4, 4)
    # the oracle: a hand-made 4x4 feature map holding each cell's class fractions (plus noise) -- what a
    # representation that knows what is where would give
    masks = {s: torch.stack([DenseScenesDataset(dense_root, s)[i]["mask"] for i in range(n)]) for s, n in
             (("train", 60), ("val", 20))}  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    feats = {s: cell_class_fractions(m, (4, 4), 4) + 0.05 * torch.randn(len(m), 5, 4, 4, generator=gen)
             for s, m in masks.items()}  # fmt: skip
    oracle = dense_probe(feats["train"], masks["train"], feats["val"], masks["val"], num_classes=4, max_iter=100)
    print(f"dense random: {random}\ndense oracle: {oracle}")
    assert oracle.cell_accuracy > 0.9 and oracle.miou > 0.75 and oracle.pointing > 0.95
    assert oracle.miou > random.miou + 0.3
    assert oracle.cell_accuracy > random.cell_accuracy + 0.1
    assert oracle.pointing > random.pointing + 0.1
    for value in (random.cell_accuracy, random.miou, random.pointing):
        assert 0.0 <= value <= 1.0


def test_feature_map_lays_vit_tokens_on_their_grid():
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=0)
    assert feature_map(vit, torch.randn(2, 3, 64, 64)).shape == (2, 192, 4, 4)
    resnet = timm.create_model("resnet18", num_classes=0, **TOY_KWARGS)
    assert feature_map(resnet, torch.randn(2, 3, 64, 64)).shape == (2, 256, 2, 2)
    assert feature_map(resnet, torch.randn(2, 3, 64, 64), feature_index=3).shape == (2, 128, 4, 4)


# ------------------------------------------------------------------------------------------------------- command


def toy_config(tmp_path: Path, dense_root: Path, **backbone) -> Path:
    config = load_config("configs/evaluation/toy_resnet.yaml")
    config["classification"]["init_args"].update(
        root=str(tmp_path / "shapes"), batch_size=64, toy_num_classes=3, toy_train_per_class=30, toy_eval_per_class=10
    )
    config["dense"].update(root=str(dense_root), toy={"train": 60, "val": 20, "img_size": 64, "seed": 0}, max_iter=50)
    config["linear"]["max_iter"] = 50
    config["backbone"].update(backbone)
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_command_end_to_end_on_toy_random_init(tmp_path, dense_root, capsys):
    config = toy_config(tmp_path, dense_root)
    runs = tmp_path / "runs"
    assert experiments_main(["evaluate", "--config", str(config), "--runs_dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "test/knn_top1" in out and "random init" in out
    record = json.loads((runs / "eval_toy_resnet" / "version_0" / "metrics.json").read_text())
    keys = {"test/linear_top1", "test/linear_train_top1", "test/knn_top1", "test/dense_cell_acc", "test/dense_miou",
            "test/dense_pointing"}  # fmt: skip
    assert set(record["test"]) == keys
    assert all(0.0 <= v <= 1.0 for v in record["test"].values())
    assert record["finished"] and record["scale"] == "toy" and record["backbone"]["checkpoint"] is None
    print("toy evaluation timings:", record["timings"], "wall", record["wall_seconds"])
    # experiments table finds it like any run's metrics.json
    row = Row(label="knn", config=str(config), metric="test/knn_top1", paper=None, toy={"config": "eval_toy_resnet"})
    value, scale, _ = find_measurement(row, runs, "toy")
    assert value == record["test"]["test/knn_top1"] and scale == "toy"
    # a second run gets its own version; --protocols picks a subset
    assert experiments_main(["evaluate", "--config", str(config), "--runs_dir", str(runs), "--protocols", "knn"]) == 0
    record = json.loads((runs / "eval_toy_resnet" / "version_1" / "metrics.json").read_text())
    assert set(record["test"]) == {"test/knn_top1"}


def lightning_ckpt(path: Path, prefix: str, model: torch.nn.Module, extra: dict | None = None) -> Path:
    state = {f"{prefix}{k}": v for k, v in model.state_dict().items()}
    torch.save({"pytorch-lightning_version": "2.4.0", "state_dict": {**state, **(extra or {})}}, path)
    return path


def test_matching_checkpoint_loads_its_backbone(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("resnet18", num_classes=5, **TOY_KWARGS)
    ckpt = lightning_ckpt(tmp_path / "byol.ckpt", "backbone.", source, {"target_backbone.conv1.weight": torch.zeros(1)})
    model = build_backbone("resnet18", TOY_KWARGS, str(ckpt))
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert not hasattr(model.fc, "weight")  # the checkpoint's classifier is left out


def test_mismatching_checkpoint_names_the_mismatch(tmp_path, dense_root, capsys):
    # a full-width ResNet-18 checkpoint given to the toy-width backbone: same keys, other shapes
    wide = lightning_ckpt(tmp_path / "wide.ckpt", "backbone.", timm.create_model("resnet18", num_classes=0))
    with pytest.raises(ConfigError) as err:
        build_backbone("resnet18", TOY_KWARGS, str(wide))
    msg = str(err.value)
    assert str(wide) in msg and "'resnet18'" in msg and "layer1.0.conv1.weight" in msg and "(64, 64, 3, 3)" in msg
    # another method's encoder (a ViT) given to the ResNet: missing and unexpected keys are named
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=0)
    mim = lightning_ckpt(tmp_path / "mim.ckpt", "encoder.", vit)
    with pytest.raises(ConfigError, match=r"mim\.ckpt does not match the configured backbone 'resnet18'") as err:
        build_backbone("resnet18", TOY_KWARGS, str(mim))
    assert "conv1.weight" in str(err.value) and "cls_token" in str(err.value)
    # a checkpoint without any backbone weights (e.g. a compression model's codec only)
    codec = tmp_path / "codec.ckpt"
    torch.save({"pytorch-lightning_version": "2.4.0", "state_dict": {"codec.analysis.0.weight": torch.zeros(2)}}, codec)
    with pytest.raises(ConfigError, match=r"codec\.ckpt holds no 'backbone\.' or 'encoder\.' weights.*'resnet18'"):
        build_backbone("resnet18", TOY_KWARGS, str(codec))
    # through the command: exit code 2 and the message, before any data is touched
    config = toy_config(tmp_path, dense_root)
    argv = ["evaluate", "--config", str(config), "--ckpt", str(wide), "--runs_dir", str(tmp_path)]
    assert experiments_main(argv) == 2
    assert "does not match the configured backbone 'resnet18'" in capsys.readouterr().err


def test_every_evaluation_config_names_valid_arguments():
    import importlib
    import inspect

    from experiments.configs import run_config_files

    for path in run_config_files("configs/evaluation"):
        config = load_config(path)
        assert {"backbone", "protocols"} <= set(config), path
        for section in ("classification", "dense"):
            spec = config.get(section)
            if spec and "class_path" in spec:
                module, _, name = spec["class_path"].rpartition(".")
                cls = getattr(importlib.import_module(module), name)
                inspect.signature(cls).bind(**spec.get("init_args", {}))  # raises TypeError on an unknown argument


def test_table_rows_of_stage_evaluate_pretrain_then_pass_the_checkpoint_as_ckpt():
    from experiments.table import load_table, reproduce_commands

    toy = reproduce_commands("ediy", "toy")
    assert toy[:2] == [
        "python -m experiments fit --config configs/ediy/toy_byol.yaml --run_name toy_byol",
        "python -m experiments evaluate --config configs/evaluation/toy_resnet.yaml --run_name eval_toy_byol "
        "--ckpt 'runs/toy_byol/version_*/checkpoints/last.ckpt'",
    ]
    # shared steps run once: 2 pre-trainings, 3 evaluations, then the COCO rows' fine-tunings from the same checkpoints,
    # then the div_partner most_similar ablation's pre-training and evaluation
    assert toy[4].endswith("--run_name eval_toy_random --random_init") and len(toy) == 9
    assert [c.split("--run_name ")[1].split()[0] for c in toy[5:]] == [
        "toy_det_c4_byol", "toy_det_c4_ediy", "toy_ediy_most_similar", "eval_toy_ediy_most_similar"]  # fmt: skip
    # at full scale the evaluation is named after the row (the evaluate command would use the config's `name` key)
    _, rows = load_table("ediy")
    assert rows[0].commands("full")[1][:5] == ["evaluate", "--config", "configs/evaluation/in1k_resnet50.yaml",
                                               "--run_name", "in1k_resnet50__byol_r50_in1k_300ep"]  # fmt: skip
    assert rows[2].commands("full") == [["evaluate", "--config", "configs/evaluation/in1k_resnet50.yaml",
                                         "--run_name", "in1k_resnet50"]]  # fmt: skip


def test_reproduce_runs_an_evaluate_row_and_the_table_reads_it(tmp_path, dense_root, monkeypatch, capsys):
    import experiments.table as table

    config = toy_config(tmp_path, dense_root)
    tables = tmp_path / "tables"
    tables.mkdir()
    toy = {"config": str(config), "args": ["--run_name", "eval_rand", "--protocols", "knn"]}
    row = {"label": "random init k-NN", "config": str(config), "stage": "evaluate", "metric": "test/knn_top1",
           "paper": None, "toy": toy}  # fmt: skip
    (tables / "probe.yaml").write_text(yaml.safe_dump({"paper": "probe", "metric_scale": 100, "rows": [row]}))
    monkeypatch.setattr(table, "TABLES", tables)
    runs = tmp_path / "runs"
    assert experiments_main(["reproduce", "probe", "--scale", "toy", "--runs", str(runs)]) == 0
    record = json.loads((runs / "eval_rand" / "version_0" / "metrics.json").read_text())
    assert set(record["test"]) == {"test/knn_top1"}
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| random init"))
    assert f"| {record['test']['test/knn_top1'] * 100:.2f} | toy |" in line
