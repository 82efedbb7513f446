"""ImageNet DataModule: layout checks, bad input, limited-data subsets and the repeated-augmentation sampler."""

import json
import logging
import shutil

import lightning as L
import pytest
import torch

from datamodules.imagenet import DistributedRepeatAugSampler, ImageNetDataModule
from datamodules.images import ImageFolderDataset, collate_skipping_corrupt, select_classes
from experiments.callbacks import MetricsJSON
from experiments.errors import CorruptFileError, DataError


def make_dm(root, **kwargs):
    defaults = dict(
        batch_size=4,
        num_workers=0,
        img_size=32,
        auto_augment=None,
        re_prob=0.0,
        repeated_aug=False,
        pin_memory=False,
        test_split="test",
    )
    return ImageNetDataModule(root=str(root), **{**defaults, **kwargs})


def test_missing_root_names_path_and_layout():
    with pytest.raises(DataError) as err:
        make_dm("/nonexistent/imagenet")
    assert "/nonexistent/imagenet" in str(err.value) and "train/<wnid>/*.JPEG" in str(err.value)


def test_missing_val_split_is_named(tmp_path):
    (tmp_path / "train" / "n01").mkdir(parents=True)
    with pytest.raises(DataError, match="has no 'val/' folder"):
        make_dm(tmp_path)


def test_empty_class_folder_is_named(toy_imagenet, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(toy_imagenet, root)
    (root / "train" / "zzz_empty").mkdir()
    dm = make_dm(root)
    with pytest.raises(DataError, match="zzz_empty holds no images"):
        dm.setup("fit")


def test_reads_toy_imagenet_with_labels(toy_imagenet):
    dm = make_dm(toy_imagenet)
    dm.setup("fit")
    assert dm.num_classes == 4 and len(dm.train_set) == 48 and len(dm.val_set) == 16
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["skipped"] == 0
    assert set(t for _, t in dm.val_set.samples) == {0, 1, 2, 3}
    # labels follow sorted folder names
    name, label = dm.val_set.samples[-1]
    assert dm.classes[label] in name


@pytest.fixture
def corrupt_root(toy_imagenet, tmp_path):
    root = tmp_path / "corrupt"
    shutil.copytree(toy_imagenet, root)
    bad = sorted((root / "val").rglob("*.JPEG"))[0]
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return root, bad


def test_corrupt_jpeg_raises_naming_the_file(corrupt_root):
    root, bad = corrupt_root
    dm = make_dm(root)
    dm.setup("validate")
    with pytest.raises(CorruptFileError) as err:
        list(dm.val_dataloader())
    assert str(bad) in str(err.value) and "on_corrupt: skip" in str(err.value)


def test_corrupt_jpeg_skipped_and_counted(corrupt_root):
    root, _ = corrupt_root
    dm = make_dm(root, on_corrupt="skip")
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert sum(int(b["skipped"]) for b in batches) == 1
    assert sum(len(b["target"]) for b in batches) == 15


def test_collate_of_only_corrupt_items_is_an_error():
    with pytest.raises(DataError):
        collate_skipping_corrupt([None, None])


def test_class_subset_is_evenly_spaced_and_consistent(toy_imagenet):
    classes = [f"n{i:04d}" for i in range(1000)]
    subset = select_classes(classes, 100)
    assert len(subset) == 100 and subset[:3] == ["n0000", "n0010", "n0020"]
    assert select_classes(classes, ["n0005", "n0001"]) == ["n0001", "n0005"]
    with pytest.raises(DataError, match="not folders"):
        select_classes(classes, ["n9999"])
    dm = make_dm(toy_imagenet, class_subset=2)
    dm.setup("fit")
    assert dm.num_classes == 2
    assert {t for _, t in dm.train_set.samples} == {t for _, t in dm.val_set.samples} == {0, 1}


def test_subset_fraction_is_per_class_and_deterministic(toy_imagenet):
    a = ImageFolderDataset(toy_imagenet / "train", ["circle", "bar"], subset_fraction=0.25, seed=1)
    b = ImageFolderDataset(toy_imagenet / "train", ["circle", "bar"], subset_fraction=0.25, seed=1)
    c = ImageFolderDataset(toy_imagenet / "train", ["circle", "bar"], subset_fraction=0.25, seed=2)
    assert a.samples == b.samples and len(a) == 6
    assert sum(t == 0 for _, t in a.samples) == 3
    assert a.samples != c.samples


def test_repeated_augmentation_shards_are_disjoint_and_repeat_each_image():
    data = list(range(512))
    shards = [list(DistributedRepeatAugSampler(data, num_replicas=2, rank=r, num_repeats=3)) for r in range(2)]
    assert isinstance(DistributedRepeatAugSampler(data, 1, 0), torch.utils.data.DistributedSampler)
    assert len(shards[0]) == len(shards[1]) == 256
    # each image appears (up to) 3 times in the full epoch, spread over ranks
    both = shards[0] + shards[1]
    counts = torch.bincount(torch.tensor(both), minlength=512)
    assert counts.max() <= 3 and (counts == 3).sum() > 100


class _TinyClassifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 4))

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self.net(batch["image"]), batch["target"])

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", torch.nn.functional.cross_entropy(self.net(batch["image"]), batch["target"]))

    def test_step(self, batch, batch_idx):
        self.log("test/loss", torch.nn.functional.cross_entropy(self.net(batch["image"]), batch["target"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_skipped_counts_per_split_reach_metrics_json(toy_imagenet, tmp_path, caplog):
    root = tmp_path / "corrupt"
    shutil.copytree(toy_imagenet, root)
    bad = sorted((root / "train").rglob("*.JPEG"))[:2] + sorted((root / "val").rglob("*.JPEG"))[:1]
    for path in bad:
        path.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    dm = make_dm(root, on_corrupt="skip")
    run = tmp_path / "run"
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = L.Trainer(max_epochs=2, callbacks=[MetricsJSON(str(run))], default_root_dir=str(run), **quiet)
    with caplog.at_level(logging.WARNING, logger="datamodules.images"):
        trainer.fit(_TinyClassifier(), datamodule=dm)
    # the latest pass over each split: 2 training files, 1 validation file (not the sanity check's extra pass)
    assert json.loads((run / "metrics.json").read_text())["skipped"] == {"train": 2, "val": 1}
    trainer.test(_TinyClassifier(), dataloaders=dm.val_dataloader())
    assert json.loads((run / "metrics.json").read_text())["skipped"] == {"train": 2, "val": 1, "test": 1}
    skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert skips and all(str(p) in " ".join(skips) for p in bad)
    # the file is already being skipped: the line does not advise setting on_corrupt: skip
    assert not any("set data.on_corrupt" in line for line in skips)


def test_evaluation_views_are_a_function_of_the_sample(toy_imagenet):
    """BYOL's validation views are random crops; with ``item_seed`` (the DataModule sets it on evaluation splits) a
    sample's views depend on its index only, whichever process or worker reads it, and the caller's generator is left
    as it was. Items carry their ``index``."""
    dm = make_dm(toy_imagenet, train_transform="byol")
    dm.setup("fit")
    assert dm.val_set.item_seed == dm.seed and dm.train_set.item_seed is None
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, again, other = dm.val_set[2], dm.val_set[2], dm.val_set[3]
    assert torch.equal(torch.get_rng_state(), state)
    assert first["index"] == 2 and other["index"] == 3
    assert torch.equal(first["views"], again["views"]) and not torch.equal(first["views"][0], first["views"][1])
    a, b = dm.train_set[2], dm.train_set[2]  # training views stay random
    assert not torch.equal(a["views"], b["views"])
