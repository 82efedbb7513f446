"""TEL model pieces against hand-computed values: frame pooling, MIL pooling, consensus, proposals, ground truth."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.emotion.dcin import ContextIntegration, DilatedContext, Stream, pool_frames
from lightning_modules.emotion.losses import consensus_loss, topk_mean
from lightning_modules.emotion.proposals import ground_truth, proposals, unit_runs


def test_pool_frames_means_the_frames_inside_each_unit():
    feats = torch.tensor([[[1.0], [2.0], [3.0], [4.0], [0.0]]])  # frames at 0.25, 0.75, ... (fps 2)
    times = torch.tensor([[0.25, 0.75, 1.25, 1.75, 2.25]])
    frame_mask = torch.tensor([[True, True, True, True, False]])
    starts, ends = torch.tensor([[0.0, 1.0, 1.8, 5.0]]), torch.tensor([[1.0, 1.5, 1.9, 6.0]])
    unit_mask = torch.tensor([[True, True, True, False]])
    out = pool_frames(feats, times, frame_mask, starts, ends, unit_mask)
    # unit 0 holds frames 1, 2; unit 1 frame 3; unit 2 none -> nearest valid frame (1.75 -> 4); padded unit -> 0
    assert out[0, :, 0].tolist() == [1.5, 3.0, 4.0, 0.0]


def test_topk_mean_pools_the_largest_units_of_each_clip():
    logits = torch.tensor([[[1.0], [5.0], [3.0], [9.0]], [[2.0], [7.0], [0.0], [0.0]]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    # clip 0: 3 units, k = ceil(3 / 2) = 2 -> (5 + 3) / 2 (the padded 9 is ignored); clip 1: k = 1 -> 7
    assert topk_mean(logits, mask, ratio=2.0)[:, 0].tolist() == [4.0, 7.0]


def test_consensus_pulls_each_stream_towards_the_other():
    video = torch.zeros(1, 2, 1, requires_grad=True)  # p = 0.5
    text = torch.full((1, 2, 1), 2.0, requires_grad=True)
    mask = torch.tensor([[True, False]])
    loss = consensus_loss(video, text, mask)
    p = torch.sigmoid(torch.tensor(2.0))
    assert loss.item() == pytest.approx(2 * (0.5 - p.item()) ** 2)  # only the real unit counts
    loss.backward()
    assert video.grad[0, 0, 0] < 0 < text.grad[0, 0, 0]  # video goes up towards text, text down towards video
    assert video.grad[0, 1, 0] == 0 and text.grad[0, 1, 0] == 0


def test_padded_units_do_not_change_real_units():
    torch.manual_seed(0)
    stream = Stream(8, 16, 3, rates=(1, 2), heads=2, dropout=0.0).eval()
    x = torch.randn(1, 5, 8)
    mask = torch.tensor([[True] * 5])
    padded = torch.cat([x, torch.randn(1, 3, 8) * 100], 1)
    pmask = torch.tensor([[True] * 5 + [False] * 3])
    torch.testing.assert_close(stream(padded, pmask)[:, :5], stream(x, mask), atol=1e-5, rtol=1e-5)
    assert isinstance(stream.coarse, DilatedContext) and isinstance(stream.fine, ContextIntegration)
    weights = stream.fine.last_scale_weights
    assert weights.shape == (1, 5, 2) and torch.allclose(weights.sum(-1), torch.ones(1, 5))


def test_unit_runs_and_ground_truth_by_hand():
    row, first, last = unit_runs(torch.tensor([[True, True, False, True], [False, True, True, True]]))
    assert row.tolist() == [0, 0, 1] and first.tolist() == [0, 3, 1] and last.tolist() == [1, 3, 3]
    labels = torch.zeros(1, 4, 2, dtype=torch.bool)
    labels[0, [0, 1, 3], 1] = True
    starts, ends = torch.tensor([[0.0, 2.0, 4.0, 6.0]]), torch.tensor([[1.5, 3.0, 5.0, 7.5]])
    gt = ground_truth(labels, starts, ends, torch.ones(1, 4, dtype=torch.bool), torch.tensor([7]))
    assert gt.tolist() == [[7, 1, 0.0, 3.0], [7, 1, 6.0, 7.5]]


def test_proposals_by_hand():
    probs = torch.tensor([[[0.95], [0.85], [0.15], [0.55]]])
    starts, ends = torch.tensor([[0.0, 2.0, 4.0, 6.0]]), torch.tensor([[1.5, 3.0, 5.0, 7.5]])
    mask = torch.tensor([[True, True, True, True]])
    out = proposals(probs, starts, ends, mask, torch.tensor([3]), thresholds=(0.1, 0.5, 0.9), nms_iou=0.6)
    rows = sorted((round(r[2].item(), 2), round(r[3].item(), 2), round(r[4].item(), 4)) for r in out)
    # 0.1: one run 0..3 (mean 0.625); 0.5: runs 0..1 (0.9) and 3 (0.55); 0.9: run 0 (0.95). NMS at 0.6 drops
    # nothing here: [0, 3] vs [0, 1.5] overlap 0.5; [0, 7.5] vs [0, 3] overlap 0.4
    assert rows == [(0.0, 1.5, 0.95), (0.0, 3.0, 0.9), (0.0, 7.5, 0.625), (6.0, 7.5, 0.55)]
    assert (out[:, 0] == 3).all() and (out[:, 1] == 0).all()
    stricter = proposals(probs, starts, ends, mask, torch.tensor([3]), thresholds=(0.1, 0.5, 0.9), nms_iou=0.45)
    kept = sorted((round(r[2].item(), 2), round(r[3].item(), 2)) for r in stricter)
    assert kept == [(0.0, 1.5), (0.0, 7.5), (6.0, 7.5)]  # [0, 1.5] (0.95) suppresses [0, 3] (0.9): tIoU 0.5 > 0.45


def test_subtitle_encoder_caches_and_ignores_padding():
    from lightning_modules.emotion.text import SubtitleEncoder

    enc = SubtitleEncoder("minilm-offline", max_length=32)
    calls = []
    original = enc.encoder.forward
    enc.encoder.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    first = enc(["I love you.", "The train leaves at six o'clock in the morning, sharp."], torch.device("cpu"))
    alone = enc._encode(["I love you."], torch.device("cpu"))  # no padding in its batch
    torch.testing.assert_close(first[0], alone[0], atol=1e-5, rtol=1e-4)  # padded tokens do not enter the mean
    calls.clear()
    again = enc(["The train leaves at six o'clock in the morning, sharp.", "I love you."], torch.device("cpu"))
    assert not calls and torch.equal(again[1], first[0])  # cached: no encoder call
    assert first.shape == (2, 384) and not torch.allclose(first[0], first[1])


def test_class_frequency_prior_scores_every_unit_by_the_training_share():
    import numpy as np

    from lightning_modules.emotion.prior import ClassFrequencyPrior

    prior = ClassFrequencyPrior(num_classes=3)
    prior.fit_prior(np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=bool))
    probs = prior.unit_probs({"unit_mask": torch.ones(2, 4, dtype=torch.bool), "starts": torch.zeros(2, 4)})
    assert probs.shape == (2, 4, 3) and probs[1, 3].tolist() == [0.75, 0.25, 0.0]


def test_relative_thresholds_give_every_clip_proposals():
    probs = torch.tensor([[[0.02], [0.08], [0.01]]])  # below every absolute threshold
    starts, ends = torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    none = proposals(probs, starts, ends, mask, torch.tensor([0]), thresholds=(0.1, 0.5), relative=False)
    assert none.shape == (0, 5)
    rel = proposals(probs, starts, ends, mask, torch.tensor([0]), thresholds=(0.1, 0.5), relative=True)
    # levels 0.25, 1, 0.125: >= 0.1 all three units (mean 0.0367), >= 0.5 unit 1 alone (0.08)
    got = sorted((r[2].item(), r[3].item(), round(r[4].item(), 4)) for r in rel)
    assert got == [(0.0, 3.0, round(0.11 / 3, 4)), (1.0, 2.0, 0.08)]


def test_threshold_zero_adds_the_whole_clip():
    probs = torch.tensor([[[0.1], [0.9], [0.2], [0.8]]])
    starts, ends = torch.tensor([[0.0, 1.0, 2.0, 3.0]]), torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.tensor([[True, True, True, False]])  # the fourth unit is padding
    got = proposals(probs, starts, ends, mask, torch.tensor([7]), thresholds=(0.0, 0.5), nms_iou=0.9)
    rows = sorted((r[2].item(), r[3].item(), round(r[4].item(), 4)) for r in got)
    assert rows == [(0.0, 3.0, 0.4), (1.0, 2.0, 0.9)]  # whole (real) clip scored by its mean; the peak unit
    assert (got[:, 0] == 7).all()


def test_clip_level_validation_and_test_needs_unit_labels():
    from experiments.errors import ConfigError
    from lightning_modules.emotion.prior import ClassFrequencyPrior

    prior = ClassFrequencyPrior(num_classes=2)
    prior.fit_prior(torch.tensor([[1, 0], [1, 1], [0, 0], [1, 0]]).bool().numpy())  # frequencies 0.75, 0.25
    batch = {"unit_mask": torch.ones(3, 2, dtype=torch.bool), "starts": torch.zeros(3, 2), "ends": torch.ones(3, 2),
             "labels": torch.tensor([[1, 0], [0, 1], [1, 1]]), "index": torch.arange(3)}  # fmt: skip
    prior._evaluate(batch, "val")
    assert prior.val_clip.update_count == 1 and prior.val_segment.update_count == 0
    # every clip ties within a class, so each class's AP is its share of positive clips: (2/3 + 2/3) / 2
    assert prior.val_clip.compute().item() == pytest.approx(100 * 2 / 3)
    with pytest.raises(ConfigError, match="test split needs subtitle-level labels"):
        prior._evaluate(batch, "test")


def test_localizer_rejects_an_unknown_monitor():
    from experiments.errors import ConfigError
    from lightning_modules.emotion.dcin import DCIN
    from lightning_modules.emotion.module import TemporalEmotionLocalizer

    with pytest.raises(ConfigError, match="monitor is 'val/loss'.*val/clip_map"):
        TemporalEmotionLocalizer(DCIN(num_classes=2, modalities="video", visual_dim=8), monitor="val/loss")


def test_whole_clip_proposals_rank_first_by_the_clip_score():
    probs = torch.tensor([[[0.1, 0.0], [0.9, 0.0], [0.2, 0.0]], [[0.5, 0.5], [0.0, 0.0], [0.0, 0.0]]])
    starts = torch.tensor([[0.0, 1.0, 2.0], [0.0, 2.0, 4.0]])
    ends = starts + 1
    mask = torch.tensor([[True, True, True], [True, False, False]])  # clip 1 has one real unit
    clip = torch.tensor([[0.8, 0.1], [0.5, 0.4]])
    got = proposals(probs, starts, ends, mask, torch.tensor([3, 4]), thresholds=(0.5,), nms_iou=0.9,
                    clip_scores=clip, whole_clip=True)  # fmt: skip
    rows = sorted((int(r[0]), int(r[1]), r[2].item(), r[3].item(), round(r[4].item(), 4)) for r in got)
    assert rows == [
        (3, 0, 0.0, 3.0, 0.8),  # the whole clip, scored by the clip probability
        (3, 0, 1.0, 2.0, round(0.9 * 0.8, 4)),  # the run at level >= 0.5: unit 1, mean 0.9 x clip 0.8
        (3, 1, 0.0, 3.0, 0.1),  # an all-zero class still gets its whole clip
        (4, 0, 0.0, 1.0, 0.5),  # clip 4: one unit, so the run and the whole clip coincide (NMS keeps the best)
        (4, 1, 0.0, 1.0, 0.4),
    ]
    with pytest.raises(ValueError, match="pass clip_scores"):
        proposals(probs, starts, ends, mask, torch.tensor([3, 4]), whole_clip=True)


def test_calibrated_unit_scores_by_hand():
    from experiments.errors import ConfigError
    from lightning_modules.emotion.module import calibrated_scores

    probs = torch.tensor([[[0.9, 0.2], [0.1, 0.8]]])  # [B=1, U=2, C=2]
    clip = torch.tensor([[0.4, 0.5]])
    assert torch.equal(calibrated_scores(probs, clip, "unit"), probs)
    # clip: every unit carries its clip's probability of the class
    assert torch.equal(calibrated_scores(probs, clip, "clip"), torch.tensor([[[0.4, 0.5], [0.4, 0.5]]]))
    # product: sqrt(p_clip * p_unit): sqrt(0.36) = 0.6, sqrt(0.1), sqrt(0.04) = 0.2, sqrt(0.4)
    expected = torch.tensor([[[0.6, 0.1**0.5], [0.2, 0.4**0.5]]])
    assert torch.allclose(calibrated_scores(probs, clip, "product"), expected)
    with pytest.raises(ConfigError, match="unit_scores"):
        calibrated_scores(probs, clip, "mean")


def test_the_localizer_takes_its_network_and_reads_old_checkpoints():
    from experiments.errors import ConfigError
    from lightning_modules.emotion.dcin import DCIN
    from lightning_modules.emotion.module import TemporalEmotionLocalizer

    torch.manual_seed(0)
    net = DCIN(num_classes=2, modalities="video", visual_dim=8, dim=16, rates=(1,), heads=2)
    model = TemporalEmotionLocalizer(net, consensus_weight=0.5)
    assert model.net is net and model.num_classes == 2 and model.cfg["lam"] == 0.5
    assert "net" not in model.hparams  # built in Python: the network is not pickled into the hyper-parameters
    # a checkpoint of the module before the injection kept the streams at the top level
    old = {k[len("net.") :]: v + 1 for k, v in model.state_dict().items()}
    assert "video_stream.head.weight" in old
    checkpoint = {"state_dict": dict(old)}
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])  # strict: every key found
    assert all(torch.equal(model.state_dict()[f"net.{k}"], v) for k, v in old.items())
    with pytest.raises(ConfigError, match=r"give model\.init_args\.net\.init_args\.text_encoder"):
        DCIN(num_classes=2, modalities="subtitles")
    with pytest.raises(TypeError):
        TemporalEmotionLocalizer(net, 4.0)  # every setting after the network is keyword-only
