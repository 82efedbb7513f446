"""COSOC's SOC in its two query matchings: ``reference`` reproduces the released ``architectures/classifier/SOC.py``
of Frankluox/LightningFSL (golden scores from ``../shared/golden/cosoc_soc_official.pt``), ``greedy`` is the matching
the paper describes; a case worked by hand where they differ; the module passes ``soc_matching`` through."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from experiments.errors import ConfigError
from lightning_modules.backbones import registered_model
from lightning_modules.fewshot import CosineClassifierModule
from lightning_modules.fewshot.heads import CosineClassifier
from lightning_modules.fewshot.soc import class_prototypes, greedy_match, reference_match, soc_logits
from tests.helpers import load_golden


def shot_major_to_class_major(support: torch.Tensor, way: int, shot: int) -> torch.Tensor:
    """The official support order (image ``s * way + w`` is shot ``s`` of class ``w``) as ours (``w * shot + s``)."""
    return support.reshape(shot, way, *support.shape[1:]).transpose(0, 1).reshape(way * shot, *support.shape[1:])


@pytest.mark.parametrize("case_index", [0, 1], ids=["1shot", "5shot"])
def test_reference_matching_reproduces_the_official_soc_scores(case_index):
    case = load_golden("cosoc_soc_official.pt")["cases"][case_index]
    way, shot, views = case["way"], case["shot"], case["views"]
    assert (case["support_labels"] == torch.arange(way).repeat(shot)).all()  # shot-major, as the README says
    for episode, features in enumerate(case["features"]):
        support = shot_major_to_class_major(features[: way * shot], way, shot)
        query = features[way * shot :]
        assert support.shape == (way * shot, views, features.shape[-1])
        official = case["official_scores"][episode]
        ours = soc_logits(support, query, way, shot, case["alpha"], case["beta"], matching="reference")
        assert torch.allclose(ours, official, atol=1e-5, rtol=0), (ours - official).abs().max()
        # the golden tells the two matchings apart: the greedy scores are off by far more than the tolerance
        greedy = soc_logits(support, query, way, shot, case["alpha"], case["beta"], matching="greedy")
        assert (greedy - official).abs().max() > 0.1


def test_greedy_and_reference_matching_by_hand():
    # one class, one query whose 4 views are the axes, so the similarity matrix S is the prototypes' entries
    S = torch.tensor(
        [
            [0.2, 0.7, 0.1, 0.3],
            [0.4, 0.6, 0.95, 0.0],
            [0.1, 0.5, 0.2, 0.6],
            [0.3, 0.0, 0.8, -0.4],
        ]
    )
    protos, queries = S[None], torch.eye(4)[None]
    # Both start with the global maximum 0.95 at (row 1, column 2).
    # greedy: delete row 1 and column 2 -> rows 0, 2, 3 x columns 0, 1, 3 = [[0.2, 0.7, 0.3], [0.1, 0.5, 0.6],
    #   [0.3, 0.0, -0.4]]; maximum 0.7 (row 0, column 1); then rows 2, 3 x columns 0, 3 = [[0.1, 0.6], [0.3, -0.4]]:
    #   0.6 (row 2, column 3); last (row 3, column 0) = 0.3 (the 0.8 at (3, 2) went with column 2).
    #   0.95 + 0.8 * 0.7 + 0.64 * 0.6 + 0.512 * 0.3 = 0.95 + 0.56 + 0.384 + 0.1536 = 2.0476
    assert greedy_match(protos, queries, beta=0.8).item() == pytest.approx(2.0476, abs=1e-6)
    # reference: the remaining rows (0, 2, 3) pair with the remaining columns (0, 1, 3) one to one:
    #   u = [S[0, 0], S[2, 1], S[3, 3]] = [0.2, 0.5, -0.4]; each later round takes the largest u left:
    #   0.95 + 0.8 * 0.5 + 0.64 * 0.2 + 0.512 * relu(-0.4) = 0.95 + 0.4 + 0.128 + 0 = 1.478
    assert reference_match(protos, queries, beta=0.8).item() == pytest.approx(1.478, abs=1e-6)
    # alpha weights row p by alpha^p; alpha 0.5 halves row 1 (0.95 -> 0.475), so the maximum is now 0.7 at (0, 1);
    #   rows (1, 2, 3) pair with columns (0, 2, 3): u = [0.4 / 2, 0.2 / 4, -0.4 / 8] = [0.2, 0.05, -0.05]
    #   0.7 + 0.8 * 0.2 + 0.64 * 0.05 + 0.512 * 0 = 0.7 + 0.16 + 0.032 = 0.892
    assert reference_match(protos, queries, alpha=0.5, beta=0.8).item() == pytest.approx(0.892, abs=1e-6)
    with pytest.raises(ValueError, match="as many prototypes as query views"):
        reference_match(protos[:, :3], queries)


def test_soc_logits_weights_only_kshot_prototypes_and_names_a_wrong_matching():
    gen = torch.Generator().manual_seed(0)
    support, query = torch.randn(3, 5, 8, generator=gen), torch.randn(4, 5, 8, generator=gen)
    for matching in ("reference", "greedy"):  # 1-shot views are unordered: the official code does not weight them
        plain = soc_logits(support, query, 3, 1, alpha=1.0, matching=matching)
        assert torch.equal(soc_logits(support, query, 3, 1, alpha=0.5, matching=matching), plain)
    kshot = torch.randn(6, 5, 8, generator=gen)  # 3-way 2-shot: the prototypes are ranked, alpha counts
    assert not torch.allclose(soc_logits(kshot, query, 3, 2, alpha=0.5), soc_logits(kshot, query, 3, 2, alpha=1.0))
    with pytest.raises(ValueError, match="SOC matching must be one of"):
        soc_logits(support, query, 3, 1, matching="hungarian")


def test_class_prototypes_batched_over_classes_equal_one_class_at_a_time():
    gen = torch.Generator().manual_seed(3)
    views = F.normalize(torch.randn(4, 3, 5, 6, generator=gen), dim=-1)  # 4 classes, 3 shots, 5 views
    batched = class_prototypes(views)
    assert batched.shape == (4, 5, 6)
    for c in range(4):
        assert torch.equal(batched[c], class_prototypes(views[c]))
    assert torch.equal(batched[:, -1], batched[:, -2])  # the official V-th prototype: a copy of the last one


def tiny_backbone() -> torch.nn.Module:
    return registered_model("resnet12", num_classes=0, kwargs={"channels": [8, 8, 8, 8]})


def test_module_passes_soc_matching_to_the_episode_scores(monkeypatch):
    n, k, q, v, d = 3, 2, 2, 4, 12
    feats = torch.randn(n * k + n * q, v, d, generator=torch.Generator().manual_seed(1))
    batch = {"image": feats, "n_way": n, "k_shot": k, "n_query": q}
    for matching in ("reference", "greedy"):
        module = CosineClassifierModule(tiny_backbone(), CosineClassifier(8, 4), evaluator="soc", soc_matching=matching)
        monkeypatch.setattr(module, "features", lambda images: images)
        logits, _ = module.episode_logits(batch)
        assert torch.equal(logits, soc_logits(feats[: n * k], feats[n * k :], n, k, matching=matching))
    assert CosineClassifierModule(tiny_backbone(), CosineClassifier(8, 4)).soc_matching == "reference"
    with pytest.raises(ConfigError, match="model.soc_matching must be reference"):
        CosineClassifierModule(tiny_backbone(), CosineClassifier(8, 4), soc_matching="official")
