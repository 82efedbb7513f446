"""The trivial TEL baseline: every subtitle unit scores each emotion by its frequency in the training clips.

``p[u, c] = (training clips labelled c) / (training clips)`` for every unit ``u`` of every clip. It has no
parameters and needs no training: ``python -m experiments test --config configs/tel/prior_official.yaml``. Its
segment-level AP per class is the class's share of positive units (all units tie), and its instances are whole
clips: a localization model must beat it to show that it uses the subtitles (or the video) at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from lightning_modules.base import SuiteModule
from lightning_modules.emotion.module import LocalizationEvaluation
from suite_base.errors import ConfigError
from suite_base.tel import EMOTIONS


class ClassFrequencyPrior(LocalizationEvaluation, SuiteModule):
    """Per-unit scores = training-set class frequencies (read from the data module's training annotations).

    Args:
        num_classes: emotion classes.
        thresholds: probability thresholds that cut proposals (as the localizer's).
        nms_iou: NMS tIoU of the proposals.
        pictures: test clips drawn as timelines.
    """

    monitor = "val/segment_map"
    monitor_mode = "max"

    def __init__(
        self,
        num_classes: int = 18,
        thresholds: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
        nms_iou: float = 0.6,
        pictures: int = 2,
    ) -> None:
        super().__init__(None)
        self.num_classes, self.class_names = num_classes, EMOTIONS[:num_classes]
        self.cfg = dict(thresholds=tuple(thresholds), nms=nms_iou, pictures=pictures, ratio=1.0)
        self.register_buffer("frequency", torch.full((num_classes,), float("nan")))
        self._make_metrics(num_classes)

    def fit_prior(self, labels: np.ndarray) -> None:
        """Set the frequencies from clip-level labels ``[N, C]``."""
        if labels.shape[1] != self.num_classes:
            raise ConfigError(f"the data has {labels.shape[1]} classes, the prior {self.num_classes}")
        self.frequency.copy_(torch.from_numpy(labels.mean(0)).float())

    def on_test_start(self) -> None:
        if torch.isnan(self.frequency).any():
            dm = self.trainer.datamodule
            self.fit_prior(np.stack([c.labels[: self.num_classes] for c in dm.clips("train")]))

    on_validation_start = on_test_start

    def unit_probs(self, batch: dict) -> Tensor:
        B, U = batch["unit_mask"].shape
        return self.frequency.to(batch["starts"].device).expand(B, U, -1).clone()
