"""COCO instances: the toy writer's format, the reader's label mapping / masks / cleaning, transforms, DataModule."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from datamodules.coco import (
    CocoDataModule,
    CocoDetection,
    Compose,
    RandomHorizontalFlip,
    ResizeShortest,
    collate_detection,
)
from datamodules.toy.coco_shapes import SPLIT_OFFSETS, ensure_toy_coco, render_coco_scene, write_toy_coco
from experiments.errors import DataError

TOY = dict(train=6, val=4, img_size=64, num_classes=4, seed=3)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(root, report) of a miniature toy COCO written by ``write_toy_coco``."""
    root = tmp_path_factory.mktemp("coco") / "toy"
    report = write_toy_coco(root, **TOY)
    return root, report


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float((a & b).sum() / (a | b).sum())


def test_toy_writer_layout_counts_and_determinism(toy, tmp_path):
    root, report = toy
    assert report["train"]["images"] == TOY["train"] and report["val"]["images"] == TOY["val"]
    for split in ("train", "val"):
        spec = json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())
        assert len(spec["images"]) == report[split]["images"]
        assert len(spec["annotations"]) == report[split]["annotations"]
        assert [c["id"] for c in spec["categories"]] == [1, 2, 3, 5]  # gaps, as in real COCO
        assert {"id", "name", "supercategory"} <= set(spec["categories"][0])
        for image in spec["images"]:
            assert set(image) >= {"id", "file_name", "width", "height"}
            with Image.open(root / f"{split}2017" / image["file_name"]) as img:
                assert img.size == (image["width"], image["height"])
        counts = np.bincount([a["image_id"] for a in spec["annotations"]])
        assert counts[counts > 0].min() >= 1 and counts.max() <= 3
        for ann in spec["annotations"]:
            assert ann["iscrowd"] == 0 and len(ann["bbox"]) == 4 and ann["area"] > 0
            assert len(ann["segmentation"]) == 1 and len(ann["segmentation"][0]) >= 6
        # the reader sees exactly what the writer reports (no toy annotation is degenerate)
        data = CocoDetection(root, split, train=False)
        assert len(data) == report[split]["images"] and data.annotation_count() == report[split]["annotations"]
        assert not data.dropped
    # written through ensure_written: same options, same bytes
    again = ensure_toy_coco(tmp_path / "again", **TOY)
    for name in ("annotations/instances_train2017.json", "val2017/000000900001.jpg"):
        assert (again / name).read_bytes() == (root / name).read_bytes()


def test_contiguous_label_mapping(toy):
    root, _ = toy
    data = CocoDetection(root, "val")
    assert data.category_to_label == {1: 1, 2: 2, 3: 3, 5: 4}
    assert data.label_to_category == {1: 1, 2: 2, 3: 3, 4: 5}
    assert data.class_names == ["square", "triangle", "diamond", "hexagon"] and data.num_classes == 4
    for index, record in enumerate(data.images):
        _, target = data[index]
        expected = [data.category_to_label[a["category_id"]] for a in data.coco.imgToAnns[record["id"]]]
        assert target["labels"].tolist() == expected and target["labels"].dtype == torch.int64
        assert target["image_id"] == record["id"]


def test_polygon_mask_matches_the_drawn_shape(toy):
    root, _ = toy
    # the writer's geometry against pycocotools' rasterisation of its polygon, over many scenes
    for seed in range(40):
        img, objects = render_coco_scene(seed, num_classes=4, img_size=64)
        for obj in objects:
            flat = [c for point in obj["polygon"] for c in point]
            rle = mask_utils.merge(mask_utils.frPyObjects([flat], img.height, img.width))
            assert iou(mask_utils.decode(rle), obj["mask"]) > 0.9
    # the dataset's masks (annToMask of the written JSON) against the painted pixels of the written files
    data = CocoDetection(root, "val")
    for index in range(len(data)):
        seed = TOY["seed"] * 10_000_019 + SPLIT_OFFSETS["val"] + index
        img, objects = render_coco_scene(seed, TOY["num_classes"], TOY["img_size"])
        image, target = data[index]
        assert image.shape == (3, img.height, img.width) and 0.0 <= image.min() and image.max() <= 1.0
        drawn = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
        assert (image - drawn).abs().mean() < 0.03  # the JPEG is the rendering (up to compression noise)
        assert target["masks"].dtype == torch.uint8 and target["masks"].shape[0] == len(objects)
        for mask, obj in zip(target["masks"], objects, strict=True):
            assert iou(mask.numpy(), obj["mask"]) > 0.9
            # the file's pixels under the annotation's mask are the shape's colour
            inside = image[:, mask.bool()].mean(dim=1) * 255
            assert (inside - torch.tensor(obj["colour"], dtype=torch.float32)).abs().max() < 20


