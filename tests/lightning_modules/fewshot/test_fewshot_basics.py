"""COSOC foundations: ResNet-12 against the official sizes, and the episode intervals by hand."""

from __future__ import annotations

import math

import pytest
import timm
import torch

import lightning_modules.backbones  # noqa: F401 (registers resnet12)
from lightning_modules.fewshot.metrics import EpisodeAccuracy, episode_interval, run_interval


def test_resnet12_output_and_parameter_count():
    model = timm.create_model("resnet12")
    assert sum(p.numel() for p in model.parameters()) == 12_424_320  # official create_model(): 12.4M
    x = torch.randn(2, 3, 84, 84)
    assert model.forward_features(x).shape == (2, 640, 5, 5)
    assert model(x).shape == (2, 640)
    head = timm.create_model("resnet12", num_classes=64)
    assert head(x).shape == (2, 64)
    relus = [m for m in model.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert relus and all(m.negative_slope == 0.1 for m in relus)


def test_intervals_by_hand():
    acc = torch.tensor([60.0, 80.0, 70.0, 90.0])
    mean, ci = episode_interval(acc)
    std = math.sqrt(((60 - 75) ** 2 + (80 - 75) ** 2 + (70 - 75) ** 2 + (90 - 75) ** 2) / 4)  # 11.18
    assert mean == 75 and ci == pytest.approx(1.96 * std / 2)
    run_mean, run_ci = run_interval(acc, runs=2)  # run means 70 and 80: std 5
    assert run_mean == 75 and run_ci == pytest.approx(1.96 * 5)
    with pytest.raises(ValueError, match="equal runs"):
        run_interval(acc, runs=3)


def test_episode_metric_orders_episodes_and_reports_both_intervals():
    metric = EpisodeAccuracy(runs=2)
    correct = torch.tensor([[1, 1, 0, 0, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)  # 60 %, 100 %
    metric.update(correct[1:], torch.tensor([3]))
    metric.update(torch.tensor([80.0]) / 100, torch.tensor([0]))  # accuracies given directly
    metric.update(correct[:1], torch.tensor([2]))
    metric.update(torch.tensor([0.4]), torch.tensor([1]))
    out = metric.compute()  # episode order 80, 40, 60, 100: runs (80, 40) and (60, 100) -> means 60 and 80
    assert out["acc"].item() == pytest.approx(70)
    assert out["acc_runs"].item() == pytest.approx(70) and out["ci95_runs"].item() == pytest.approx(1.96 * 10)


def test_episode_sampler_layout_no_overlap_seeded_and_split_across_ranks():
    from datamodules.episodes import EpisodeSampler
    from experiments.errors import DataError

    labels = [c for c in range(8) for _ in range(25)]  # 8 classes x 25 images
    sampler = EpisodeSampler(labels, n_way=5, k_shot=2, n_query=3, episodes=10, seed=7)
    episodes = list(sampler)
    assert len(episodes) == len(sampler) == 10
    for ep in episodes:
        support, query = ep[:10], ep[10:]
        assert len(query) == 15 and not set(support) & set(query) and len(set(ep)) == 25
        grid = torch.tensor([labels[i] for i in support]).view(5, 2)  # class-major: row = class, column = shot
        assert (grid == grid[:, :1]).all() and len(set(grid[:, 0].tolist())) == 5
        assert torch.equal(torch.tensor([labels[i] for i in query]).view(5, 3), grid[:, :1].expand(5, 3))
    assert episodes == list(EpisodeSampler(labels, 5, 2, 3, episodes=10, seed=7))  # reproducible by seed
    assert episodes != list(EpisodeSampler(labels, 5, 2, 3, episodes=10, seed=8))
    ranks = [list(EpisodeSampler(labels, 5, 2, 3, episodes=9, seed=7, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 5  # 9 rounded up to 10 so that both ranks take the same steps
    assert sorted(ranks[0] + ranks[1]) == sorted(episodes)  # together: exactly the single-process episodes
    with pytest.raises(DataError, match="8 classes have fewer than 26 images"):
        EpisodeSampler(labels, 5, 5, 21)
    with pytest.raises(DataError, match="9-way episodes need 9 classes"):
        EpisodeSampler(labels, 9, 1, 1)


def test_kshot_search_equals_brute_force():
    import itertools

    import torch.nn.functional as F

    from lightning_modules.fewshot.soc import best_combination

    torch.manual_seed(0)
    views = F.normalize(torch.randn(3, 5, 8), dim=-1)
    available = torch.ones(3, 5, dtype=torch.bool)
    available[1, 2] = available[2, 0] = False
    for allowed in (None, available):
        best, best_value = None, -1e9
        for combo in itertools.product(range(5), repeat=3):
            if allowed is not None and not all(allowed[k, v] for k, v in enumerate(combo)):
                continue
            value = sum(float(views[a, combo[a]] @ views[b, combo[b]]) for a, b in itertools.combinations(range(3), 2))
            if value > best_value:
                best, best_value = combo, value
        assert tuple(best_combination(views, allowed).tolist()) == best


def test_soc_concentrates_on_the_shared_object():
    import torch.nn.functional as F

    from lightning_modules.fewshot.soc import class_prototypes, soc_logits

    torch.manual_seed(0)
    D, V = 32, 7
    objects = F.normalize(torch.randn(2, D), dim=-1)  # the object each class's images share
    support = F.normalize(torch.randn(2 * 3, V, D), dim=-1)  # 2-way 3-shot, background views
    where = [4, 1, 6, 0, 3, 5]  # one view per support image shows its class's object (plus noise)
    for i, v in enumerate(where):
        support[i, v] = F.normalize(objects[i // 3] + 0.2 * torch.randn(D), dim=-1)
    protos = class_prototypes(support[:3])
    shared = F.normalize(torch.stack([support[i, where[i]] for i in range(3)]).mean(0), dim=-1)
    assert torch.allclose(protos[0], shared, atol=1e-6)  # prototype 1 = the mean of the views showing the object
    assert F.cosine_similarity(protos[0], objects[0], dim=0) > 0.8 > F.cosine_similarity(protos[1], objects[0], dim=0)
    query = F.normalize(torch.randn(2, V, D), dim=-1)
    query[0, 2] = F.normalize(objects[1] + 0.2 * torch.randn(D), dim=-1)  # query 0 shows class 1's object
    query[1, 5] = F.normalize(objects[0] + 0.2 * torch.randn(D), dim=-1)  # query 1 shows class 0's object
    logits = soc_logits(support, query, n_way=2, k_shot=3)
    assert logits.argmax(1).tolist() == [1, 0]


def test_greedy_match_by_hand():
    from lightning_modules.fewshot.soc import greedy_match

    protos = torch.tensor([[[0.9, 0.1], [0.8, 0.5]]])  # one class, two prototypes
    queries = torch.eye(2)[None]  # one query whose two views are the axes: similarities = the prototypes' entries
    # the global maximum 0.9 (prototype 0, view 0) goes first; deleting its row and column leaves 0.5 (weight 0.8)
    assert greedy_match(protos, queries, beta=0.8).item() == pytest.approx(0.9 + 0.8 * 0.5)
    # alpha weights prototype rows: 0.5 ** 1 halves row 1, so 0.9 then 0.25
    assert greedy_match(protos, queries, alpha=0.5, beta=0.8).item() == pytest.approx(0.9 + 0.8 * 0.25)
    negative = torch.tensor([[[-0.9, -0.1], [-0.8, -0.5]]])
    assert greedy_match(negative, queries).item() == 0  # relu: negative matches add nothing
