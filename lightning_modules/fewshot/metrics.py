"""Few-shot episode accuracy as a torchmetrics ``Metric``, with the two confidence intervals the field reports.

* **Per-episode interval** (the common one): the mean accuracy over episodes and ``1.96 * std / sqrt(episodes)``
  (the population std of the per-episode accuracies, as ``np.std``).
* **The COSOC protocol** (official ``run.py``): the episodes are split into ``runs`` consecutive runs (2,000 episodes x
  5 runs); the reported mean is the mean of the run means and the "95 % CI" is ``1.96 * std`` of the run means
  (population std). This is not the per-episode interval, and both are printed with their labels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def episode_interval(acc: Tensor) -> tuple[float, float]:
    """``(mean, 1.96 * std / sqrt(n))`` of per-episode accuracies (percent in, percent out)."""
    acc = acc.double()
    return float(acc.mean()), float(1.96 * acc.std(unbiased=False) / math.sqrt(acc.numel()))


def run_interval(acc: Tensor, runs: int) -> tuple[float, float]:
    """COSOC's protocol: ``(mean of run means, 1.96 * std of run means)`` over ``runs`` consecutive equal runs."""
    if acc.numel() % runs:
        raise ValueError(f"{acc.numel()} episodes do not split into {runs} equal runs")
    means = acc.double().view(runs, -1).mean(1)
    return float(means.mean()), float(1.96 * means.std(unbiased=False))


class EpisodeAccuracy(Metric):
    """``update(correct [E, Q] bool or accuracies [E])`` per episode, in episode order; :meth:`compute` returns
    ``{"acc", "ci95_episodes"}`` and, with ``runs > 1`` and a divisible count, ``{"acc_runs", "ci95_runs"}``."""

    full_state_update = False

    def __init__(self, runs: int = 5) -> None:
        super().__init__()
        self.runs = runs
        self.add_state("accuracies", default=[], dist_reduce_fx="cat")
        self.add_state("order", default=[], dist_reduce_fx="cat")

    def update(self, correct: Tensor, episode_ids: Tensor | None = None) -> None:
        acc = 100 * (correct.float().mean(-1) if correct.ndim == 2 else correct.float())
        if episode_ids is None:
            seen = sum(int(a.numel()) for a in self.accuracies)
            episode_ids = torch.arange(seen, seen + acc.numel(), device=acc.device)
        self.accuracies.append(acc.double())
        self.order.append(episode_ids.long())

    def compute(self) -> dict[str, Tensor]:
        acc = dim_zero_cat(self.accuracies)
        acc = acc[dim_zero_cat(self.order).argsort()]  # ranks gather out of order under DDP
        mean, ci = episode_interval(acc)
        out = {"acc": torch.tensor(mean), "ci95_episodes": torch.tensor(ci)}
        if self.runs > 1 and acc.numel() % self.runs == 0:
            run_mean, run_ci = run_interval(acc, self.runs)
            out.update(acc_runs=torch.tensor(run_mean), ci95_runs=torch.tensor(run_ci))
        return out