def test_boxes_are_xyxy_inside_the_image_and_frame_the_mask(toy):
    root, _ = toy
    data = CocoDetection(root, "train")
    for index in range(len(data)):
        image, target = data[index]
        height, width = image.shape[-2:]
        boxes = target["boxes"]
        assert boxes.dtype == torch.float32 and boxes.shape[1] == 4
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        for box, mask in zip(boxes, target["masks"], strict=True):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            extent = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
            assert (extent - box).abs().max() <= 1.0


def hand_case() -> tuple[torch.Tensor, dict]:
    """A 100 x 50 (W x H) image with one box [10, 20, 30, 40] and its filled mask."""
    image = torch.zeros(3, 50, 100)
    image[:, 20:40, 10:30] = 1.0
    masks = torch.zeros(1, 50, 100, dtype=torch.uint8)
    masks[0, 20:40, 10:30] = 1
    target = {"boxes": torch.tensor([[10.0, 20.0, 30.0, 40.0]]), "area": torch.tensor([400.0]), "masks": masks}
    return image, target


def test_flip_and_resize_on_a_hand_case():
    image, target = hand_case()
    flipped, out = RandomHorizontalFlip(p=1.0)(image, target)
    assert out["boxes"].tolist() == [[70.0, 20.0, 90.0, 40.0]]
    assert out["masks"][0, 20:40, 70:90].all() and out["masks"].sum() == 400
    assert flipped[0, 20:40, 70:90].all() and flipped.sum() == image.sum()
    assert RandomHorizontalFlip(p=0.0)(image, target)[1]["boxes"].tolist() == [[10.0, 20.0, 30.0, 40.0]]

    # short side 50 -> 100: scale 2 on both axes
    resized, out = ResizeShortest(short=100, max_size=1333)(image, target)
    assert resized.shape == (3, 100, 200)
    assert out["boxes"].tolist() == [[20.0, 40.0, 60.0, 80.0]] and out["area"].tolist() == [1600.0]
    assert out["masks"].shape == (1, 100, 200) and out["masks"][0, 40:80, 20:60].all() and out["masks"].sum() == 1600
    # the long side would be 200 > 150: scale 1.5 instead
    resized, out = ResizeShortest(short=100, max_size=150)(image, target)
    assert resized.shape == (3, 75, 150) and out["boxes"].tolist() == [[15.0, 30.0, 45.0, 60.0]]
    # the paper setting on COCO-like sizes: 480x640 -> 800x1067; a panorama is capped at 1333 on the long side
    resize = ResizeShortest(short=800, max_size=1333)
    assert resize.output_size(480, 640, 800) == (800, 1067)
    assert resize.output_size(500, 1500, 800) == (444, 1333)
    # flip then resize, composed: the box follows
    _, out = Compose([RandomHorizontalFlip(1.0), ResizeShortest(100, 1333)])(image, target)
    assert out["boxes"].tolist() == [[140.0, 40.0, 180.0, 80.0]]
    assert target["boxes"].tolist() == [[10.0, 20.0, 30.0, 40.0]]  # the input target is not modified
    # multi-scale: one of the listed short sides per call
    sizes = {ResizeShortest(short=(60, 70), max_size=1333)(image, target)[0].shape[-2] for _ in range(20)}
    assert sizes <= {60, 70} and len(sizes) == 2


