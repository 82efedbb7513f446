"""Cascade Mask R-CNN RoI heads on torchvision's detection code (Cai & Vasconcelos, "Cascade R-CNN: Delving into
High Quality Object Detection", arXiv 1712.00726; instance segmentation as in the journal version, arXiv 1906.09756).

The cascade (Sec. 4 of arXiv 1712.00726) is a sequence of detection stages ``t = 1 ... T``, each with a classifier
``h_t`` and a box regressor ``f_t`` trained at an increasing IoU threshold ``u_t`` (0.5, 0.6, 0.7)::

    f(x, b) = f_T o f_{T-1} o ... o f_1(x, b)
    L(x^t, g) = L_cls(h_t(x^t), y^t) + lambda [y^t >= 1] L_loc(f_t(x^t, b^t), g),   b^t = f_{t-1}(x^{t-1}, b^{t-1})

where ``y^t`` is the label of ``x^t`` at threshold ``u_t``: stage ``t`` is trained on the (detached) boxes that
stage ``t - 1`` regressed, re-matched and re-sampled at its own threshold, and inference runs the same sequence.

:class:`CascadeRoIHeads` follows mmdetection 2.x ``CascadeRoIHead`` as configured by
``configs/cascade_rcnn/cascade_mask_rcnn_r50_fpn_1x_coco.py`` (and the Swin / iTPN cascade configs):

* per stage: its own box head, a class-agnostic box predictor (:class:`ClassAgnosticPredictor`: ``num_classes``
  scores and 4 deltas, mmdet ``reg_class_agnostic=True``), its own ``Matcher`` with ``fg = bg = u_t`` and no
  low-quality matches, its own ``BoxCoder`` (weights (10,10,5,5), (20,20,10,10), (30,30,15,15), i.e. mmdet's
  ``target_stds``), its own mask head and mask predictor (mmdet builds one mask head per stage from a single dict);
  the RoI poolers (no parameters) are shared;
* training: stage 1 samples from the RPN proposals with the ground-truth boxes appended (512 RoIs per image, 25 %
  positives: the base ``RoIHeads`` sampler). Each stage computes cross-entropy + box regression on its samples and
  the mask loss on its positives; the regressed boxes (detached, decoded with that stage's coder, clipped to the
  image) *without the appended ground-truth rows* (mmdet ``refine_bboxes``) are the next stage's proposals, to which
  the ground truth is appended again before re-sampling;
* losses: ``loss_classifier_s{t}``, ``loss_box_reg_s{t}``, ``loss_mask_s{t}`` for ``t = 1 ... T`` (1-based), each
  **already multiplied by the stage weight** (1, 0.5, 0.25), so the training step simply sums the dict (together with
  the RPN's ``loss_objectness`` and ``loss_rpn_box_reg``);
* inference (mmdet ``simple_test``): the stages run in sequence, each scoring and regressing the boxes it was given;
  class logits are averaged over the stages (softmax after), the boxes are the last stage's regression, then
  torchvision's post-processing (score threshold, small-box removal, per-class NMS, ``detections_per_img``; with
  class-agnostic regression a box is the same for every class). Masks: every stage's mask head runs on the final
  detections and their sigmoid probabilities are averaged (mmdet ``merge_aug_masks``); ``result[i]["masks"]`` holds the
  ``[N, 1, M, M]`` probabilities of the detected class, which ``GeneralizedRCNNTransform.postprocess`` pastes into the
  image exactly as for torchvision's ``RoIHeads``.

:func:`make_cascade` turns a suite Mask R-CNN (:func:`~lightning_modules.detection.backbones.build_mask_rcnn`) into
a Cascade Mask R-CNN: stage 1 keeps the detector's box head / mask head / mask predictor (and torchvision's
attribute names ``box_head``, ``box_predictor``, ``mask_head``, ``mask_predictor``), stages 2 ... T are re-initialised
deep copies (stored in ``later_box_heads``, ``later_box_predictors``, ``later_mask_heads``,
``later_mask_predictors``); every stage gets a fresh :class:`ClassAgnosticPredictor`.

Departures from mmdetection 2.x:

* Box regression loss: smooth-L1 with ``beta = box_loss_beta`` (default 1.0, mmdet's cascade ``SmoothL1Loss(beta=1)``;
  torchvision's Mask R-CNN uses 1/9), summed over the positives and divided by the number of sampled RoIs as in both
  torchvision's ``fastrcnn_loss`` and mmdet (``avg_factor`` = number of RoIs).
* Score merging: ``score_merge="logit"`` (default) averages the stages' raw class logits and applies softmax once,
  as mmdet 2.x / 3.x (and so the official iTPN / Swin cascade configs) do; ``score_merge="prob"`` averages the
  stages' softmax probabilities instead (the paper's wording of an ensemble of classifier outputs).
* Box coder weights 30, 15 for stage 3 (mmdet's stds 0.033 / 0.067 are 30.3 / 14.9); the decode clamp is
  torchvision's ``log(1000 / 16)``, the same as mmdet's ``wh_ratio_clip``.
* The ground truth is appended after the proposals (torchvision) rather than before them (mmdet); sampling is
  torchvision's ``BalancedPositiveNegativeSampler`` (same counts as mmdet's ``RandomSampler``).
* Re-initialised stages: ``reset_parameters()`` on every submodule, then torchvision's own Kaiming-normal
  (fan-out, ReLU) init, zero bias, for the convolutions of ``FastRCNNConvFCHead`` / ``MaskRCNNHeads`` /
  ``MaskRCNNPredictor`` (what their constructors do and close to mmdet's conv init).
* For the R50-C4 detector (``resnet_c4``, not a mmdet cascade config) the res5 box head, shared with the mask head
  inside a stage, is copied once per stage (sharing kept within each stage) and re-initialised from scratch for
  stages 2 ... T.
* No keypoint branch; the box RoI features are not re-used for the mask branch (neither does mmdet's FPN cascade).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss
from torchvision.ops import boxes as box_ops

from suite_base.errors import ConfigError

__all__ = [
    "DEFAULT_STAGE_IOUS",
    "DEFAULT_STAGE_WEIGHTS",
    "DEFAULT_BBOX_REG_WEIGHTS",
    "CascadeStage",
    "ClassAgnosticPredictor",
    "CascadeRoIHeads",
    "make_cascade",
]

DEFAULT_STAGE_IOUS = (0.5, 0.6, 0.7)
DEFAULT_STAGE_WEIGHTS = (1.0, 0.5, 0.25)
DEFAULT_BBOX_REG_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
ScoreMerge = Literal["prob", "logit"]


class ClassAgnosticPredictor(nn.Module):
    """Box predictor with class-agnostic regression (mmdet ``reg_class_agnostic=True``): ``forward(x)`` ->
    ``(scores [N, num_classes], deltas [N, 4])``. Init as mmdet's ``BBoxHead``: scores N(0, 0.01), deltas
    N(0, 0.001), zero biases."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


