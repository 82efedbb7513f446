"""DetectionModule: COCO mAP on hand-computed cases, COCO result format, drawings, layer decay, evaluation in the
original image frame, the toy Mask R-CNN learning run."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torchmetrics.detection import MeanAveragePrecision

from datamodules.coco import CocoDataModule
from experiments.configs import load_config
from experiments.errors import ConfigError
from lightning_modules.detection import DetectionModule, coco_results, detection_backbone, draw_detections
from lightning_modules.detection.module import metric_predictions, metric_targets
from lightning_modules.optim import OptimConfig, param_groups
from tests.helpers import ITPN, TOY_HIVIT, validate_fit_validate

SMALL = dict(
    head_channels=16,
    representation_size=64,
    anchor_sizes=[16, 32, 64, 128, 256],
    rcnn_kwargs=dict(rpn_post_nms_top_n_test=50, box_detections_per_img=10, box_score_thresh=0.0),
)


def square_mask(size: tuple[int, int], rows: slice, cols: slice, value: float = 1.0) -> torch.Tensor:
    mask = torch.zeros(size)
    mask[rows, cols] = value
    return mask


def test_map_matches_a_hand_computed_case():
    """One ground-truth bar (4 x 25 px), one prediction with IoU 0.84 (box and mask): a true positive at the IoU
    thresholds 0.50 ... 0.80 (7 of COCO's 10) and a miss at 0.85 ... 0.95, so AP = 0.7, AP50 = AP75 = 1. A second,
    lower-scored prediction of a class without ground truth changes nothing (that class is left out of the mean)."""
    size = (30, 30)
    target = {
        "boxes": torch.tensor([[0.0, 0.0, 4.0, 25.0]]),
        "labels": torch.tensor([1]),
        "masks": square_mask(size, slice(0, 25), slice(0, 4)).to(torch.uint8)[None],
        "iscrowd": torch.tensor([0]),
        "area": torch.tensor([100.0]),
    }
    # mask probabilities: 0.9 on rows 0-20 (84 of the 100 pixels), 0.4 on rows 21-24 (below the 0.5 threshold)
    probs = square_mask(size, slice(0, 21), slice(0, 4), 0.9) + square_mask(size, slice(21, 25), slice(0, 4), 0.4)
    output = {
        "boxes": torch.tensor([[0.0, 0.0, 4.0, 21.0], [12.0, 12.0, 18.0, 18.0]]),
        "scores": torch.tensor([0.9, 0.3]),
        "labels": torch.tensor([1, 2]),
        "masks": torch.stack([probs, square_mask(size, slice(12, 18), slice(12, 18), 0.9)])[:, None],
    }
    metric = MeanAveragePrecision(iou_type=("bbox", "segm"), backend="pycocotools")
    metric.update(metric_predictions([output]), metric_targets([target]))
    values = metric.compute()
    for kind in ("bbox", "segm"):
        assert values[f"{kind}_map"].item() == pytest.approx(0.7, abs=1e-6)
        assert values[f"{kind}_map_50"].item() == pytest.approx(1.0)
        assert values[f"{kind}_map_75"].item() == pytest.approx(1.0)


def test_map_counts_a_wrong_class_as_a_miss():
    target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1])}
    output = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([2]),
    }
    metric = MeanAveragePrecision(iou_type="bbox")
    metric.update(metric_predictions([output]), metric_targets([target], with_masks=False))
    assert metric.compute()["map"].item() == pytest.approx(0.0)


def test_coco_results_map_labels_back_to_category_ids():
    probs = square_mask((6, 8), slice(1, 4), slice(2, 6), 0.8)[None, None]
    output = {"boxes": torch.tensor([[2.0, 1.0, 6.0, 4.0]]), "scores": torch.tensor([0.75]),
              "labels": torch.tensor([2]), "masks": probs}  # fmt: skip
    (result,) = coco_results([output], [42], {1: 18, 2: 44})
    assert result["image_id"] == 42 and result["category_id"] == 44
    assert result["bbox"] == pytest.approx([2.0, 1.0, 4.0, 3.0]) and result["score"] == pytest.approx(0.75)
    rle = {"size": result["segmentation"]["size"], "counts": result["segmentation"]["counts"].encode()}
    np.testing.assert_array_equal(mask_utils.decode(rle), (probs[0, 0] > 0.5).numpy().astype(np.uint8))
    with pytest.raises(ConfigError, match="label 2 has no COCO category"):
        coco_results([output], [42], {1: 18})


def test_draw_detections_draws_boxes_above_the_score_threshold_only():
    image = torch.zeros(3, 40, 40)
    mask = square_mask((40, 40), slice(10, 20), slice(10, 20), 0.9)[None, None]
    target = {"boxes": torch.tensor([[5.0, 5.0, 30.0, 30.0]]), "labels": torch.tensor([1]),
              "scores": torch.tensor([0.4]), "masks": mask}  # fmt: skip
    blank = draw_detections(image, target, ["circle"], score_threshold=0.5)
    assert blank.dtype == torch.uint8 and int(blank.sum()) == 0
    drawn = draw_detections(image, target, ["circle"], score_threshold=0.3)
    assert drawn[:, 5, 5:30].sum() > 0, "the box's top edge is drawn"
    assert drawn[:, 15, 15].sum() > 0, "the mask is filled"
    assert drawn[:, 35, 35].sum() == 0, "outside box and mask stays untouched"


def tiny_module(
    kind: str = "itpn_pyramid", name: str = ITPN, kwargs: dict = TOY_HIVIT, **module_args
) -> DetectionModule:
    torch.manual_seed(0)
    args = dict(num_classes=3, **SMALL)
    args.update(module_args)
    return DetectionModule(detection_backbone(kind, name, kwargs), **args)


def test_layer_decay_scales_trunk_layers_and_keeps_heads_and_pyramid_at_full_rate():
    """iTPN det recipe: patch embedding at decay ** (num_layers + 1), the last block at decay ** 1, the pyramid,
    RPN and RoI heads at the full rate (HiViT's matcher puts the pyramid in its last group)."""
    module = tiny_module()
    groups = param_groups(module, OptimConfig(layer_decay=0.9))
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(module.named_parameters())
    blocks = module.trunk().main_block_ids()  # 1 + 1 MLP blocks and 2 attention blocks: 4 layers
    assert scale[id(named["detector.backbone.body.patch_embed.proj.weight"])] == pytest.approx(0.9**5)
    last = f"detector.backbone.body.blocks.{blocks[-1]}.mlp.fc1.weight"
    assert scale[id(named[last])] == pytest.approx(0.9)
    pyramid = next(n for n in named if n.startswith("detector.backbone.body.pyramid."))
    assert scale[id(named[pyramid])] == pytest.approx(1.0)
    assert scale[id(named["detector.rpn.head.conv.0.0.weight"])] == pytest.approx(1.0)
    assert scale[id(named["detector.roi_heads.box_predictor.cls_score.weight"])] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="resnet_c4"):
        param_groups(
            tiny_module("resnet_c4", "resnet18", {}),
            OptimConfig(layer_decay=0.9),
        )


def test_cascade_module_sums_the_three_stage_losses():
    module = tiny_module(cascade=True)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 48)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 44.0]]), "labels": torch.tensor([1]),
                "masks": square_mask((64, 64), slice(6, 44), slice(4, 40)).to(torch.uint8)[None]},
               {"boxes": torch.tensor([[8.0, 8.0, 30.0, 50.0]]), "labels": torch.tensor([3]),
                "masks": square_mask((64, 48), slice(8, 50), slice(8, 30)).to(torch.uint8)[None]}]  # fmt: skip
    losses = module.detector(images, targets)
    assert {f"loss_mask_s{t}" for t in (1, 2, 3)} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


