"""Video re-ID evaluation: hand-computed CMC / AP / INP under the Market-1501 protocol, the Metric (updates,
de-duplication, cosine vs euclidean), k-reciprocal re-ranking against a loop reference, and the ranked-list figure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_modules.reid.figures import ranked_list_figure, ranked_lists_grid
from lightning_modules.reid.metrics import ReIDMetrics, evaluate_rank, pairwise_distance
from lightning_modules.reid.rerank import k_reciprocal_rerank

# Gallery of the hand-computed case: (pid, camid) per entry.
GALLERY = [(1, 0), (1, 1), (2, 0), (4, 0), (1, 2), (3, 0), (2, 1), (2, 2)]
# Queries: A = (pid 1, cam 0), B = (pid 2, cam 1), C = (pid 3, cam 0).
QUERIES = [(1, 0), (2, 1), (3, 0)]
DISTMAT = torch.tensor(
    [
        # A ranks g0 g3 g1 g2 g4 g5 g6 g7
        [0.1, 0.3, 0.4, 0.2, 0.5, 0.6, 0.7, 0.8],
        # B ranks g6 g2 g0 g1 g3 g7 g4 g5
        [0.25, 0.35, 0.15, 0.45, 0.65, 0.75, 0.05, 0.55],
        # C: its only same-pid entry g5 is from its own camera
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.1, 0.3, 0.2],
    ],
    dtype=torch.float64,
)


def _labels(pairs: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([p for p, _ in pairs]), torch.tensor([c for _, c in pairs])


def test_evaluate_rank_hand_computed() -> None:
    q_pids, q_cams = _labels(QUERIES)
    g_pids, g_cams = _labels(GALLERY)
    result = evaluate_rank(DISTMAT, q_pids, g_pids, q_cams, g_cams, max_rank=5)
    # A (pid 1, cam 0): g0 is pid 1 on cam 0 -> removed. List after removal: g3 x, g1 ok, g2 x, g4 ok, g5 x, g6 x,
    #   g7 x. Matches at positions 2 and 4: CMC = 0 at rank 1, 1 from rank 2; AP = (1/2 + 2/4) / 2 = 0.5;
    #   INP = 2 matches / position 4 of the last one = 0.5.
    # B (pid 2, cam 1): g6 is pid 2 on cam 1 -> removed. List: g2 ok, g0 x, g1 x, g3 x, g7 ok, g4 x, g5 x.
    #   Matches at 1 and 5: CMC = 1 from rank 1; AP = (1/1 + 2/5) / 2 = 0.7; INP = 2 / 5 = 0.4.
    # C (pid 3, cam 0): g5, its only pid-3 entry, is on cam 0 -> removed, no match left: skipped.
    assert result["num_valid"] == 2
    assert result["cmc"].tolist() == [0.5, 1.0, 1.0, 1.0, 1.0]
    assert result["mAP"].item() == pytest.approx((0.5 + 0.7) / 2, abs=1e-12)
    assert result["mINP"].item() == pytest.approx((0.5 + 0.4) / 2, abs=1e-12)
    assert result["cmc"].dtype == torch.float64


def test_evaluate_rank_skips_invalid_queries_and_chunks() -> None:
    q_pids, q_cams = _labels(QUERIES)
    g_pids, g_cams = _labels(GALLERY)
    full = evaluate_rank(DISTMAT, q_pids, g_pids, q_cams, g_cams, max_rank=3)
    valid_only = evaluate_rank(DISTMAT[:2], q_pids[:2], g_pids, q_cams[:2], g_cams, max_rank=3)
    chunked = evaluate_rank(DISTMAT, q_pids, g_pids, q_cams, g_cams, max_rank=3, chunk_size=1)
    for other in (valid_only, chunked):
        assert other["num_valid"] == 2
        for key in ("cmc", "mAP", "mINP"):
            torch.testing.assert_close(other[key], full[key], rtol=0, atol=1e-12)
    # CMC past the end of the gallery keeps its last value
    long = evaluate_rank(DISTMAT, q_pids, g_pids, q_cams, g_cams, max_rank=12)
    assert long["cmc"][-4:].tolist() == [1.0] * 4
    with pytest.raises(ValueError, match="no query has a valid match: 1 queries, 8 gallery"):
        evaluate_rank(DISTMAT[2:], q_pids[2:], g_pids, q_cams[2:], g_cams)


def test_evaluate_rank_ties_keep_gallery_order() -> None:
    # equal distances: the stable sort keeps gallery order, so the match (g1) comes second
    q_pids, g_pids, q_cams, g_cams = torch.tensor([7]), torch.tensor([5, 7, 6]), torch.tensor([0]), torch.ones(3)
    result = evaluate_rank(torch.zeros(1, 3), q_pids, g_pids, q_cams, g_cams)
    assert result["cmc"][:2].tolist() == [0.0, 1.0]
    assert result["mAP"].item() == pytest.approx(0.5)


def _random_set(seed: int, num_q: int = 7, num_g: int = 23, dim: int = 12) -> dict[str, torch.Tensor]:
    """Random tracklet features around identity centres; queries on camera 0, gallery on cameras 0-2."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(5, dim, generator=gen)
    q_pids = torch.arange(num_q) % 5
    g_pids = torch.randint(0, 5, (num_g,), generator=gen)
    g_pids[:5] = torch.arange(5)
    feats = torch.cat([centres[q_pids], centres[g_pids]]) + 0.9 * torch.randn(num_q + num_g, dim, generator=gen)
    return {
        "features": feats,
        "pids": torch.cat([q_pids, g_pids]),
        "camids": torch.cat([torch.zeros(num_q, dtype=torch.long), torch.randint(0, 3, (num_g,), generator=gen)]),
        "is_query": torch.cat([torch.ones(num_q, dtype=torch.bool), torch.zeros(num_g, dtype=torch.bool)]),
        "index": torch.cat([torch.arange(num_q), torch.arange(num_g)]),
    }