class CascadeStage(NamedTuple):
    """The modules and settings of one cascade stage (``CascadeRoIHeads.stage(t)``, 0-based ``t``)."""

    box_head: nn.Module
    box_predictor: nn.Module
    mask_head: nn.Module
    mask_predictor: nn.Module
    matcher: det_utils.Matcher
    box_coder: det_utils.BoxCoder
    weight: float


def check_stage_config(
    stage_ious: Sequence[float],
    stage_weights: Sequence[float],
    bbox_reg_weights: Sequence[Sequence[float]],
) -> int:
    """Validate the per-stage settings; returns the number of stages. Raises :class:`ConfigError`."""
    lengths = {"stage_ious": len(stage_ious), "stage_weights": len(stage_weights)}
    lengths["bbox_reg_weights"] = len(bbox_reg_weights)
    if len(set(lengths.values())) != 1:
        raise ConfigError(
            f"cascade: stage_ious, stage_weights and bbox_reg_weights need one entry per stage, got {lengths}"
        )
    if lengths["stage_ious"] == 0:
        raise ConfigError("cascade: at least one stage is needed (stage_ious is empty)")
    if not all(0.0 < float(u) <= 1.0 for u in stage_ious):
        raise ConfigError(f"cascade: stage_ious must lie in (0, 1], got {list(stage_ious)}")
    if not all(float(w) >= 0.0 for w in stage_weights):
        raise ConfigError(f"cascade: stage_weights must be >= 0, got {list(stage_weights)}")
    for w in bbox_reg_weights:
        if len(w) != 4 or not all(float(v) > 0.0 for v in w):
            raise ConfigError(
                f"cascade: each bbox_reg_weights entry needs 4 positive numbers (wx, wy, ww, wh), got {w}"
            )
    return lengths["stage_ious"]


