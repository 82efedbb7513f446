"""COCO detection and instance segmentation fine-tuning (Mask R-CNN / Cascade Mask R-CNN) of any suite backbone.

* Model: the injected backbone (:func:`~lightning_modules.detection.backbones.detection_backbone`: the iTPN
  pyramid, timm stages + FPN, or R50-C4) under torchvision's ``MaskRCNN``
  (:func:`~lightning_modules.detection.backbones.mask_rcnn`), optionally with Cascade R-CNN's three box/mask stages
  (:func:`~lightning_modules.detection.cascade.make_cascade`, IoU 0.5 / 0.6 / 0.7).
* Loss: torchvision's RPN (objectness BCE + smooth-L1) and RoI losses (cross-entropy, smooth-L1 box regression,
  per-pixel mask BCE), summed; every term is logged under ``train/``.
* Resizing: the DataModule resizes and flips *training* images (the detector's own resize is switched off in
  training, so multi-scale choices are the DataModule's); *evaluation* images come at their original size and the
  detector resizes them to the DataModule's ``test_size`` / ``max_size`` and maps boxes and masks back, so
  predictions and ground truth meet in the original frame, as COCO's evaluation expects.
* Metrics: torchmetrics ``MeanAveragePrecision`` (pycocotools backend, ``iou_type=("bbox", "segm")``): COCO AP
  averaged over IoU 0.50:0.95, AP50, AP75 and AP for small / medium / large objects (by the annotation's ``area``),
  logged as ``val/bbox_mAP``, ``val/segm_mAP``, ``val/bbox_AP50`` ... Masks are binarised at 0.5 as torchvision and
  mmdet do. Crowd annotations are kept and marked ``iscrowd`` (ignored regions, as in COCO's evaluation).
* Pictures: the first validation batch is drawn as ground truth | predictions (boxes with class names and scores,
  masks) side by side, ``val/predictions`` in TensorBoard.
* Predictions (``predict``): per image, COCO result dicts (``image_id``, ``category_id`` mapped back from the
  contiguous labels, ``bbox`` as x, y, w, h, ``score``, ``segmentation`` as RLE), ready for
  ``COCO.loadRes`` / a test-dev submission.
* Optimisation: :class:`~lightning_modules.optim.OptimConfig`; ``layer_decay`` decays the trunk's learning rate by
  its ``group_matcher`` layers (iTPN's det configs: 0.90 for B, 0.95 for L, over their 30 / 44 blocks), with the
  RPN, RoI heads and (timm) FPN at the full rate; iTPN's pyramid sits in HiViT's last group, also at the full rate,
  as the official ``LayerDecayOptimizerConstructor`` puts every non-block backbone parameter there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch import nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

from lightning_modules.base import SuiteModule
from lightning_modules.detection.backbones import PretrainedReport, load_backbone_weights, mask_rcnn
from lightning_modules.detection.cascade import make_cascade
from lightning_modules.optim import OptimConfig, nested_layer_matcher
from lightning_modules.segmentation.module import palette
from suite_base.errors import ConfigError

log = logging.getLogger(__name__)

TRAIN_KEYS = ("boxes", "labels", "masks")
METRIC_NAMES = {
    "map": "mAP",
    "map_50": "AP50",
    "map_75": "AP75",
    "map_small": "APs",
    "map_medium": "APm",
    "map_large": "APl",
    "mar_100": "AR100",
}


def metric_predictions(outputs: Sequence[dict], mask_threshold: float = 0.5) -> list[dict]:
    """torchvision detections -> torchmetrics' prediction dicts (masks ``[N, 1, H, W]`` probabilities binarised)."""
    preds = []
    for out in outputs:
        pred = {"boxes": out["boxes"].float(), "scores": out["scores"].float(), "labels": out["labels"].long()}
        if "masks" in out:
            pred["masks"] = out["masks"][:, 0] > mask_threshold
        preds.append(pred)
    return preds


def metric_targets(targets: Sequence[dict], with_masks: bool = True) -> list[dict]:
    """Dataset targets -> torchmetrics' target dicts (``iscrowd`` and COCO's ``area`` kept for the area ranges)."""
    out = []
    for target in targets:
        item = {"boxes": target["boxes"].float(), "labels": target["labels"].long()}
        if with_masks:
            item["masks"] = target["masks"].bool()
        if "iscrowd" in target:
            item["iscrowd"] = target["iscrowd"].long()
        if "area" in target:
            item["area"] = target["area"].float()
        out.append(item)
    return out


