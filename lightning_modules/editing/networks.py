"""DE-Net's generator, discriminator and conditional head (Tao et al., "DE-Net: Dynamic Text-guided Image Editing
Adversarial Networks", AAAI 2023, arXiv 2206.01160), built to the official ``code/models/model.py`` and ``CCN.py``.

Generator (``image, sentence -> edited image``; no noise input):

* **Image encoder**: a 3x3 stem then ``n = log2(size / 4)`` U-Net down blocks (4x4 stride-2 convolution, batch norm,
  LeakyReLU 0.2) down to 4x4; each block's input is a skip. Channel multipliers 1, 2, 4, 8, 8, 8, 8 (x ``ngf``).
* **Semantic decoder** (the figure's UP blocks): nearest 2x upsampling, 3x3 convolution, LeakyReLU, plus the skip of
  the same resolution; its outputs ``m_1 .. m_n`` are the semantic masks the DCBlocks read.
* **CWP** (composition weights predictor): the 4x4 bottleneck through conv3x3-LReLU-conv4x4 (a ``D``-d image code),
  the sentence through an MLP, both through a fusion MLP whose halves ``a, b`` give ``[a - b; a * b; img; txt]`` and a
  ``4D -> 4D`` linear layer with LeakyReLU: one code shared by every DEBlock.
* **DEBlock** (x n): ``h <- conv3x3(up2(h))``; channel branch ``h_c = LReLU(gamma(s) * h + beta(s))`` (text
  affine, gamma = 1 and beta = 0 at initialisation); spatial branch ``h_s = LReLU(DCBlock(h, m, s))``; per-channel
  composition weights ``w = sigmoid(W code)`` with ``W`` zero-initialised (``w = 0.5`` at start); output
  ``w * h_c + (1 - w) * h_s + skip``.
* **DCBlock**: a text-conditioned dynamic 3x3 convolution of the semantic mask ``m`` to 8 channels, then two 3x3
  convolutions (no bias) predict a one-channel spatial scale ``W`` and shift ``B``: ``W * h + B``.
* **Dynamic convolution** (``cConv2d``): per-sample kernel ``K_b = K * scale(s_b) + shift(s_b)`` (scale = 1, shift = 0
  at initialisation), applied to the whole batch as ONE grouped convolution (groups = batch), no loop over samples.
* Output: LeakyReLU, 3x3 convolution to RGB, tanh.

Discriminator: ``n`` blocks of 4x4 stride-2 convolution (no bias) + batch norm (not on the first) + LeakyReLU down to
4x4; conditional head (DF-GAN's): the sentence tiled to 4x4, concatenated, conv3x3 -> LReLU -> conv4x4 -> one logit.

Sizes: at 256 px with ``ngf = ndf = 32`` and a 256-d sentence (the official COCO config) the generator has
18,755,619 trained parameters, the discriminator 2,788,736 and the head 295,936. The official generator also registers
an unused bias in each dynamic convolution (6 x 8 values, never added in ``forward``, so never trained); with those
its count is 18,755,667, the number the official code reports. Other sizes (the toy's 32-64 px) drop the
highest-resolution stages.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MULTS = (1, 2, 4, 8, 8, 8, 8)


def num_stages(image_size: int) -> int:
    """``log2(image_size / 4)``: the down/up stages between ``image_size`` and the 4x4 bottleneck."""
    n = int(round(math.log2(image_size / 4))) if image_size >= 8 else 0
    if image_size < 8 or 4 * 2**n != image_size or n > len(MULTS) - 1:
        raise ValueError(f"image_size must be 4 x a power of two between 8 and 256, got {image_size}")
    return n


def _lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.2)


class TextMLP(nn.Sequential):
    """Linear(cond, cond) -> ReLU -> Linear(cond, out), its last layer initialised to output ``bias_init``."""

    def __init__(self, cond_dim: int, out_dim: int, bias_init: float) -> None:
        super().__init__(nn.Linear(cond_dim, cond_dim), nn.ReLU(), nn.Linear(cond_dim, out_dim))
        nn.init.zeros_(self[2].weight)
        nn.init.constant_(self[2].bias, bias_init)


class DynamicConv2d(nn.Module):
    """Text-conditioned dynamic convolution: ``K_b = K * scale(s_b) + shift(s_b)`` per sample, applied to the batch
    as one grouped convolution (groups = batch size). Stride 1, 'same' padding."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, cond_dim: int = 256) -> None:
        super().__init__()
        self.in_ch, self.out_ch, self.k = in_ch, out_ch, kernel_size
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.scale = TextMLP(cond_dim, in_ch * out_ch, 1.0)
        self.shift = TextMLP(cond_dim, in_ch * out_ch, 0.0)

    def kernels(self, sentence: Tensor) -> Tensor:
        """``[B, out, in, k, k]`` per-sample kernels."""
        B = sentence.shape[0]
        scale = self.scale(sentence).view(B, self.out_ch, self.in_ch, 1, 1)
        shift = self.shift(sentence).view(B, self.out_ch, self.in_ch, 1, 1)
        return self.weight.unsqueeze(0) * scale + shift

    def forward(self, x: Tensor, sentence: Tensor) -> Tensor:
        B, _, H, W = x.shape
        kernels = self.kernels(sentence).to(x.dtype).reshape(B * self.out_ch, self.in_ch, self.k, self.k)
        out = F.conv2d(x.reshape(1, B * self.in_ch, H, W), kernels, padding=self.k // 2, groups=B)
        return out.view(B, self.out_ch, H, W)


class TextAffine(nn.Module):
    """Channel-wise text affine ``gamma(s) * h + beta(s)`` (the official ``CAFF``), identity at initialisation."""

    def __init__(self, channels: int, cond_dim: int = 256) -> None:
        super().__init__()
        self.gamma, self.beta = TextMLP(cond_dim, channels, 1.0), TextMLP(cond_dim, channels, 0.0)

    def forward(self, h: Tensor, sentence: Tensor) -> Tensor:
        return self.gamma(sentence)[..., None, None] * h + self.beta(sentence)[..., None, None]


class DCBlock(nn.Module):
    """Spatial manipulation: a dynamic conv of the semantic mask predicts a one-channel scale and shift."""

    def __init__(self, channels: int, cond_dim: int = 256, hidden: int = 8) -> None:
        super().__init__()
        self.conv = DynamicConv2d(channels, hidden, 3, cond_dim)
        self.to_weight = nn.Conv2d(hidden, 1, 3, 1, 1, bias=False)
        self.to_bias = nn.Conv2d(hidden, 1, 3, 1, 1, bias=False)

    def forward(self, h: Tensor, mask: Tensor, sentence: Tensor) -> Tensor:
        g = self.conv(mask, sentence)
        return self.to_weight(g) * h + self.to_bias(g)


class DEBlock(nn.Module):
    """Dynamic editing block: channel (text affine) and spatial (DCBlock) manipulations mixed per channel by
    composition weights from the CWP code (0.5 each at initialisation), plus the encoder skip."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int = 256) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.channel = TextAffine(out_ch, cond_dim)
        self.spatial = DCBlock(out_ch, cond_dim)
        self.compose = nn.Linear(4 * cond_dim, out_ch)
        nn.init.zeros_(self.compose.weight)
        nn.init.zeros_(self.compose.bias)

    def composition_weights(self, code: Tensor) -> Tensor:
        return torch.sigmoid(self.compose(code))

    def forward(self, h: Tensor, skip: Tensor, mask: Tensor, sentence: Tensor, code: Tensor) -> Tensor:
        h = self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h_c = _lrelu(self.channel(h, sentence))
        h_s = _lrelu(self.spatial(h, mask, sentence))
        w = self.composition_weights(code)[..., None, None].to(h.dtype)
        return w * h_c + (1 - w) * h_s + skip


class CompositionWeightsPredictor(nn.Module):
    """CWP: one ``4 cond_dim`` code from the 4x4 image bottleneck and the sentence (shared by every DEBlock)."""

    def __init__(self, in_ch: int, cond_dim: int = 256) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(in_ch, in_ch, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(in_ch, cond_dim, 4))
        self.text = nn.Sequential(nn.Linear(cond_dim, cond_dim), nn.LeakyReLU(0.2), nn.Linear(cond_dim, cond_dim))
        self.fuse = nn.Sequential(
            nn.Linear(2 * cond_dim, 2 * cond_dim), nn.LeakyReLU(0.2), nn.Linear(2 * cond_dim, 2 * cond_dim)
        )
        self.out = nn.Sequential(nn.Linear(4 * cond_dim, 4 * cond_dim), nn.LeakyReLU(0.2))

    def forward(self, bottleneck: Tensor, sentence: Tensor) -> Tensor:
        img = self.image(bottleneck).flatten(1)
        txt = self.text(sentence)
        a, b = self.fuse(torch.cat([img, txt], 1)).chunk(2, dim=1)
        return self.out(torch.cat([a - b, a * b, img, txt], 1))


class DownBlock(nn.Module):
    """U-Net down block: 4x4 stride-2 conv (no bias), batch norm, LeakyReLU; returns (output, skip = input)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=False), nn.BatchNorm2d(out_ch)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return _lrelu(self.bn(self.conv(x))), x


