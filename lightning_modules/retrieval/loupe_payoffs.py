"""LOUPE's payoffs and interactions: the token-level payoffs (pooled tokens, re-encoded masked images), the
semantics-level fine-grained similarity, and the estimator-or-sample rule for interactions
(:mod:`lightning_modules.retrieval.loupe`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_modules.retrieval.losses import estimator_loss
from lightning_modules.retrieval.shapley import NeuralShapleyEstimator


def pooled_similarity(masks: Tensor, tokens: Tensor, text: Tensor) -> Tensor:
    """Token-level payoff: ``cos(mean of the kept projected tokens, text)``; 0 for an empty set.

    Args:
        masks: bool ``[G, ..., n]``; tokens: projected patch tokens ``[G, n, D]``; text: ``[G, D]`` (unit norm).
    """
    G, n = masks.shape[0], masks.shape[-1]
    m = masks.reshape(G, -1, n).to(tokens.dtype)
    pooled = torch.bmm(m, tokens) / m.sum(-1, keepdim=True).clamp(min=1)
    sim = (F.normalize(pooled, dim=-1) * text.unsqueeze(1)).sum(-1)
    return sim.reshape(masks.shape[:-1])


def masked_image_payoff(
    encode: Callable[[Tensor], Tensor], images: Tensor, text: Tensor, grid: tuple[int, int], chunk: int = 512
) -> Callable[[Tensor], Tensor]:
    """Token-level payoff by re-encoding: the patches outside the kept set are replaced by the mean colour (0 after
    normalisation) and the images are encoded again; ``v(S) = <encode(masked image), text>``.

    Args:
        encode: images ``[k, 3, H, W]`` -> unit-norm embeddings ``[k, D]``.
        images: ``[G, 3, H, W]``; text: ``[G, D]`` (unit norm); grid: the final token grid (patch ``i`` covers the
            ``i``-th cell of the image in row-major order).
        chunk: images per ``encode`` call.

    Returns the payoff, bool masks ``[G, ..., n]`` -> ``[G, ...]``.
    """
    G, _, H, W = images.shape

    def v(masks: Tensor) -> Tensor:
        X = masks.reshape(G, -1, masks.shape[-1]).shape[1]
        keep = F.interpolate(masks.reshape(G * X, 1, *grid).to(images.dtype), size=(H, W), mode="nearest")
        owner = torch.arange(G, device=images.device).repeat_interleave(X)
        out = []
        for lo in range(0, G * X, chunk):
            idx = slice(lo, lo + chunk)
            out.append((encode(images[owner[idx]] * keep[idx]) * text[owner[idx]]).sum(-1))
        return torch.cat(out).reshape(masks.shape[:-1])

    return v


def fine_grained_similarity(masks: Tensor, scores: Tensor) -> Tensor:
    """Semantics-level payoff: FILIP's symmetric max-mean similarity of the kept regions and phrases.

    Args:
        masks: bool ``[G, ..., R + P]`` (regions first); scores: region-phrase similarities ``[G, R, P]``.
    Returns ``[G, ...]``; 0 when no region or no phrase is kept.
    """
    G, R, P = scores.shape
    flat = masks.reshape(G, -1, R + P)
    keep_r, keep_p = flat[..., :R], flat[..., R:]  # [G, X, R], [G, X, P]
    s = scores.unsqueeze(1)  # [G, 1, R, P]
    low = torch.finfo(scores.dtype).min
    best_p = s.masked_fill(~keep_p.unsqueeze(2), low).amax(-1)  # [G, X, R]: best kept phrase per region
    best_r = s.masked_fill(~keep_r.unsqueeze(3), low).amax(-2)  # [G, X, P]: best kept region per phrase
    kr, kp = keep_r.to(scores.dtype), keep_p.to(scores.dtype)
    r2p = (best_p * kr).sum(-1) / kr.sum(-1).clamp(min=1)
    p2r = (best_r * kp).sum(-1) / kp.sum(-1).clamp(min=1)
    both = keep_r.any(-1) & keep_p.any(-1)
    return torch.where(both, (r2p + p2r) / 2, torch.zeros_like(r2p)).reshape(masks.shape[:-1])


def estimate_interactions(
    features: Tensor,
    sample: Callable[[Tensor], Tensor],
    estimator: NeuralShapleyEstimator | None,
    refresh_fraction: float,
    generator: torch.Generator | None = None,
    group_size: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Interactions ``[Q]`` of ``Q`` coalitions, from the neural estimator where it is confident, else sampled.

    Args:
        features: ``[Q, F]`` estimator inputs (detached here).
        sample: ``indices [K] -> (Monte-Carlo interactions [K], their standard errors [K])`` for the coalitions to
            sample.
        estimator: ``None`` samples everything.
        refresh_fraction: share of confident coalitions sampled anyway (keeps the estimator calibrated).
        generator: the random generator of the refresh draws.
        group_size: consecutive coalitions sampled or estimated together (:meth:`NeuralShapleyEstimator.to_sample`).

    Returns ``(interactions [Q], estimator NLL on the sampled ones (0 without), sampled share)``. Interactions are
    NaN for the coalitions the estimator's budget drops (untrusted and beyond the cap; see
    :meth:`NeuralShapleyEstimator.split`): the losses must leave them out, never use an untrusted estimate.
    """
    Q = features.shape[0]
    if estimator is None:
        with torch.no_grad():
            values, _ = sample(torch.arange(Q, device=features.device))
        return values, features.new_zeros(()), features.new_ones(())
    features = features.detach()
    mean, var = estimator(features)
    todo, usable = estimator.split(var, refresh_fraction, generator, group_size)
    index = todo.nonzero().squeeze(1)
    values = mean.detach().clone().masked_fill(~(todo | usable), float("nan"))  # dropped: no value
    replay = estimator.replay_loss(generator)  # earlier samples, drawn before this step's join the memory
    if index.numel() == 0:
        return values, mean.sum() * 0 + (replay if replay is not None else 0), features.new_zeros(())
    with torch.no_grad():
        sampled, stderr = sample(index)
    estimator.observe(sampled, stderr)
    values[index] = sampled.to(values.dtype)
    noise_var = stderr.to(var.dtype).pow(2)
    drawn = min(estimator.replay_batch, estimator._memory[0].shape[0]) if replay is not None else 0
    nll = estimator_loss(mean[index], sampled.to(values.dtype), var[index], noise_var, replay, drawn)
    estimator.remember(features[index], sampled, noise_var)
    return values, nll, todo.float().mean()
