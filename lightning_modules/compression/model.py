"""Encoder -> factorised entropy bottleneck -> decoder, plus the weak-supervision head on the quantised latent."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.backbones import check_backbone_name
from lightning_modules.compression.entropy import FactorizedEntropyModel
from suite_base.errors import ConfigError


class GDN(nn.Module):
    """Generalised divisive normalisation (Ballé et al. 2016): ``x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)``;
    ``inverse`` multiplies instead (IGDN, the decoder's). ``beta`` and ``gamma`` are kept non-negative by squaring
    a bounded parameter."""

    def __init__(self, channels: int, inverse: bool = False, gamma_init: float = 0.1, eps: float = 1e-6) -> None:
        super().__init__()
        self.inverse = inverse
        self.eps = eps
        self.beta = nn.Parameter(torch.ones(channels))
        self.gamma = nn.Parameter(math.sqrt(gamma_init) * torch.eye(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.beta.clamp_min(math.sqrt(self.eps)) ** 2
        gamma = self.gamma.abs() ** 2
        norm = F.conv2d(x * x, gamma[:, :, None, None], beta).clamp_min(self.eps).sqrt()
        return x * norm if self.inverse else x / norm


def _activation(kind: str, channels: int, inverse: bool) -> nn.Module:
    if kind == "gdn":
        return GDN(channels, inverse=inverse)
    if kind == "gelu":
        return nn.Sequential(nn.GroupNorm(1, channels), nn.GELU())
    raise ConfigError(f"activation must be 'gdn' or 'gelu', got {kind!r}")


class ConvEncoder(nn.Module):
    """``stages`` stride-2 5x5 convolutions (Ballé's analysis transform): downsampling factor ``2 ** stages``."""

    def __init__(self, hidden: int, latent: int, stages: int, activation: str) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 3
        for i in range(stages):
            out = latent if i == stages - 1 else hidden
            layers.append(nn.Conv2d(width, out, 5, stride=2, padding=2))
            if i < stages - 1:
                layers.append(_activation(activation, out, inverse=False))
            width = out
        self.net = nn.Sequential(*layers)
        self.factor = 2**stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TimmEncoder(nn.Module):
    """A timm backbone's feature map at ``out_index`` (``features_only``) and a 1x1 projection to ``latent``."""

    def __init__(self, name: str, latent: int, out_index: int, kwargs: dict | None = None) -> None:
        super().__init__()
        import timm

        check_backbone_name(name)
        self.body = timm.create_model(name, pretrained=False, features_only=True, out_indices=(out_index,),
                                      **(kwargs or {}))  # fmt: skip
        self.factor = int(self.body.feature_info.reduction()[-1])
        self.proj = nn.Conv2d(int(self.body.feature_info.channels()[-1]), latent, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body(x)[-1])


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder` (Ballé's synthesis transform): stride-2 5x5 transposed convolutions."""

    def __init__(self, hidden: int, latent: int, stages: int, activation: str) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = latent
        for i in range(stages):
            out = 3 if i == stages - 1 else hidden
            layers.append(nn.ConvTranspose2d(width, out, 5, stride=2, padding=2, output_padding=1))
            if i < stages - 1:
                layers.append(_activation(activation, out, inverse=True))
            width = out
        self.net = nn.Sequential(*layers)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


@dataclass
class CompressionOutput:
    x_hat: torch.Tensor  # [B, 3, H, W] reconstruction (unclamped)
    y_hat: torch.Tensor  # [B, C, H/f, W/f] quantised latent (noisy in training)
    likelihoods: torch.Tensor  # [B, C, H/f, W/f]
    logits: torch.Tensor | None  # [B, num_classes] of the weak-supervision head


class CompressionModel(nn.Module):
    """Image -> compact quantised code -> image, with a linear classifier on the pooled code.

    Args:
        latent_channels: channels of the bottleneck ``C`` (Ballé's factorized prior: 192).
        hidden_channels: width of the conv encoder / decoder (Ballé: 128 at low rates, 192 at high).
        stages: stride-2 stages of the conv encoder and the decoder; downsampling factor ``2 ** stages`` (4 -> 16).
        encoder: ``conv`` or a timm backbone name (``resnet50``) whose feature map at ``encoder_out_index`` is
            projected to the latent by a 1x1 conv; its reduction must be a power of two (the decoder mirrors it).
        encoder_out_index: feature level of a timm encoder (resnet50: 3 is ``layer3``, reduction 16).
        encoder_kwargs: extra timm constructor arguments.
        activation: ``gdn`` (GDN / IGDN, Ballé) or ``gelu`` (GroupNorm + GELU).
        entropy_filters: hidden widths of the per-channel density MLP.
        num_classes: classes of the weak-supervision head (None: no head).

    ``detach_head`` (attribute, default False): the head reads a detached latent (a probe; its gradient does not reach
    the encoder). :class:`~lightning_modules.compression.module.CompressionModule` sets it when ``lambda_sem`` is 0.
    """

    def __init__(
        self,
        latent_channels: int = 192,
        hidden_channels: int = 128,
        stages: int = 4,
        encoder: str = "conv",
        encoder_out_index: int = 3,
        encoder_kwargs: dict | None = None,
        activation: Literal["gdn", "gelu"] = "gdn",
        entropy_filters: tuple[int, ...] = (3, 3, 3),
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if encoder == "conv":
            if stages < 1:
                raise ConfigError(f"stages must be >= 1, got {stages}")
            self.encoder = ConvEncoder(hidden_channels, latent_channels, stages, activation)
        else:
            self.encoder = TimmEncoder(encoder, latent_channels, encoder_out_index, encoder_kwargs)
            stages = int(round(math.log2(self.encoder.factor)))
            if 2**stages != self.encoder.factor:
                raise ConfigError(f"encoder '{encoder}' reduces by {self.encoder.factor}, not a power of two")
        self.factor = self.encoder.factor
        self.entropy = FactorizedEntropyModel(latent_channels, tuple(entropy_filters))
        self.decoder = ConvDecoder(hidden_channels, latent_channels, stages, activation)
        self.head = nn.Linear(latent_channels, num_classes) if num_classes else None
        self.num_classes = num_classes
        self.detach_head = False

    def check_size(self, height: int, width: int) -> None:
        f = self.factor
        if height < f or width < f or height % f or width % f:
            raise ConfigError(
                f"image size {height}x{width} does not fit the encoder's downsampling factor {f}: height and width "
                f"must be positive multiples of {f} (e.g. data.img_size {max(f, (height // f) * f)})"
            )

    def forward(self, x: torch.Tensor, noise: bool | None = None) -> CompressionOutput:
        """``[B, 3, H, W]`` images in [0, 1]; ``noise``: uniform-noise quantisation (default: ``self.training``)."""
        self.check_size(x.shape[-2], x.shape[-1])
        y = self.encoder(x)
        y_hat, likelihoods = self.entropy(y, noise=self.training if noise is None else noise)
        x_hat = self.decoder(y_hat)
        logits = None
        if self.head is not None:
            pooled = y_hat.float().mean(dim=(2, 3))
            logits = self.head(pooled.detach() if self.detach_head else pooled)
        return CompressionOutput(x_hat, y_hat, likelihoods, logits)
