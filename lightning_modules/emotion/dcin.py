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

* Total: ``L = L_MIL^v + L_MIL^t + L_MIL^fused + lambda L_CON`` with the fused logits the mean of the two streams'.
  Inference: ``p = sigmoid(fused logits)`` per unit and class; subtitle-only runs use the subtitle stream alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


def topk_mean(logits: Tensor, mask: Tensor, ratio: float) -> Tensor:
    """Clip-level logits ``[B, C]``: mean of the ``k = ceil(U_b / ratio)`` largest unit logits of each clip."""
    low = torch.finfo(logits.dtype).min
    ordered = logits.masked_fill(~mask.unsqueeze(-1), low).sort(1, descending=True).values  # [B, U, C]
    k = (mask.sum(1).float() / ratio).ceil().clamp(min=1)  # [B]
    take = (torch.arange(logits.shape[1], device=logits.device)[None, :] < k[:, None]).to(logits.dtype)  # [B, U]
    return (ordered * take.unsqueeze(-1)).sum(1) / k.unsqueeze(-1)


def mil_loss(logits: Tensor, mask: Tensor, labels: Tensor, ratio: float) -> Tensor:
    """Multiple-instance BCE of the top-k mean clip logits against clip-level labels."""
    return F.binary_cross_entropy_with_logits(topk_mean(logits, mask, ratio), labels.to(logits.dtype))


def consensus_loss(video_logits: Tensor, text_logits: Tensor, mask: Tensor) -> Tensor:
    """Mutual agreement of the two streams' unit probabilities, each towards the other's detached values."""
    pv, pt = torch.sigmoid(video_logits), torch.sigmoid(text_logits)
    sq = (pv - pt.detach()).pow(2) + (pt - pv.detach()).pow(2)  # [B, U, C]
    keep = mask.unsqueeze(-1).to(sq.dtype)
    return (sq * keep).sum() / (keep.sum() * sq.shape[-1]).clamp(min=1)


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