def _functional(data: dict[str, torch.Tensor], ranks=(1, 5, 10, 20)) -> dict[str, float]:
    """Percentages from :func:`evaluate_rank` on l2-normalised features and squared euclidean distances."""
    feats = torch.nn.functional.normalize(data["features"].double(), dim=1)
    q, g = data["is_query"], ~data["is_query"]
    result = evaluate_rank(
        pairwise_distance(feats[q], feats[g]), data["pids"][q], data["pids"][g], data["camids"][q], data["camids"][g]
    )
    out = {f"rank{r}": 100 * result["cmc"][r - 1].item() for r in ranks}
    out.update(mAP=100 * result["mAP"].item(), mINP=100 * result["mINP"].item())
    return out


def _assert_close(actual: dict[str, torch.Tensor], expected: dict[str, float]) -> None:
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert actual[key].dtype == torch.float32
        assert actual[key].item() == pytest.approx(value, abs=1e-4), key


def test_metric_two_updates_match_functional() -> None:
    data = _random_set(0)
    order = torch.randperm(data["pids"].numel(), generator=torch.Generator().manual_seed(1))
    metric = ReIDMetrics()
    for part in order.chunk(2):
        metric.update(**{key: value[part] for key, value in data.items()})
    result = metric.compute()
    expected = _functional(data)
    _assert_close(result, expected)
    assert 0.0 <= expected["mINP"] <= expected["mAP"] <= 100.0


def test_metric_deduplicates_by_split_and_index() -> None:
    data = _random_set(2)
    once = ReIDMetrics()
    once.update(**data)
    # a DistributedSampler pads ranks by repeating samples: the query/gallery items with index < 4 arrive twice
    twice = ReIDMetrics()
    twice.update(**data)
    repeated = data["index"] < 4
    twice.update(**{key: value[repeated] for key, value in data.items()})
    _assert_close(twice.compute(), {key: value.item() for key, value in once.compute().items()})
    _assert_close(once.compute(), _functional(data))


def test_cosine_and_euclidean_agree_on_normalised_features() -> None:
    data = _random_set(3)
    feats = torch.nn.functional.normalize(data["features"].double(), dim=1)
    torch.testing.assert_close(pairwise_distance(feats, feats), 2 * pairwise_distance(feats, feats, "cosine"))
    results = []
    for distance in ("euclidean", "cosine"):
        metric = ReIDMetrics(distance=distance, ranks=(1, 5))
        metric.update(**data)
        results.append(metric.compute())
    assert list(results[0]) == ["rank1", "rank5", "mAP", "mINP"]
    _assert_close(results[1], {key: value.item() for key, value in results[0].items()})


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric ReIDMetrics was called before")
def test_metric_errors() -> None:
    data = _random_set(4)
    gallery = ~data["is_query"]
    metric = ReIDMetrics()
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    metric.update(**{key: value[gallery] for key, value in data.items()})
    with pytest.raises(ValueError, match="got 0 and 23"):
        metric.compute()
    no_match = ReIDMetrics()
    camids = data["camids"].clone()
    camids[:] = 0  # every tracklet on one camera: every same-identity entry is junk
    no_match.update(**{**data, "camids": camids})
    with pytest.raises(ValueError, match="7 queries, 23 gallery items, 0 queries"):
        no_match.compute()
    with pytest.raises(ValueError, match="distance"):
        ReIDMetrics(distance="manhattan")


