"""SOC, COSOC's shared object concentrator (Luo et al., NeurIPS 2021, arXiv 2107.07746), as the official
``architectures/classifier/SOC.py`` computes it (``num_patch`` 7, ``alpha`` 1.0, ``beta`` 0.8).

Every support and query image is seen through ``V`` random crops, each an L2-normalised feature.

* **Support prototypes of a class** (:func:`class_prototypes`). 1-shot: the ``V`` view features. K-shot: among all
  ``V^K`` choices of one view per shot, take the one with the largest sum of pairwise cosine similarities (the views
  that show the object the shots share; :func:`best_combination`, vectorised over all choices); its normalised mean
  is prototype 1 (weight ``alpha^0``). Remove the chosen views and repeat, ``V - 1`` prototypes in all; as the
  official code, the ``V``-th is a copy of the last one.
* **Query score** (:func:`greedy_match`): the ``V x V`` cosine matrix between a class's prototypes (rows weighted by
  ``alpha^i``) and the query's views; ``V`` times take the global maximum, add ``relu(max) * beta^t`` and delete its
  row and column. The sum is the class logit.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor


def best_combination(views: Tensor, available: Tensor | None = None) -> Tensor:
    """One view per shot, ``[K]`` indices, maximising the sum of pairwise cosines among the chosen views.

    ``views [K, V, D]`` (L2-normalised); ``available [K, V]`` bool marks views still allowed (all by default). All
    ``prod(available per shot)`` choices are scored at once.
    """
    K, V, _ = views.shape
    if available is None:
        available = torch.ones(K, V, dtype=torch.bool, device=views.device)
    options = [available[k].nonzero().flatten() for k in range(K)]
    grids = torch.meshgrid(*options, indexing="ij")
    combos = torch.stack([g.flatten() for g in grids], 1)  # [M, K] view index per shot
    sims = torch.einsum("kvd,lwd->kvlw", views, views)  # [K, V, K, V]
    total = torch.zeros(combos.shape[0], dtype=views.dtype, device=views.device)
    for a, b in itertools.combinations(range(K), 2):  # K(K-1)/2 pairs of shots, each gathered for all combos
        total += sims[a, :, b, :][combos[:, a], combos[:, b]]
    return combos[total.argmax()]


def class_prototypes(views: Tensor) -> Tensor:
    """``[V, D]`` prototypes of one class from its support views ``[K, V, D]`` (module docstring)."""
    K, V, _ = views.shape
    if K == 1:
        return views[0]
    available = torch.ones(K, V, dtype=torch.bool, device=views.device)
    protos = []
    for _ in range(V - 1):
        pick = best_combination(views, available)
        protos.append(F.normalize(views[torch.arange(K), pick].mean(0), dim=-1))
        available[torch.arange(K), pick] = False
    protos.append(protos[-1])  # the official 7th prototype: a copy of the last one
    return torch.stack(protos)


def greedy_match(protos: Tensor, queries: Tensor, alpha: float = 1.0, beta: float = 0.8) -> Tensor:
    """Logits ``[Q, C]`` of query views ``[Q, V, D]`` against class prototypes ``[C, P, D]`` (module docstring)."""
    P = protos.shape[1]
    weights = alpha ** torch.arange(P, dtype=protos.dtype, device=protos.device)
    sims = torch.einsum("cpd,qvd->qcpv", protos, queries) * weights[None, None, :, None]  # [Q, C, P, V]
    Q, C, _, V = sims.shape
    flat = sims.reshape(Q, C, P * V).clone()
    score = torch.zeros(Q, C, dtype=sims.dtype, device=sims.device)
    rows = torch.arange(P * V, device=sims.device) // V
    cols = torch.arange(P * V, device=sims.device) % V
    for t in range(min(P, V)):
        best, where = flat.max(-1)
        score += F.relu(best) * beta**t
        gone = (rows[None, None] == rows[where][..., None]) | (cols[None, None] == cols[where][..., None])
        flat = flat.masked_fill(gone, float("-inf"))
    return score


def soc_logits(support: Tensor, query: Tensor, n_way: int, k_shot: int, alpha: float = 1.0,
               beta: float = 0.8) -> Tensor:  # fmt: skip
    """Episode logits ``[Q, N]`` from support views ``[N * K, V, D]`` (class-major: ``datamodules.episodes``) and
    query views ``[Q, V, D]``; features are L2-normalised here."""
    support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    grid = support.view(n_way, k_shot, *support.shape[1:])
    protos = torch.stack([class_prototypes(grid[c]) for c in range(n_way)])
    return greedy_match(protos, query, alpha, beta)