def write_coco(root, split: str, images: list[dict], annotations: list[dict], on_disk: list[str] | None = None):
    """A hand-made COCO split: the JSON and (grey) JPEGs for the images named in ``on_disk`` (default: all)."""
    folder = root / f"{split}2017"
    folder.mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    for image in images:
        if on_disk is None or image["file_name"] in on_disk:
            Image.new("RGB", (image["width"], image["height"]), (128, 128, 128)).save(folder / image["file_name"])
    categories = [{"id": 3, "name": "cat", "supercategory": "animal"}, {"id": 7, "name": "dog", "supercategory": "a"}]
    spec = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(spec))


def image(image_id: int) -> dict:
    return {"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": 40, "height": 30}


def annotation(ann_id: int, image_id: int, bbox: list, segmentation, category_id: int = 3, iscrowd: int = 0) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "area": 1.0,
            "iscrowd": iscrowd, "segmentation": segmentation}  # fmt: skip


SQUARE = [[5.0, 5.0, 15.0, 5.0, 15.0, 15.0, 5.0, 15.0]]


def test_missing_annotation_file_and_missing_images(tmp_path):
    with pytest.raises(DataError, match=r"instances_train2017\.json.*Expected layout"):
        CocoDetection(tmp_path, "train")
    images = [image(1), image(2), image(3)]
    write_coco(tmp_path, "train", images, [annotation(i, i, [5, 5, 10, 10], SQUARE) for i in (1, 2, 3)],
               on_disk=["000000000001.jpg", "000000000003.jpg"])  # fmt: skip
    with pytest.raises(DataError, match=r"1 of 3 images .* missing .*000000000002\.jpg.*on_missing: skip"):
        CocoDetection(tmp_path, "train")
    with pytest.warns(UserWarning, match="000000000002.jpg"):
        data = CocoDetection(tmp_path, "train", on_missing="skip")
    assert len(data) == 2 and data.dropped == {"missing_image_file": 1} and data.missing == ["000000000002.jpg"]
    assert [record["id"] for record in data.images] == [1, 3]


def test_degenerate_and_crowd_annotations_are_dropped_and_counted(tmp_path):
    annotations = [
        annotation(1, 1, [5, 5, 10, 10], SQUARE),  # kept
        annotation(2, 1, [5, 5, 0.5, 10], SQUARE),  # width <= 1 px
        annotation(3, 1, [5, 5, 10, 1], SQUARE),  # height 1 px
        annotation(4, 1, [35, 5, 10, 10], SQUARE),  # clipped to [35, 5, 40, 15]: kept
        annotation(5, 1, [38.5, 5, 10, 10], SQUARE),  # clipped to 1.5 px wide: kept
        annotation(6, 1, [45, 5, 10, 10], SQUARE),  # entirely right of the image: empty after clipping
        annotation(7, 1, [5, 5, 10, 10], [[5.0, 5.0, 15.0, 15.0]]),  # a 2-point polygon
        annotation(8, 1, [5, 5, 10, 10], [SQUARE[0], [1.0, 1.0, 2.0, 2.0]], category_id=7),  # one bad part of two
        annotation(9, 1, [5, 5, 10, 10], SQUARE, iscrowd=1),  # crowd: out of training targets
        annotation(10, 2, [5, 5, 1, 1], SQUARE),  # image 2's only annotation, degenerate
    ]
    write_coco(tmp_path, "train", [image(1), image(2)], annotations)
    data = CocoDetection(tmp_path, "train")
    assert data.dropped == {
        "degenerate_box": 4,
        "polygon_under_3_points": 1,
        "polygon_part_under_3_points": 1,
        "crowd": 1,
        "image_without_annotations": 1,
    }
    assert len(data) == 1
    _, target = data[0]
    assert target["boxes"].tolist() == [[5, 5, 15, 15], [35, 5, 40, 15], [38.5, 5, 40, 15], [5, 5, 15, 15]]
    assert target["labels"].tolist() == [1, 1, 1, 2] and target["iscrowd"].tolist() == [0, 0, 0, 0]
    assert target["masks"].shape == (4, 30, 40) and target["masks"][3].sum() == 100  # the bad part removed
    assert target["orig_size"].tolist() == [30, 40]

    # evaluation: crowd regions stay (flagged), empty images stay
    val = CocoDetection(tmp_path, "train", train=False)
    assert len(val) == 2 and "crowd" not in val.dropped and "image_without_annotations" not in val.dropped
    assert val[0][1]["iscrowd"].tolist() == [0, 0, 0, 0, 1]
    _, empty = val[1]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 30, 40)
    # box-only targets do not check segmentations
    boxes_only = CocoDetection(tmp_path, "train", with_masks=False)
    assert "masks" not in boxes_only[0][1] and "polygon_under_3_points" not in boxes_only.dropped


