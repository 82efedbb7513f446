"""Few-shot data: the miniImageNet layouts, COSOC's views, COS files and the bad-input errors."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.episodes import (
    COSViews,
    EpisodeSampler,
    FewShotDataModule,
    FusionSampling,
    check_episodes,
    enlarge_box,
    load_cos_file,
    match_cos_entries,
    read_split,
)
from datamodules.toy.fewshot_scenes import TEST_SHAPES, TRAIN_SHAPES, random_resized_box, write_fewshot_scenes
from experiments.errors import ConfigError, DataError


def _jpeg(path, colour=(120, 30, 30), size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture
def mini_csv(tmp_path):
    """Ravi's layout: images/ + train.csv / test.csv."""
    rows = {"train": [("n01", 3), ("n02", 4)], "test": [("n07", 2), ("n08", 3), ("n09", 2)]}
    for split, classes in rows.items():
        lines = ["filename,label"]
        for wnid, count in classes:
            for i in range(count):
                name = f"{wnid}{i:08d}.jpg"
                _jpeg(tmp_path / "images" / name)
                lines.append(f"{name},{wnid}")
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_csv_and_folder_layouts_read_the_same_split(mini_csv, tmp_path):
    paths, names = read_split(mini_csv, "train")
    assert len(paths) == 7 and names.count("n01") == 3 and names.count("n02") == 4
    assert all(p.startswith(str(mini_csv / "images")) for p in paths)
    folder = tmp_path / "folder"
    for p, n in zip(paths, names, strict=True):
        _jpeg(folder / "train" / n / p.rsplit("/", 1)[1])
    fpaths, fnames = read_split(folder, "train")
    assert fnames == names and [p.rsplit("/", 1)[1] for p in fpaths] == [p.rsplit("/", 1)[1] for p in paths]
    assert len(set(read_split(mini_csv, "test")[1])) == 3


def test_csv_naming_missing_images_is_an_error_naming_the_file(mini_csv):
    (mini_csv / "images" / "n0800000001.jpg").unlink()
    with pytest.raises(DataError, match=r"test.csv names 1 images missing .*n0800000001.jpg"):
        read_split(mini_csv, "test")
    (mini_csv / "train.csv").write_text("file,class\na.jpg,n01\n")
    with pytest.raises(DataError, match="header 'filename,label'"):
        read_split(mini_csv, "train")


def test_splits_that_cannot_serve_the_episodes_name_the_class(mini_csv):
    _, names = read_split(mini_csv, "test")
    classes = sorted(set(names))
    labels = [classes.index(n) for n in names]
    check_episodes(labels, classes, n_way=3, k_shot=1, n_query=1, where="test")
    with pytest.raises(DataError, match=r"class 'n07' has 2 images, fewer than k_shot \+ n_query = 3"):
        check_episodes(labels, classes, n_way=3, k_shot=1, n_query=2, where="test")
    with pytest.raises(DataError, match="5-way episodes need 5 classes but the split has 3"):
        check_episodes(labels, classes, n_way=5, k_shot=1, n_query=1, where="test")
    with pytest.raises(ConfigError, match="must be >= 1"):
        check_episodes(labels, classes, n_way=3, k_shot=0, n_query=1, where="test")


def test_toy_scenes_follow_the_miniimagenet_folder_layout(tmp_path):
    write_fewshot_scenes(tmp_path, train_per_class=4, eval_per_class=3, img_size=32)
    paths, names = read_split(tmp_path, "train")
    assert sorted(set(names)) == sorted(TRAIN_SHAPES) and len(paths) == 4 * len(TRAIN_SHAPES)
    assert paths[0].endswith("/train/bar/bar00000000.jpg")
    assert sorted(set(read_split(tmp_path, "test")[1])) == sorted(TEST_SHAPES)
    objects = json.loads((tmp_path / "objects.json").read_text())
    top, left, h, w = objects["train/bar/bar00000000.jpg"]
    assert 0 <= top and 0 <= left and 0 < h <= 32 and 0 < w <= 32


def test_cos_views_are_the_image_and_seeded_crops_with_their_boxes():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    views = COSViews(crops=5, img_size=16, mean=(0, 0, 0), std=(1, 1, 1), seed=3)
    a, b = views(image, 7), views(image, 7)
    assert a["views"].shape == (6, 3, 16, 16) and torch.equal(a["views"], b["views"])
    assert a["boxes"][0].tolist() == [-1, -1, -1, -1]
    top, left, h, w = a["boxes"][1:].T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 40).all() and (left + w <= 60).all()
    assert not torch.equal(views(image, 8)["boxes"], a["boxes"])
    rng = np.random.default_rng(0)
    areas = [np.prod(random_resized_box(rng, 100, 100)[2:]) / 1e4 for _ in range(300)]
    assert 0.06 <= min(areas) and max(areas) <= 1.0 and 0.4 < np.mean(areas) < 0.65  # U(0.08, 1) of the area


def test_enlarge_box_by_hand():
    box, area = enlarge_box([10, 20, 10, 20], height=50, width=100, ratio=1.2)
    assert box == pytest.approx([9.0, 18.0, 12.0, 24.0]) and area == pytest.approx(12 * 24 / 5000)
    box, _ = enlarge_box([0, 90, 50, 10], height=50, width=100)  # clipped at the image's edges
    assert box == pytest.approx([0.0, 89.0, 50.0, 11.0])
    assert enlarge_box([-1, -1, -1, -1], 50, 100) == ([0.0, 0.0, 50.0, 100.0], 1.0)