class SemanticUp(nn.Module):
    """Semantic decoder block: nearest 2x upsampling, 3x3 conv, LeakyReLU, plus the skip."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, 1, 1)

    def forward(self, h: Tensor, skip: Tensor) -> Tensor:
        return _lrelu(self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))) + skip


class DENetGenerator(nn.Module):
    """``G(image [B, 3, S, S] in [-1, 1], sentence [B, cond_dim]) -> edited image [B, 3, S, S]`` (module docstring)."""

    def __init__(self, ngf: int = 32, image_size: int = 256, cond_dim: int = 256) -> None:
        super().__init__()
        n = num_stages(image_size)
        ch = [ngf * m for m in MULTS[: n + 1]]  # ch[i]: channels at resolution S / 2^i
        self.stem = nn.Conv2d(3, ch[0], 3, 1, 1)
        self.down = nn.ModuleList(DownBlock(ch[i], ch[i + 1]) for i in range(n))
        self.semantic = nn.ModuleList(SemanticUp(ch[i + 1], ch[i]) for i in reversed(range(n)))
        self.edit = nn.ModuleList(DEBlock(ch[i + 1], ch[i], cond_dim) for i in reversed(range(n)))
        self.cwp = CompositionWeightsPredictor(ch[n], cond_dim)
        self.to_rgb = nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(ch[0], 3, 3, 1, 1), nn.Tanh())
        self.image_size, self.cond_dim = image_size, cond_dim

    def forward(self, image: Tensor, sentence: Tensor) -> Tensor:
        if image.shape[-1] != self.image_size or image.shape[-2] != self.image_size:
            raise ValueError(f"the generator was built for {self.image_size} px images, got {tuple(image.shape)}")
        h = self.stem(image)
        skips = []
        for block in self.down:
            h, skip = block(h)
            skips.append(skip)
        code = self.cwp(h, sentence)
        m, out = h, h
        for semantic, edit, skip in zip(self.semantic, self.edit, reversed(skips), strict=True):
            m = semantic(m, skip)
            out = edit(out, skip, m, sentence, code)
        return self.to_rgb(out)


class DENetDiscriminator(nn.Module):
    """Image features ``[B, 8 ndf, 4, 4]`` (``n`` stride-2 blocks; batch norm after all but the first)."""

    def __init__(self, ndf: int = 32, image_size: int = 256) -> None:
        super().__init__()
        n = num_stages(image_size)
        ch = [3] + [ndf * m for m in MULTS[:n]]
        layers: list[nn.Module] = []
        for i in range(n):
            layers.append(nn.Conv2d(ch[i], ch[i + 1], 4, 2, 1, bias=False))
            if i > 0:
                layers.append(nn.BatchNorm2d(ch[i + 1]))
            layers.append(nn.LeakyReLU(0.2))
        self.blocks = nn.Sequential(*layers)
        self.out_channels, self.ndf, self.image_size = ch[-1], ndf, image_size

    def forward(self, image: Tensor) -> Tensor:
        return self.blocks(image)


class ConditionalHead(nn.Module):
    """DF-GAN's text-conditioned head: the sentence tiled to 4x4 and concatenated, conv3x3 -> LReLU -> conv4x4."""

    def __init__(self, in_ch: int, cond_dim: int = 256, ndf: int = 32) -> None:
        super().__init__()
        self.joint = nn.Sequential(
            nn.Conv2d(in_ch + cond_dim, 2 * ndf, 3, 1, 1, bias=False),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * ndf, 1, 4, 1, 0, bias=False),
        )

    def forward(self, features: Tensor, sentence: Tensor) -> Tensor:
        """One logit per (image, sentence) pair ``[B]``."""
        tiled = sentence[..., None, None].expand(-1, -1, *features.shape[-2:]).to(features.dtype)
        return self.joint(torch.cat([features, tiled], 1)).flatten()
