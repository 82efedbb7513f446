"""Text-guided editing metrics as torchmetrics ``Metric`` objects (DE-Net's evaluation code was not released).

* :class:`ManipulativePrecision`: Lightweight-GAN's (Li et al., NeurIPS 2020) manipulative precision
  ``MP = (1 - diff) x sim``, where ``diff`` is the mean L1 pixel difference between source and edited images (both in
  ``[0, 1]``, averaged over pixels, channels and images) and ``sim`` the mean cosine similarity between each edited
  image and its target text in a joint embedding space (DAMSM's in DE-Net's ``mp``, CLIP's in ``mp_c``). MP is
  computed from the two dataset means, as the definition reads; the per-pair product is not averaged instead.
  DE-Net also logs an ``rmp`` whose definition is unknown (docs/denet.md); it is not computed.
* :func:`fid_metric`: torchmetrics' ``FrechetInceptionDistance`` with a configurable feature extractor: ``inception``
  is torchmetrics' InceptionV3 pool3 (2048-d; needs ``torch-fidelity`` and its weights, on a cluster); any other name
  is a frozen timm backbone (pooled features; ``pretrained`` may name a local weights file), which runs offline.
  FID from a non-Inception extractor is not comparable with published FIDs and is labelled with its backbone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric


class ManipulativePrecision(Metric):
    """``update(source, edited, image_emb, text_emb)``; :meth:`compute` -> ``{"diff", "sim", "mp"}``.

    ``source``/``edited`` ``[B, 3, H, W]`` in ``[0, 1]``; ``image_emb`` ``[B, D]`` (of the edited images) and
    ``text_emb`` ``[B, D]`` (their target texts) in the same embedding space.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("diff_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sim_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, source: Tensor, edited: Tensor, image_emb: Tensor, text_emb: Tensor) -> None:
        if source.shape != edited.shape or source.ndim != 4:
            raise ValueError(f"source and edited must be [B, 3, H, W] of one shape, got {source.shape} and "
                             f"{edited.shape}")  # fmt: skip
        if image_emb.shape != text_emb.shape or image_emb.shape[0] != source.shape[0]:
            raise ValueError(f"one image and one text embedding per pair: {image_emb.shape} vs {text_emb.shape}")
        self.diff_sum += (edited.double() - source.double()).abs().mean(dim=(1, 2, 3)).sum()
        self.sim_sum += F.cosine_similarity(image_emb.double(), text_emb.double(), dim=-1).sum()
        self.count += source.shape[0]

    def compute(self) -> dict[str, Tensor]:
        diff, sim = self.diff_sum / self.count, self.sim_sum / self.count
        return {"diff": diff.float(), "sim": sim.float(), "mp": ((1 - diff) * sim).float()}


class FrozenFeatures(nn.Module):
    """A frozen timm backbone as an FID feature extractor: ``[B, 3, H, W]`` in ``[0, 1]`` -> pooled ``[B, D]``."""

    def __init__(self, name: str = "resnet18", pretrained: str | bool = False, input_size: int | None = None) -> None:
        super().__init__()
        from lightning_modules.backbones import create_timm_pretrained

        self.net = create_timm_pretrained(name, pretrained, num_classes=0).eval().requires_grad_(False)
        cfg = self.net.pretrained_cfg
        self.size = input_size or cfg.get("input_size", (3, 224, 224))[-1]
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1))
        self.num_features = self.net.num_features

    def train(self, mode: bool = True):
        return super().train(False)  # always frozen

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = images.float()
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return self.net((x - self.mean) / self.std)


def fid_metric(backbone: str = "inception", pretrained: str | bool = False, input_size: int | None = None):
    """FID on images in ``[0, 1]`` (``normalize=True``) with ``backbone``'s features (module docstring)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if backbone == "inception":
        return FrechetInceptionDistance(feature=2048, normalize=True)
    return FrechetInceptionDistance(feature=FrozenFeatures(backbone, pretrained, input_size), normalize=True)