def test_fusion_sampling_crops_inside_the_chosen_box():
    img = np.zeros((80, 80, 3), dtype=np.uint8)
    img[40:70, 40:70, 0] = 255  # a red square in a black image
    image = Image.fromarray(img)
    fuse = FusionSampling(img_size=16, mean=(0, 0, 0), std=(1, 1, 1))
    boxes = torch.tensor([[42.0, 42.0, 26.0, 26.0], [0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 20.0, 20.0]])
    red = [fuse(image, boxes, torch.tensor([1.0, 0.0, 0.0]))[0].mean().item() for _ in range(30)]
    plain = [fuse(image, boxes, torch.tensor([0.0, 0.0, 0.0]))[0].mean().item() for _ in range(30)]
    assert np.mean(red) > 0.75 and np.mean(plain) < 0.4  # the square covers 14 % of the image


def test_cos_file_errors_name_the_fix(tmp_path):
    with pytest.raises(DataError, match="run the COS stage first"):
        load_cos_file(tmp_path / "none.pt")
    torch.save({"paths": ["train/a/x.jpg"], "boxes": torch.zeros(1, 3, 4), "probs": torch.zeros(1, 3)},
               tmp_path / "cos.pt")  # fmt: skip
    cos = load_cos_file(tmp_path / "cos.pt")
    assert match_cos_entries(cos, [str(tmp_path / "train/a/x.jpg")], str(tmp_path)) == [0]
    with pytest.raises(DataError, match=r"no entry for 1 of 2 training images \(e.g. train/a/y.jpg\)"):
        match_cos_entries(cos, [str(tmp_path / "train/a/x.jpg"), str(tmp_path / "train/a/y.jpg")], str(tmp_path))
    with pytest.raises(ConfigError, match="needs data.cos_file"):
        match_cos_entries(None, [], None)


def test_datamodule_serves_class_major_episodes_and_sees_missing_roots(tmp_path):
    dm = FewShotDataModule(root=str(tmp_path / "toy"), dataset="toy", img_size=24, resize=26, n_way=3, k_shot=2,
                           n_query=2, val_episodes=4, eval_views=3, batch_size=8, num_workers=0,
                           toy_train_per_class=4, toy_eval_per_class=4, toy_img_size=32)  # fmt: skip
    dm.prepare_data()
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert len(batches) == 4
    batch = batches[0]
    assert batch["image"].shape == (12, 3, 3, 24, 24)
    assert (batch["n_way"], batch["k_shot"], batch["n_query"]) == (3, 2, 2)
    support, query = batch["target"][:6].view(3, 2), batch["target"][6:].view(3, 2)
    assert (support == support[:, :1]).all() and torch.equal(support[:, 0], query[:, 0])
    assert len(set(batch["index"].tolist())) == 12
    with pytest.raises(DataError, match="does not exist"):
        FewShotDataModule(root=str(tmp_path / "absent"))


def test_data_check_reports_short_classes_and_undecodable_images(mini_csv, capsys):
    from experiments.data import main as data_main

    (mini_csv / "images" / "n0700000000.jpg").write_bytes(b"not a jpeg")
    code = data_main(["check", "--config", "configs/cosoc/mini_cc_1shot.yaml", "--data.root", str(mini_csv),
                      "--data.val_split", "test", "--data.n_way", "3", "--data.n_query", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert "class 'n07' has 2 images, fewer than k_shot + n_query = 3" in out
    assert "n0700000000.jpg: cannot decode image" in out
    assert "train: classes 2, images 7" in out


def test_object_share_of_a_box_by_hand():
    from datamodules.toy.fewshot_scenes import box_object_share

    assert box_object_share([0, 0, 10, 10], [5, 5, 10, 10], 20) == 0.25
    assert box_object_share([-1, -1, -1, -1], [0, 0, 10, 10], 20) == 0.25
    assert box_object_share([0, 0, 4, 4], [10, 10, 5, 5], 20) == 0.0


def test_rank_helpers_of_the_shared_data_module_base(tmp_path):
    from datamodules.base import distributed_rank

    assert distributed_rank() == (0, 1)  # no process group in the tests
    assert distributed_rank(3, None) == (3, 1) and distributed_rank(None, 4) == (0, 4)
    assert distributed_rank(2, 5) == (2, 5)
    dm = FewShotDataModule(root=str(tmp_path / "toy"), dataset="toy", batch_size=4, num_workers=0)
    assert dm.trainer_rank() == (0, 1)  # no trainer attached
    dm.trainer = types.SimpleNamespace(global_rank=1, world_size=2)
    assert dm.trainer_rank() == (1, 2)
    labels = [c for c in range(5) for _ in range(4)]
    shape = {"n_way": 2, "k_shot": 1, "n_query": 1}
    default = EpisodeSampler(labels, **shape, episodes=4)
    explicit = EpisodeSampler(labels, **shape, episodes=4, rank=0, world_size=1)
    assert list(default) == list(explicit)
