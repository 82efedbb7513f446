"""Webdataset / img2dataset tar shards: the toy shards are written in the real layout and read back by the same
code; brace ranges, the worker split, skipped samples and check_dataset's problems are checked."""

from __future__ import annotations

import shutil
import tarfile

import pytest
import torch

from datamodules.captions import CaptionsDataModule, collate_pairs
from datamodules.image_text_shards import (
    ImageTextShards,
    ImageTextShardsDataModule,
    count_samples,
    read_samples,
    resolve_shards,
    split_shards,
)
from datamodules.toy.image_text_shards import add_member, toy_sample, write_toy_shards
from experiments.errors import DataError

OPTIONS = dict(shards=3, per_shard=6, img_size=64, seed=0)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards") / "toy"
    dm = ImageTextShardsDataModule(
        root=str(root), dataset="toy", train_shards="{00000..00001}.tar", val_shards="00002.tar",
        batch_size=4, num_workers=0, image_size=48, pin_memory=False, shuffle_buffer=4,
        toy_shards=3, toy_per_shard=6, toy_img_size=64,
    )  # fmt: skip
    dm.prepare_data()
    return root, dm


def members(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def test_toy_shards_follow_the_img2dataset_layout(toy_root, tmp_path):
    root, _ = toy_root
    assert sorted(p.name for p in root.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    with tarfile.open(root / "00001.tar") as tar:
        names = tar.getnames()
    assert names[:3] == ["000010000.jpg", "000010000.txt", "000010000.json"] and len(names) == 18
    write_toy_shards(tmp_path, **{**OPTIONS, "shards": 1})  # deterministic bytes
    assert (tmp_path / "00000.tar").read_bytes() == (root / "00000.tar").read_bytes()


def test_shards_read_back_with_captions_images_and_batch_keys(toy_root):
    root, dm = toy_root
    dm.setup("fit")
    written = members(root / "00000.tar")
    items = list(ImageTextShards(dm.shards("train"), dm.train_transform, shuffle=0, seed=0))
    assert len(items) == 12
    assert items[0]["caption"] == written["000000000.txt"].decode() and items[0]["image_id"] == 0
    assert items[6]["image_id"] == 1_000_000  # shard 1, position 0
    batch = next(iter(dm.train_dataloader()))
    captions_dm = CaptionsDataModule(root=str(root), img_size=48)
    # the retrieval module's keys, plus the count of samples the shards left out (for metrics.json)
    assert set(batch) == set(captions_dm.synthetic_batch(4)) | {"skipped"} and int(batch["skipped"]) == 0
    assert batch["image"].shape == (4, 3, 48, 48) and len(batch["captions"]) == 4
    assert torch.equal(batch["image_ids"], batch["text_image_ids"])
    ids = [i for b in dm.train_dataloader() for i in b["image_ids"].tolist()]
    assert len(ids) == 12 and len(set(ids)) == 12  # the shuffle buffer drops and repeats nothing
    val = list(dm.val_dataloader())
    assert sum(len(b["captions"]) for b in val) == 6 and val[0]["image"].shape[-1] == 48


def test_brace_ranges_and_globs_select_shards(toy_root):
    root, _ = toy_root
    assert [p.name for p in resolve_shards(root, "{00000..00001}.tar", "train_shards")] == ["00000.tar", "00001.tar"]
    assert len(resolve_shards(root, "*.tar", "train_shards")) == 3
    with pytest.raises(DataError, match=r"no file matches '\*\.zip'.*train_shards"):
        resolve_shards(root, "*.zip", "train_shards")
    with pytest.raises(DataError, match=r"5 shards of '\{00000..00007\}.tar' are missing \(e.g. 00003.tar\)"):
        resolve_shards(root, "{00000..00007}.tar", "val_shards")


def test_workers_and_ranks_read_disjoint_shards_covering_all(toy_root):
    shards = list(range(10))
    parts = [split_shards(shards, r, 2, w, 2) for r in range(2) for w in range(2)]
    assert sorted(s for p in parts for s in p) == shards
    root, dm = toy_root
    loader = torch.utils.data.DataLoader(
        ImageTextShards(dm.shards("train"), dm.eval_transform, shuffle=0, seed=0),
        batch_size=None, num_workers=2,
    )  # fmt: skip
    ids = [item["image_id"] for item in loader]
    assert sorted(ids) == [s * 1_000_000 + i for s in range(2) for i in range(6)]


def test_an_epoch_is_the_sample_count_split_evenly_over_workers(toy_root, tmp_path):
    root, dm = toy_root
    shutil.copy(root / "00000.tar", tmp_path / "00000.tar")  # no _stats.json: counted from the tar headers
    assert count_samples(root / "00000.tar") == count_samples(tmp_path / "00000.tar") == 6
    dm.setup("fit")
    assert len(dm.train_set) == 12 and len(dm.train_dataloader()) == 3
    data = ImageTextShards(dm.shards("train"), dm.eval_transform, shuffle=4, seed=0, epoch_samples=21)
    assert [data.quota(w, 2) for w in range(2)] == [11, 10]
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2)
    ids = [item["image_id"] for item in loader]
    assert len(ids) == 21 and set(ids) == {s * 1_000_000 + i for s in range(2) for i in range(6)}  # cycles


def test_samples_without_a_caption_are_skipped_and_counted(tmp_path):
    jpeg, caption = toy_sample(3, 32)
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        add_member(tar, "a.jpg", jpeg)
        add_member(tar, "a.txt", caption.encode())
        add_member(tar, "b.jpg", jpeg)  # no b.txt
        add_member(tar, "c.txt", b"no image")
        add_member(tar, "d.jpg", jpeg)
        add_member(tar, "d.txt", caption.encode())
    data = ImageTextShards([tmp_path / "00000.tar"], lambda img: img.size, shuffle=0, seed=0)
    items = list(data)
    assert [it["caption"] for it in items] == [caption, caption] and items[0]["image"] == (32, 32)
    assert data.skipped == {"missing image": 1, "missing caption": 1, "undecodable": 0}
    # d carries the two samples left out before it; the batch's count (what reaches metrics.json) sums them
    assert [it["skipped"] for it in items] == [0, 2]
    assert int(collate_pairs(items)["skipped"]) == 2


def test_check_dataset_names_a_corrupt_image_and_a_non_tar_shard(toy_root, tmp_path):
    root, _ = toy_root
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    with tarfile.open(copy / "00000.tar", "w") as tar:
        for name, data in members(root / "00000.tar").items():
            add_member(tar, name, b"not a jpeg" if name == "000000002.jpg" else data)
    (copy / "00001.tar").write_bytes(b"this is not a tar file at all" * 40)
    dm = ImageTextShardsDataModule(root=str(copy), train_shards="{00000..00001}.tar", val_shards="00002.tar")
    summary, problems = dm.check_dataset()
    assert summary["train"] == {"shards": 2, "samples": 6, "missing image": 0, "missing caption": 0, "undecodable": 1}
    assert summary["val"]["samples"] == 6
    assert len(problems) == 2
    assert str(copy / "00000.tar") in problems[0] and "000000002.jpg" in problems[0]
    assert str(copy / "00001.tar") in problems[1] and "not a readable tar shard" in problems[1]
    assert dm.check_dataset(decode=False)[0]["train"]["undecodable"] == 0
    with pytest.raises(DataError, match="00001.tar"):
        list(read_samples(copy / "00001.tar"))


def test_missing_root_names_the_path(tmp_path):
    dm = ImageTextShardsDataModule(root=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        dm.setup("fit")
    summary, problems = dm.check_dataset()
    assert summary == {} and str(tmp_path / "nowhere") in problems[0]