def test_evaluation_resizes_to_test_size_and_answers_in_the_original_frame(tmp_path):
    """The DataModule gives evaluation images at their original size; the detector runs at test_size and maps its
    boxes and masks back, so the outputs live in the original image's pixels."""
    module = tiny_module()
    dm = CocoDataModule(root=str(tmp_path / "coco"), dataset="toy", test_size=64, max_size=64, toy_train=2, toy_val=2,
                        num_workers=0, persistent_workers=False, pin_memory=False, toy_num_classes=3)  # fmt: skip
    dm.prepare_data()
    dm.setup("validate")
    image, target = dm.val_set[0]
    assert tuple(image.shape[-2:]) == tuple(target["orig_size"].tolist()), "evaluation images are not resized"
    trainer = SimpleNamespace(datamodule=dm)  # what setup() reads of the trainer
    module._trainer = trainer
    module.setup("validate")
    assert module.detector.transform.min_size == (64,) and module.detector.transform.max_size == 64
    module.eval()
    big = torch.rand(3, 96, 128)
    with torch.no_grad():
        (out,) = module([big])
    assert out["masks"].shape[-2:] == (96, 128)
    assert len(out["boxes"]) and float(out["boxes"][:, 2].max()) > 64, "boxes are mapped back beyond the 64 px input"
    with pytest.raises(ConfigError, match="num_classes"):
        wrong = tiny_module(num_classes=5)
        wrong._trainer = trainer
        wrong.setup("fit")


def test_toy_mask_rcnn_learns_box_ap_above_zero(tmp_path):
    """The toy config (its model and data; fewer images) trained for a few dozen steps: box and mask AP clearly
    above zero on the toy validation scenes, where the untrained detector scores ~0."""
    cfg = load_config("configs/downstream/toy_mask_rcnn.yaml")
    init = dict(cfg["model"]["init_args"])
    optim = dict(init.pop("optim"), decay_steps=[STEPS - 20])  # the config's step decay, counted in steps
    init["optim"] = OptimConfig(**optim)
    data = dict(cfg["data"]["init_args"], root=str(tmp_path / "coco"), num_workers=0, persistent_workers=False,
                toy_train=STEPS_DATA, toy_val=30)  # fmt: skip
    L.seed_everything(0)
    init["backbone"] = detection_backbone(**init["backbone"]["init_args"])
    module, dm = DetectionModule(**init), CocoDataModule(**data)
    before, after = validate_fit_validate(module, dm, STEPS)
    print(f"toy box AP {before['val/bbox_mAP']:.3f} -> {after['val/bbox_mAP']:.3f}, "
          f"mask AP {before['val/segm_mAP']:.3f} -> {after['val/segm_mAP']:.3f}, "
          f"box AP50 {after['val/bbox_AP50']:.3f}")  # fmt: skip
    assert before["val/bbox_mAP"] < 0.01
    assert after["val/bbox_mAP"] > MIN_AP
    assert after["val/segm_mAP"] > MIN_AP


STEPS, STEPS_DATA, MIN_AP = 120, 200, 0.05
