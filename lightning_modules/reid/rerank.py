"""k-reciprocal encoding re-ranking (Zhong, Zheng, Cao & Li, CVPR 2017, "Re-ranking Person Re-identification with
k-reciprocal Encoding"), with the semantics of the authors' widely used Python implementation (``re_ranking`` of
zhunzhong07/person-re-ranking, as shipped in torchreid's ``utils/rerank.py``), vectorised with torch.

With ``N = Q + G`` samples (queries first) and the input distance blocks:

1. ``D = [[q_q, q_g], [q_g^T, g_g]] ** 2`` (the reference squares its input distances; with torchreid's squared
   euclidean input this is the 4th power of the euclidean distance), then ``D' = (D / colmax(D))^T``, i.e.
   ``D'[i, j] = D[j, i] / max_k D[k, i]``; for the symmetric ``D`` this is row ``i`` divided by its maximum, so
   ``D'`` lies in ``[0, 1]`` and is no longer symmetric. Everything below uses ``D'``.
2. ``rank[i]``: the samples by ascending ``D'[i]`` (stable sort; ``rank[i, 0]`` is normally ``i`` itself).
3. ``R(i, k)``: the members ``j`` of ``rank[i, :k+1]`` with ``i`` in ``rank[j, :k+1]`` (k-reciprocal neighbours).
4. ``R*(i)``: ``R(i, k1)`` united with ``R(j, h)``, ``h = round(k1 / 2)`` (half to even, as ``np.around``), for
   every ``j`` in ``R(i, k1)`` with ``|R(j, h) & R(i, k1)| > 2/3 |R(j, h)|``.
5. ``V[i, j] = exp(-D'[i, j]) / sum_{j' in R*(i)} exp(-D'[i, j'])`` for ``j`` in ``R*(i)``, 0 elsewhere.
6. Local query expansion (when ``k2 != 1``): ``V[i] <- mean of V[rank[i, :k2]]``.
7. Jaccard distance ``J[i, j] = 1 - s / (2 - s)`` with ``s = sum_k min(V[i, k], V[j, k])`` (rows of ``V`` sum to
   1, so ``2 - s`` is ``sum_k max``), computed for query rows against gallery rows through the sparsity of ``V``
   (the reference's inverted index): every pair of non-zeros sharing a column adds its minimum.
8. Result: ``(1 - lambda) J + lambda D'`` on the query-gallery block ``[Q, G]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

_ROW_CHUNK = 1024  # rows processed per step for the [rows, N] and [rows, k, k] intermediates
_PAIR_BUDGET = 1 << 24  # non-zero pairs joined per step in the Jaccard accumulation


def _leading_ranks(dist: Tensor, width: int) -> Tensor:
    """The first ``width`` columns of ``argsort(dist, dim=1, stable=True)``, ``[N, width]``, sorted chunk by chunk."""
    out = torch.empty(dist.shape[0], width, dtype=torch.long, device=dist.device)
    for start in range(0, dist.shape[0], _ROW_CHUNK):
        stop = min(start + _ROW_CHUNK, dist.shape[0])
        out[start:stop] = torch.argsort(dist[start:stop], dim=1, stable=True)[:, :width]
    return out


def _reciprocal(neighbours: Tensor) -> Tensor:
    """``[N, k+1]`` bool: whether ``neighbours[i, c]`` (``rank[i, :k+1]``) has ``i`` among its own ``k+1`` nearest."""
    rows = torch.arange(neighbours.shape[0], device=neighbours.device)
    return (neighbours[neighbours] == rows[:, None, None]).any(dim=-1)


def _expanded_sets(rank: Tensor, k1: int) -> Tensor:
    """``[N, N]`` bool membership of the expanded k-reciprocal sets ``R*(i)`` (steps 3-4 of the module docstring)."""
    n = rank.shape[0]
    half = round(k1 / 2)  # banker's rounding, as np.around(k1 / 2.)
    fwd, fwd_half = rank[:, : k1 + 1], rank[:, : half + 1]
    in_r = _reciprocal(fwd)  # [N, k1+1]: R(i, k1) as a mask over fwd[i]
    in_r_half = _reciprocal(fwd_half)  # [N, h+1]: R(j, h) as a mask over fwd_half[j]
    members = torch.zeros(n, n, dtype=torch.bool, device=rank.device)
    for start in range(0, n, _ROW_CHUNK):
        stop = min(start + _ROW_CHUNK, n)
        f, r = fwd[start:stop], in_r[start:stop]  # [C, k1+1]
        cand_set, cand_mask = fwd_half[f], in_r_half[f]  # [C, k1+1, h+1]: R(j, h) of every forward neighbour j
        # |R(j, h) & R(i, k1)|: members of R(j, h) found among the reciprocal members of fwd[i]
        found = ((cand_set[..., None] == f[:, None, None, :]) & r[:, None, None, :]).any(dim=-1)
        common = (found & cand_mask).sum(dim=-1).double()
        size = cand_mask.sum(dim=-1).double()
        accept = r & (common > (2.0 / 3.0) * size)  # [C, k1+1], the same float test as the reference
        block = members[start:stop]
        block.scatter_(1, f, r)  # R(i, k1) itself (r is False where fwd[i, c] is not reciprocal)
        add = accept[..., None] & cand_mask  # [C, k1+1, h+1]
        rows = torch.arange(stop - start, device=rank.device)[:, None, None].expand_as(add)
        block[rows[add], cand_set[add]] = True
    return members


def _jaccard(v: Tensor, num_q: int) -> Tensor:
    """``[Q, G]`` Jaccard distance ``1 - s / (2 - s)``, ``s[i, j] = sum_k min(v[i, k], v[Q + j, k])``, joining the
    non-zeros of the query rows and of the gallery rows column by column (the inverted index), in pair chunks."""
    num_g = v.shape[0] - num_q
    g_col, g_row = v[num_q:].T.nonzero(as_tuple=True)  # sorted by column, then gallery row
    g_val = v[num_q:][g_row, g_col]
    per_col = torch.bincount(g_col, minlength=v.shape[1])
    col_start = per_col.cumsum(0) - per_col
    q_row, q_col = v[:num_q].nonzero(as_tuple=True)
    q_val = v[q_row, q_col]
    pairs = per_col[q_col]  # gallery non-zeros sharing each query non-zero's column
    cum = pairs.cumsum(0)
    s = torch.zeros(num_q * num_g, dtype=v.dtype, device=v.device)
    start, total = 0, q_row.numel()
    while start < total:
        done = int(cum[start - 1]) if start else 0
        stop = max(int(torch.searchsorted(cum, done + _PAIR_BUDGET, right=True)), start + 1)
        count = pairs[start:stop]
        owner = torch.repeat_interleave(torch.arange(stop - start, device=v.device), count)
        offset = torch.arange(owner.numel(), device=v.device) - (count.cumsum(0) - count)[owner]
        g_pos = col_start[q_col[start:stop]][owner] + offset
        contrib = torch.minimum(q_val[start:stop][owner], g_val[g_pos])
        s.index_add_(0, q_row[start:stop][owner] * num_g + g_row[g_pos], contrib)
        start = stop
    s = s.view(num_q, num_g)
    return 1.0 - s / (2.0 - s)


def k_reciprocal_rerank(
    q_g_dist: Tensor,
    q_q_dist: Tensor,
    g_g_dist: Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> Tensor:
    """Re-ranked query-gallery distances by k-reciprocal encoding (module docstring for the exact steps).

    Args:
        q_g_dist: ``[Q, G]`` query-gallery distances.
        q_q_dist: ``[Q, Q]`` query-query distances.
        g_g_dist: ``[G, G]`` gallery-gallery distances.
        k1: size of the k-reciprocal neighbourhood (paper: 20).
        k2: size of the local query expansion (paper: 6; 1 disables it).
        lambda_value: weight of the original (normalised, squared-input) distance (paper: 0.3).

    Returns:
        ``[Q, G]`` distances, ``(1 - lambda) * jaccard + lambda * D'``, in the input's floating dtype (float32 for
        integer input). Memory is ``O((Q + G)^2)``, as the reference's dense ``V``.
    """
    num_q, num_g = q_g_dist.shape
    if q_q_dist.shape != (num_q, num_q) or g_g_dist.shape != (num_g, num_g):
        shapes = f"q_g {tuple(q_g_dist.shape)}, q_q {tuple(q_q_dist.shape)}, g_g {tuple(g_g_dist.shape)}"
        raise ValueError(f"distance blocks do not fit together: {shapes}")
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be positive, got k1={k1}, k2={k2}")
    n = num_q + num_g
    dtype = q_g_dist.dtype if q_g_dist.is_floating_point() else torch.float32
    dist = torch.cat([torch.cat([q_q_dist, q_g_dist], dim=1), torch.cat([q_g_dist.T, g_g_dist], dim=1)], dim=0).to(
        dtype
    )
    dist = dist.square()
    dist = (dist / dist.amax(dim=0, keepdim=True)).T.contiguous()  # row-max normalised for a symmetric input
    rank = _leading_ranks(dist, min(max(k1 + 1, k2), n))  # slices past n truncate, as numpy's do in the reference

    members = _expanded_sets(rank, k1)
    v = torch.where(members, torch.exp(-dist), 0.0)
    v /= v.sum(dim=1, keepdim=True)
    del members
    if k2 != 1:
        expanded = torch.empty_like(v)
        for start in range(0, n, _ROW_CHUNK):
            stop = min(start + _ROW_CHUNK, n)
            expanded[start:stop] = v[rank[start:stop, :k2]].mean(dim=1)
        v = expanded

    jaccard = _jaccard(v, num_q)
    return (1.0 - lambda_value) * jaccard + lambda_value * dist[:num_q, num_q:]
