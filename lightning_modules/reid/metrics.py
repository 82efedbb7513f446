"""Video person re-identification metrics: CMC rank-k, mAP and mINP under the Market-1501 / MARS protocol.

The protocol is the one of torchreid's and fast-reid's ``eval_market1501``, which STT (Zhang et al. 2021, arXiv
2103.16469) and the other MARS papers report (MARS uses the Market-1501 protocol on tracklets):

* every query ranks the whole gallery by ascending distance (stable sort, so ties keep gallery order);
* gallery entries with the query's identity **and** the query's camera are removed from its list (they are the
  same-camera "junk" the protocol does not score); entries of other identities seen by the same camera stay;
* a query with no remaining match is skipped (``num_valid`` counts the queries that were not);
* CMC at rank k: the fraction of valid queries whose first match lies within the first k positions of the list
  after removal; AP: the mean over the query's matches of the precision at each match's position; INP (Ye et al.
  2021): the number of matches divided by the (1-based) position of the last, hardest match.

Positions are counted after removal. Distances are squared euclidean (as torchreid's ``compute_distance_matrix``)
or cosine distances ``1 - cos``; squaring does not change a ranking, only re-ranking sees the difference (see
:mod:`lightning_modules.reid.rerank`, which squares its input distances as the reference implementation does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_modules.reid.rerank import k_reciprocal_rerank

_STATES = ("features", "pids", "camids", "is_query", "index")


def evaluate_rank(
    distmat: Tensor,
    q_pids: Tensor,
    g_pids: Tensor,
    q_camids: Tensor,
    g_camids: Tensor,
    max_rank: int = 20,
    chunk_size: int = 1024,
) -> dict[str, Tensor | int]:
    """CMC, mAP and mINP of a query-gallery distance matrix under the Market-1501 / MARS protocol (module docstring).

    Vectorised over queries; ``chunk_size`` queries are ranked at a time to bound memory to ``chunk_size x G``.

    Args:
        distmat: ``[Q, G]`` distances (smaller is more similar).
        q_pids, g_pids: ``[Q]`` and ``[G]`` identity labels.
        q_camids, g_camids: ``[Q]`` and ``[G]`` camera labels.
        max_rank: length of the returned CMC curve; ranks past the end of a query's list keep its last value (1).
        chunk_size: queries ranked per step.

    Returns:
        ``{"cmc": [max_rank] float64 in [0, 1] (cmc[k-1] is rank-k), "mAP": float64 scalar, "mINP": float64 scalar,
        "num_valid": int}``, averaged over the ``num_valid`` queries with at least one match after removal.

    Raises:
        ValueError: on mismatched shapes, an empty query or gallery set, or when no query has a valid match.
    """
    distmat = torch.as_tensor(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be [Q, G], got {tuple(distmat.shape)}")
    num_q, num_g = distmat.shape
    device = distmat.device
    q_pids, q_camids = torch.as_tensor(q_pids, device=device), torch.as_tensor(q_camids, device=device)
    g_pids, g_camids = torch.as_tensor(g_pids, device=device), torch.as_tensor(g_camids, device=device)
    labelled = (("q_pids", q_pids, num_q), ("q_camids", q_camids, num_q))
    labelled += (("g_pids", g_pids, num_g), ("g_camids", g_camids, num_g))
    for name, labels, size in labelled:
        if labels.shape != (size,):
            raise ValueError(f"{name} must be [{size}] for a {num_q}x{num_g} distmat, got {tuple(labels.shape)}")
    if num_q == 0 or num_g == 0:
        raise ValueError(f"rank evaluation needs queries and a gallery, got {num_q} queries and {num_g} gallery items")
    if max_rank < 1:
        raise ValueError(f"max_rank must be positive, got {max_rank}")

    cmc_sum = torch.zeros(max_rank, dtype=torch.float64, device=device)
    ap_sum = torch.zeros((), dtype=torch.float64, device=device)
    inp_sum = torch.zeros((), dtype=torch.float64, device=device)
    num_valid = 0
    ranks = torch.arange(1, max_rank + 1, device=device)
    for start in range(0, num_q, chunk_size):
        stop = min(start + chunk_size, num_q)
        order = torch.argsort(distmat[start:stop], dim=1, stable=True)  # [C, G] gallery indices, nearest first
        same_pid = g_pids[order] == q_pids[start:stop, None]
        same_cam = g_camids[order] == q_camids[start:stop, None]
        keep = ~(same_pid & same_cam)  # the protocol's junk: same identity seen by the query's own camera
        match = same_pid & keep
        position = keep.long().cumsum(dim=1)  # 1-based position after removal (meaningful where keep)
        num_match = match.sum(dim=1)
        valid = num_match > 0
        if not bool(valid.any()):
            continue
        match, position, num_match = match[valid], position[valid], num_match[valid]
        num_valid += int(valid.sum())

        big = torch.iinfo(torch.long).max
        first = torch.where(match, position, big).amin(dim=1)  # position of the easiest match
        last = torch.where(match, position, 0).amax(dim=1)  # position of the hardest match
        cmc_sum += (first[:, None] <= ranks[None, :]).double().sum(dim=0)

        hits_so_far = match.double().cumsum(dim=1)
        precision = torch.where(match, hits_so_far / position.double(), 0.0)
        ap_sum += (precision.sum(dim=1) / num_match.double()).sum()
        inp_sum += (num_match.double() / last.double()).sum()

    if num_valid == 0:
        raise ValueError(
            f"no query has a valid match: {num_q} queries, {num_g} gallery items, 0 queries with a gallery entry of "
            "their identity from another camera"
        )
    return {"cmc": cmc_sum / num_valid, "mAP": ap_sum / num_valid, "mINP": inp_sum / num_valid, "num_valid": num_valid}


def pairwise_distance(x: Tensor, y: Tensor, distance: Literal["euclidean", "cosine"] = "euclidean") -> Tensor:
    """``[N, M]`` distances between ``x [N, D]`` and ``y [M, D]``.

    ``"euclidean"`` is the **squared** euclidean distance ``||x||^2 + ||y||^2 - 2 x.y`` clamped at 0 (torchreid's
    convention); ``"cosine"`` is ``1 - cos(x, y)``. On l2-normalised features the squared euclidean distance is
    ``2 (1 - cos)``, so both give the same ranking.
    """
    if distance == "euclidean":
        sq = (x * x).sum(dim=1, keepdim=True) + (y * y).sum(dim=1)[None, :]
        return (sq - 2.0 * x @ y.T).clamp_min_(0.0)
    if distance == "cosine":
        return 1.0 - F.normalize(x, dim=1) @ F.normalize(y, dim=1).T
    raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")


def _first_of_each(keys: Tensor) -> Tensor:
    """Indices (ascending) of the first occurrence of every distinct value of ``keys [N]``."""
    unique, inverse = torch.unique(keys, return_inverse=True)
    positions = torch.arange(keys.numel(), device=keys.device)
    first = torch.full((unique.numel(),), keys.numel(), dtype=torch.long, device=keys.device)
    first.scatter_reduce_(0, inverse, positions, reduce="amin", include_self=True)
    return first.sort().values


class ReIDMetrics(Metric):
    """Rank-k (CMC), mAP and mINP of query tracklets against a gallery, as a DDP-safe torchmetrics ``Metric``.

    :meth:`update` stores a batch of tracklet features with their identity, camera, query/gallery flag and global
    index in their split; list states are concatenated across ranks. :meth:`compute` keeps one copy per
    ``(is_query, index)`` (a ``DistributedSampler`` pads ranks by repeating samples; the first copy gathered is
    kept), optionally l2-normalises the features, builds the query-gallery distance matrix (:func:`pairwise_distance`:
    squared euclidean or cosine), optionally applies k-reciprocal re-ranking (:func:`k_reciprocal_rerank`, on the
    query-query and gallery-gallery distances of the same kind) and scores it with :func:`evaluate_rank`.

    Args:
        ranks: the reported CMC ranks (distinct positive integers), keys ``rank{k}``.
        distance: ``"euclidean"`` (squared, torchreid's convention) or ``"cosine"``.
        normalize: l2-normalise the features before computing distances.
        rerank: apply k-reciprocal re-ranking with ``k1``, ``k2`` and ``lambda_value``.
        kwargs: passed to :class:`torchmetrics.Metric` (``compute_on_cpu``, ``process_group``, ...).

    :meth:`compute` returns ``{"rank1", "rank5", ..., "mAP", "mINP"}`` as float32 percentages (0-100).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    features: list[Tensor] | Tensor
    pids: list[Tensor] | Tensor
    camids: list[Tensor] | Tensor
    is_query: list[Tensor] | Tensor
    index: list[Tensor] | Tensor

    def __init__(
        self,
        ranks: Sequence[int] = (1, 5, 10, 20),
        distance: Literal["euclidean", "cosine"] = "euclidean",
        normalize: bool = True,
        rerank: bool = False,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        ranks = tuple(int(r) for r in ranks)
        if not ranks or any(r < 1 for r in ranks) or len(set(ranks)) != len(ranks):
            raise ValueError(f"ranks must be distinct positive integers, got {ranks}")
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
        self.ranks = ranks
        self.distance = distance
        self.normalize = normalize
        self.rerank = rerank
        self.k1, self.k2, self.lambda_value = k1, k2, lambda_value
        for name in _STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, features: Tensor, pids: Tensor, camids: Tensor, is_query: Tensor, index: Tensor) -> None:
        """Store a batch.

        Args:
            features: ``[B, D]`` tracklet features.
            pids: ``[B]`` identity labels.
            camids: ``[B]`` camera labels.
            is_query: ``[B]`` bool, True for query tracklets, False for gallery ones.
            index: ``[B]`` non-negative index of the tracklet in its split (query or gallery), used to de-duplicate.
        """
        if features.ndim != 2:
            raise ValueError(f"features must be [B, D], got {tuple(features.shape)}")
        rows = features.shape[0]
        for name, value in (("pids", pids), ("camids", camids), ("is_query", is_query), ("index", index)):
            if value.shape != (rows,):
                raise ValueError(f"{name} must be [{rows}], got {tuple(value.shape)}")
        if bool((index < 0).any()):
            raise ValueError("index must be non-negative")
        self.features.append(features.detach().to(device=self.device, dtype=torch.float32))
        self.pids.append(pids.detach().to(device=self.device, dtype=torch.long))
        self.camids.append(camids.detach().to(device=self.device, dtype=torch.long))
        self.is_query.append(is_query.detach().to(device=self.device, dtype=torch.bool))
        self.index.append(index.detach().to(device=self.device, dtype=torch.long))

    def compute(self) -> dict[str, Tensor]:
        """Rank-k, mAP and mINP in percent over everything gathered (one copy per ``(is_query, index)``).

        Raises:
            ValueError: before any update, with no query or no gallery tracklet, or when no query has a match.
        """
        features, pids, camids, is_query, _ = self._gathered()
        qf, gf = features[is_query], features[~is_query]
        distmat = pairwise_distance(qf, gf, self.distance)
        if self.rerank:
            distmat = k_reciprocal_rerank(
                distmat,
                pairwise_distance(qf, qf, self.distance),
                pairwise_distance(gf, gf, self.distance),
                k1=self.k1,
                k2=self.k2,
                lambda_value=self.lambda_value,
            )
        result = evaluate_rank(
            distmat, pids[is_query], pids[~is_query], camids[is_query], camids[~is_query], max_rank=max(self.ranks)
        )
        out = {f"rank{r}": (100.0 * result["cmc"][r - 1]).float() for r in self.ranks}
        out["mAP"] = (100.0 * result["mAP"]).float()
        out["mINP"] = (100.0 * result["mINP"]).float()
        return out

    def _gathered(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The stored ``features, pids, camids, is_query, index``, one copy per ``(is_query, index)``, features
        l2-normalised when ``normalize``."""
        if isinstance(self.features, list) and not self.features:
            raise ValueError("ReIDMetrics.compute called before any update")
        features, pids, camids = dim_zero_cat(self.features), dim_zero_cat(self.pids), dim_zero_cat(self.camids)
        is_query, index = dim_zero_cat(self.is_query), dim_zero_cat(self.index)
        keep = _first_of_each(index * 2 + is_query.long())
        features, pids, camids, is_query, index = features[keep], pids[keep], camids[keep], is_query[keep], index[keep]
        num_q, num_g = int(is_query.sum()), int((~is_query).sum())
        if num_q == 0 or num_g == 0:
            raise ValueError(f"re-ID evaluation needs query and gallery tracklets, got {num_q} and {num_g}")
        if self.normalize:
            features = F.normalize(features, dim=1)
        return features, pids, camids, is_query, index

    def ranked_gallery(self, num_queries: int, top: int = 5) -> list[tuple[int, list[int], Tensor]]:
        """For the ``num_queries`` queries of smallest ``index``: ``(query index, the ``top`` nearest gallery
        indices, correct [top] bool)``, with the gallery entries of the query's identity and camera left out as in
        :func:`evaluate_rank` (plain distances, without re-ranking). For pictures of the ranked lists."""
        features, pids, camids, is_query, index = self._gathered()
        q_order = index[is_query].argsort()[:num_queries]
        qf, q_pids, q_cams, q_index = (x[is_query][q_order] for x in (features, pids, camids, index))
        gf, g_pids, g_cams, g_index = (x[~is_query] for x in (features, pids, camids, index))
        distmat = pairwise_distance(qf, gf, self.distance)
        junk = (q_pids[:, None] == g_pids[None]) & (q_cams[:, None] == g_cams[None])
        order = distmat.masked_fill(junk, float("inf")).argsort(dim=1, stable=True)[:, :top]
        return [
            (int(q_index[i]), g_index[order[i]].tolist(), g_pids[order[i]] == q_pids[i]) for i in range(len(q_index))
        ]