# ------------------------------------------------------------------------------------------------ re-ranking


def _rerank_loop_reference(q_g, q_q, g_g, k1: int, k2: int, lambda_value: float) -> np.ndarray:
    """Plain loops over samples, sets and columns, in float64 (the algorithm of Zhong et al. 2017 as implemented by
    their reference code: squared input distances, each column divided by its maximum, then transposed)."""
    num_q = q_g.shape[0]
    full = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float64) ** 2
    n = full.shape[0]
    dist = np.array([[full[j, i] / max(full[:, i]) for j in range(n)] for i in range(n)])
    ranking = [list(np.argsort(dist[i], kind="stable")) for i in range(n)]

    def reciprocal(i: int, k: int) -> set[int]:
        return {int(j) for j in ranking[i][: k + 1] if i in ranking[j][: k + 1]}

    half = int(np.around(k1 / 2))
    weights = np.zeros((n, n))
    for i in range(n):
        base = reciprocal(i, k1)
        expanded = set(base)
        for j in base:
            candidate = reciprocal(j, half)
            if len(candidate & base) > 2 / 3 * len(candidate):
                expanded |= candidate
        total = sum(math.exp(-dist[i, j]) for j in expanded)
        for j in expanded:
            weights[i, j] = math.exp(-dist[i, j]) / total
    if k2 != 1:
        weights = np.array([[np.mean([weights[r, c] for r in ranking[i][:k2]]) for c in range(n)] for i in range(n)])
    out = np.zeros((num_q, n - num_q))
    for i in range(num_q):
        for j in range(n - num_q):
            shared = sum(min(weights[i, c], weights[num_q + j, c]) for c in range(n))
            jaccard = 1 - shared / (2 - shared)
            out[i, j] = (1 - lambda_value) * jaccard + lambda_value * dist[i, num_q + j]
    return out


@pytest.mark.parametrize(("k1", "k2", "lambda_value"), [(5, 3, 0.3), (5, 1, 0.3), (4, 6, 0.5), (20, 6, 0.3)])
def test_rerank_matches_loop_reference(k1: int, k2: int, lambda_value: float) -> None:
    gen = torch.Generator().manual_seed(k1 * 10 + k2)
    feats = torch.randn(21, 8, generator=gen, dtype=torch.float64)
    qf, gf = feats[:6], feats[6:]
    q_g, q_q, g_g = pairwise_distance(qf, gf), pairwise_distance(qf, qf), pairwise_distance(gf, gf)
    fast = k_reciprocal_rerank(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value)
    slow = _rerank_loop_reference(q_g.numpy(), q_q.numpy(), g_g.numpy(), k1, k2, lambda_value)
    assert fast.shape == (6, 15) and fast.dtype == torch.float64
    np.testing.assert_allclose(fast.numpy(), slow, rtol=0, atol=1e-6)
    # float32 input computes in float32
    fast32 = k_reciprocal_rerank(q_g.float(), q_q.float(), g_g.float(), k1=k1, k2=k2, lambda_value=lambda_value)
    assert fast32.dtype == torch.float32
    np.testing.assert_allclose(fast32.double().numpy(), slow, rtol=0, atol=1e-5)


def _ring(cx: float, cy: float, radius: float, count: int, phase: float) -> list[tuple[float, float]]:
    angles = [phase + 2 * math.pi * k / count for k in range(count)]
    return [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in angles]


