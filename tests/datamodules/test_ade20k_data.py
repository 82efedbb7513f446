"""ADE20K data: the ADEChallengeData2016 reader on a toy miniature and hand-made files, mmseg's reduce_zero_label,
cat_max_ratio crops and padding, sliding-window inference, and the DataModule's batches."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.ade20k import (
    ADE20KDataModule,
    ADE20KSegmentation,
    SegmentationTransform,
    choose_crop,
    collate_segmentation,
    reduce_zero_label,
)
from datamodules.toy.ade_scenes import ensure_toy_ade, render_toy_ade
from experiments.errors import ConfigError, DataError
from lightning_modules.segmentation.inference import sliding_window_inference

TOY = dict(train=12, val=4, img_size=64, num_classes=6, seed=0)
MEAN = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return ensure_toy_ade(tmp_path_factory.mktemp("ade") / "toy", **TOY)


def _copy(toy: Path, tmp_path: Path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(toy, root)
    return root


def _write_pair(root: Path, split: str, stem: str, label: np.ndarray) -> None:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    image = np.full((*label.shape, 3), 128, dtype=np.uint8)
    Image.fromarray(image).save(root / "images" / split / f"{stem}.jpg")
    Image.fromarray(label.astype(np.uint8)).save(root / "annotations" / split / f"{stem}.png")


def test_toy_layout_counts_and_labels(toy):
    for split, prefix, count in (("training", "train", 12), ("validation", "val", 4)):
        images = sorted(p.name for p in (toy / "images" / split).iterdir())
        labels = sorted(p.name for p in (toy / "annotations" / split).iterdir())
        assert images == [f"ADE_{prefix}_{i:08d}.jpg" for i in range(1, count + 1)]
        assert labels == [name.replace(".jpg", ".png") for name in images]
        dataset = ADE20KSegmentation(toy, split, num_classes=6)
        assert len(dataset) == count and dataset.check_labels() == count
        for path in dataset.labels:
            with Image.open(path) as img:
                assert img.mode == "L" and img.size == (85, 64)
                label = np.asarray(img)
            assert label.max() <= 6 and (label == 0).any() and (label > 0).mean() > 0.5  # some "other", mostly labelled
    item = ADE20KSegmentation(toy, "training", num_classes=6)[0]
    label = np.asarray(Image.open(toy / "annotations" / "training" / "ADE_train_00000001.png")).astype(np.int64)
    assert item["name"] == "ADE_train_00000001" and item["image"].shape == (3, 64, 85)
    assert item["mask"].dtype == torch.int64 and torch.equal(item["mask"], reduce_zero_label(label))
    image, again = render_toy_ade(7, 6), render_toy_ade(7, 6)  # a pure function of the seed
    assert np.array_equal(np.asarray(image[0]), np.asarray(again[0])) and np.array_equal(image[1], again[1])
    with pytest.raises(DataError, match="written with"):
        ensure_toy_ade(toy, **{**TOY, "num_classes": 8})


def test_reduce_zero_label_on_a_hand_made_map(tmp_path):
    label = np.array([[0, 1, 2], [150, 0, 37]], dtype=np.uint8)
    expected = torch.tensor([[255, 0, 1], [149, 255, 36]])
    assert torch.equal(reduce_zero_label(label), expected) and reduce_zero_label(label).dtype == torch.int64
    _write_pair(tmp_path, "training", "ADE_train_00000001", label)
    item = ADE20KSegmentation(tmp_path, "training")[0]
    assert torch.equal(item["mask"], expected) and item["image"].shape == (3, 2, 3)
    raw = ADE20KSegmentation(tmp_path, "training", reduce_zero_label=False)[0]["mask"]
    assert torch.equal(raw, torch.from_numpy(label.astype(np.int64)))


def test_label_out_of_range_names_the_file_and_value(tmp_path):
    _write_pair(tmp_path, "training", "ADE_train_00000001", np.array([[0, 1], [150, 3]]))
    _write_pair(tmp_path, "training", "ADE_train_00000002", np.array([[0, 1], [151, 3]]))
    dataset = ADE20KSegmentation(tmp_path, "training")
    assert dataset[0]["mask"][1, 0] == 149  # the largest valid label, 150, is class 149
    with pytest.raises(DataError, match=r"ADE_train_00000002\.png: label value 151 found.*0\.\.150"):
        dataset[1]
    with pytest.raises(DataError, match=r"1 of 2 label maps are invalid.*ADE_train_00000002\.png.*151"):
        dataset.check_labels()


def test_unpaired_files_are_named(toy, tmp_path):
    root = _copy(toy, tmp_path)
    (root / "annotations" / "training" / "ADE_train_00000003.png").unlink()
    with pytest.raises(DataError, match=r"1 images .* have no label map .*first: ADE_train_00000003\.jpg"):
        ADE20KSegmentation(root, "training")
    (root / "images" / "validation" / "ADE_val_00000002.jpg").unlink()
    (root / "images" / "validation" / "ADE_val_00000004.jpg").unlink()
    with pytest.raises(
        DataError, match=r"2 label maps .* have no image .*ADE_val_00000002\.png, ADE_val_00000004\.png"
    ):
        ADE20KSegmentation(root, "validation")
    with pytest.raises(DataError, match="does not exist"):
        ADE20KSegmentation(root, "test")


def _two_class_mask() -> torch.Tensor:
    """64 x 128: class 0 in columns 0..79, class 1 in 80..127. A 64 x 64 crop at column c keeps both classes under
    75 % only for 33 <= c <= 63 (31 of the 65 offsets)."""
    mask = torch.zeros(64, 128, dtype=torch.int64)
    mask[:, 80:] = 1
    mask[:4] = 255  # ignored rows count for neither class
    return mask


def _largest_share(crop: torch.Tensor) -> float:
    counts = torch.bincount(crop[crop != 255].flatten())
    return float(counts.max() / counts.sum())


def test_crop_keeps_every_class_under_cat_max_ratio():
    mask = _two_class_mask()
    constrained, free = [], []
    for seed in range(40):
        top, bottom, left, right = choose_crop(mask, (64, 64), 0.75, generator=torch.Generator().manual_seed(seed))
        assert (bottom - top, right - left) == (64, 64)
        constrained.append(_largest_share(mask[top:bottom, left:right]))
        top, bottom, left, right = choose_crop(mask, (64, 64), 1.0, generator=torch.Generator().manual_seed(seed))
        free.append(_largest_share(mask[top:bottom, left:right]))
    assert max(constrained) < 0.75
    assert max(free) >= 0.75  # without the check the same draws do break it: the check is what keeps it
    # the whole train pipeline (no rescale: the image already fits the scale) applies the same rule
    transform = SegmentationTransform(train=True, crop_size=(64, 64), scale=(128, 64), ratio_range=(1.0, 1.0))
    image = torch.randint(0, 256, (3, 64, 128), dtype=torch.uint8)
    for seed in range(10):
        out_image, out_mask = transform(image, mask, generator=torch.Generator().manual_seed(seed))
        assert out_image.shape == (3, 64, 64) and _largest_share(out_mask) < 0.75


def test_small_images_are_padded_with_zero_and_ignore():
    image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    mask = torch.randint(0, 4, (20, 30))
    transform = SegmentationTransform(train=True, crop_size=(64, 48), scale=(30, 20), ratio_range=(1.0, 1.0),
                                      cat_max_ratio=1.0, flip_prob=0.0, photometric=False)  # fmt: skip
    out_image, out_mask = transform(image, mask, generator=torch.Generator().manual_seed(0))
    assert out_image.shape == (3, 64, 48) and out_mask.shape == (64, 48)
    assert torch.allclose(out_image[:, :20, :30], (image.float() / 255 - MEAN) / STD, atol=1e-5)
    assert torch.equal(out_mask[:20, :30], mask)
    assert (out_image[:, 20:] == 0).all() and (out_image[:, :, 30:] == 0).all()
    assert (out_mask[20:] == 255).all() and (out_mask[:, 30:] == 255).all()


def _per_pixel(num_classes: int):
    """Logits that depend on each pixel alone (integer-valued for integer inputs, so sums are exact)."""

    def model_fn(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, k % 3] * (k + 1) - x[:, (k + 1) % 3] + k for k in range(num_classes)], dim=1)

    return model_fn


@pytest.mark.parametrize(
    ("height", "width", "crop", "stride"),
    [
        (64, 85, (32, 32), (21, 21)),  # overlapping windows, size not a multiple of the stride
        (50, 40, (32, 32), (32, 32)),  # the last window moves back to the border
        (20, 25, (32, 32), (21, 21)),  # smaller than the crop: one padded window
        (20, 90, (32, 48), (21, 31)),  # shorter than the crop, wider than it
    ],
)
def test_sliding_window_equals_the_whole_image_result(height, width, crop, stride):
    model_fn = _per_pixel(5)
    image = torch.randint(-8, 9, (2, 3, height, width)).float()
    seen = []

    def windowed(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return model_fn(x)

    logits = sliding_window_inference(windowed, image, 5, crop=crop, stride=stride)
    assert logits.shape == (2, 5, height, width) and torch.equal(logits, model_fn(image))
    assert set(seen) == {(2, 3, *crop)}  # every window reaches the model at the crop size, the batch at once


def test_sliding_windows_sit_where_mmseg_puts_them():
    columns = torch.arange(85.0).expand(1, 3, 32, 85)
    windows = []

    def record(x: torch.Tensor) -> torch.Tensor:
        windows.append((int(x[0, 0, 0, 0]), int(x[0, 0, 0, -1]) + 1))
        return torch.zeros(1, 2, *x.shape[-2:])

    sliding_window_inference(record, columns, 2, crop=(32, 32), stride=(21, 21))
    assert windows == [(0, 32), (21, 53), (42, 74), (53, 85)]
    coarse = sliding_window_inference(lambda x: torch.ones(1, 2, 8, 8), columns, 2, crop=(32, 32), stride=(21, 21))
    assert coarse.shape == (1, 2, 32, 85) and torch.allclose(coarse, torch.ones(()))  # low-res logits are resized
    with pytest.raises(ConfigError, match="num_classes = 3"):
        sliding_window_inference(lambda x: torch.zeros(1, 2, 32, 32), columns, 3, crop=(32, 32))


def test_datamodule_batches(toy):
    dm = ADE20KDataModule(root=str(toy), dataset="toy", batch_size=4, eval_batch_size=2, num_workers=0,
                          crop_size=(48, 48), scale=(256, 64), pin_memory=False, toy_train=12, toy_val=4,
                          toy_img_size=64, toy_num_classes=6)  # fmt: skip
    dm.prepare_data()  # the fixture wrote the same options: reused
    dm.setup("fit")
    assert (dm.num_classes, dm.ignore_index) == (6, 255) and (len(dm.train_set), len(dm.val_set)) == (12, 4)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 48, 48) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 48, 48) and batch["mask"].dtype == torch.int64
    values = set(batch["mask"].unique().tolist())
    assert 255 in values and values - {255} <= set(range(6)) and len(batch["name"]) == 4
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (2, 3, 64, 85) and val["mask"].shape == (2, 64, 85)
    assert dm.synthetic_batch(3)["image"].shape == (3, 3, 48, 48)
    summary, problems = dm.check_dataset()
    assert summary == {"training": {"images": 12}, "validation": {"images": 4}} and problems == []
    mixed = [
        {"image": torch.zeros(3, 4, 4), "mask": torch.zeros(4, 4)},
        {"image": torch.zeros(3, 4, 5), "mask": torch.zeros(4, 5)},
    ]
    with pytest.raises(ConfigError, match="eval_batch_size: 1"):
        collate_segmentation(mixed)
    with pytest.raises(DataError, match="does not exist"):
        ADE20KDataModule(root=str(toy / "missing"), dataset="ade20k")
