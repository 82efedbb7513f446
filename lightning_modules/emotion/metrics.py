"""Temporal emotion localization metrics for the TEL test split, as DDP-safe torchmetrics ``Metric`` objects.

TEL (arXiv 2208.01954) released its test annotations at subtitle granularity but no evaluation code, and its metric
definition could not be read. Two metrics that the released data supports are computed; neither is presented as the
paper's number (docs/tel.md):

* :class:`SegmentMAP`: segment-level multi-label average precision over subtitle units: every unit of every test
  clip is one sample with 18 binary labels; AP per class over all units (torchmetrics' ranking AP), mean over the
  classes that have a positive.
* :class:`InstanceMAP`: instance-level mean average precision at temporal IoU thresholds (the weakly supervised
  temporal action localization convention, as in THUMOS/ActivityNet evaluation): ground-truth instances are maximal
  runs of consecutive annotated subtitles of one emotion, in seconds; predictions are scored ``(clip, class, start,
  end, score)`` intervals. Per class and threshold, predictions are sorted by score and each is a true positive when
  it overlaps a not yet matched ground truth of its clip and class with tIoU >= the threshold (the best such one);
  AP is the area under the precision-recall curve with precision made monotone (the VOC/ActivityNet interpolation).
  mAP is the mean over classes with ground truth; the reported number averages the thresholds 0.1:0.1:0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MultilabelAveragePrecision
from torchmetrics.utilities import dim_zero_cat

TIOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)


class SegmentMAP(MultilabelAveragePrecision):
    """Segment-level multi-label AP over subtitle units: ``update(scores [N, C], labels [N, C])``, macro average
    over the classes that have a positive among the gathered units (percent in :meth:`compute`)."""

    def __init__(self, num_classes: int = 18) -> None:
        super().__init__(num_labels=num_classes, average=None, thresholds=None)

    def compute(self) -> Tensor:
        per_class = super().compute()
        target = dim_zero_cat(self.target)
        present = (target == 1).any(0)
        return 100 * per_class[present].nanmean()


def temporal_iou(segments: Tensor, others: Tensor) -> Tensor:
    """tIoU matrix ``[N, M]`` of ``[N, 2]`` and ``[M, 2]`` (start, end) intervals (0 where the union is empty)."""
    start = torch.maximum(segments[:, None, 0], others[None, :, 0])
    end = torch.minimum(segments[:, None, 1], others[None, :, 1])
    inter = (end - start).clamp(min=0)
    union = (segments[:, None, 1] - segments[:, None, 0]) + (others[None, :, 1] - others[None, :, 0]) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def average_precision(hits: Tensor, num_positives: int) -> float:
    """AP of a ranked list of hits (bool, best first) against ``num_positives`` ground truths: the area under the
    precision-recall curve whose precision is made monotonically decreasing (VOC / ActivityNet interpolation)."""
    if num_positives == 0:
        return float("nan")
    if hits.numel() == 0:
        return 0.0
    tp = hits.double().cumsum(0)
    precision = tp / torch.arange(1, hits.numel() + 1, dtype=torch.float64)
    recall = tp / num_positives
    precision = torch.cat([torch.zeros(1, dtype=torch.float64), precision, torch.zeros(1, dtype=torch.float64)])
    recall = torch.cat([torch.zeros(1, dtype=torch.float64), recall, torch.ones(1, dtype=torch.float64)])
    precision = precision.flip(0).cummax(0).values.flip(0)  # monotone envelope
    steps = (recall[1:] != recall[:-1]).nonzero().squeeze(1)
    return float(((recall[steps + 1] - recall[steps]) * precision[steps + 1]).sum())


def match_class(pred: Tensor, gt: Tensor, threshold: float) -> Tensor:
    """True-positive flags of ``pred [N, 4]`` (clip, start, end, score; sorted by score, best first) against
    ``gt [M, 3]`` (clip, start, end) of one class: greedy, each ground truth matched at most once, to the unmatched
    one of the same clip with the highest tIoU >= ``threshold``."""
    hits = np.zeros(pred.shape[0], dtype=bool)
    if gt.shape[0] == 0 or pred.shape[0] == 0:
        return torch.from_numpy(hits)
    iou = temporal_iou(pred[:, 1:3].double(), gt[:, 1:3].double())
    iou = iou.masked_fill(pred[:, None, 0] != gt[None, :, 0], -1.0).numpy()  # other clips never match
    for k in range(pred.shape[0]):  # sequential by definition: each match removes a ground truth (numpy: fast)
        best = int(iou[k].argmax())
        if iou[k, best] >= threshold:
            hits[k] = True
            iou[:, best] = -1.0
    return torch.from_numpy(hits)


class InstanceMAP(Metric):
    """Instance-level mAP at tIoU thresholds (percent).

    ``update(predictions [N, 5], ground_truth [M, 4])``: rows ``(clip, class, start, end, score)`` and ``(clip,
    class, start, end)``, with ``clip`` a dataset-wide integer id. All rows are gathered over DDP ranks; ground-truth
    rows that arrive twice (a padded ``DistributedSampler``) are kept once, and so are predictions of a clip seen
    twice. :meth:`compute` returns ``{"map": mean over thresholds, "map@0.1": ..., ...}``.
    """

    full_state_update = False

    def __init__(self, num_classes: int = 18, thresholds: Sequence[float] = TIOU_THRESHOLDS) -> None:
        super().__init__()
        self.num_classes, self.thresholds = num_classes, tuple(thresholds)
        self.add_state("predictions", default=[], dist_reduce_fx="cat")
        self.add_state("ground_truth", default=[], dist_reduce_fx="cat")

    def update(self, predictions: Tensor, ground_truth: Tensor) -> None:
        if predictions.ndim != 2 or predictions.shape[1] != 5:
            raise ValueError(f"predictions must be [N, 5] (clip, class, start, end, score), got {predictions.shape}")
        if ground_truth.ndim != 2 or ground_truth.shape[1] != 4:
            raise ValueError(f"ground_truth must be [M, 4] (clip, class, start, end), got {ground_truth.shape}")
        self.predictions.append(predictions.detach().double())
        self.ground_truth.append(ground_truth.detach().double())

    def compute(self) -> dict[str, Tensor]:
        # a list of per-batch tensors on one process; after the DDP sync torchmetrics has concatenated it into one
        # tensor, whose truth value is ambiguous: test the length, which both have
        pred = dim_zero_cat(self.predictions).cpu() if len(self.predictions) else torch.zeros(0, 5, dtype=torch.float64)
        gt = dim_zero_cat(self.ground_truth).cpu() if len(self.ground_truth) else torch.zeros(0, 4, dtype=torch.float64)
        gt = torch.unique(gt, dim=0)
        pred = torch.unique(pred, dim=0)
        per_threshold = []
        for threshold in self.thresholds:
            aps = []
            for c in range(self.num_classes):
                g = gt[gt[:, 1] == c][:, [0, 2, 3]]
                if g.shape[0] == 0:
                    continue
                p = pred[pred[:, 1] == c][:, [0, 2, 3, 4]]
                p = p[p[:, 3].argsort(descending=True, stable=True)]
                aps.append(average_precision(match_class(p, g, threshold), g.shape[0]))
            per_threshold.append(100 * sum(aps) / len(aps) if aps else float("nan"))
        out = {f"map@{t:.1f}": torch.tensor(v) for t, v in zip(self.thresholds, per_threshold, strict=True)}
        out["map"] = torch.tensor(sum(per_threshold) / len(per_threshold))
        return out
