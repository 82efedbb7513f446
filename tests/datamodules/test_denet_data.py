"""DE-Net data: the AttnGAN layout reader on the toy and on hand-made CUB-style folders, and its bad-input errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from datamodules.captions import TextEditingDataModule, crop_around_box, read_attngan
from datamodules.toy.edit_scenes import COLOURS, classify_colour, object_mask, write_toy_edit_scenes
from experiments.errors import DataError


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("denet") / "toy"
    write_toy_edit_scenes(root, train=40, test=12, img_size=32, seed=0)
    return root


def test_toy_layout_and_the_attribute_classifier(toy):
    objects = json.loads((toy / "objects.json").read_text())
    with open(toy / "train" / "filenames.pickle", "rb") as f:
        names = pickle.load(f)
    assert len(names) == 40 and len(objects) == 52
    seen = set()
    for name in names:  # the classifier names the colour that was drawn, on every image
        obj = objects[name]
        image = pil_to_tensor(Image.open(toy / "images" / f"{name}.png")).float() / 255
        assert classify_colour(image, object_mask(obj, 32)) == obj["colour"]
        seen.add(obj["colour"])
        edits = (toy / "edits" / f"{name}.txt").read_text().splitlines()
        assert len(edits) == len(COLOURS) - 1 and all(obj["shape"] in e and obj["colour"] not in e for e in edits)
    assert len(seen) >= 4


def test_datamodule_batches_tokens_and_splits(toy):
    dm = TextEditingDataModule(root=str(toy), dataset="toy", image_size=32, val_images=8, batch_size=4,
                               num_workers=0, pin_memory=False)  # fmt: skip
    dm.setup("fit")
    assert len(dm.train_set) == 32 and len(dm.val_set) == 8
    assert not {e["name"] for e in dm.train_set.entries} & {e["name"] for e in dm.val_set.entries}
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and -1 <= batch["image"].min() and batch["image"].max() <= 1
    ixtoword = {i: w for w, i in dm.wordtoix.items()}
    for b in range(4):
        words = [ixtoword[int(i)] for i in batch["tokens"][b, : batch["lengths"][b]]]
        assert words == batch["captions"][b].split()  # toy captions are plain lower-case words
    val = next(iter(dm.val_dataloader()))
    again = next(iter(dm.val_dataloader()))
    assert val["target_captions"] == again["target_captions"]  # evaluation edits are fixed
    assert dm.vocab_size == max(dm.wordtoix.values()) + 1


def _cub_like(root: Path, names: list[str], captions: dict[str, str], images: list[str]) -> Path:
    (root / "train").mkdir(parents=True)
    with open(root / "train" / "filenames.pickle", "wb") as f:
        pickle.dump(names, f)
    for name, text in captions.items():
        (root / "text" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "text" / f"{name}.txt").write_text(text)
    for name in images:
        path = root / "CUB_200_2011" / "images" / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (50, 30), 128).save(path)  # grayscale and not square: converted, not a crash
    return root


def test_missing_pickle_absent_images_and_unknown_words(tmp_path):
    with pytest.raises(DataError, match=r"train/filenames.pickle does not exist"):
        read_attngan(tmp_path, "train", "CUB_200_2011/images", ".jpg")
    root = _cub_like(tmp_path / "a", ["001.A/a_1", "001.A/a_2"], {"001.A/a_1": "a bird", "001.A/a_2": "a bird"},
                     ["001.A/a_1"])  # fmt: skip
    with pytest.raises(DataError, match=r"names 1 images that do not exist, e\.g\. .*a_2\.jpg"):
        read_attngan(root, "train", "CUB_200_2011/images", ".jpg")
    root = _cub_like(tmp_path / "b", ["001.A/a_1", "002.B/b_1"], {"001.A/a_1": "a small bird\n", "002.B/b_1": "zzz"},
                     ["001.A/a_1", "002.B/b_1"])  # fmt: skip
    with open(root / "captions_DAMSM.pickle", "wb") as f:
        pickle.dump([[], [], {1: "a", 2: "small", 3: "bird"}, {"a": 1, "small": 2, "bird": 3}], f)
    (root / "CUB_200_2011" / "images.txt").write_text("1 001.A/a_1.jpg\n2 002.B/b_1.jpg\n")
    (root / "CUB_200_2011" / "bounding_boxes.txt").write_text("1 10 5 20 10\n2 0 0 50 30\n")
    dm = TextEditingDataModule(root=str(root), dataset="cub", image_size=16, val_images=0, num_workers=0)
    with pytest.raises(DataError, match=r"b_1\.txt line 1: the caption 'zzz' has no word of the vocabulary"):
        dm.setup("fit")
    (root / "text" / "002.B" / "b_1.txt").write_text("a bird\n")
    dm.setup("fit")
    item = dm.train_set[0]
    assert item["image"].shape == (3, 16, 16) and item["wrong_caption"] == "a bird"  # the other class's caption


def test_cub_crop_is_one_and_a_half_times_the_box():
    image = Image.new("RGB", (200, 100))
    assert crop_around_box(image, (50, 20, 40, 20)).size == (60, 60)  # r = 30 around the centre (70, 30)
    assert crop_around_box(image, (0, 0, 40, 20)).size == (50, 40)  # clipped at the image border
