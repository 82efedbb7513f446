"""Shapley values and interactions: exact enumeration on games with known answers, Monte-Carlo estimates against the
exact values within sampling error (and shrinking with more samples), batching, and the neural estimator."""

from __future__ import annotations

import itertools

import pytest
import torch

from lightning_modules.retrieval.shapley import (
    NeuralShapleyEstimator,
    exact_group_shapley,
    exact_interaction,
    exact_shapley,
    mc_coalition_value,
    mc_interaction,
    mc_shapley,
)


def additive(weights: torch.Tensor):
    return lambda masks: (masks.to(weights.dtype) * weights).sum(-1)


def unanimity(members: list[int], n: int):
    need = torch.zeros(n, dtype=torch.bool)
    need[members] = True
    return lambda masks: (masks | ~need).all(-1).double()


def random_game(n: int, seed: int):
    """A random game with interactions: a table of payoffs over all 2**n coalitions, looked up by bitmask."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(2**n, generator=gen, dtype=torch.float64)
    table[0] = 0.0
    bits = 2 ** torch.arange(n)

    def v(masks: torch.Tensor) -> torch.Tensor:
        return table[(masks.long() * bits).sum(-1)]

    return v


def test_exact_shapley_of_known_games():
    w = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    torch.testing.assert_close(exact_shapley(additive(w), 4), w)
    # unanimity game on {0, 2}: the two members share the unit payoff, the others get nothing
    torch.testing.assert_close(
        exact_shapley(unanimity([0, 2], 4), 4), torch.tensor([0.5, 0, 0.5, 0], dtype=torch.float64)
    )


def test_exact_shapley_is_efficient_on_random_games():
    for seed in range(3):
        v = random_game(5, seed)
        phi = exact_shapley(v, 5)
        full = v(torch.ones(5, dtype=torch.bool)) - v(torch.zeros(5, dtype=torch.bool))
        assert phi.sum().item() == pytest.approx(full.item())


def test_exact_interaction_of_known_games():
    w = torch.tensor([0.5, -1.0, 2.0, 0.25, 1.0], dtype=torch.float64)
    assert exact_interaction(additive(w), 5, [0, 2, 3]) == pytest.approx(0.0, abs=1e-12)  # no cooperation
    # the unit {1, 3} earns 1 together and nothing apart: interaction 1
    assert exact_interaction(unanimity([1, 3], 5), 5, [1, 3]) == pytest.approx(1.0)
    # a pair that is half of a 4-member unanimity game: [S] and i each need the other two members
    # phi([S]) in {[S], 0, 2} = 1/3; phi(i) in {i, 0, 2} = 0 (the other member of S is absent) -> 1/3
    assert exact_interaction(unanimity([0, 1, 2, 3], 5), 5, [1, 3]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("n", [4, 6, 8])
def test_mc_interaction_agrees_with_enumeration_within_sampling_error(n):
    gen = torch.Generator().manual_seed(n)
    for seed in range(3):
        v = random_game(n, seed)
        coalition = sorted(torch.randperm(n, generator=gen)[: 1 + seed % 3].tolist())
        exact = exact_interaction(v, n, coalition)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[coalition] = True
        mean, stderr = mc_interaction(v, mask, 4000, generator=gen)
        assert abs(mean.item() - exact) < 4 * stderr.item() + 1e-6, (n, coalition, mean, stderr, exact)


@pytest.mark.parametrize("member_samples", [1, 2])
def test_member_sampling_is_unbiased(member_samples):
    """Drawing k members per sample (the cheap estimator for large regions) still agrees with enumeration."""
    n, gen = 7, torch.Generator().manual_seed(3)
    for seed, coalition in [(0, [0, 2, 3, 5]), (1, [1, 4, 6]), (2, [2])]:
        v = random_game(n, seed)
        exact = exact_interaction(v, n, coalition)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[coalition] = True
        mean, stderr = mc_interaction(v, mask, 6000, generator=gen, member_samples=member_samples)
        assert abs(mean.item() - exact) < 4 * stderr.item() + 1e-6, (coalition, mean, stderr, exact)


def test_mc_coalition_value_agrees_with_enumeration():
    n, gen = 6, torch.Generator().manual_seed(5)
    for seed, coalition in [(0, [1, 2]), (1, [0, 3, 5]), (2, [4])]:
        v = random_game(n, seed)
        rest = [[j] for j in range(n) if j not in coalition]
        exact = exact_group_shapley(v, n, rest + [coalition], len(rest))
        mask = torch.zeros(n, dtype=torch.bool)
        mask[coalition] = True
        mean, stderr = mc_coalition_value(v, mask, 4000, generator=gen)
        assert abs(mean.item() - exact) < 4 * stderr.item() + 1e-6, (coalition, mean, stderr, exact)
    # a unanimity game on {0, 1}: the unit [0, 1] alone earns the whole payoff
    mean, _ = mc_coalition_value(unanimity([0, 1], 4), torch.tensor([True, True, False, False]), 64)
    assert mean.item() == pytest.approx(1.0)


def test_member_sampling_calls_fewer_payoffs():
    shapes = []
    base = random_game(6, 0)

    def v(masks):
        shapes.append(masks.shape)
        return base(masks)

    mc_interaction(v, torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.bool), 8, member_samples=1)
    assert shapes == [(1, 8, 3, 6)]  # v(P + S), v(P), one v(P + {i}) per sample


def test_mc_error_shrinks_with_more_samples():
    n = 6
    errors = {}
    for samples in (50, 3200):
        err = []
        for seed in range(8):
            v = random_game(n, seed)
            gen = torch.Generator().manual_seed(100 + seed)
            mask = torch.tensor([1, 0, 1, 1, 0, 0], dtype=torch.bool)
            exact = exact_interaction(v, n, [0, 2, 3])
            err.append(abs(mc_interaction(v, mask, samples, generator=gen)[0].item() - exact))
        errors[samples] = sum(err) / len(err)
    assert errors[3200] < errors[50] / 3, errors  # ~ sqrt(64) = 8x in expectation


def test_mc_shapley_agrees_with_enumeration():
    v = random_game(6, 7)
    exact = exact_shapley(v, 6)
    mean, stderr = mc_shapley(v, 6, 4000, generator=torch.Generator().manual_seed(0))
    assert ((mean.double() - exact).abs() < 4 * stderr.double() + 1e-6).all(), (mean, exact, stderr)


def test_batched_coalitions_equal_one_by_one():
    v = random_game(6, 1)
    coalitions = torch.tensor(
        [[[1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0]], [[0, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 1]]], dtype=torch.bool
    )
    mean, stderr = mc_interaction(v, coalitions, 3000, generator=torch.Generator().manual_seed(0))
    assert mean.shape == (2, 2) and stderr.shape == (2, 2)
    for b, r in itertools.product(range(2), range(2)):
        members = coalitions[b, r].nonzero().flatten().tolist()
        assert abs(mean[b, r].item() - exact_interaction(v, 6, members)) < 4 * stderr[b, r].item() + 1e-6
    # a single-member coalition has zero interaction, exactly, for every sample
    assert mean[0, 1].item() == pytest.approx(0.0, abs=1e-6) and stderr[0, 1].item() == pytest.approx(0.0, abs=1e-6)


def test_mc_interaction_calls_the_payoff_once():
    calls = []
    base = random_game(5, 0)

    def v(masks):
        calls.append(masks.shape)
        return base(masks)

    mc_interaction(v, torch.tensor([[1, 1, 0, 0, 0], [0, 1, 1, 1, 0]], dtype=torch.bool), 16)
    assert calls == [(2, 16, 3 + 2, 5)]  # [coalitions, samples, k_max + 2, n]


def similarity_game(n: int, dim: int = 16, seed: int = 0):
    """LOUPE-like payoff: the cosine between the summed features of the kept players and a 'text' vector."""
    gen = torch.Generator().manual_seed(seed)
    feats, text = torch.randn(n, dim, generator=gen), torch.randn(dim, generator=gen)

    def v(masks: torch.Tensor) -> torch.Tensor:
        pooled = masks.float() @ feats
        return torch.nn.functional.cosine_similarity(pooled, text.expand_as(pooled), dim=-1).nan_to_num(0.0)

    return v


def test_neural_estimator_mean_approaches_the_sampled_targets():
    torch.manual_seed(0)
    n = 8
    v = similarity_game(n)
    coalitions = torch.rand(128, n) < 0.4
    coalitions[coalitions.sum(-1) == 0, 0] = True
    targets, stderr = mc_interaction(v, coalitions, 400, generator=torch.Generator().manual_seed(0))
    estimator = NeuralShapleyEstimator(n, hidden_dim=64, max_std=0.2)
    features = coalitions.float()
    opt = torch.optim.Adam(estimator.parameters(), lr=3e-3)
    before = (estimator(features)[0] - targets).pow(2).mean().item()
    for _ in range(2000):
        opt.zero_grad()
        estimator.loss(features, targets).backward()
        opt.step()
    mean, var = estimator(features)
    after = (mean - targets).pow(2).mean().item()
    assert after < 0.05 * before and after < 0.1 * targets.var().item(), (before, after)
    assert estimator.confident(var).float().mean() > 0.9  # a fitted target set is trusted


def test_relative_trust_rule_follows_the_spread_of_the_samples():
    estimator = NeuralShapleyEstimator(3, trust_ratio=0.5)  # max_std None: the relative rule
    var = torch.tensor([0.01, 0.09])  # predicted std 0.1 and 0.3
    assert not estimator.confident(var).any()  # nothing is trusted before sampling was seen
    targets = torch.tensor([0.0, 0.4, 0.8])  # std 0.4 -> threshold 0.2
    estimator.observe(targets, torch.tensor([0.05, 0.05, 0.05]))
    assert estimator.confident(var).tolist() == [True, False]
    assert estimator.noise_std.item() == pytest.approx(0.05)
    estimator.observe(torch.tensor([0.0, 0.0]), torch.zeros(2))  # spread 0.9 * 0.4 + 0.1 * 0 = 0.36
    assert estimator.threshold().item() == pytest.approx(0.18)
    assert NeuralShapleyEstimator(3, max_std=0.5).confident(var).all()  # an absolute threshold


def test_budget_caps_the_sampled_share_least_confident_first():
    estimator = NeuralShapleyEstimator(3, max_std=0.05, budget=0.25, warmup=1)  # nothing below std 0.05 here
    var = torch.tensor([0.04, 0.01, 0.09, 0.0225, 0.0625, 0.16, 0.0001, 0.0016])  # std .2 .1 .3 .15 .25 .4 .01 .04
    assert estimator.to_sample(var, 0.0).sum() == 6  # cold (no update yet): the trust rule alone, 6 untrusted
    estimator.observe(torch.tensor([0.0, 1.0]), torch.zeros(2))  # one sampled batch: warm
    picked = estimator.to_sample(var, 0.0)
    assert picked.nonzero().squeeze(1).tolist() == [2, 5]  # ceil(0.25 * 8) = 2: the largest predicted std
    assert estimator.to_sample(var[6:], 0.0).tolist() == [False, False]  # trusted ones stay unsampled under the cap
    refresh = estimator.to_sample(var, 1.0)  # refresh draws go first, and everything is a refresh draw
    assert refresh.sum() == 2
    with pytest.raises(ValueError, match="budget"):
        NeuralShapleyEstimator(3, budget=1.5)


def test_budget_drops_untrusted_groups_beyond_the_cap_instead_of_estimating_them():
    estimator = NeuralShapleyEstimator(3, max_std=0.05, budget=0.2, warmup=0)  # ceil(0.2 * 10) = 2 sampled at most
    std = torch.tensor([0.1, 0.3, 0.5, 0.2, 0.4] + [0.01] * 5)  # 5 untrusted (std >= 0.05), then 5 trusted
    sample, estimate = estimator.split(std**2, 0.0)
    assert sample.nonzero().flatten().tolist() == [2, 4]  # the two largest variances
    assert estimate.nonzero().flatten().tolist() == [5, 6, 7, 8, 9]  # the trusted ones use the estimate
    assert (~sample & ~estimate).nonzero().flatten().tolist() == [0, 1, 3]  # untrusted beyond the cap: dropped
    assert estimator.last_dropped.item() == pytest.approx(0.3)
    assert estimator.to_sample(std**2, 0.0).tolist() == sample.tolist()
    # refresh draws still go first: with this seed coalition 5 (trusted) is drawn, so one untrusted slot is left
    sample, estimate = estimator.split(std**2, 0.15, torch.Generator().manual_seed(12))
    assert sample.nonzero().flatten().tolist() == [2, 5]
    assert estimate.nonzero().flatten().tolist() == [6, 7, 8, 9]
    assert (~sample & ~estimate).nonzero().flatten().tolist() == [0, 1, 3, 4]


def test_under_the_cap_nothing_is_dropped_and_sampling_is_unchanged():
    std = torch.tensor([0.1, 0.3, 0.5, 0.2, 0.4] + [0.01] * 5)
    capped = NeuralShapleyEstimator(3, max_std=0.05, budget=0.5, warmup=0)  # cap 5: all 5 untrusted fit
    uncapped = NeuralShapleyEstimator(3, max_std=0.05)
    sample, estimate = capped.split(std**2, 0.0)
    assert sample.tolist() == uncapped.to_sample(std**2, 0.0).tolist() == [True] * 5 + [False] * 5
    assert estimate.tolist() == (~sample).tolist() and capped.last_dropped.item() == 0.0
    cold = NeuralShapleyEstimator(3, max_std=0.05, budget=0.2, warmup=1)  # before warmup the cap does not apply
    assert cold.split(std**2, 0.0)[0].tolist() == sample.tolist() and cold.last_dropped.item() == 0.0


def test_replay_memory_refits_earlier_samples():
    torch.manual_seed(0)
    estimator = NeuralShapleyEstimator(2, hidden_dim=16, replay=5, replay_batch=64)
    assert estimator.replay_loss() is None
    estimator.remember(torch.zeros(3, 2), torch.arange(3.0), torch.zeros(3))
    estimator.remember(torch.ones(4, 2), torch.arange(3.0, 7.0), torch.zeros(4))
    features, targets, _ = estimator._memory
    assert targets.tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]  # the last five, oldest first out
    assert features[0].tolist() == [0.0, 0.0] and features[1:].eq(1).all()
    # the replayed NLL is the NLL of the remembered samples: fitting it moves the mean onto them
    opt = torch.optim.Adam(estimator.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        estimator.replay_loss().backward()
        opt.step()
    mean, _ = estimator(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    assert mean[0].item() == pytest.approx(2.0, abs=0.3) and mean[1].item() == pytest.approx(4.5, abs=0.4)


def test_exact_pair_interactions_match_enumeration():
    from lightning_modules.retrieval.shapley import all_coalitions, exact_pair_interactions

    torch.manual_seed(3)
    n = 5
    weights, pair_bonus = torch.randn(n), torch.randn(n, n)

    def game(masks):
        x = masks.double()
        return x @ weights.double() + ((x @ pair_bonus.double()) * x).sum(-1) + (x.sum(-1) >= 3).double()

    coalitions = all_coalitions(n)
    assert coalitions.shape == (32, 5) and coalitions[6].tolist() == [False, True, True, False, False]
    pairs = torch.tensor([[0, 1], [1, 3], [4, 2], [0, 4]])
    got = exact_pair_interactions(game(coalitions), pairs)
    want = [exact_interaction(game, n, p.tolist()) for p in pairs]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    # batched: two games at once, one set of pairs per game
    both = torch.stack([game(coalitions), -game(coalitions)])
    batched = exact_pair_interactions(both, torch.stack([pairs, pairs]))
    torch.testing.assert_close(batched, torch.stack([got, -got]))
    with pytest.raises(ValueError, match="2\\*\\*n"):
        exact_pair_interactions(torch.zeros(6), pairs)


def test_groups_are_sampled_or_estimated_whole():
    estimator = NeuralShapleyEstimator(3, max_std=0.05, budget=0.5, warmup=0)
    # four groups of two: std (.01, .01) trusted; (.01, .2) not (one member unsure); (.1, .1) and (.3, .01) not
    var = torch.tensor([0.01, 0.01, 0.01, 0.2, 0.1, 0.1, 0.3, 0.01]) ** 2
    assert estimator.to_sample(var, 0.0, group_size=2).tolist() == [False, False, True, True, False, False, True, True]
    sample, estimate = estimator.split(var, 0.0, group_size=2)  # the (.1, .1) group is beyond the cap: dropped whole
    assert estimate.tolist() == [True, True] + [False] * 6 and estimator.last_dropped.item() == 0.25
    estimator.budget = None  # no cap: every untrusted group
    assert estimator.to_sample(var, 0.0, group_size=2).tolist() == [False, False] + [True] * 6
    with pytest.raises(ValueError, match="groups of 3"):
        estimator.to_sample(var, 0.0, group_size=3)
