"""A fully factorised entropy model: the rate term of learning-by-compression.

Ballé, Minnen, Singh, Hwang, Johnston 2018, "Variational image compression with a scale hyperprior" (the
factorized-prior model, its Appendix 6.1): every latent channel ``c`` has its own learned, monotone cumulative
``c_c(y) = sigmoid(f_c(y))`` where ``f_c`` is a small scalar-to-scalar MLP whose weight matrices are passed through
``softplus`` (non-negative, so ``f_c`` is non-decreasing) and whose hidden layers add a gated nonlinearity
``h + tanh(a) * tanh(h)`` (with ``tanh(a) > -1`` the layer stays monotone). Latents are independent across
positions and channels given the model.

Probability of a quantised value ``y`` (an integer): the mass of the unit bin around it,

    p(y) = c(y + 1/2) - c(y - 1/2) = sigmoid(u) - sigmoid(l),   u = f(y + 1/2), l = f(y - 1/2).

Computed stably with the sign trick: for ``s = -sign(u + l)``, ``|sigmoid(s u) - sigmoid(s l)|`` is the same
number but evaluated in the tail where the sigmoid is far from 1, so no catastrophic cancellation in ``1 - 1``.
Likelihoods are bounded below by ``1e-9`` (a value the model thinks impossible costs at most ~30 bits) with a
gradient that still flows when it would raise the likelihood. The rate is ``bits = -sum log2 p`` and, per image
pixel, ``bpp = bits / (B * H * W)``. These are ideal code lengths (what an arithmetic coder reaches within a few
bytes per image), not a written bit-stream.

Quantisation: training adds uniform noise ``U(-1/2, 1/2)`` (a differentiable stand-in whose density, convolved with
the noise, is exactly the quantised mass above); evaluation rounds to the nearest integer, *without* the
per-channel median offset of CompressAI. Plain rounding needs no auxiliary quantile loss; the offset only matters
for channels whose density peaks far from an integer, which the encoder learns to avoid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LIKELIHOOD_BOUND = 1e-9


class _LowerBound(torch.autograd.Function):
    """``max(x, bound)`` whose gradient passes where ``x >= bound`` or where it would push ``x`` up (Ballé's
    ``lower_bound``): a clamp alone would stop every gradient of a likelihood stuck below the bound."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        passes = (x >= ctx.bound) | (grad < 0)
        return grad * passes.to(grad.dtype), None


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    return _LowerBound.apply(x, bound)


class FactorizedEntropyModel(nn.Module):
    """Per-channel learned density of a ``[B, C, H, W]`` latent; quantises it and returns its likelihoods.

    Args:
        channels: latent channels ``C`` (one density each).
        filters: hidden widths of the per-channel MLP (Ballé: ``(3, 3, 3)``); ``()`` gives a single affine layer,
            i.e. a logistic cumulative ``sigmoid(a y + b)`` (used by the analytic tests).
        init_scale: initial spread of the densities (Ballé: 10), the width the latents start in.
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0) -> None:
        super().__init__()
        self.channels = channels
        widths = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            # softplus(init) = 1 / (scale * fan_in): the composed slope starts at 1 / init_scale
            init = math.log(math.expm1(1 / scale / widths[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, widths[i + 1], widths[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, widths[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, widths[i + 1], 1)))

    def logits_cumulative(self, values: torch.Tensor) -> torch.Tensor:
        """``[C, 1, N]`` values -> ``[C, 1, N]`` logits ``f_c(v)`` of the cumulative (monotone in ``v``)."""
        logits = values
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases, strict=True)):
            logits = torch.matmul(F.softplus(matrix), logits) + bias
            if i < len(self.factors):
                logits = logits + torch.tanh(self.factors[i]) * torch.tanh(logits)
        return logits

    def likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """``p(y) = c(y + 1/2) - c(y - 1/2)`` per element of ``[B, C, H, W]`` ``y``, bounded below by 1e-9."""
        B, C, H, W = y.shape
        values = y.float().permute(1, 0, 2, 3).reshape(C, 1, -1)
        with torch.autocast(device_type=y.device.type, enabled=False):  # fp32 even under bf16-mixed
            lower = self.logits_cumulative(values - 0.5)
            upper = self.logits_cumulative(values + 0.5)
            sign = -torch.sign(lower + upper).detach()
            p = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        p = lower_bound(p, LIKELIHOOD_BOUND)
        return p.reshape(C, B, H, W).permute(1, 0, 2, 3)

    @staticmethod
    def quantize(y: torch.Tensor, noise: bool) -> torch.Tensor:
        """Training: ``y + U(-1/2, 1/2)``; evaluation: ``round(y)`` (no median offset, see the module docstring)."""
        if noise:
            return y + torch.empty_like(y).uniform_(-0.5, 0.5)
        return torch.round(y)

    def forward(self, y: torch.Tensor, noise: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``y`` -> (quantised ``y_hat``, likelihoods), both ``[B, C, H, W]``; ``noise``: default ``self.training``."""
        if y.shape[1] != self.channels:
            raise ValueError(f"the entropy model has {self.channels} channels, the latent {y.shape[1]}")
        y_hat = self.quantize(y.float(), self.training if noise is None else noise)  # fp32: bf16 cannot hold y + u
        return y_hat, self.likelihood(y_hat)


def bits(likelihoods: torch.Tensor) -> torch.Tensor:
    """Total ideal code length in bits: ``-sum log2 p``."""
    return -torch.log2(likelihoods).sum()


def bits_per_pixel(likelihoods: torch.Tensor, num_pixels: int) -> torch.Tensor:
    """``bits / num_pixels``, with ``num_pixels = B * H * W`` of the *image* (not of the latent)."""
    return bits(likelihoods) / num_pixels
