"""TEL as a LightningModule: subtitle and video streams, weak supervision, and both localization metrics."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from lightning_modules.base import SuiteModule
from lightning_modules.emotion.dcin import DCIN
from lightning_modules.emotion.losses import tel_loss, topk_mean
from lightning_modules.emotion.metrics import InstanceMAP, SegmentMAP
from lightning_modules.emotion.proposals import ground_truth, proposals
from lightning_modules.optim import OptimConfig
from suite_base.errors import ConfigError
from suite_base.tel import EMOTIONS

log = logging.getLogger(__name__)

UNIT_SCORES = ("unit", "product", "clip")


def calibrated_scores(probs: Tensor, clip: Tensor, rule: str) -> Tensor:
    """Unit scores ``[B, U, C]`` that the metrics rank, from unit probabilities ``probs [B, U, C]`` and the clip-level
    probabilities ``clip [B, C]`` (top-k pooled): ``p_clip^(1 - a) * p_unit^a`` with ``a`` = 1 (``unit``: the unit's
    own probability), 1/2 (``product``: ranks as ``p_clip * p_unit``, the score of the unit's one-unit proposal) or 0
    (``clip``: every unit gets its clip's probability). Chosen on held-out training movies (docs/tel.md)."""
    if rule == "unit":
        return probs
    if rule == "product":
        return (probs * clip.unsqueeze(1)).sqrt()
    if rule == "clip":
        return clip.unsqueeze(1).expand_as(probs)
    raise ConfigError(f"model.init_args.unit_scores is {rule!r}; choose one of {', '.join(UNIT_SCORES)}")


class LocalizationEvaluation:
    """Validation and test of per-subtitle emotion probabilities: clip-level mAP (the top-k pooled probabilities
    against the clip labels; the only metric a split with clip-level labels supports), and on splits with
    subtitle-level labels segment-level mAP, instance-level mAP at tIoU 0.1:0.1:0.5 (proposals cut at
    ``cfg["thresholds"]``, NMS at ``cfg["nms"]``) and timeline pictures. The host defines
    ``unit_probs(batch) -> [B, U, C]``, ``cfg`` (with ``ratio``, the top-k pooling ratio) and ``class_names``."""

    def _make_metrics(self, num_classes: int) -> None:
        self.val_clip, self.test_clip = SegmentMAP(num_classes), SegmentMAP(num_classes)
        self.val_segment, self.val_instance = SegmentMAP(num_classes), InstanceMAP(num_classes)
        self.test_segment, self.test_instance = SegmentMAP(num_classes), InstanceMAP(num_classes)

    def _evaluate(self, batch: dict, stage: str) -> Tensor:
        if stage == "test" and "unit_labels" not in batch:
            raise ConfigError("the test split needs subtitle-level labels: point data.init_args.test_json at an "
                              "annotation in the TEL test format")  # fmt: skip
        mask = batch["unit_mask"]
        raw = self.unit_probs(batch)
        clip = topk_mean(raw, mask, self.cfg["ratio"])
        probs = calibrated_scores(raw, clip, self.cfg.get("unit_scores", "unit")) * mask.unsqueeze(-1).to(raw.dtype)
        getattr(self, f"{stage}_clip").update(clip, batch["labels"].long())
        if "unit_labels" not in batch:  # a clip-level validation split (held-out training movies)
            return probs
        getattr(self, f"{stage}_segment").update(probs[mask], batch["unit_labels"][mask].long())
        ids = batch["index"]
        pred = proposals(probs, batch["starts"], batch["ends"], mask, ids, self.cfg["thresholds"], self.cfg["nms"],
                         self.cfg.get("relative", True), clip if self.cfg.get("clip_score") else None,
                         self.cfg.get("whole_clip", False))  # fmt: skip
        gt = ground_truth(batch["unit_labels"], batch["starts"], batch["ends"], mask, ids)
        getattr(self, f"{stage}_instance").update(pred, gt)
        return probs

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        probs = self._evaluate(batch, "val")
        if (batch_idx == 0 and self.cfg["pictures"] and "unit_labels" in batch and self._trainer is not None
                and not self.trainer.sanity_checking):  # fmt: skip
            self.draw_timelines(batch, probs, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        probs = self._evaluate(batch, "test")
        if batch_idx == 0 and self.cfg["pictures"] and self._trainer is not None:
            self.draw_timelines(batch, probs, "test")

    def _log_metrics(self, stage: str) -> None:
        clip, segment, instance = (getattr(self, f"{stage}_{k}") for k in ("clip", "segment", "instance"))
        values = {f"{stage}/clip_map": clip.compute()} if clip.update_count else {}
        if segment.update_count:
            values[f"{stage}/segment_map"] = segment.compute()
            for key, value in instance.compute().items():
                values[f"{stage}/instance_{key.replace('@', '_')}"] = value
        self.log_dict(values, sync_dist=False)
        for metric in (clip, segment, instance):
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    # ---- pictures --------------------------------------------------------------------------------------------------
    def draw_timelines(self, batch: dict, probs: Tensor, stage: str) -> None:
        """Log (TensorBoard ``<stage>/timelines``) and save (``<run>/pictures/``) a timeline per clip: subtitles along
        time, the annotated and the predicted instances of each class that occurs in either."""
        from lightning_modules.emotion.timeline import draw_timeline

        count = min(self.cfg["pictures"], probs.shape[0])
        panels = []
        for b in range(count):
            n = int(batch["unit_mask"][b].sum())
            panels.append(draw_timeline(
                batch["starts"][b, :n].cpu(), batch["ends"][b, :n].cpu(), batch["texts"][b][:n],
                batch["unit_labels"][b, :n].cpu(), probs[b, :n].cpu(), self.class_names, 0.5,
            ))  # fmt: skip
        height, width = max(x.shape[1] for x in panels), max(x.shape[2] for x in panels)
        images = torch.ones(len(panels), 3, height, width)  # white padding to the tallest panel
        for k, panel in enumerate(panels):
            images[k, :, : panel.shape[1], : panel.shape[2]] = panel
        self.log_image_grid(f"{stage}/timelines", images, nrow=1)


# checkpoints written before the network was injected (issue 26) kept its parts at the module's top level
OLD_KEY_PREFIXES = ("subtitle_encoder.", "text_stream.", "video_stream.", "backbone.")


class TemporalEmotionLocalizer(LocalizationEvaluation, SuiteModule):
    """TEL (arXiv 2208.01954): per-subtitle emotion scores from video and subtitles, trained with clip-level labels.

    Args:
        net: the dilated context integrated network (:class:`lightning_modules.emotion.dcin.DCIN`: subtitle encoder,
            streams, frame backbone); its ``num_classes`` and ``modalities`` are the run's.
        topk_ratio: the MIL pooling averages the top ``ceil(U / topk_ratio)`` units.
        consensus_weight: ``lambda`` of the cross-modal consensus term (0: off).
        thresholds: probability thresholds that cut proposals.
        relative_thresholds: apply them to each clip's class sequence divided by its maximum (WTAL convention).
        clip_score: multiply each proposal's score by its clip's top-k pooled probability of the class.
        whole_clip: also propose each clip's whole span for every class, scored by that clip-level probability
            (needs ``clip_score``).
        unit_scores: what the metrics, proposals and pictures rank per unit: ``unit`` (its probability),
            ``product`` (``sqrt(p_clip * p_unit)``) or ``clip`` (the clip's top-k pooled probability on every unit);
            :func:`calibrated_scores`.
        nms_iou: tIoU above which a lower-scored proposal of the same clip and class is suppressed.
        pictures: test/validation clips drawn as timelines (0: none).
        monitor: the validation metric that picks the best checkpoint: ``val/segment_map`` or ``val/instance_map``
            (a validation split with subtitle-level labels), or ``val/clip_map`` (clip-level labels suffice: the
            official configs hold out training movies, ``data.init_args.val_movies``).
        optim: optimiser and schedule.
    """

    monitor_mode = "max"
    MONITORS = ("val/segment_map", "val/instance_map", "val/clip_map")

    def __init__(
        self,
        net: DCIN,
        *,
        topk_ratio: float = 4.0,
        consensus_weight: float = 1.0,
        thresholds: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
        relative_thresholds: bool = True,
        clip_score: bool = True,
        whole_clip: bool = False,
        unit_scores: Literal["unit", "product", "clip"] = "unit",
        nms_iou: float = 0.6,
        pictures: int = 4,
        monitor: str = "val/segment_map",
        optim: OptimConfig | None = None,
    ) -> None:
        super().__init__(optim)
        self.save_hyperparameters_with_networks()
        if monitor not in self.MONITORS:
            raise ConfigError(f"model.init_args.monitor is {monitor!r}; choose one of {', '.join(self.MONITORS)}")
        self.monitor = monitor
        if whole_clip and not clip_score:
            raise ConfigError("model.init_args.whole_clip scores whole-clip proposals by the clip-level probability: "
                              "set clip_score: true")  # fmt: skip
        if unit_scores not in UNIT_SCORES:
            raise ConfigError(f"model.init_args.unit_scores is {unit_scores!r}; choose one of {', '.join(UNIT_SCORES)}")
        self.net = net
        self.num_classes = net.num_classes
        self.class_names = EMOTIONS[: net.num_classes]
        self.cfg = dict(ratio=topk_ratio, lam=consensus_weight, thresholds=tuple(thresholds), nms=nms_iou,
                        pictures=pictures, relative=relative_thresholds, clip_score=clip_score,
                        whole_clip=whole_clip, unit_scores=unit_scores)  # fmt: skip
        self._make_metrics(net.num_classes)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Read a checkpoint written before the network was injected: its ``subtitle_encoder.``, ``text_stream.``,
        ``video_stream.`` and ``backbone.`` weights are the network's (``net.`` in front)."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith(OLD_KEY_PREFIXES)]:
            state[f"net.{key}"] = state.pop(key)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """Unit logits per stream and fused: ``{"text", "video", "fused"}`` (each ``[B, U, C]``, present streams)."""
        return self.net(batch)

    # ---- steps -----------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        mask = batch["unit_mask"]
        terms = tel_loss(self(batch), mask, batch["labels"], ratio=self.cfg["ratio"],
                         consensus_weight=self.cfg["lam"])  # fmt: skip
        loss = terms.pop("loss")
        B = mask.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=B)
        return loss

    def unit_probs(self, batch: dict) -> Tensor:
        """``[B, U, C]`` emotion probabilities of each subtitle unit (the fused streams)."""
        return torch.sigmoid(self(batch)["fused"].float())
