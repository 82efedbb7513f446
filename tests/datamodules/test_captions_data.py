"""Karpathy-format caption data: the toy scenes are written in the real format, read back by the same code, and bad
entries are named."""

from __future__ import annotations

import json
import re

import pytest
import torch

from datamodules.captions import CaptionsDataModule, read_karpathy
from datamodules.toy import ensure_written
from datamodules.toy.scenes import COLOURS, SHAPES, write_toy_scenes
from experiments.errors import DataError

OPTIONS = dict(train=24, val=6, test=6, img_size=64, seed=0)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("captions") / "toy"
    ensure_written(root, write_toy_scenes, **OPTIONS)
    return root


def test_toy_json_follows_the_karpathy_format(toy_root):
    spec = json.loads((toy_root / "dataset_toy.json").read_text())
    images = spec["images"]
    assert len(images) == 36 and {im["split"] for im in images} == {"train", "val", "test"}
    sentids = [s["sentid"] for im in images for s in im["sentences"]]
    assert sentids == list(range(len(sentids)))  # unique and increasing, as in dataset_coco.json
    for im in images:
        assert set(im) >= {"filepath", "filename", "imgid", "split", "sentids", "sentences"}
        assert len(im["sentences"]) == 5 and all(s["imgid"] == im["imgid"] for s in im["sentences"])
        assert (toy_root / im["filepath"] / im["filename"]).is_file()


def test_captions_name_every_object_with_its_own_colour(toy_root):
    """Binding: each caption mentions each object's colour right before (or one size word before) its shape."""
    for im in json.loads((toy_root / "dataset_toy.json").read_text())["images"]:
        pairs = {(o["colour"], o["shape"]) for o in im["objects"]}
        for s in im["sentences"]:
            found = set(re.findall(rf"({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})", s["raw"]))
            assert found == pairs, (s["raw"], pairs)


def test_toy_generation_is_deterministic(tmp_path):
    write_toy_scenes(tmp_path / "a", **{**OPTIONS, "train": 4, "val": 1, "test": 1})
    write_toy_scenes(tmp_path / "b", **{**OPTIONS, "train": 4, "val": 1, "test": 1})
    assert (tmp_path / "a" / "dataset_toy.json").read_text() == (tmp_path / "b" / "dataset_toy.json").read_text()
    assert (tmp_path / "a/images/toy_train_00003.jpg").read_bytes() == (
        tmp_path / "b/images/toy_train_00003.jpg"
    ).read_bytes()


def test_datamodule_pairs_for_training_and_all_captions_for_evaluation(toy_root):
    dm = CaptionsDataModule(
        root=str(toy_root), dataset="toy", batch_size=4, num_workers=0, img_size=64, pin_memory=False,
        toy_train=24, toy_eval=6, toy_img_size=64,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 24 * 5
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 64, 64) and len(batch["captions"]) == 4
    torch.testing.assert_close(batch["image_ids"], batch["text_image_ids"])
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[0] == 4 and len(val["captions"]) == 20
    assert val["text_image_ids"].tolist() == [i for i in val["image_ids"].tolist() for _ in range(5)]
    entries = {e["imgid"]: e for e in dm.entries("val")}
    first = val["image_ids"][0].item()
    assert val["captions"][:5] == entries[first]["captions"]


def test_missing_image_and_empty_captions_name_the_entry(toy_root, tmp_path):
    spec = json.loads((toy_root / "dataset_toy.json").read_text())
    spec["images"][2]["filename"] = "not_there.jpg"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"images\[2\] \(filename 'not_there.jpg'"):
        read_karpathy(bad, toy_root, "train")
    spec = json.loads((toy_root / "dataset_toy.json").read_text())
    spec["images"][5]["sentences"] = []
    bad.write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"images\[5\].*empty caption list"):
        read_karpathy(bad, toy_root, "train")
    with pytest.raises(DataError, match="does not exist"):
        read_karpathy(tmp_path / "none.json", toy_root, "train")
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_karpathy(bad, toy_root, "train")