class CascadeRoIHeads(RoIHeads):
    """Cascade (Mask) R-CNN RoI heads: ``T = len(stage_ious)`` stages (see the module docstring).

    Args:
        box_roi_pool, mask_roi_pool: RoI poolers shared by all stages (``MultiScaleRoIAlign``).
        box_heads, box_predictors, mask_heads, mask_predictors: one module per stage; the box predictors must be
            class-agnostic (4 deltas, :class:`ClassAgnosticPredictor`). Stage 1's modules are registered under
            torchvision's names (``box_head`` ...), the others under ``later_box_heads`` ... (``nn.ModuleList``).
        stage_ious: IoU threshold ``u_t`` per stage (foreground and background threshold alike).
        stage_weights: loss weight per stage; the returned losses are already multiplied by it.
        bbox_reg_weights: ``BoxCoder`` weights per stage.
        batch_size_per_image, positive_fraction: RoI sampling of every stage (512, 0.25).
        score_thresh, nms_thresh, detections_per_img: inference post-processing (torchvision's).
        box_loss_beta: smooth-L1 ``beta`` of the box loss (1.0 as mmdet's cascade configs; 0 gives L1).
        score_merge: ``"logit"`` (mmdet, default) averages the stages' logits, ``"prob"`` their softmax probabilities.
    """

    def __init__(
        self,
        box_roi_pool: nn.Module,
        box_heads: Sequence[nn.Module],
        box_predictors: Sequence[nn.Module],
        mask_roi_pool: nn.Module,
        mask_heads: Sequence[nn.Module],
        mask_predictors: Sequence[nn.Module],
        stage_ious: Sequence[float] = DEFAULT_STAGE_IOUS,
        stage_weights: Sequence[float] = DEFAULT_STAGE_WEIGHTS,
        bbox_reg_weights: Sequence[Sequence[float]] = DEFAULT_BBOX_REG_WEIGHTS,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        box_loss_beta: float = 1.0,
        score_merge: ScoreMerge = "logit",
    ):
        num_stages = check_stage_config(stage_ious, stage_weights, bbox_reg_weights)
        modules = {"box_heads": box_heads, "box_predictors": box_predictors}
        modules.update(mask_heads=mask_heads, mask_predictors=mask_predictors)
        counts = {name: len(m) for name, m in modules.items()}
        if any(c != num_stages for c in counts.values()):
            raise ConfigError(f"cascade: {num_stages} stages need one module of each kind per stage, got {counts}")
        if mask_roi_pool is None:
            raise ConfigError("cascade: Cascade Mask R-CNN needs a mask_roi_pool")
        if score_merge not in ("prob", "logit"):
            raise ConfigError(f"cascade: score_merge must be 'prob' or 'logit', got {score_merge!r}")
        if box_loss_beta < 0:
            raise ConfigError(f"cascade: box_loss_beta must be >= 0, got {box_loss_beta}")
        super().__init__(
            box_roi_pool,
            box_heads[0],
            box_predictors[0],
            fg_iou_thresh=float(stage_ious[0]),
            bg_iou_thresh=float(stage_ious[0]),
            batch_size_per_image=batch_size_per_image,
            positive_fraction=positive_fraction,
            bbox_reg_weights=tuple(float(v) for v in bbox_reg_weights[0]),
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            mask_roi_pool=mask_roi_pool,
            mask_head=mask_heads[0],
            mask_predictor=mask_predictors[0],
        )
        self.later_box_heads = nn.ModuleList(box_heads[1:])
        self.later_box_predictors = nn.ModuleList(box_predictors[1:])
        self.later_mask_heads = nn.ModuleList(mask_heads[1:])
        self.later_mask_predictors = nn.ModuleList(mask_predictors[1:])
        self.num_stages = num_stages
        self.stage_ious = tuple(float(u) for u in stage_ious)
        self.stage_weights = tuple(float(w) for w in stage_weights)
        self.bbox_reg_weights = tuple(tuple(float(v) for v in w) for w in bbox_reg_weights)
        # stage 1 uses the base class's matcher and coder (same thresholds / weights)
        self.proposal_matchers = [self.proposal_matcher] + [
            det_utils.Matcher(u, u, allow_low_quality_matches=False) for u in self.stage_ious[1:]
        ]
        self.box_coders = [self.box_coder] + [det_utils.BoxCoder(w) for w in self.bbox_reg_weights[1:]]
        self.box_loss_beta = float(box_loss_beta)
        self.score_merge = score_merge

    # ---- stage access ----------------------------------------------------------------------------------------------
    def stage(self, t: int) -> CascadeStage:
        """Modules and settings of stage ``t`` (0-based)."""
        if not 0 <= t < self.num_stages:
            raise IndexError(f"stage {t} out of range for {self.num_stages} stages")
        if t == 0:
            heads = (self.box_head, self.box_predictor, self.mask_head, self.mask_predictor)
        else:
            heads = (
                self.later_box_heads[t - 1],
                self.later_box_predictors[t - 1],
                self.later_mask_heads[t - 1],
                self.later_mask_predictors[t - 1],
            )
        return CascadeStage(*heads, self.proposal_matchers[t], self.box_coders[t], self.stage_weights[t])

    # ---- training samples ------------------------------------------------------------------------------------------
    def assign_stage_targets(
        self, t: int, proposals: list[torch.Tensor], gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(matched gt index, label) per proposal with stage ``t``'s matcher: label 0 below ``u_t`` (background)."""
        matcher = self.proposal_matchers[t]
        matched_idxs, labels = [], []
        for props, boxes, classes in zip(proposals, gt_boxes, gt_labels, strict=True):
            if boxes.numel() == 0:
                zeros = torch.zeros(props.shape[0], dtype=torch.int64, device=props.device)
                matched_idxs.append(zeros)
                labels.append(zeros.clone())
                continue
            matched = matcher(box_ops.box_iou(boxes, props))
            clamped = matched.clamp(min=0)
            image_labels = classes[clamped].to(torch.int64)
            image_labels[matched == matcher.BELOW_LOW_THRESHOLD] = 0
            image_labels[matched == matcher.BETWEEN_THRESHOLDS] = -1  # unused with fg == bg threshold
            matched_idxs.append(clamped)
            labels.append(image_labels)
        return matched_idxs, labels

    def select_stage_samples(
        self, t: int, proposals: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Stage ``t``'s training RoIs: append the ground truth to ``proposals``, match at ``u_t``, sample
        ``batch_size_per_image`` RoIs (``positive_fraction`` positives) and encode the regression targets with the
        stage's coder. Returns ``(rois, matched_idxs, labels, regression_targets, is_gt)`` per image, ``is_gt``
        marking the sampled rows that are appended ground-truth boxes."""
        dtype = proposals[0].dtype
        gt_boxes = [tgt["boxes"].to(dtype) for tgt in targets]
        gt_labels = [tgt["labels"] for tgt in targets]
        num_props = [p.shape[0] for p in proposals]
        with_gt = self.add_gt_proposals(proposals, gt_boxes)
        matched_idxs, labels = self.assign_stage_targets(t, with_gt, gt_boxes, gt_labels)
        sampled = self.subsample(labels)
        rois, is_gt, matched_boxes = [], [], []
        for i, inds in enumerate(sampled):
            rois.append(with_gt[i][inds])
            labels[i] = labels[i][inds]
            matched_idxs[i] = matched_idxs[i][inds]
            is_gt.append(inds >= num_props[i])
            boxes = gt_boxes[i] if gt_boxes[i].numel() else gt_boxes[i].new_zeros((1, 4))
            matched_boxes.append(boxes[matched_idxs[i]])
        regression_targets = self.box_coders[t].encode(matched_boxes, rois)
        return rois, matched_idxs, labels, regression_targets, is_gt

    # ---- stage computations ----------------------------------------------------------------------------------------
    def box_forward(
        self, t: int, features: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage ``t``'s ``(class logits [N, C], class-agnostic deltas [N, 4])`` for ``boxes``."""
        stage = self.stage(t)
        x = stage.box_head(self.box_roi_pool(features, boxes, image_shapes))
        logits, deltas = stage.box_predictor(x)
        if deltas.shape[-1] != 4:
            raise ConfigError(
                f"cascade stage {t + 1}: the box predictor must be class-agnostic (4 deltas per RoI), got "
                f"{deltas.shape[-1]}; use ClassAgnosticPredictor"
            )
        return logits, deltas

    def mask_logits(
        self, t: int, features: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        """Stage ``t``'s mask logits ``[N, C, M, M]`` for ``boxes``."""
        stage = self.stage(t)
        return stage.mask_predictor(stage.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))

    def box_loss(
        self,
        class_logits: torch.Tensor,
        box_regression: torch.Tensor,
        labels: list[torch.Tensor],
        regression_targets: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unweighted ``(cross-entropy, smooth-L1)`` of one stage: the box loss is summed over the positives and
        divided by the number of sampled RoIs (torchvision's ``fastrcnn_loss`` with class-agnostic deltas)."""
        labels_all = torch.cat(labels)
        targets_all = torch.cat(regression_targets)
        loss_cls = F.cross_entropy(class_logits, labels_all)
        pos = torch.where(labels_all > 0)[0]
        loss_box = F.smooth_l1_loss(
            box_regression[pos], targets_all[pos], beta=self.box_loss_beta, reduction="sum"
        ) / max(labels_all.numel(), 1)
        return loss_cls, loss_box

    def refine_boxes(
        self,
        t: int,
        boxes: list[torch.Tensor],
        box_regression: torch.Tensor,
        image_shapes: list[tuple[int, int]],
        keep: list[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """Stage ``t``'s regressed boxes: ``deltas`` (detached) decoded on ``boxes`` with the stage's coder, clipped
        to the image; ``keep`` (boolean per box) selects the rows passed on (the appended ground truth is dropped)."""
        counts = [b.shape[0] for b in boxes]
        decoded = self.box_coders[t].decode(box_regression.detach(), boxes).reshape(-1, 4).split(counts)
        refined = [box_ops.clip_boxes_to_image(b, shape) for b, shape in zip(decoded, image_shapes, strict=True)]
        if keep is not None:
            refined = [b[k] for b, k in zip(refined, keep, strict=True)]
        return refined

    # ---- forward ---------------------------------------------------------------------------------------------------
    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """Training: ``([], losses)`` with the stage-weighted ``loss_{classifier,box_reg,mask}_s{t}``. Inference:
        ``(detections, {})`` with ``boxes``, ``labels``, ``scores`` and ``masks`` ([N, 1, M, M] probabilities)."""
        if self.training:
            self.check_targets(targets)
            for tgt in targets:
                if not tgt["boxes"].is_floating_point():
                    raise TypeError(f"target boxes must be of float type, got {tgt['boxes'].dtype}")
                if tgt["labels"].dtype != torch.int64:
                    raise TypeError(f"target labels must be of int64 type, got {tgt['labels'].dtype}")
            return [], self.forward_train(features, proposals, image_shapes, targets)
        return self.forward_test(features, proposals, image_shapes), {}

    def forward_train(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        gt_masks = [tgt["masks"] for tgt in targets]
        gt_labels = [tgt["labels"] for tgt in targets]
        for t in range(self.num_stages):
            rois, matched_idxs, labels, regression_targets, is_gt = self.select_stage_samples(t, proposals, targets)
            logits, deltas = self.box_forward(t, features, rois, image_shapes)
            loss_cls, loss_box = self.box_loss(logits, deltas, labels, regression_targets)
            pos = [torch.where(lab > 0)[0] for lab in labels]
            pos_rois = [r[p] for r, p in zip(rois, pos, strict=True)]
            pos_matched = [m[p] for m, p in zip(matched_idxs, pos, strict=True)]
            mask_logits = self.mask_logits(t, features, pos_rois, image_shapes)
            loss_mask = maskrcnn_loss(mask_logits, pos_rois, gt_masks, gt_labels, pos_matched)
            weight = self.stage_weights[t]
            losses[f"loss_classifier_s{t + 1}"] = weight * loss_cls
            losses[f"loss_box_reg_s{t + 1}"] = weight * loss_box
            losses[f"loss_mask_s{t + 1}"] = weight * loss_mask
            if t + 1 < self.num_stages:
                keep = [~g for g in is_gt]
                proposals = self.refine_boxes(t, rois, deltas, image_shapes, keep=keep)
        return losses

    def cascade_boxes(
        self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Inference through all stages: ``(final boxes per image, merged class scores [N, C])``; stage ``t`` scores
        and regresses the boxes stage ``t - 1`` regressed, the final boxes are the last stage's regression."""
        boxes = proposals
        stage_logits = []
        for t in range(self.num_stages):
            logits, deltas = self.box_forward(t, features, boxes, image_shapes)
            stage_logits.append(logits)
            boxes = self.refine_boxes(t, boxes, deltas, image_shapes)
        if self.score_merge == "logit":
            scores = F.softmax(torch.stack(stage_logits).mean(dim=0), dim=-1)
        else:
            scores = torch.stack([F.softmax(lg, dim=-1) for lg in stage_logits]).mean(dim=0)
        return boxes, scores

    def postprocess_cascade(
        self, boxes: list[torch.Tensor], scores: torch.Tensor, image_shapes: list[tuple[int, int]]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """torchvision's ``postprocess_detections`` for class-agnostic boxes: one candidate per (box, foreground
        class) with the box shared by all classes, score threshold, small-box removal, per-class NMS, top-k."""
        num_classes = scores.shape[-1]
        all_boxes, all_scores, all_labels = [], [], []
        for image_boxes, image_scores in zip(boxes, scores.split([b.shape[0] for b in boxes]), strict=True):
            n = image_boxes.shape[0]
            labels = torch.arange(1, num_classes, device=scores.device).expand(n, num_classes - 1).reshape(-1)
            cand_boxes = image_boxes[:, None].expand(n, num_classes - 1, 4).reshape(-1, 4)
            cand_scores = image_scores[:, 1:].reshape(-1)
            inds = torch.where(cand_scores > self.score_thresh)[0]
            cand_boxes, cand_scores, labels = cand_boxes[inds], cand_scores[inds], labels[inds]
            keep = box_ops.remove_small_boxes(cand_boxes, min_size=1e-2)
            cand_boxes, cand_scores, labels = cand_boxes[keep], cand_scores[keep], labels[keep]
            keep = box_ops.batched_nms(cand_boxes, cand_scores, labels, self.nms_thresh)[: self.detections_per_img]
            all_boxes.append(cand_boxes[keep])
            all_scores.append(cand_scores[keep])
            all_labels.append(labels[keep])
        return all_boxes, all_scores, all_labels

    def merged_mask_probs(
        self,
        features: dict[str, torch.Tensor],
        boxes: list[torch.Tensor],
        labels: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> list[torch.Tensor]:
        """Mean over the stages of the sigmoid mask probabilities of each detection's class: ``[N, 1, M, M]`` per
        image (mmdet ``merge_aug_masks``); the mask RoI features are pooled once."""
        pooled = self.mask_roi_pool(features, boxes, image_shapes)
        probs = None
        for t in range(self.num_stages):
            stage = self.stage(t)
            p = stage.mask_predictor(stage.mask_head(pooled)).sigmoid()
            probs = p if probs is None else probs + p
        probs = probs / self.num_stages
        labels_all = torch.cat(labels)
        index = torch.arange(labels_all.shape[0], device=labels_all.device)
        return list(probs[index, labels_all][:, None].split([b.shape[0] for b in boxes]))

    def forward_test(
        self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, torch.Tensor]]:
        boxes, scores = self.cascade_boxes(features, proposals, image_shapes)
        det_boxes, det_scores, det_labels = self.postprocess_cascade(boxes, scores, image_shapes)
        masks = self.merged_mask_probs(features, det_boxes, det_labels, image_shapes)
        return [
            {"boxes": b, "labels": lab, "scores": s, "masks": m}
            for b, lab, s, m in zip(det_boxes, det_labels, det_scores, masks, strict=True)
        ]


# ---- building from a Mask R-CNN ----------------------------------------------------------------------------------
_KAIMING_INIT = (FastRCNNConvFCHead, MaskRCNNHeads, MaskRCNNPredictor)


def reinitialise(module: nn.Module) -> nn.Module:
    """Fresh weights for a copied stage: ``reset_parameters()`` on every submodule that has it, then torchvision's
    constructor init (Kaiming-normal fan-out, zero bias) for the convolutions of its 4conv box head and mask heads."""
    for m in module.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    for m in module.modules():
        if isinstance(m, _KAIMING_INIT):
            for conv in m.modules():
                if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)):
                    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                    if conv.bias is not None:
                        nn.init.zeros_(conv.bias)
    return module


def make_cascade(
    detector: MaskRCNN,
    stage_ious: Sequence[float] = DEFAULT_STAGE_IOUS,
    stage_weights: Sequence[float] = DEFAULT_STAGE_WEIGHTS,
    bbox_reg_weights: Sequence[Sequence[float]] = DEFAULT_BBOX_REG_WEIGHTS,
    box_loss_beta: float = 1.0,
    score_merge: ScoreMerge = "logit",
) -> MaskRCNN:
    """Replace ``detector.roi_heads`` (torchvision ``RoIHeads`` with a mask branch) by :class:`CascadeRoIHeads` and
    return the detector.

    Stage 1 keeps the detector's box head, mask head and mask predictor; stages 2 ... T are deep copies of them
    re-initialised by :func:`reinitialise` (box and mask head copied together, so a head shared between them, as
    the C4 res5, stays shared within a stage). Every stage gets a new :class:`ClassAgnosticPredictor` sized from
    the old predictor's ``cls_score``. ``score_thresh``, ``nms_thresh``, ``detections_per_img``,
    ``batch_size_per_image`` and ``positive_fraction`` are kept from the old heads; the old stage-1 matcher and
    coder are replaced by ``stage_ious[0]`` and ``bbox_reg_weights[0]``.

    Raises:
        ConfigError: the per-stage lists differ in length (or are empty / invalid), the detector has no mask
            branch, its heads are already a cascade, or its box predictor has no ``cls_score`` Linear.
    """
    num_stages = check_stage_config(stage_ious, stage_weights, bbox_reg_weights)
    heads = detector.roi_heads
    if isinstance(heads, CascadeRoIHeads):
        raise ConfigError("make_cascade: the detector's roi_heads are already a CascadeRoIHeads")
    if not isinstance(heads, RoIHeads) or not heads.has_mask():
        raise ConfigError(
            "make_cascade needs a Mask R-CNN: the detector's roi_heads have no mask branch (mask_roi_pool, mask_head "
            "and mask_predictor are all required for Cascade Mask R-CNN)"
        )
    cls_score = getattr(heads.box_predictor, "cls_score", None)
    if not isinstance(cls_score, nn.Linear):
        raise ConfigError(
            f"make_cascade: cannot size the class-agnostic predictors from {type(heads.box_predictor).__name__} "
            "(expected a cls_score Linear as in torchvision's FastRCNNPredictor)"
        )
    box_heads, mask_heads, mask_predictors = [heads.box_head], [heads.mask_head], [heads.mask_predictor]
    for _ in range(1, num_stages):
        copied = copy.deepcopy(nn.ModuleList([heads.box_head, heads.mask_head, heads.mask_predictor]))
        reinitialise(copied)
        box_heads.append(copied[0])
        mask_heads.append(copied[1])
        mask_predictors.append(copied[2])
    predictors = [ClassAgnosticPredictor(cls_score.in_features, cls_score.out_features) for _ in range(num_stages)]
    cascade = CascadeRoIHeads(
        heads.box_roi_pool,
        box_heads,
        predictors,
        heads.mask_roi_pool,
        mask_heads,
        mask_predictors,
        stage_ious=stage_ious,
        stage_weights=stage_weights,
        bbox_reg_weights=bbox_reg_weights,
        batch_size_per_image=heads.fg_bg_sampler.batch_size_per_image,
        positive_fraction=heads.fg_bg_sampler.positive_fraction,
        score_thresh=heads.score_thresh,
        nms_thresh=heads.nms_thresh,
        detections_per_img=heads.detections_per_img,
        box_loss_beta=box_loss_beta,
        score_merge=score_merge,
    )
    detector.roi_heads = cascade.to(cls_score.weight.device)
    return detector
