"""The retrieval losses as pure functions, by hand: L_TSA's box regression, L_FSA's KL, the estimator's NLL with
replay, LOUPE's weighted total; and the injected networks the dual encoder refuses."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from experiments.errors import ConfigError
from lightning_modules.backbones import registered_model
from lightning_modules.retrieval.losses import estimator_loss, loupe_loss, phrase_alignment_loss, region_box_loss
from lightning_modules.retrieval.module import DualEncoderRetrieval
from lightning_modules.retrieval.text import caption_tokenizer_of


def test_region_box_loss_regresses_to_the_best_candidate_by_hand():
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2]]])
    candidates = torch.tensor([[[[0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]]])
    scores = torch.tensor([[[0.1, 0.9, -1.0]]])  # the second candidate is best
    # xyxy [0.4, 0.4, 0.6, 0.6] vs [0.5, 0.4, 0.7, 0.6]: IoU 0.02 / 0.06, the hull is the union: GIoU loss 2/3;
    # L1: one coordinate off by 0.1, mean over 4
    want = 0.1 / 4 + 2 / 3
    assert region_box_loss(boxes, candidates, scores).item() == pytest.approx(want, abs=1e-5)
    scores[0, 0, 1] = float("nan")  # the region was dropped: no loss, no count
    assert region_box_loss(boxes, candidates, scores).item() == 0.0


def test_phrase_alignment_loss_by_hand():
    regions = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # 2 regions
    phrases = torch.tensor([[[1.0, 0.0]]])  # 1 phrase, aligned with region 0: logits (s, 0)
    interactions = torch.tensor([[[0.0], [0.0]]])  # uniform target over the regions
    valid = torch.tensor([[True]])
    scale = torch.tensor(math.log(3.0))  # softmax(s, 0) = (3/4, 1/4)
    # KL(uniform || (3/4, 1/4)) = 1/2 log(2/3) + 1/2 log(2)
    want = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    got = phrase_alignment_loss(regions, phrases, interactions, valid, scale, temperature=0.1)
    assert got.item() == pytest.approx(want, abs=1e-6)
    interactions[0, 1, 0] = float("nan")  # region 1 dropped: one region left, target and alignment agree
    assert phrase_alignment_loss(regions, phrases, interactions, valid, scale, 0.1).item() == pytest.approx(0.0)
    assert phrase_alignment_loss(regions, phrases, interactions, ~valid, scale, 0.1).item() == 0.0  # padded


def test_estimator_loss_adds_the_sampling_variance_and_weights_replay_by_count():
    mean, targets = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])
    variance, noise = torch.tensor([0.5, 1.0]), torch.tensor([0.5, 1.0])
    # Gaussian NLL with variance 1 and 2: mean of 1/2 (log var + (x - mu)^2 / var)
    fresh = (0.5 * (0.0 + 1.0) + 0.5 * (math.log(2.0) + 0.0)) / 2
    assert estimator_loss(mean, targets, variance, noise).item() == pytest.approx(fresh, abs=1e-6)
    replayed = torch.tensor(3.0)
    got = estimator_loss(mean, targets, variance, noise, replay=replayed, replay_count=6)
    assert got.item() == pytest.approx((2 * fresh + 6 * 3.0) / 8, abs=1e-6)


def test_loupe_loss_weights_each_term():
    one = torch.tensor(1.0)
    total = loupe_loss(one, 2 * one, 3 * one, 4 * one, tsa_weight=0.5, fsa_weight=0.25, estimator_weight=0.1)
    assert total.item() == pytest.approx(1 + 1.0 + 0.75 + 0.4)


def test_the_dual_encoder_refuses_a_classifier_and_a_text_network_without_tokenizer():
    vit = dict(img_size=32, patch_size=8, depth=1, global_pool="avg", class_token=False)
    with pytest.raises(ConfigError, match=r"image_encoder\.init_args\.num_classes: 0"):
        DualEncoderRetrieval(registered_model("vit_tiny_patch16_224", num_classes=10, kwargs=vit), nn.Identity())
    with pytest.raises(ConfigError, match=r"^model\.init_args\.text_encoder \(Linear\) carries no caption tokenizer"):
        caption_tokenizer_of(nn.Linear(2, 2), "model.init_args.text_encoder")
