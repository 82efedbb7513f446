"""Shapley values and Shapley interactions: exact enumeration, batched Monte-Carlo sampling, and a neural estimator.

LOUPE (Li et al., "Fine-Grained Semantically Aligned Vision-Language Pre-Training", NeurIPS 2022, arXiv 2208.02515)
treats image patches (token level) or regions and phrases (semantics level) as players of a cooperative game whose
payoff ``v(S)`` is an image-text similarity computed from the kept players only. The paper's text was not available
to us; the definitions below are the standard ones LOUPE builds on (recorded in docs/loupe.md):

* Shapley value of player ``i`` in a game on players ``N`` (Shapley 1953)::

      phi(i | N) = sum_{S subset N \\ {i}} |S|! (n - |S| - 1)! / n! * [v(S + {i}) - v(S)]

  equivalently the expected marginal contribution of ``i`` to the players that precede it in a uniformly random
  order of ``N``.
* Shapley interaction of a coalition ``S`` (Zhang et al., "Interpreting Multivariate Shapley Interactions in DNNs",
  AAAI 2021), treating ``S`` as one player ``[S]``::

      I([S]) = phi([S] | N \\ S + {[S]}) - sum_{i in S} phi(i | N \\ S + {i})

  Positive: the members of ``S`` cooperate (a semantic unit); zero for an additive game.

Monte-Carlo estimator (:func:`mc_interaction`). One random order of the players ``N \\ S`` plus the unit ``[S]`` is
drawn per sample: every player gets a uniform key and the unit a key ``u``; the predecessors are the players with a
key below ``u``. Using the same order for ``[S]`` and for each ``i in S`` (common random numbers), one sample of the
interaction is::

      v(P + S) - sum_{i in S} v(P + {i}) + (|S| - 1) v(P)

which is unbiased for ``I([S])`` (each term is the permutation-sampling estimate of its own game, whose order is
uniform) and needs ``|S| + 2`` payoffs. Everything is batched: the payoff function receives one tensor of coalition
masks for all games, coalitions and samples at once (no Python loop over coalitions or samples).

:class:`NeuralShapleyEstimator` is LOUPE's "uncertainty-aware neural Shapley interaction learning": a small network
predicts the interaction (mean) and its uncertainty (variance) from features of the coalition, trained on sampled
estimates with a Gaussian negative log-likelihood (the targets' own sampling variance added to the predicted one);
where its predicted standard deviation is low it replaces sampling (:meth:`NeuralShapleyEstimator.confident`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.retrieval.losses import estimator_loss

Payoff = Callable[[Tensor], Tensor]  # bool masks [..., n] -> payoffs [...]


def _shapley_weights(n: int) -> list[float]:
    """``w[s] = s! (n - s - 1)! / n!``: the weight of a coalition of size ``s`` not holding the player."""
    return [math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)]


def exact_group_shapley(v: Payoff, n: int, groups: list[list[int]], target: int) -> float:
    """Exact Shapley value of ``groups[target]`` in the game whose players are the ``groups`` (disjoint index lists
    of the ``n`` base players; base players in no group are always absent). Enumerates all ``2**(g-1)`` coalitions."""
    g = len(groups)
    others = [k for k in range(g) if k != target]
    weights = _shapley_weights(g)
    masks_without, masks_with, coeffs = [], [], []
    for size in range(g):
        for subset in itertools.combinations(others, size):
            mask = torch.zeros(n, dtype=torch.bool)
            for k in subset:
                mask[groups[k]] = True
            masks_without.append(mask)
            with_target = mask.clone()
            with_target[groups[target]] = True
            masks_with.append(with_target)
            coeffs.append(weights[size])
    gain = v(torch.stack(masks_with)).double() - v(torch.stack(masks_without)).double()
    return float((gain * torch.tensor(coeffs, dtype=torch.float64)).sum())


def exact_shapley(v: Payoff, n: int) -> Tensor:
    """Exact Shapley values ``[n]`` of every player (``2**n`` payoffs per player; for tests and tiny games)."""
    groups = [[i] for i in range(n)]
    return torch.tensor([exact_group_shapley(v, n, groups, i) for i in range(n)], dtype=torch.float64)


def exact_interaction(v: Payoff, n: int, coalition: list[int]) -> float:
    """Exact Shapley interaction ``I([S])`` of ``coalition`` (Zhang et al. 2021) by enumeration."""
    rest = [[j] for j in range(n) if j not in coalition]
    unit = exact_group_shapley(v, n, rest + [list(coalition)], len(rest))
    singles = sum(exact_group_shapley(v, n, rest + [[i]], len(rest)) for i in coalition)
    return unit - singles


def all_coalitions(n: int, device: torch.device | str | None = None) -> Tensor:
    """Bool masks ``[2**n, n]`` of every coalition of ``n`` players; row ``m`` holds the players of the bits of
    ``m`` (player ``k`` is bit ``k``)."""
    index = torch.arange(2**n, device=device)
    return (index.unsqueeze(1) >> torch.arange(n, device=device)) & 1 == 1


def exact_pair_interactions(payoffs: Tensor, pairs: Tensor) -> Tensor:
    """Exact Shapley interactions ``I([{i, j}])`` of player pairs from the payoffs of every coalition.

    For ``S = {i, j}`` the three Shapley values of the interaction are sums over the same coalitions
    ``T subset N \\ S`` with the weights of an ``n - 1`` player game, so that::

        I([S]) = sum_T |T|! (n - 2 - |T|)! / (n - 1)! * [v(T + S) - v(T + i) - v(T + j) + v(T)]

    Args:
        payoffs: ``[..., 2**n]``, ``v`` of every coalition in the order of :func:`all_coalitions`.
        pairs: long ``[..., K, 2]`` (batch dims as ``payoffs``'s, or none), distinct players of each pair.
    Returns ``[..., K]`` (float64). Costs ``K * 2**n`` additions; no payoff is evaluated twice.
    """
    size = payoffs.shape[-1]
    n = size.bit_length() - 1
    if size != 2**n or n < 2:
        raise ValueError(f"payoffs must hold v of all 2**n coalitions (n >= 2), got {size} values")
    v = payoffs.double()
    m = torch.arange(size, device=payoffs.device)
    bits = (m.unsqueeze(1) >> torch.arange(n, device=m.device)) & 1
    weights = torch.tensor(_shapley_weights(n - 1) + [0.0, 0.0], dtype=torch.float64, device=m.device)[bits.sum(1)]
    bi, bj = (1 << pairs[..., 0]).unsqueeze(-1), (1 << pairs[..., 1]).unsqueeze(-1)  # [..., K, 1]
    outside = (m & (bi | bj)) == 0  # T subset N \ S: [..., K, 2**n]
    ms = m.expand(outside.shape)

    def at(index: Tensor) -> Tensor:
        return torch.gather(v.unsqueeze(-2).expand(*index.shape[:-1], size), -1, index)

    delta = at(ms | bi | bj) - at(ms | bi) - at(ms | bj) + at(ms)
    return (delta * weights * outside).sum(-1)


def mc_interaction(
    v: Payoff,
    coalitions: Tensor,
    num_samples: int,
    generator: torch.Generator | None = None,
    member_samples: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Monte-Carlo Shapley interactions of many coalitions at once.

    Args:
        v: payoff function, bool masks ``[..., n]`` -> payoffs ``[...]`` (called once, on a
            ``[*batch, num_samples, k_max + 2, n]`` tensor).
        coalitions: bool ``[*batch, n]``, the coalition ``S`` of each game (at least one member each).
        num_samples: random orders per coalition.
        generator: random generator (on the device of ``coalitions``) for reproducible estimates.
        member_samples: ``None`` evaluates ``v(P + {i})`` for every member ``i`` of ``S`` in each sample
            (``|S| + 2`` payoffs). An integer ``k`` draws ``k`` members uniformly (with replacement) per sample and
            scales their sum by ``|S| / k``: still unbiased, ``k + 2`` payoffs per sample whatever the region size,
            at the price of more variance (large regions of patch tokens).

    Returns:
        ``(mean, stderr)``, each ``[*batch]``: the estimate of ``I([S])`` and its standard error
        (sample std / sqrt(num_samples)).
    """
    if coalitions.dtype != torch.bool:
        raise TypeError("coalitions must be a bool mask [..., n]")
    sizes = coalitions.sum(-1)
    if (sizes < 1).any():
        raise ValueError("every coalition needs at least one player")
    *batch, n = coalitions.shape
    k_max = int(sizes.max())
    device = coalitions.device
    keys = torch.rand(*batch, num_samples, n, device=device, generator=generator)
    unit_key = torch.rand(*batch, num_samples, 1, device=device, generator=generator)
    members = coalitions.unsqueeze(-2)  # [*batch, 1, n]
    preceding = (keys < unit_key) & ~members  # P: players of N \ S ordered before [S]
    order = torch.argsort((~coalitions).to(torch.int8), dim=-1, stable=True)[..., :k_max]  # members first
    if member_samples is None:
        # every member, indices padded to k_max (padding repeats a member and is weighted 0)
        weight = (torch.arange(k_max, device=device) < sizes.unsqueeze(-1)).double().unsqueeze(-2)  # [*b, 1, k_max]
        singles = F.one_hot(order, n).bool().unsqueeze(-3)  # [*batch, 1, k_max, n]
    else:
        # k members drawn uniformly per sample, each weighted |S| / k
        draws = torch.rand(*batch, num_samples, member_samples, device=device, generator=generator)
        index = (draws * sizes[..., None, None]).long().clamp(max=k_max - 1)  # [*batch, M, k]
        picked = torch.gather(order.unsqueeze(-2).expand(*batch, num_samples, k_max), -1, index)
        singles = F.one_hot(picked, n).bool()  # [*batch, M, k, n]
        weight = (sizes.double() / member_samples)[..., None, None]  # [*batch, 1, 1]
    masks = torch.cat(
        [
            (preceding | members).unsqueeze(-2),  # v(P + S)
            preceding.unsqueeze(-2),  # v(P)
            preceding.unsqueeze(-2) | singles,  # v(P + {i}), i in S (all, or the drawn ones)
        ],
        dim=-2,
    )  # [*batch, M, k + 2, n]
    payoff = v(masks).to(torch.float64)
    gains = payoff[..., 2:] - payoff[..., 1:2]  # v(P + {i}) - v(P)
    samples = payoff[..., 0] - payoff[..., 1] - (gains * weight).sum(-1)  # [*batch, M]
    mean = samples.mean(-1)
    stderr = samples.std(-1, unbiased=True) / math.sqrt(num_samples) if num_samples > 1 else torch.zeros_like(mean)
    return mean.float(), stderr.float()


def mc_coalition_value(
    v: Payoff, coalitions: Tensor, num_samples: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Monte-Carlo Shapley value ``phi([S] | N \\ S + {[S]})`` of each coalition taken as one player (the first term
    of the interaction): the mean of ``v(P + S) - v(P)`` over random orders; ``v`` is called once on
    ``[*batch, num_samples, 2, n]`` masks. Returns ``(mean, stderr)``, each ``[*batch]``."""
    if coalitions.dtype != torch.bool:
        raise TypeError("coalitions must be a bool mask [..., n]")
    *batch, n = coalitions.shape
    keys = torch.rand(*batch, num_samples, n, device=coalitions.device, generator=generator)
    unit_key = torch.rand(*batch, num_samples, 1, device=coalitions.device, generator=generator)
    members = coalitions.unsqueeze(-2)
    preceding = (keys < unit_key) & ~members
    payoff = v(torch.stack([preceding | members, preceding], dim=-2)).to(torch.float64)
    samples = payoff[..., 0] - payoff[..., 1]
    mean = samples.mean(-1)
    stderr = samples.std(-1, unbiased=True) / math.sqrt(num_samples) if num_samples > 1 else torch.zeros_like(mean)
    return mean.float(), stderr.float()


def mc_shapley(
    v: Payoff, n: int, num_samples: int, batch: tuple[int, ...] = (), generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Monte-Carlo Shapley values ``[*batch, n]`` of every player (permutation sampling, batched) and standard errors.

    Each sample draws one random order; player ``i``'s marginal contribution is ``v(P_i + {i}) - v(P_i)`` with
    ``P_i`` its predecessors. ``v`` is called once on ``[*batch, num_samples, n, 2, n]`` masks.
    """
    keys = torch.rand(*batch, num_samples, n, device=device, generator=generator)
    preceding = keys.unsqueeze(-1) > keys.unsqueeze(-2)  # [..., i, j]: j precedes i
    eye = torch.eye(n, dtype=torch.bool, device=keys.device)
    masks = torch.stack([preceding | eye, preceding], dim=-2)  # [*batch, M, n, 2, n]
    payoff = v(masks).to(torch.float64)
    gains = payoff[..., 0] - payoff[..., 1]  # [*batch, M, n]
    mean = gains.mean(-2)
    stderr = gains.std(-2, unbiased=True) / math.sqrt(num_samples) if num_samples > 1 else torch.zeros_like(mean)
    return mean.float(), stderr.float()


class NeuralShapleyEstimator(nn.Module):
    """Uncertainty-aware neural estimate of Shapley interactions (LOUPE's efficient interaction learning).

    A two-layer MLP maps a coalition's feature vector (e.g. the pooled features of a region's patches and of the
    caption) to a mean and a log-variance. It is trained with the Gaussian negative log-likelihood on sampled
    estimates (:meth:`loss`), so the variance head learns where the estimate is unreliable. :meth:`to_sample` picks the
    coalitions to sample; the estimator's mean stands in for the rest:

    * trust rule: a prediction is trusted (:meth:`confident`) when its predicted standard deviation is below
      ``max_std`` or, with ``max_std=None``, below ``trust_ratio`` times the spread (standard deviation) of the sampled
      values themselves, tracked as a running mean by :meth:`observe`: the estimate is used where its error is small
      next to the differences between coalitions that the losses act on;
    * budget (optional): once the estimator has been updated on ``warmup`` sampled batches, at most ``budget`` of the
      coalitions are sampled: the random refresh draws first, then the least confident ones (largest predicted
      standard deviation). The cost of the Shapley terms is then bounded whatever the trust rule says, but the budget
      never overrides the trust rule: untrusted coalitions beyond the cap are dropped (neither sampled nor estimated)
      and the caller leaves them out of the losses their values would feed (:meth:`split`).

    ``replay`` keeps the last sampled (features, value, noise) triples so that each update also fits a random draw of
    earlier samples (:meth:`replay_loss`): the few samples a training step yields are reused across steps. The running
    standard error of the samples is tracked too (``noise_std``), for logging.

    Args:
        in_dim: coalition feature width.
        hidden_dim: hidden width.
        max_std: an absolute trust threshold on the predicted standard deviation (``None``: the relative rule).
        trust_ratio: the relative rule's factor.
        budget: largest sampled share once warm (``None``: no cap).
        warmup: sampled batches (:meth:`observe` calls) before the budget applies.
        replay: size of the replay memory of samples (0: none).
        replay_batch: earlier samples drawn per update.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 256,
        max_std: float | None = None,
        trust_ratio: float = 0.25,
        budget: float | None = None,
        warmup: int = 0,
        replay: int = 0,
        replay_batch: int = 256,
    ) -> None:
        super().__init__()
        if budget is not None and not 0 < budget <= 1:
            raise ValueError(f"budget must be in (0, 1] or None, got {budget}")
        self.body = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU()
        )
        self.mean_head = nn.Linear(hidden_dim, 1)
        self.log_var_head = nn.Linear(hidden_dim, 1)
        self.max_std, self.trust_ratio = max_std, trust_ratio
        self.budget, self.warmup, self.replay, self.replay_batch = budget, warmup, replay, replay_batch
        self.register_buffer("noise_std", torch.tensor(float("nan")))  # running standard error of the samples
        self.register_buffer("target_std", torch.tensor(float("nan")))  # running spread of the sampled values
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))  # sampled batches observed
        self.last_std = torch.tensor(float("nan"))
        self.last_dropped = torch.tensor(0.0)  # for logging: the share of coalitions the last split dropped
        self._memory: tuple[Tensor, Tensor, Tensor] | None = None  # replay memory (not checkpointed)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``features [..., in_dim]`` -> ``(mean [...], variance [...])``."""
        h = self.body(features)
        var = self.log_var_head(h).squeeze(-1).clamp(-12, 6).exp()
        if var.numel():
            self.last_std = var.detach().sqrt().median()  # for logging: the typical predicted uncertainty
        return self.mean_head(h).squeeze(-1), var

    def loss(self, features: Tensor, targets: Tensor, noise_var: Tensor | None = None) -> Tensor:
        """Gaussian negative log-likelihood of sampled interaction estimates ``targets [...]`` (detached).

        ``noise_var``: the known sampling variance of each target (its squared standard error). It is added to the
        predicted variance, so the variance head learns the estimator's own error rather than the Monte-Carlo noise
        of the targets it is trained on."""
        mean, var = self(features)
        return estimator_loss(mean, targets.detach(), var, None if noise_var is None else noise_var.detach())

    @torch.no_grad()
    def observe(self, targets: Tensor, stderr: Tensor, decay: float = 0.9) -> None:
        """Track the spread of the sampled values and their standard error (moving averages of batch statistics)."""
        if targets.numel() < 2:
            return
        self.updates += 1
        for buffer, value in ((self.target_std, targets.float().std()), (self.noise_std, stderr.float().mean())):
            buffer.copy_(value if torch.isnan(buffer) else decay * buffer + (1 - decay) * value)

    def threshold(self) -> Tensor:
        """The predicted standard deviation under which a prediction is trusted (NaN: nothing is trusted yet)."""
        if self.max_std is not None:
            return torch.tensor(float(self.max_std))
        return self.trust_ratio * self.target_std

    def confident(self, variance: Tensor) -> Tensor:
        """Bool mask of the predictions to use instead of sampling (comparisons with NaN are False)."""
        return variance.sqrt() < self.threshold().to(variance.device)

    def split(
        self,
        variance: Tensor,
        refresh_fraction: float,
        generator: torch.Generator | None = None,
        group_size: int = 1,
    ) -> tuple[Tensor, Tensor]:
        """Bool masks ``(sample, estimate)`` of the coalitions to sample and of those whose estimate may be used.

        Sampled: the untrusted ones and a random ``refresh_fraction`` of all (which keep the estimator calibrated),
        capped at ``budget`` of them once warm (refresh draws first, then the largest predicted variance). Estimated:
        the trusted ones not sampled. The rest, untrusted coalitions beyond the cap, are dropped (both masks False):
        the budget caps the sampling but never makes an untrusted estimate usable. Below the cap (or without a budget,
        or before ``warmup``) nothing is dropped. ``last_dropped`` keeps the dropped share.

        ``group_size``: the coalitions come in consecutive groups whose values are compared with each other (e.g.
        the candidate boxes of one region, whose best becomes the L_TSA target); a group is sampled, estimated or
        dropped as a whole, so that a comparison never sets a sample against an estimate (the estimate shrinks towards
        the mean, a sample does not, so the sampled member would win by its noise). A group is trusted when all its
        members are, and ranked by its largest predicted variance."""
        Q = variance.shape[0]
        if Q % group_size:
            raise ValueError(f"{Q} coalitions do not split into groups of {group_size}")
        grouped = variance.detach().float().reshape(-1, group_size)
        refresh = torch.rand(grouped.shape[0], device=variance.device, generator=generator) < refresh_fraction
        trusted = self.confident(grouped).all(-1)
        todo = ~trusted | refresh
        cap = math.ceil(self.budget * grouped.shape[0]) if self.budget is not None else None
        if cap is not None and int(self.updates) >= self.warmup and int(todo.sum()) > cap:
            priority = grouped.amax(-1).masked_fill(refresh, float("inf")).masked_fill(~todo, -float("inf"))
            todo = torch.zeros_like(todo)
            todo[priority.topk(cap).indices] = True
        estimate = trusted & ~todo
        self.last_dropped = (~todo & ~trusted).float().mean() if Q else torch.tensor(0.0)
        return todo.repeat_interleave(group_size), estimate.repeat_interleave(group_size)

    def to_sample(
        self,
        variance: Tensor,
        refresh_fraction: float,
        generator: torch.Generator | None = None,
        group_size: int = 1,
    ) -> Tensor:
        """Bool mask of the coalitions to sample (the first mask of :meth:`split`)."""
        return self.split(variance, refresh_fraction, generator, group_size)[0]

    @torch.no_grad()
    def remember(self, features: Tensor, targets: Tensor, noise_var: Tensor) -> None:
        """Add sampled triples to the replay memory (the oldest leave first)."""
        if self.replay <= 0 or features.shape[0] == 0:
            return
        new = (features.detach(), targets.detach().float(), noise_var.detach().float())
        if self._memory is not None and self._memory[0].device == features.device:
            new = tuple(torch.cat([old, fresh]) for old, fresh in zip(self._memory, new, strict=True))
        self._memory = tuple(t[-self.replay :] for t in new)

    def replay_loss(self, generator: torch.Generator | None = None) -> Tensor | None:
        """Gaussian NLL on a random draw of ``replay_batch`` remembered samples (``None`` while the memory is empty)."""
        if self._memory is None:
            return None
        features, targets, noise_var = self._memory
        pick = torch.randint(features.shape[0], (min(self.replay_batch, features.shape[0]),),
                             device=features.device, generator=generator)  # fmt: skip
        return self.loss(features[pick], targets[pick], noise_var[pick])