def coco_results(
    outputs: Sequence[dict], image_ids: Sequence[int], label_to_category: dict[int, int], mask_threshold: float = 0.5
) -> list[dict]:
    """Detections in COCO's result format (``COCO.loadRes``): one dict per detection with ``image_id``,
    ``category_id`` (the contiguous label mapped back), ``bbox`` ``[x, y, w, h]``, ``score`` and, with masks,
    ``segmentation`` as an RLE whose ``counts`` is a str (JSON-ready)."""
    results = []
    for out, image_id in zip(outputs, image_ids, strict=True):
        boxes = out["boxes"].detach().float().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        scores = out["scores"].detach().float().cpu().tolist()
        labels = out["labels"].detach().cpu().tolist()
        rles = [None] * len(labels)
        if "masks" in out and len(labels):
            binary = (out["masks"][:, 0] > mask_threshold).cpu().numpy().astype("uint8")
            rles = mask_utils.encode(binary.transpose(1, 2, 0).copy(order="F"))
        for box, score, label, rle in zip(xywh, scores, labels, rles, strict=True):
            if label not in label_to_category:
                raise ConfigError(
                    f"predicted label {label} has no COCO category (the data has labels 1..{len(label_to_category)});"
                    " the model's num_classes must equal the data's"
                )
            result = {"image_id": int(image_id), "category_id": label_to_category[label], "bbox": box,
                      "score": score}  # fmt: skip
            if rle is not None:
                result["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
            results.append(result)
    return results


def draw_detections(
    image: torch.Tensor,
    target: dict,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
) -> torch.Tensor:
    """``[3, H, W]`` image in 0..1 with ``target``'s boxes (and masks, probabilities or binary) drawn on it; boxes
    below ``score_threshold`` are left out when ``target`` has scores. Returns a ``[3, H, W]`` uint8 image."""
    canvas = (image.detach().float().cpu().clamp(0, 1) * 255).to(torch.uint8)
    keep = torch.ones(len(target["boxes"]), dtype=torch.bool)
    if "scores" in target:
        keep = target["scores"].detach().cpu() >= score_threshold
    boxes = target["boxes"].detach().float().cpu()[keep]
    labels = target["labels"].detach().cpu()[keep].tolist()
    if not len(boxes):
        return canvas
    if "masks" in target:
        masks = target["masks"].detach().cpu()[keep]
        masks = masks[:, 0] if masks.dim() == 4 else masks
        masks = masks > mask_threshold if masks.is_floating_point() else masks.bool()
        canvas = draw_segmentation_masks(canvas, masks, alpha=0.45)
    colours = palette(max(labels) + 1)
    colour_of = [tuple(int(c) for c in colours[i]) for i in labels]  # one fixed colour per class
    names = [class_names[i - 1] if class_names and 0 < i <= len(class_names) else str(i) for i in labels]
    if "scores" in target:
        scores = target["scores"].detach().cpu()[keep].tolist()
        names = [f"{n} {s:.2f}" for n, s in zip(names, scores, strict=True)]
    if "masks" in target:
        masks = target["masks"].detach().cpu()[keep]
        masks = masks[:, 0] if masks.dim() == 4 else masks
        masks = masks > mask_threshold if masks.is_floating_point() else masks.bool()
        canvas = draw_segmentation_masks(canvas, masks, alpha=0.45, colors=colour_of)
    return draw_bounding_boxes(canvas, boxes, labels=names, colors=colour_of, width=2)


class DetectionModule(SuiteModule):
    """Mask R-CNN (or Cascade Mask R-CNN) on COCO (or the toy COCO) over any suite backbone.

    Args:
        backbone: the injected backbone (:func:`~lightning_modules.detection.backbones.detection_backbone`):
            ``itpn_pyramid`` (HiViT + iTPN's pre-trained pyramid as the FPN), ``timm_fpn`` (ResNet, Visformer ... +
            torchvision FPN) or ``resnet_c4`` (Detectron2's R50-C4 for the SSL comparisons); the RPN and RoI heads
            are built for its levels.
        pretrained: checkpoint of any suite run (Lightning ``.ckpt``; a glob picks the newest) or official weights
            (mapped by the family's filter) loaded into the trunk and, for iTPN, the pyramid; None: random init.
        strict_pretrained: raise when backbone keys are missing from ``pretrained`` (they would stay random).
        num_classes: object categories without the background (80 for COCO; the detector predicts ``K + 1``).
        cascade: Cascade Mask R-CNN (three box and mask stages) instead of Mask R-CNN.
        cascade_ious: the stages' foreground IoU thresholds (0.5, 0.6, 0.7).
        cascade_weights: the stages' loss weights (1, 0.5, 0.25).
        box_head: ``4conv1fc`` (BatchNorm; iTPN) or ``2fc``; None: the kind's default.
        head_channels: conv width of the box / mask heads (256).
        representation_size: fc width of the box head (1024).
        anchor_sizes: one anchor size per level (default 8 x stride) or, for C4, all sizes of its one level.
        min_size, max_size: the detector's evaluation resize when it runs without a DataModule; with one, its
            ``test_size`` and ``max_size`` are used.
        rcnn_kwargs: more torchvision ``MaskRCNN`` arguments (``rpn_post_nms_top_n_train``,
            ``box_batch_size_per_image``, ``box_detections_per_img``, ``box_score_thresh`` ...).
        num_logged: images of the first validation and test batch drawn with their ground-truth and predicted boxes
            in ``<run>/pictures/<stage>_predictions_epoch<NNN>.png`` and TensorBoard (0 disables it).
        draw_score: score threshold of the drawn predictions.
        optim: optimizer and schedule; ``layer_decay`` applies to the trunk's layers.
    """

    monitor = "val/bbox_mAP"
    monitor_mode = "max"

    def __init__(
        self,
        backbone: nn.Module,
        *,
        pretrained: str | None = None,
        strict_pretrained: bool = True,
        num_classes: int = 80,
        cascade: bool = False,
        cascade_ious: tuple[float, ...] = (0.5, 0.6, 0.7),
        cascade_weights: tuple[float, ...] = (1.0, 0.5, 0.25),
        box_head: str | None = None,
        head_channels: int = 256,
        representation_size: int = 1024,
        anchor_sizes: list[int] | None = None,
        min_size: int = 800,
        max_size: int = 1333,
        rcnn_kwargs: dict | None = None,
        num_logged: int = 4,
        draw_score: float = 0.5,
        optim: OptimConfig | None = None,
    ) -> None:
        super().__init__(optim)
        self.save_hyperparameters_with_networks()
        if num_classes < 1:
            raise ConfigError(f"model.num_classes must be >= 1 (categories without background), got {num_classes}")
        self.num_classes = num_classes
        self.pretrained_report = PretrainedReport()
        if pretrained:
            self.pretrained_report = load_backbone_weights(backbone.weights_target(), pretrained, strict_pretrained)
        self.detector = mask_rcnn(
            backbone,
            num_classes + 1,
            min_size,
            max_size,
            box_head=box_head,
            anchor_sizes=anchor_sizes,
            head_channels=head_channels,
            representation_size=representation_size,
            **(rcnn_kwargs or {}),
        )
        self.detector.pretrained_report = self.pretrained_report
        if cascade:
            make_cascade(self.detector, stage_ious=tuple(cascade_ious), stage_weights=tuple(cascade_weights))
        # the DataModule resizes (multi-scale) and flips training images; the detector only normalises and pads them
        self.detector.transform._skip_resize = True
        self.num_logged = num_logged
        self.draw_score = draw_score
        metric = dict(iou_type=("bbox", "segm"), backend="pycocotools")
        self.val_map = MeanAveragePrecision(**metric)
        self.test_map = MeanAveragePrecision(**metric)

    # ---- model -------------------------------------------------------------------------------------------------
    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        """Images (``[3, H, W]`` in 0..1, any sizes) -> per image ``boxes`` (x1, y1, x2, y2 in the input's pixels),
        ``labels`` (1..K), ``scores`` and ``masks`` (``[N, 1, H, W]`` probabilities). Runs the detector in eval
        mode semantics when the module is in eval mode."""
        return self.detector(images)

    def flop_forward(self, batch: tuple[list, list]) -> None:
        """The training forward (backbone, RPN, sampled RoI heads and losses) of ``batch``, for the benchmark's FLOP
        count; BatchNorm statistics are left as they were."""
        images, targets = batch
        targets = [{k: t[k] for k in TRAIN_KEYS if k in t} for t in targets]
        was_training = self.detector.training
        self.detector.train()
        norms = [m for m in self.detector.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.eval()
        self.detector(images, targets)
        self.detector.train(was_training)

    def trunk(self) -> torch.nn.Module:
        """The pre-trained network inside the detector (HiViT + pyramid, the timm model; C4: the split ResNet)."""
        return getattr(self.detector.backbone, "body", self.detector.backbone)

    # ---- optimisation ------------------------------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        trunk = self.trunk()
        names = getattr(trunk, "no_weight_decay", lambda: set())()
        prefix = "detector.backbone.body." if trunk is not self.detector.backbone else "detector.backbone."
        return {prefix + n for n in names}

    def group_matcher(self, coarse: bool = False):
        """Layer ids for layer-wise lr decay: the trunk's ``group_matcher`` layers, the rest (RPN, RoI heads, FPN)
        on top. iTPN: HiViT's matcher puts its pyramid in its last group, above the last block (full rate)."""
        kind = self.detector.backbone.kind
        if kind == "resnet_c4":
            raise ConfigError(
                "optim.layer_decay is not supported with backbone kind resnet_c4 (its res5 lives in the box head; the "
                "SSL detection protocol trains all layers at one rate). Set model.init_args.optim.layer_decay: null."
            )
        what = f"backbone {self.detector.backbone.name}"
        return nested_layer_matcher(self.trunk(), "detector.backbone.body.", kind != "itpn_pyramid", what)

    # ---- steps -------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        data_classes = getattr(dm, "num_classes", None)
        if data_classes is not None and data_classes != self.num_classes:
            raise ConfigError(
                f"model.num_classes={self.num_classes} but the data has {data_classes} categories; "
                f"set --model.init_args.num_classes {data_classes}"
            )
        test_size, max_size = getattr(dm, "test_size", None), getattr(dm, "max_size", None)
        if test_size is not None and max_size is not None:
            self.detector.transform.min_size = (int(test_size),)
            self.detector.transform.max_size = int(max_size)

    def training_step(self, batch: tuple[list, list], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        targets = [{k: t[k] for k in TRAIN_KEYS if k in t} for t in targets]
        losses = self.detector(images, targets)
        loss = sum(losses.values())
        size = len(images)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        for name, value in losses.items():
            self.log(f"train/{name}", value, batch_size=size)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[-1]["lr"], batch_size=size)
        return loss

    def _evaluate(self, batch: tuple[list, list], metric: MeanAveragePrecision, batch_idx: int, stage: str) -> None:
        images, targets = batch
        outputs = self.detector(images)
        metric.update(metric_predictions(outputs), metric_targets(targets, with_masks="masks" in targets[0]))
        if batch_idx == 0 and self.num_logged > 0 and self._trainer is not None:
            self.log_predictions(images, targets, outputs, stage)

    def _log_map(self, metric: MeanAveragePrecision, stage: str) -> None:
        values = metric.compute()
        logged = {}
        for iou_type in ("bbox", "segm"):
            for key, name in METRIC_NAMES.items():
                value = values.get(f"{iou_type}_{key}")
                if value is not None:
                    # -1 marks "no ground truth in this range" in COCO's evaluation; keep it as it is
                    logged[f"{stage}/{iou_type}_{name}"] = value.float()
        headline = {k: logged.pop(k) for k in (f"{stage}/bbox_mAP", f"{stage}/segm_mAP") if k in logged}
        self.log_dict(headline, prog_bar=True)
        self.log_dict(logged)
        metric.reset()

    def log_predictions(self, images: list[torch.Tensor], targets: list[dict], outputs: list[dict],
                        stage: str = "val") -> None:  # fmt: skip
        """One grid (TensorBoard ``<stage>/predictions`` and ``<run>/pictures/<stage>_predictions_epoch<NNN>.png``):
        per image, ground truth (left) and predictions above ``draw_score`` (right)."""
        dm = getattr(self.trainer, "datamodule", None)
        names = getattr(dm, "class_names", None)
        panels = []
        for image, target, out in list(zip(images, targets, outputs, strict=True))[: self.num_logged]:
            panels.append(draw_detections(image, target, names))
            panels.append(draw_detections(image, out, names, score_threshold=self.draw_score))
        height = max(p.shape[1] for p in panels)
        width = max(p.shape[2] for p in panels)
        panels = [F.pad(p, (0, width - p.shape[2], 0, height - p.shape[1])) for p in panels]
        grid = make_grid(torch.stack(panels).float() / 255, nrow=2)
        self.log_image_grid(f"{stage}/predictions", grid[None], nrow=1)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_map, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_map(self.val_map, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_map, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        self._log_map(self.test_map, "test")

    def predict_step(self, batch, batch_idx: int) -> dict:
        images, targets = batch
        outputs = self.detector(images)
        dm = getattr(self.trainer, "datamodule", None)
        mapping = getattr(dm, "label_to_category", None) or {k: k for k in range(1, self.num_classes + 1)}
        ids = [int(t["image_id"]) for t in targets]
        return {"image_ids": ids, "results": coco_results(outputs, ids, mapping)}
