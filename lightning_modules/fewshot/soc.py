"""SOC, COSOC's shared object concentrator (Luo et al., NeurIPS 2021, arXiv 2107.07746), after the official
``architectures/classifier/SOC.py`` of Frankluox/LightningFSL (``num_patch`` 7, ``alpha`` 1.0, ``beta`` 0.8).

Every support and query image is seen through ``V`` random crops, each an L2-normalised feature.

* **Support prototypes of a class** (:func:`class_prototypes`, the same in both matchings). 1-shot: the ``V`` view
  features, unweighted. K-shot: among all ``V^K`` choices of one view per shot, take the one with the largest sum of
  pairwise cosine similarities (the views that show the object the shots share; :func:`best_combination`,
  vectorised over all choices and classes); its normalised mean is prototype 1 (weight ``alpha^0``). Remove the
  chosen views and repeat, ``V - 1`` prototypes in all; as the official code, the ``V``-th is a copy of the last one
  (weight ``alpha^(V-1)``).
* **Query score**: the ``V x V`` cosine matrix ``S`` between a class's prototypes and the query's views; the class
  logit is a sum of ``V`` terms ``relu(m_t) * beta^t``. ``soc_matching`` chooses the ``m_t``:

  - ``greedy`` (:func:`greedy_match`, the matching the paper describes): ``V`` times take the global maximum of
    ``S`` and delete its row and column.
  - ``reference`` (:func:`reference_match`, what the released code computes and what its published numbers were
    measured with): ``m_0`` is the global maximum at ``(r_0, c_0)``. The code then deletes that row and column
    with ``sim[q, w, e, rows_mask, cols_mask]``; two boolean masks index element-wise as pairs, so the ``i``-th
    remaining row is paired with the ``i``-th remaining column, the result ``u_i = S[r_i, c_i]`` (``V - 1`` values)
    is broadcast into every row of the smaller matrix, and every later round takes the largest ``u`` left and
    deletes it. ``m_1 .. m_{V-1}`` are therefore the ``u_i`` sorted in decreasing order.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

SocMatching = Literal["reference", "greedy"]
SOC_MATCHINGS = ("reference", "greedy")


def best_combination(views: Tensor, available: Tensor | None = None) -> Tensor:
    """One view per shot, ``[..., K]`` indices, maximising the sum of pairwise cosines among the chosen views.

    ``views [..., K, V, D]`` (L2-normalised; leading dimensions are independent classes); ``available [..., K, V]``
    bool marks views still allowed (all by default). All ``V^K`` choices are scored at once, shot 0 the most
    significant digit as in the official search, so ties go to the same (first) choice.
    """
    *lead, K, V, D = views.shape
    views = views.reshape(-1, K, V, D)
    B = views.shape[0]
    grids = torch.meshgrid(*[torch.arange(V, device=views.device)] * K, indexing="ij")
    combos = torch.stack([g.flatten() for g in grids], 1)  # [M, K] view index per shot
    sims = torch.einsum("bkvd,blwd->bkvlw", views, views)  # [B, K, V, K, V]
    shot = torch.arange(K, device=views.device)
    pairs = sims[  # [B, M, K, K]: the cosine between shot k's and shot l's chosen views, every ordered pair
        torch.arange(B, device=views.device)[:, None, None, None],
        shot[None, None, :, None],
        combos[None, :, :, None],
        shot[None, None, None, :],
        combos[None, :, None, :],
    ]
    total = pairs.masked_fill(torch.eye(K, dtype=torch.bool, device=views.device), 0).sum((-1, -2))
    if available is not None:
        allowed = available.reshape(B, K, V)[:, shot[None, :], combos].all(-1)  # [B, M]
        total = total.masked_fill(~allowed, float("-inf"))
    return combos[total.argmax(-1)].view(*lead, K)


def class_prototypes(views: Tensor) -> Tensor:
    """``[..., V, D]`` prototypes from support views ``[..., K, V, D]`` (module docstring), one class per leading
    index; unweighted (:func:`soc_logits` applies ``alpha``)."""
    *lead, K, V, D = views.shape
    if K == 1:
        return views[..., 0, :, :]
    available = torch.ones(*lead, K, V, dtype=torch.bool, device=views.device)
    protos = []
    for _ in range(V - 1):  # the official search rounds; each is vectorised over classes and combinations
        pick = best_combination(views, available)  # [..., K]
        chosen = views.gather(-2, pick[..., None, None].expand(*lead, K, 1, D)).squeeze(-2)  # [..., K, D]
        protos.append(F.normalize(chosen.mean(-2), dim=-1))
        available = available.scatter(-1, pick[..., None], False)
    protos.append(protos[-1])  # the official V-th prototype: a copy of the last one
    return torch.stack(protos, -2)


def _similarities(protos: Tensor, queries: Tensor, alpha: float) -> Tensor:
    """``[Q, C, P, V]`` cosines of prototype rows (weighted ``alpha^p``) and query views."""
    weights = alpha ** torch.arange(protos.shape[1], dtype=protos.dtype, device=protos.device)
    return torch.einsum("cpd,qvd->qcpv", protos, queries) * weights[None, None, :, None]


def greedy_match(protos: Tensor, queries: Tensor, alpha: float = 1.0, beta: float = 0.8) -> Tensor:
    """Logits ``[Q, C]`` of query views ``[Q, V, D]`` against class prototypes ``[C, P, D]`` by the greedy matching
    (module docstring): ``min(P, V)`` times the global maximum, then its row and column deleted."""
    sims = _similarities(protos, queries, alpha)
    Q, C, P, V = sims.shape
    flat = sims.reshape(Q, C, P * V)
    score = torch.zeros(Q, C, dtype=sims.dtype, device=sims.device)
    rows = torch.arange(P * V, device=sims.device) // V
    cols = torch.arange(P * V, device=sims.device) % V
    for t in range(min(P, V)):
        best, where = flat.max(-1)
        score += F.relu(best) * beta**t
        gone = (rows[None, None] == rows[where][..., None]) | (cols[None, None] == cols[where][..., None])
        flat = flat.masked_fill(gone, float("-inf"))
    return score


def reference_match(protos: Tensor, queries: Tensor, alpha: float = 1.0, beta: float = 0.8) -> Tensor:
    """Logits ``[Q, C]`` of query views ``[Q, V, D]`` against class prototypes ``[C, V, D]`` as the released
    ``SOC.py`` scores them (module docstring): ``relu(m_0) + sum_t beta^t relu(u_(t))`` with ``m_0`` the global
    maximum at ``(r_0, c_0)`` and ``u_(1) >= ... >= u_(V-1)`` the values ``S[r_i, c_i]`` of the ``i``-th row other
    than ``r_0`` paired with the ``i``-th column other than ``c_0``, sorted. No loop: one gather and one sort."""
    sims = _similarities(protos, queries, alpha)
    Q, C, P, V = sims.shape
    if P != V:
        raise ValueError(f"reference SOC matching needs as many prototypes as query views (the official square "
                         f"matrix), got {P} prototypes and {V} views; use soc_matching='greedy'")  # fmt: skip
    first, where = sims.reshape(Q, C, V * V).max(-1)
    i = torch.arange(V - 1, device=sims.device)
    rows = i + (i >= (where // V)[..., None]).long()  # [Q, C, V-1]: the remaining rows, in order
    cols = i + (i >= (where % V)[..., None]).long()  # the remaining columns, in order, paired with the rows
    paired = sims.reshape(Q, C, V * V).gather(-1, rows * V + cols)
    rest = paired.sort(-1, descending=True).values
    decay = beta ** torch.arange(1, V, dtype=sims.dtype, device=sims.device)
    return F.relu(first) + (F.relu(rest) * decay).sum(-1)


def soc_logits(support: Tensor, query: Tensor, n_way: int, k_shot: int, alpha: float = 1.0, beta: float = 0.8,
               matching: SocMatching = "reference") -> Tensor:  # fmt: skip
    """Episode logits ``[Q, N]`` from support views ``[N * K, V, D]`` (class-major: ``datamodules.episodes``; the
    official code's support is shot-major, reorder it first) and query views ``[Q, V, D]``; features are
    L2-normalised here. ``matching``: ``reference`` (the released code, default) or ``greedy`` (the paper's
    description); module docstring. ``alpha`` weights the K-shot prototypes only: 1-shot views are unordered and the
    official code leaves them unweighted."""
    if matching not in SOC_MATCHINGS:
        raise ValueError(f"SOC matching must be one of {SOC_MATCHINGS}, got {matching!r}")
    support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    protos = class_prototypes(support.view(n_way, k_shot, *support.shape[1:]))
    match = reference_match if matching == "reference" else greedy_match
    return match(protos, query, alpha if k_shot > 1 else 1.0, beta)