def test_malformed_inputs_are_clear_errors(tmp_path):
    write_coco(tmp_path, "train", [image(1)], [annotation(1, 1, [5, 5, 10, 10], SQUARE, category_id=4)])
    with pytest.raises(DataError, match="category_id 4"):
        CocoDetection(tmp_path, "train")
    write_coco(tmp_path, "train", [image(1)], [annotation(1, 1, [5, 5, 10, 10], SQUARE)])
    Image.new("RGB", (20, 20)).save(tmp_path / "train2017" / "000000000001.jpg")
    with pytest.raises(DataError, match=r"000000000001\.jpg is 20x20 px .* 40x30"):
        CocoDetection(tmp_path, "train")[0]
    write_coco(
        tmp_path,
        "train",
        [image(1)],
        [annotation(1, 1, [5, 5, 10, 10], SQUARE), annotation(2, 9, [1, 1, 5, 5], SQUARE)],
    )
    with pytest.raises(DataError, match=r"1 image ids missing from 'images', e\.g\. \[9\]"):
        CocoDetection(tmp_path, "train")
    (tmp_path / "annotations" / "instances_train2017.json").write_text('{"images": []}')
    with pytest.raises(DataError, match="no 'annotations' list"):
        CocoDetection(tmp_path, "train")


def test_datamodule_writes_the_toy_and_yields_collated_batches(tmp_path):
    dm = CocoDataModule(
        root=str(tmp_path / "toy"), dataset="toy", batch_size=3, num_workers=0, pin_memory=False,
        persistent_workers=False, toy_train=4, toy_val=2, toy_img_size=64, toy_num_classes=3,
    )  # fmt: skip
    assert dm.num_classes == 3 and dm.class_names == ["square", "triangle", "diamond"]  # before the toy exists
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 4 and len(dm.val_set) == 2
    assert dm.num_classes == 3 and dm.label_to_category == {1: 1, 2: 2, 3: 3}
    images, targets = next(iter(dm.train_dataloader()))
    assert len(images) == len(targets) == 3
    for img, target in zip(images, targets, strict=True):
        assert img.shape[0] == 3 and max(img.shape[-2:]) == 64  # the toy keeps its written size
        assert set(target) >= {"boxes", "labels", "masks", "image_id", "area", "iscrowd"}
        assert target["masks"].shape[-2:] == img.shape[-2:]
        assert target["labels"].min() >= 1 and target["labels"].max() <= 3
    images, targets = next(iter(dm.val_dataloader()))
    assert len(images) == 2
    collated_images, collated_targets = collate_detection([(images[0], targets[0]), (images[1], targets[1])])
    assert collated_images[1] is images[1] and collated_targets[1] is targets[1]
    summary, problems = dm.check_dataset(decode=True)
    assert problems == [] and summary["train"]["images"] == 4 and summary["val"]["categories"] == 3
    synthetic_images, synthetic_targets = dm.synthetic_batch(2)
    assert len(synthetic_images) == 2 and synthetic_targets[0]["masks"].shape[-2:] == synthetic_images[0].shape[-2:]
    coco = CocoDataModule(root=str(tmp_path / "toy"), dataset="coco", num_workers=0)  # the same files, read as COCO
    assert coco.train_size == 800 and coco.max_size == 1333 and coco.num_classes == 3


def test_datamodule_checks_the_coco_layout_early(tmp_path):
    with pytest.raises(DataError, match="does not exist.*dataset toy"):
        CocoDataModule(root=str(tmp_path / "absent"), dataset="coco")
    (tmp_path / "annotations").mkdir()
    with pytest.raises(DataError, match=r"instances_train2017\.json: COCO annotation file not found"):
        CocoDataModule(root=str(tmp_path), dataset="coco")