def test_rerank_improves_a_query_on_a_cluster_boundary() -> None:
    # identity 0: a loose ring of 8 around the origin; identities 1 and 2: tight rings of 8 at x = +-2.6. Query 0
    # (identity 0) sits on the ring's edge towards identity 1, whose members come before most of its own ring; its
    # k-reciprocal neighbourhood overlaps its own ring's, not identity 1's, so re-ranking lifts its AP.
    gallery = _ring(0, 0, 1.2, 8, 0.0) + _ring(2.6, 0, 0.4, 8, 0.2) + _ring(-2.6, 0, 0.4, 8, 0.1)
    gf = torch.tensor(gallery, dtype=torch.float64)
    g_pids, g_cams = torch.arange(3).repeat_interleave(8), torch.arange(24) % 3 + 1
    qf = torch.tensor([(1.5, 0.05), (2.6, 0.05), (-2.6, -0.05)], dtype=torch.float64)
    q_pids, q_cams = torch.arange(3), torch.zeros(3, dtype=torch.long)
    before = pairwise_distance(qf, gf)
    after = k_reciprocal_rerank(before, pairwise_distance(qf, qf), pairwise_distance(gf, gf), k1=6, k2=3)

    def per_query_ap(distmat: torch.Tensor) -> list[float]:
        rows = [evaluate_rank(distmat[i : i + 1], q_pids[i : i + 1], g_pids, q_cams[:1], g_cams) for i in range(3)]
        return [float(row["mAP"]) for row in rows]

    ap_before, ap_after = per_query_ap(before), per_query_ap(after)
    assert ap_after[0] > ap_before[0] + 0.1  # about 0.49 -> 0.64
    assert ap_after[1:] == [1.0, 1.0] == ap_before[1:]

    # the Metric with rerank=True computes the same thing (features used as they are: normalize=False)
    metric = ReIDMetrics(ranks=(1,), normalize=False, rerank=True, k1=6, k2=3)
    metric.update(
        features=torch.cat([qf, gf]).float(),
        pids=torch.cat([q_pids, g_pids]),
        camids=torch.cat([q_cams, g_cams]),
        is_query=torch.arange(27) < 3,
        index=torch.cat([torch.arange(3), torch.arange(24)]),
    )
    expected = evaluate_rank(after, q_pids, g_pids, q_cams, g_cams)
    assert metric.compute()["mAP"].item() == pytest.approx(100 * expected["mAP"].item(), abs=1e-3)


# ------------------------------------------------------------------------------------------------ figures


def test_ranked_list_figure_layout_and_borders() -> None:
    h, w, border, gap = 6, 5, 2, 4
    # frame t of every tracklet is filled with 0.1 * t (query) or 0.05 + 0.1 * t (gallery), to find the picked ones
    query = (0.1 * torch.arange(5.0))[:, None, None, None].expand(5, 3, h, w)
    gallery = (0.05 + 0.1 * torch.arange(5.0))[None, :, None, None, None].expand(3, 5, 3, h, w)
    correct = torch.tensor([True, False, True])
    fig = ranked_list_figure(query, gallery, correct, frames_shown=4, border=border, gap=gap)
    block = 4 * w + 2 * border  # 4 frames and the outline
    assert fig.shape == (3, h + 2 * border, block + 3 * (gap + block))
    assert fig.dtype == torch.float32 and 0.0 <= fig.min() and fig.max() <= 1.0

    def colour(y: int, x: int) -> list[float]:
        return [round(v, 6) for v in fig[:, y, x].tolist()]

    grey, green, red, white = [0.5] * 3, [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0] * 3
    starts = [0] + [block + gap + r * (block + gap) for r in range(3)]
    for start, expected in zip(starts, [grey, green, red, green], strict=True):
        for y, x in [(0, start), (1, start + 1), (h + 2 * border - 1, start + block - 1), (border + 3, start)]:
            assert colour(y, x) == expected, (start, y, x)
        # 4 of 5 frames, evenly spaced: linspace(0, 4, 4) rounds to frames 0, 1, 3, 4
        offset = 0.0 if start == 0 else 0.05
        shown = [colour(border + 1, start + border + f * w + 2)[0] for f in range(4)]
        assert shown == pytest.approx([offset + 0.1 * t for t in (0, 1, 3, 4)])
    for start in starts[1:]:
        assert all(colour(y, start - g - 1) == white for y in range(h + 2 * border) for g in range(gap))

    # a grid of two rows of different widths, padded with white
    short = ranked_list_figure(query, gallery[:1], correct[:1], frames_shown=4, border=border, gap=gap)
    grid = ranked_lists_grid([fig, short], padding=3)
    assert grid.shape == (3, 2 * (h + 2 * border) + 3 * 3, fig.shape[2] + 2 * 3)
    assert torch.equal(grid[:, 3 : 3 + fig.shape[1], 3 : 3 + fig.shape[2]], fig)
    second = 3 + fig.shape[1] + 3
    assert torch.equal(grid[:, second : second + short.shape[1], 3 : 3 + short.shape[2]], short)
    assert bool((grid[:, second:, 3 + short.shape[2] :] == 1.0).all())
    assert bool((grid[:, :3] == 1.0).all())
