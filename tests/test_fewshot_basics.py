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
