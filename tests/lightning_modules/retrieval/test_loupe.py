"""LOUPE's pieces with hand-computed values: boxes to patch sets, the attention-moment box head, both payoffs, the
sampled semantics-level interactions against enumeration, the estimator's replace-or-sample rule, and the losses."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.backbones import registered_model
from lightning_modules.retrieval.loupe import (
    LoupeRetrieval,
    RegionGenerator,
    box_to_patch_mask,
    fine_grained_similarity,
    jitter_boxes,
    phrase_token_masks,
    pooled_similarity,
)
from lightning_modules.retrieval.loupe_payoffs import estimate_interactions
from lightning_modules.retrieval.shapley import NeuralShapleyEstimator, exact_interaction
from lightning_modules.retrieval.text import load_text_encoder, pretrained_text_encoder

SMALL_VIT = dict(img_size=32, patch_size=8, depth=1, global_pool="avg", class_token=False)


def small_loupe(**kwargs) -> LoupeRetrieval:
    torch.manual_seed(0)
    return LoupeRetrieval(
        registered_model("vit_tiny_patch16_224", num_classes=0, kwargs=SMALL_VIT),
        pretrained_text_encoder("minilm-offline", max_text_length=24),
        embed_dim=16, num_regions=3, num_candidates=2, shapley_samples=4, **kwargs,
    )  # fmt: skip


def test_box_to_patch_mask_by_hand():
    # 4x4 grid, patch centres at 1/8, 3/8, 5/8, 7/8: a centred half-size box holds the inner 2x2 patches
    mask = box_to_patch_mask(torch.tensor([0.5, 0.5, 0.5, 0.5]), (4, 4))
    assert mask.nonzero().flatten().tolist() == [5, 6, 9, 10]
    # a box narrower than a patch keeps the patch under its centre
    assert box_to_patch_mask(torch.tensor([0.9, 0.1, 0.01, 0.01]), (4, 4)).nonzero().flatten().tolist() == [3]
    # the whole image
    assert box_to_patch_mask(torch.tensor([[0.5, 0.5, 1.0, 1.0]]), (4, 4)).all()


def test_jitter_stays_in_the_image():
    boxes = torch.tensor([[0.05, 0.95, 0.9, 0.1]])
    out = jitter_boxes(boxes, 50, 0.3, 0.25)
    assert out.shape == (1, 50, 4)
    assert (out[..., :2] >= 0).all() and (out[..., :2] <= 1).all() and (out[..., 2:] >= 0.25).all()
    assert (out[..., 2:] <= 1).all() and out[..., :3].std(1).gt(0).all()
    assert (out[..., 3] == 0.25).all()  # a height under the minimum is raised to it


def test_region_boxes_are_the_moments_of_the_attention():
    head = RegionGenerator(dim=8, num_regions=2)
    attn = torch.zeros(1, 2, 16)
    attn[0, 0, 6] = 1.0  # row 1, column 2 of a 4x4 grid
    attn[0, 1] = 1 / 16  # uniform
    head.attention = lambda tokens: attn
    boxes = head(torch.zeros(1, 16, 8), (4, 4))[0]
    torch.testing.assert_close(boxes[0], torch.tensor([5 / 8, 3 / 8, 0.25, 0.25]))  # min size one patch
    side = math.sqrt(12 * 5 / 64)  # variance of {1, 3, 5, 7} / 8 is 5/64
    torch.testing.assert_close(boxes[1], torch.tensor([0.5, 0.5, side, side]))


def test_pooled_similarity_by_hand():
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    text = torch.tensor([[1.0, 0.0]])
    masks = torch.tensor([[[True, False, False], [True, True, False], [False, False, False]]])
    out = pooled_similarity(masks, tokens, text)
    torch.testing.assert_close(out, torch.tensor([[1.0, 1 / math.sqrt(2), 0.0]]))


def test_fine_grained_similarity_by_hand():
    scores = torch.tensor([[[0.9, 0.1], [0.2, 0.5]]])  # 2 regions x 2 phrases
    masks = torch.tensor([[[1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 0, 0], [0, 1, 0, 1]]], dtype=torch.bool)
    out = fine_grained_similarity(masks, scores)
    # all: regions' best 0.9, 0.5 and phrases' best 0.9, 0.5 -> 0.7; region 1 only: (0.5 + (0.2 + 0.5) / 2) / 2
    torch.testing.assert_close(out, torch.tensor([[0.7, 0.425, 0.0, 0.5]]))


@pytest.mark.parametrize("exact_players", [0, 12])  # sampled (3000 orders), and exact from all coalitions
def test_semantic_interactions_agree_with_enumeration(exact_players):
    model = small_loupe(use_estimator=False, semantic_exact_players=exact_players)
    assert (model.semantic_estimator is None) == (exact_players > 0)
    model.shapley_samples = 3000
    gen = torch.Generator().manual_seed(0)
    regions = torch.nn.functional.normalize(torch.randn(1, 3, 16, generator=gen), dim=-1)
    phrases = torch.nn.functional.normalize(torch.randn(1, 2, 16, generator=gen), dim=-1)
    valid = torch.tensor([[True, True]])
    torch.manual_seed(1)
    inter, _, share, pairs = model.semantic_interactions(regions, phrases, valid)
    assert share == (0.0 if exact_players else 1.0) and pairs.all()
    scores = regions @ phrases.transpose(1, 2)
    tol = 1e-6 if exact_players else 0.01

    def game(masks):
        flat = masks.reshape(1, -1, 5)
        return fine_grained_similarity(flat, scores).reshape(masks.shape[:-1])

    for i in range(3):
        for j in range(2):
            exact = exact_interaction(game, 5, [i, 3 + j])
            assert inter[0, i, j].item() == pytest.approx(exact, abs=tol), (i, j)
    # a padded phrase is a null player: no interaction is computed for it, and the others' are those of the game
    # without it
    inter2, *_ = model.semantic_interactions(regions, phrases, torch.tensor([[True, False]]))
    assert (inter2[0, :, 1] == 0).all()

    def game_without(masks):
        flat = masks.reshape(1, -1, 4)
        return fine_grained_similarity(flat, scores[:, :, :1]).reshape(masks.shape[:-1])

    for i in range(3):
        assert inter2[0, i, 0].item() == pytest.approx(exact_interaction(game_without, 4, [i, 3]), abs=tol), i


def test_estimator_replaces_sampling_only_where_confident():
    estimator = NeuralShapleyEstimator(4, hidden_dim=8, max_std=0.1)
    features = torch.randn(6, 4)
    calls = []

    def sample(index):
        calls.append(index.tolist())
        return torch.full((index.numel(),), 7.0), torch.zeros(index.numel())

    with torch.no_grad():  # half the coalitions trusted: a large log-variance for the first feature > 0
        estimator.log_var_head.weight.zero_()
        estimator.log_var_head.bias.fill_(-10.0)
    trusted = features[:, 0] <= 0
    estimator.forward = lambda f: (torch.zeros(len(f)), torch.where(trusted, 1e-4, 1.0))
    values, nll, share = estimate_interactions(features, sample, estimator, refresh_fraction=0.0)
    assert calls == [(~trusted).nonzero().flatten().tolist()]
    torch.testing.assert_close(values, torch.where(trusted, 0.0, 7.0))
    assert share.item() == pytest.approx((~trusted).float().mean().item()) and torch.isfinite(nll)
    calls.clear()
    values, _, share = estimate_interactions(features, sample, None, refresh_fraction=0.0)
    assert calls == [list(range(6))] and share == 1.0 and (values == 7).all()


def test_dropped_coalitions_get_no_value_whatever_their_estimate():
    estimator = NeuralShapleyEstimator(4, hidden_dim=8, max_std=0.1, budget=0.25, warmup=0)
    features = torch.randn(8, 4)
    std = torch.tensor([0.5, 0.4, 0.3, 0.2, 0.01, 0.01, 0.01, 0.01])  # 4 untrusted, cap 2: coalitions 2 and 3 dropped

    def sample(index):
        return torch.full((index.numel(),), 7.0), torch.zeros(index.numel())

    runs = []
    for shift in (0.0, 5.0):  # the would-be estimates of the dropped coalitions change; nothing else does
        mean = torch.arange(8.0) + torch.tensor([0, 0, shift, shift, 0, 0, 0, 0])
        estimator.forward = lambda f, mean=mean: (mean, std**2)
        runs.append(estimate_interactions(features, sample, estimator, refresh_fraction=0.0)[0])
    nan = float("nan")
    torch.testing.assert_close(runs[0], torch.tensor([7.0, 7.0, nan, nan, 4.0, 5.0, 6.0, 7.0]), equal_nan=True)
    torch.testing.assert_close(runs[1], runs[0], equal_nan=True)


def test_phrase_tokens_decode_to_the_phrases():
    _, tokenizer = load_text_encoder("minilm-offline")
    captions = ["A small red circle left of a blue square.", "there is a green star"]
    enc = tokenizer(captions, padding=True, return_offsets_mapping=True, return_tensors="pt")
    masks, texts = phrase_token_masks(captions, enc["offset_mapping"], max_phrases=3)
    assert texts == [["a small red circle", "a blue square"], ["a green star"]]
    for b, phrases in enumerate(texts):
        for p, text in enumerate(phrases):
            assert tokenizer.decode(enc["input_ids"][b][masks[b, p]]) == text
        assert not masks[b, len(phrases) :].any()


def test_encoder_payoff_keeps_the_global_similarity_and_masks_pixels():
    model = small_loupe().eval()
    images = torch.randn(2, 3, 32, 32)
    text = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    v = model.encoder_payoff(images, text, (4, 4))
    full = torch.ones(2, 1, 16, dtype=torch.bool)
    with torch.no_grad():
        emb, _ = model.encode_images(images)
        empty_emb, _ = model.encode_images(torch.zeros_like(images))
    torch.testing.assert_close(v(full)[:, 0], (emb * text).sum(-1))
    torch.testing.assert_close(v(~full)[:, 0], (empty_emb * text).sum(-1))
    # keeping the left half equals encoding the image with its right half set to the mean colour
    left = torch.zeros(2, 1, 16, dtype=torch.bool)
    left.view(2, 1, 4, 4)[..., :2] = True
    half = images.clone()
    half[..., 16:] = 0
    with torch.no_grad():
        half_emb, _ = model.encode_images(half)
    torch.testing.assert_close(v(left)[:, 0], (half_emb * text).sum(-1))


def tsa_with_scores(model, fill):
    """L_TSA of three boxes whose candidate scores ``[1, 3, 3]`` (zeros) ``fill`` sets; also the boxes and the
    candidates."""
    boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.4, 0.4], [0.5, 0.5, 0.5, 0.5]]], requires_grad=True)
    seen = {}

    def scores(reg_, text, candidates, images=None):
        seen["candidates"] = candidates
        out = torch.zeros(candidates.shape[:3])
        fill(out)
        return out, torch.zeros(()), torch.ones(())

    model.token_interactions = scores
    loss, *_ = model.tsa_loss({"boxes": boxes, "grid": (4, 4)}, torch.zeros(1, 16))
    return loss, boxes, seen["candidates"]


def test_tsa_pulls_each_box_to_its_best_candidate():
    def fill(out):
        out[0, 0, 0] = 1.0  # region 0: the box itself is best
        out[0, 1, 2] = 1.0  # region 1: the second jittered candidate
        out[0, 2, 1] = 1.0

    loss, boxes, candidates = tsa_with_scores(small_loupe(use_estimator=False), fill)
    loss.backward()
    assert boxes.grad[0, 0].abs().sum() < 1e-4  # already at its target (GIoU has an eps)
    cand = candidates[0]
    for r, c in ((1, 2), (2, 1)):  # a gradient step moves the box towards the chosen candidate
        moved = boxes[0, r] - 0.01 * boxes.grad[0, r]
        assert (moved - cand[r, c]).abs().sum() < (boxes[0, r] - cand[r, c]).abs().sum()


def test_tsa_leaves_out_regions_the_budget_dropped():
    from torchvision.ops import box_convert, generalized_box_iou_loss

    def fill(out):
        out[0, 0, 1] = out[0, 1, 2] = 1.0
        out[0, 2] = float("nan")  # region 2 dropped by the budget: no scores

    model = small_loupe(use_estimator=False)
    loss, boxes, candidates = tsa_with_scores(model, fill)
    # the mean over regions 0 and 1 alone, as if region 2 did not exist
    pred, target = boxes[0, :2], candidates[0, [0, 1], [1, 2]]
    giou = generalized_box_iou_loss(box_convert(pred, "cxcywh", "xyxy"), box_convert(target, "cxcywh", "xyxy"))
    want = torch.nn.functional.l1_loss(pred, target) + giou.mean()
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert boxes.grad[0, 2].abs().sum() == 0 and boxes.grad[0, :2].abs().sum() > 0
    assert tsa_with_scores(model, lambda out: out.fill_(float("nan")))[0].item() == 0.0  # all dropped: no L_TSA


def test_fsa_leaves_out_pairs_the_budget_dropped():
    model = small_loupe(use_estimator=False, fsa_temperature=0.1)
    torch.manual_seed(1)
    regions = torch.nn.functional.normalize(torch.randn(1, 3, 16), dim=-1).requires_grad_(True)
    phrases = torch.nn.functional.normalize(torch.randn(1, 2, 16), dim=-1)
    inter = torch.randn(1, 3, 2)
    inter[0, 0, 0] = float("nan")  # pair (region 0, phrase 0) dropped
    model.semantic_interactions = lambda r, p, v: (inter, torch.zeros(()), torch.ones(()), None)
    loss, *_ = model.fsa_loss(regions, phrases, torch.tensor([[True, True]]))
    logits = model.scale() * regions @ phrases.transpose(1, 2)

    def kl(i, j):  # phrase j over regions i only
        target = torch.softmax(inter[0, i, j] / 0.1, 0)
        return (target * (target.log() - torch.log_softmax(logits[0, i, j], 0))).sum()

    want = (kl([1, 2], 0) + kl([0, 1, 2], 1)) / 2
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert torch.isfinite(regions.grad).all()
    inter[0, :, 1] = float("nan")  # every pair of phrase 1 dropped: only phrase 0 is left to average
    torch.testing.assert_close(model.fsa_loss(regions, phrases, torch.tensor([[True, True]]))[0], kl([1, 2], 0))
    inter[0, :, 0] = float("nan")
    assert model.fsa_loss(regions, phrases, torch.tensor([[True, True]]))[0].item() == 0.0


def test_fsa_is_zero_when_alignment_matches_the_interactions():
    model = small_loupe(use_estimator=False, fsa_temperature=0.1)
    regions = torch.nn.functional.normalize(torch.randn(1, 3, 16), dim=-1)
    phrases = torch.nn.functional.normalize(torch.randn(1, 2, 16), dim=-1)
    logits = model.scale() * regions @ phrases.transpose(1, 2)
    matched = (logits * 0.1).detach()  # softmax(I / tau) equals softmax(logits)
    model.semantic_interactions = lambda r, p, v: (matched, torch.zeros(()), torch.ones(()), None)
    loss, *_ = model.fsa_loss(regions, phrases, torch.tensor([[True, True]]))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    model.semantic_interactions = lambda r, p, v: (-matched, torch.zeros(()), torch.ones(()), None)
    assert model.fsa_loss(regions, phrases, torch.tensor([[True, True]]))[0].item() > 0.01


def test_class_token_pooling_is_refused():
    from experiments.errors import ConfigError

    with pytest.raises(ConfigError, match="global_pool"):
        LoupeRetrieval(
            registered_model("vit_tiny_patch16_224", num_classes=0, kwargs=dict(img_size=32, patch_size=8, depth=1)),
            pretrained_text_encoder("minilm-offline"), embed_dim=16,
        )  # fmt: skip


def test_excess_score_prefers_the_tight_box_around_the_evidence():
    """Pooled payoff on a 4x4 grid whose top-left 2x2 patches carry the caption: the excess value ranks the tight box
    first, then the box twice its size, the whole image (0 by efficiency) and a background box last."""
    model = small_loupe(use_estimator=False, token_payoff="pooled", tsa_score="excess")
    model.shapley_samples = 400
    gen = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(1, 16, generator=gen), dim=-1)
    other = torch.randn(16, 16, generator=gen)
    other = other - (other @ text.t()) * text  # background tokens orthogonal to the caption
    tokens = other.clone().unsqueeze(0)
    for k in (0, 1, 4, 5):
        tokens[0, k] = 3 * text[0] + 0.1 * other[k]
    reg = {"projected": tokens, "grid": (4, 4)}
    candidates = torch.tensor([[[[0.25, 0.25, 0.5, 0.5], [0.375, 0.375, 0.75, 0.75], [0.5, 0.5, 1, 1],
                                 [0.75, 0.75, 0.5, 0.5]]]])  # fmt: skip
    torch.manual_seed(0)
    scores, _, _ = model.token_interactions(reg, text, candidates)
    s = scores[0, 0]
    assert s[0] > s[1] > s[2] > s[3], s
    assert s[2].abs() < 1e-5  # the whole image gets exactly its even share


def test_estimators_get_their_own_learning_rate():
    from lightning_modules.optim import OptimConfig, build_optimizer, build_scheduler

    model = small_loupe(estimator_lr_scale=10.0, semantic_exact_players=0,  # both estimators built
                        optim=OptimConfig(base_lr=1e-3, base_batch_size=1, warmup_steps=0))  # fmt: skip
    optimizer = build_optimizer(model, model.optim, 1)
    model.adjust_param_groups(optimizer)
    scheduler = build_scheduler(optimizer, model.optim, 100, None)
    scheduler.step_update(0)
    estimator_ids = {id(p) for p in model.token_estimator.parameters()} | {
        id(p) for p in model.semantic_estimator.parameters()
    }
    lrs = {}
    for group in optimizer.param_groups:
        kinds = {id(p) in estimator_ids for p in group["params"]}
        assert len(kinds) == 1  # a group holds estimator parameters or none of them
        lrs.setdefault(kinds.pop(), set()).add(round(group["lr"], 9))
    assert lrs == {False: {1e-3}, True: {1e-2}}
    total = sum(len(g["params"]) for g in optimizer.param_groups)
    assert total == sum(1 for p in model.parameters() if p.requires_grad)


def test_shapley_terms_leave_the_global_rng_alone():
    """The Shapley terms draw from their own generator, so LOUPE and the ITC baseline see the same batches."""
    model = small_loupe()
    model.log = model.log_dict = lambda *a, **k: None
    batch = {"image": torch.randn(2, 3, 32, 32), "captions": ["a red circle left of a blue square", "a green star"],
             "image_ids": torch.tensor([0, 1])}  # fmt: skip
    torch.manual_seed(5)
    state = torch.get_rng_state()
    model.training_step(batch, 0).backward()
    assert torch.equal(torch.get_rng_state(), state)
    # and the generator is seeded: a fresh model with the same seed draws the same jitter
    a = small_loupe().generator(torch.device("cpu"))
    b = small_loupe().generator(torch.device("cpu"))
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))


def test_estimator_budget_and_replay_in_a_training_step():
    torch.manual_seed(0)
    estimator = NeuralShapleyEstimator(4, hidden_dim=8, max_std=1e-6, budget=0.25, warmup=1, replay=100)
    features = torch.randn(8, 4)
    calls = []

    def sample(index):
        calls.append(index.tolist())
        return features[index, 0] * 2, torch.zeros(index.numel())

    estimate_interactions(features, sample, estimator, refresh_fraction=0.0)  # cold: nothing trusted, all sampled
    assert calls[-1] == list(range(8)) and estimator._memory[0].shape[0] == 8 and int(estimator.updates) == 1
    _, var = estimator(features)
    values, nll, share = estimate_interactions(features, sample, estimator, refresh_fraction=0.0)
    assert calls[-1] == sorted(var.topk(2).indices.tolist()) and share.item() == 0.25  # warm: 2 of 8, least sure
    sampled = torch.tensor(calls[-1])
    torch.testing.assert_close(values[sampled], features[sampled, 0] * 2)  # sampled values are the samples
    others = torch.ones(8, dtype=torch.bool)
    others[sampled] = False  # untrusted beyond the cap: dropped (no value), not their untrusted estimate
    assert values[others].isnan().all() and estimator.last_dropped.item() == 0.75
    assert estimator._memory[0].shape[0] == 10 and nll.requires_grad  # fresh + replayed samples in one NLL
