"""TEL's dilated context integrated network with cross-modal consensus (Li et al., ACM MM 2022, arXiv 2208.01954).

The paper's text beyond the abstract was not available and no code was released; the structure follows the abstract
and the choices are ours (docs/tel.md lists them):

* Units: the subtitle segments of a clip (the test annotation's granularity). Subtitle unit ``u`` is embedded by a
  transformers sentence encoder (mean-pooled token states; frozen by default, embeddings cached by text); its video
  feature is the mean of the frame features whose time falls inside the unit (the nearest frame for units shorter
  than a frame step).
* Per modality ``m`` (video, subtitles) a stream: ``x = LN(W_m f_m)`` then

  - coarse stream (multi-granularity temporal context): a stack of residual dilated temporal convolutions with
    rates ``r_1 < r_2 < ...`` (kernel 3); the output after rate ``r_s`` is context ``c_s`` of granularity ``s``;
  - fine stream: masked self-attention over the units (fine-grained segment dependencies, SDPA) gives ``f``; each
    unit then attends over its own contexts across granularities, ``a_us = softmax_s(<W_q f_u, W_k c_us> / sqrt d)``,
    and integrates them adaptively through a gate, ``h_u = f_u + g_u * W_o sum_s a_us c_us`` with
    ``g_u = sigmoid(W_g [f_u; sum_s a_us c_us])``, followed by a feed-forward block;
  - per-unit class logits ``s_m [U, C]``.

* Weak supervision (clip-level labels ``y [C]``): per stream, a multiple-instance loss on the top-k mean of the unit
  logits (``k = ceil(U / topk_ratio)``), binary cross-entropy against ``y``::

      L_MIL^m = BCE( mean_topk_u s_m[u, c], y_c )

* Cross-modal consensus (our reading of the abstract, in the form of CO2-Net's mutual learning for weakly supervised
  localization, Hong et al. ACM MM 2021): each stream's unit-level evidence is pulled towards the other's, with the
  target side detached so that neither collapses onto the other::

      L_CON = mean_{u, c} [ (p_v[u, c] - sg(p_t[u, c]))^2 + (p_t[u, c] - sg(p_v[u, c]))^2 ],   p = sigmoid(s)

* The losses are pure functions in :mod:`lightning_modules.emotion.losses`.
* Total: ``L = L_MIL^v + L_MIL^t + L_MIL^fused + lambda L_CON`` with the fused logits the mean of the two streams'.
  Inference: ``p = sigmoid(fused logits)`` per unit and class; subtitle-only runs use the subtitle stream alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.emotion.text import SubtitleEncoder
from suite_base.errors import ConfigError


class DilatedContext(nn.Module):
    """Coarse stream: residual dilated temporal convolutions; returns the context after each rate ``[B, S, U, D]``."""

    def __init__(self, dim: int, rates: Sequence[int] = (1, 2, 4, 8), dropout: float = 0.1) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, 3, padding=r, dilation=r) for r in rates)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in rates)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        keep = mask.unsqueeze(-1).to(x.dtype)
        h, contexts = x * keep, []
        for conv, norm in zip(self.convs, self.norms, strict=True):
            update = conv(norm(h).transpose(1, 2)).transpose(1, 2)
            h = (h + self.drop(F.gelu(update))) * keep  # padded units stay zero: no context leaks from them
            contexts.append(h)
        return torch.stack(contexts, 1)


class ContextIntegration(nn.Module):
    """Fine stream: masked self-attention over units, then gated attention of each unit over its contexts."""

    def __init__(self, dim: int, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.norm1, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.q, self.k, self.o = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.gate = nn.Linear(2 * dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)
        self.last_scale_weights: Tensor | None = None  # [B, U, S] of the last call, for inspection

    def forward(self, x: Tensor, contexts: Tensor, mask: Tensor) -> Tensor:
        B, U, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, U, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = mask[:, None, None, :]  # keys: real units only
        fine = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=0.0)
        f = x + self.drop(self.proj(fine.transpose(1, 2).reshape(B, U, D)))
        ctx = contexts.permute(0, 2, 1, 3)  # [B, U, S, D]
        logits = torch.einsum("bud,busd->bus", self.q(f), self.k(ctx)) / math.sqrt(D)
        weights = logits.softmax(-1)
        self.last_scale_weights = weights.detach()
        pooled = torch.einsum("bus,busd->bud", weights, ctx)
        gate = torch.sigmoid(self.gate(torch.cat([f, pooled], -1)))
        h = f + gate * self.o(pooled)
        h = h + self.drop(self.ffn(self.norm2(h)))
        return h * mask.unsqueeze(-1).to(h.dtype)


class Stream(nn.Module):
    """One modality: projection, coarse and fine streams, per-unit class logits ``[B, U, C]``."""

    def __init__(self, in_dim: int, dim: int, num_classes: int, rates: Sequence[int], heads: int, dropout: float):
        super().__init__()
        self.inp = nn.Sequential(nn.Linear(in_dim, dim), nn.LayerNorm(dim), nn.Dropout(dropout))
        self.coarse = DilatedContext(dim, rates, dropout)
        self.fine = ContextIntegration(dim, heads, dropout)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, feats: Tensor, mask: Tensor) -> Tensor:
        x = self.inp(feats)
        return self.head(self.fine(x, self.coarse(x, mask), mask))


def pool_frames(features: Tensor, times: Tensor, frame_mask: Tensor, starts: Tensor, ends: Tensor,
                unit_mask: Tensor) -> Tensor:  # fmt: skip
    """Per-unit video features ``[B, U, D]``: mean of the frames inside each unit (the nearest frame if none is).

    ``features [B, T, D]`` at ``times [B, T]`` (valid where ``frame_mask``); units ``[starts, ends)`` ``[B, U]``. A
    clip without frames (subtitle-only) gets zeros.
    """
    t = times.unsqueeze(1)  # [B, 1, T]
    inside = (t >= starts.unsqueeze(-1)) & (t < ends.unsqueeze(-1)) & frame_mask.unsqueeze(1)  # [B, U, T]
    centre = (starts + ends).unsqueeze(-1) / 2
    distance = (t - centre).abs().masked_fill(~frame_mask.unsqueeze(1), float("inf"))
    nearest = F.one_hot(distance.argmin(-1), times.shape[1]).bool() & frame_mask.unsqueeze(1)
    weights = torch.where(inside.any(-1, keepdim=True), inside, nearest).to(features.dtype)
    weights = weights * unit_mask.unsqueeze(-1).to(features.dtype)
    return weights @ features / weights.sum(-1, keepdim=True).clamp(min=1)


class DCIN(nn.Module):
    """The dilated context integrated network (module docstring): the subtitle encoder and one :class:`Stream` per
    modality, with the frozen frame backbone where the data decodes frames. ``forward(batch)`` returns the unit
    logits of each present stream and their mean, ``{"text", "video", "fused"}`` (each ``[B, U, C]``).

    Args:
        num_classes: emotion classes (18 for TEL; the toy uses the first few).
        modalities: ``both`` (video + subtitles), ``subtitles`` (subtitle-only: the public splits ship no video) or
            ``video``.
        text_encoder: the subtitle encoder (:class:`SubtitleEncoder`); needed unless ``modalities`` is ``video``.
        visual_dim: width of the frame features (``visual: features`` data). Set together with ``visual_backbone``,
            the network reads feature shards and does not build the backbone: ``visual_backbone`` and
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
    """

    def __init__(
        self,
        num_classes: int = 18,
        modalities: Literal["both", "subtitles", "video"] = "both",
        text_encoder: SubtitleEncoder | None = None,
        visual_dim: int | None = None,
        visual_backbone: str | None = None,
        visual_backbone_kwargs: dict | None = None,
        visual_pretrained: str | None = None,
        dim: int = 256,
        rates: Sequence[int] = (1, 2, 4, 8),
        heads: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if modalities not in ("both", "subtitles", "video"):
            raise ConfigError(f"model.init_args.net.init_args.modalities is {modalities!r}; choose both, subtitles "
                              "or video")  # fmt: skip
        self.num_classes, self.modalities = num_classes, modalities
        self.backbone = None
        if modalities != "video":
            if text_encoder is None:
                raise ConfigError(f"modalities {modalities} reads subtitles: give model.init_args.net.init_args."
                                  "text_encoder (lightning_modules.emotion.text.SubtitleEncoder)")  # fmt: skip
            self.subtitle_encoder = text_encoder
            self.text_stream = Stream(text_encoder.dim, dim, num_classes, rates, heads, dropout)
        if modalities != "subtitles":
            if visual_backbone is not None and visual_dim is None:  # decoded frames; with visual_dim: shards
                from lightning_modules.backbones import create_backbone

                self.backbone = create_backbone(visual_backbone, visual_pretrained, num_classes=0,
                                                weights_key="model.init_args.net.init_args.visual_pretrained",
                                                **(visual_backbone_kwargs or {}))  # fmt: skip
                self.backbone.requires_grad_(False).eval()
                visual_dim = self.backbone.num_features
            if visual_dim is None:
                raise ConfigError("the video stream needs model.init_args.net.init_args.visual_dim (the width of the "
                                  "feature shards) or model.init_args.net.init_args.visual_backbone (to embed decoded "
                                  "frames)")  # fmt: skip
            self.video_stream = Stream(visual_dim, dim, num_classes, rates, heads, dropout)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone is not None:
            self.backbone.eval()  # frozen: batch-norm statistics stay as loaded
        return self

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
                raise ConfigError("the data decodes frames (visual: frames) but the network has no visual_backbone "
                                  "(model.init_args.net.init_args.visual_backbone, visual_dim unset)")  # fmt: skip
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
            raise ConfigError(f"frame features are {frames_feat.shape[-1]}-d but model.init_args.net.init_args."
                              f"visual_dim is {expected}; set it to the width of the extracted features")  # fmt: skip
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
