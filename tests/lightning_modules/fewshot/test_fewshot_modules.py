"""COSOC's modules: heads, COS selection, Exemplar's queue and momentum, the shared episode loop."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from experiments.errors import ConfigError
from lightning_modules.backbones import registered_model
from lightning_modules.fewshot import CosineClassifierModule, COSModule, ExemplarMoCo
from lightning_modules.fewshot.cos import draw_crops, seek_objects
from lightning_modules.fewshot.heads import CosineClassifier, pooled_features, proto_logits
from lightning_modules.fewshot.losses import (
    cosine_classifier_loss,
    episode_labels,
    exemplar_logits,
    exemplar_loss,
    prototype_loss,
)

REPO = Path(__file__).resolve().parents[3]


def tiny_backbone() -> torch.nn.Module:
    """A headless ResNet-12 with 8 channels per stage, as the configs build one."""
    return registered_model("resnet12", num_classes=0, kwargs={"channels": [8, 8, 8, 8]})


def test_pooled_features_and_heads_by_hand():
    fmap = torch.zeros(1, 2, 1, 2)
    fmap[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # normalised: (0.6, 0.8)
    fmap[0, :, 0, 1] = torch.tensor([0.0, 2.0])  # normalised: (0, 1)
    expected = F.normalize(torch.tensor([[0.3, 0.9]]), dim=1)
    assert torch.allclose(pooled_features(fmap), expected)
    support = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 1.0]])  # 2-way 2-shot, class-major
    query = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    logits = proto_logits(support, query, n_way=2, k_shot=2, scale=10.0)
    assert torch.allclose(logits, torch.tensor([[10 / math.sqrt(2), 10 / math.sqrt(2)], [0.0, -10.0]]))
    euclid = proto_logits(support, query, 2, 2, scale=1.0, metric="euclidean")
    assert torch.allclose(euclid, -torch.tensor([[1.0 + 1.0, 1.0 + 0.25], [4.0 + 1.0, 0.0 + 6.25]]))
    head = CosineClassifier(2, 3, scale=10.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0]]))
    assert torch.allclose(head(torch.tensor([[0.0, 3.0]])), torch.tensor([[0.0, 10.0, 10 / math.sqrt(2)]]))
    assert head.scale.requires_grad


def test_cos_keeps_the_views_every_image_shares():
    gen = torch.Generator().manual_seed(0)
    n, v, d = 12, 6, 16
    objects = F.normalize(torch.randn(2, d, generator=gen), dim=1)
    feats = F.normalize(torch.randn(n, v, d, generator=gen), dim=-1) * 1.0  # backgrounds: scattered
    labels = torch.arange(n) % 2
    feats[:, 1] = objects[labels] + 0.02 * torch.randn(n, d, generator=gen)  # view 1 and 4 show the object
    feats[:, 4] = objects[labels] + 0.02 * torch.randn(n, d, generator=gen)
    out = seek_objects(feats, labels, n_clusters=3, threshold=0.5, top_k=3)
    assert all(set(row[:2].tolist()) == {1, 4} for row in out["views"])
    for cover in out["coverage"].values():
        assert cover.max() == 1.0  # the object cluster covers every image of the class
    probs = out["probs"]
    assert (probs >= 0).all() and (probs.sum(1) <= 1 + 1e-6).all()
    assert (probs[:, 0] >= probs[:, 2]).all()
    s = 1 - out["distances"] / out["scale"]  # p = max(s) * s / sum(s), s = 1 - d / D
    assert torch.allclose(probs, s.max(1, keepdim=True).values * s / s.sum(1, keepdim=True))
    assert (out["distances"][:, :2] < 0.2).all() and out["scale"] > 0.5  # object views sit on their centroid
    with pytest.raises(ConfigError, match="top_k=7"):
        seek_objects(feats, labels, top_k=7)


def test_exemplar_suppresses_same_class_negatives_and_wraps_its_queue():
    model = ExemplarMoCo(tiny_backbone(), queue_size=5, proj_dim=4, temperature=0.5)
    queue = F.normalize(torch.randn(5, 4), dim=1)
    model.queue.copy_(queue)
    model.queue_labels.copy_(torch.tensor([0, 1, 2, 1, -1]))
    q, k = F.normalize(torch.randn(2, 4), dim=1), F.normalize(torch.randn(2, 4), dim=1)
    labels = torch.tensor([1, 2])
    logits = model.contrastive_logits(q, k, labels)
    plain = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], 1) / 0.5
    same = torch.tensor([[0, 0, 1, 0, 1, 0], [0, 0, 0, 1, 0, 0]], dtype=torch.bool)
    assert torch.allclose(logits, plain - 300 / 0.5 * same)
    model.suppress_same_class = False
    assert torch.allclose(model.contrastive_logits(q, k, labels), plain)
    model.queue_ptr.fill_(3)
    keys = F.normalize(torch.randn(4, 4), dim=1)
    model.enqueue(keys, torch.tensor([7, 8, 9, 10]))
    assert torch.allclose(model.queue[[3, 4, 0, 1]], keys) and torch.allclose(model.queue[2], queue[2])
    assert model.queue_labels.tolist() == [9, 10, 2, 7, 8] and int(model.queue_ptr) == 2


def test_exemplar_momentum_update_follows_its_formula():
    model = ExemplarMoCo(tiny_backbone(), queue_size=8, proj_dim=4, momentum=0.9)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    online = [p.clone() for p in model.backbone.parameters()]
    key = [p.clone() for p in model.key_backbone.parameters()]
    model.momentum_update()
    for o, k0, k1 in zip(online, key, model.key_backbone.parameters(), strict=True):
        assert torch.allclose(k1, 0.9 * k0 + 0.1 * o)
    assert not any(p.requires_grad for p in model.key_backbone.parameters())


def test_losses_by_hand():
    assert episode_labels(3, 2).tolist() == [0, 0, 1, 1, 2, 2]  # class-major queries
    logits = torch.tensor([[2.0, 0.0], [1.0, 3.0], [0.0, 0.0], [4.0, 4.0]])  # 2-way, 2 queries per class
    by_hand = -(2 - math.log(math.exp(2) + 1) + 1 - math.log(math.exp(1) + math.exp(3)) - math.log(2) * 2) / 4
    assert prototype_loss(logits, n_query=2).item() == pytest.approx(by_hand)
    assert cosine_classifier_loss(logits, torch.tensor([0, 1, 0, 1])).item() == pytest.approx(
        -(2 - math.log(math.exp(2) + 1) + 3 - math.log(math.exp(1) + math.exp(3)) - math.log(2) * 2) / 4
    )
    q, k = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8]])
    queue, queue_labels = torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([3, 7])
    logits = exemplar_logits(q, k, queue, queue_labels, torch.tensor([7]), temperature=0.5, same_class_penalty=300.0)
    assert torch.allclose(logits, torch.tensor([[0.6, 0.0, 1.0 - 300.0]]) / 0.5)  # key 2 shares the query's class
    plain = exemplar_logits(q, k, queue, queue_labels, torch.tensor([7]), temperature=0.5, same_class_penalty=None)
    assert torch.allclose(plain, torch.tensor([[1.2, 0.0, 2.0]]))
    assert exemplar_loss(plain).item() == pytest.approx(-(1.2 - math.log(math.exp(1.2) + 1 + math.exp(2))))


def _episode(feats: torch.Tensor, n: int, k: int, q: int) -> dict:
    return {"image": feats, "n_way": n, "k_shot": k, "n_query": q}


def test_episode_loop_scores_proto_and_soc_in_the_class_major_layout(monkeypatch):
    n, k, q, v, d = 3, 2, 2, 4, 12
    gen = torch.Generator().manual_seed(1)
    objects = F.normalize(torch.randn(n, d, generator=gen), dim=1)
    feats = F.normalize(torch.randn(n * k + n * q, v, d, generator=gen), dim=-1)
    cls = torch.cat([torch.arange(n).repeat_interleave(k), torch.arange(n).repeat_interleave(q)])
    feats[:, 2] = objects[cls]  # one view of every image shows its class's object; the others are clutter
    modules = {}
    for evaluator in ("proto", "soc"):
        # the greedy matching (the paper's): the reference's paired rounds add clutter
        # (tests/lightning_modules/fewshot/test_soc_reference.py)
        modules[evaluator] = CosineClassifierModule(tiny_backbone(), CosineClassifier(8, 4), evaluator=evaluator,
                                                    soc_matching="greedy")  # fmt: skip
        monkeypatch.setattr(modules[evaluator], "features", lambda images: images)
    # one clean view per image: prototypes classify every query; the labels follow the class-major layout
    clean = objects[cls][:, None] + 0.05 * torch.randn(len(cls), 1, d, generator=gen)
    logits, labels = modules["proto"].episode_logits(_episode(clean, n, k, q))
    assert labels.tolist() == [0, 0, 1, 1, 2, 2] and (logits.argmax(1) == labels).all()
    # cluttered views: SOC matches the shared object and gets every query; averaged views do not
    logits, labels = modules["soc"].episode_logits(_episode(feats, n, k, q))
    assert (logits.argmax(1) == labels).all()
    assert logits.gather(1, labels[:, None]).min() > 1.0  # the greedy match starts with the object (cosine 1)
    proto, _ = modules["proto"].episode_logits(_episode(feats, n, k, q))
    assert (proto.argmax(1) == labels).float().mean() < 1.0


def test_cos_run_from_its_config_needs_the_exemplar_checkpoint(tmp_path, capfd, monkeypatch):
    from experiments.__main__ import main

    monkeypatch.chdir(REPO)
    code = main(["predict", "--config", "configs/cosoc/toy_cos.yaml", "--runs_dir", str(tmp_path)])
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("error:")]
    expected = "COS needs a pre-trained backbone: set --model.init_args.backbone.init_args.pretrained to the Exemplar"
    assert code == 2 and len(lines) == 1 and expected in lines[0]
    assert COSModule(tiny_backbone()).backbone.num_features == 8  # built in Python, the caller chose the weights


def test_cos_draws_its_crops(tmp_path):
    Image.new("RGB", (40, 40), (0, 0, 0)).save(tmp_path / "a.png")
    drawn = draw_crops(str(tmp_path / "a.png"), torch.tensor([[10.0, 10.0, 20.0, 20.0]]), torch.tensor([0.5]),
                       size=40)  # fmt: skip
    pixels = torch.tensor(list(drawn.getdata())).view(40, 40, 3)
    assert pixels[10, 10:30, 0].min() == 255 and pixels[20, 20].sum() == 0  # outline drawn, inside untouched


def test_the_classifier_must_match_the_backbone_width():
    with pytest.raises(ConfigError, match=r"classifier\.init_args\.in_features is 640 but the backbone has 8 features; "
                                          r"set it to 8"):  # fmt: skip
        CosineClassifierModule(tiny_backbone(), CosineClassifier(num_classes=4))
    module = CosineClassifierModule(tiny_backbone(), CosineClassifier(8, 4))
    assert module.classifier.num_classes == 4 and module.feature_dim == 8
    assert "backbone" not in module.hparams and "classifier" not in module.hparams  # modules are not hyper-parameters
