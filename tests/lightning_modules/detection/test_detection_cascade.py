"""Cascade Mask R-CNN RoI heads: per-stage matching, refinement, stage-weighted losses, score / mask merging."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from experiments.errors import ConfigError
from lightning_modules.detection.backbones import build_mask_rcnn
from lightning_modules.detection.cascade import (
    DEFAULT_BBOX_REG_WEIGHTS,
    CascadeRoIHeads,
    ClassAgnosticPredictor,
    make_cascade,
)
from tests.helpers import ITPN, SMALL_RCNN, TOY_HIVIT, box_target, toy_batch

STAGE_KEYS = {f"loss_{kind}_s{t}" for kind in ("classifier", "box_reg", "mask") for t in (1, 2, 3)}
RPN_KEYS = {"loss_objectness", "loss_rpn_box_reg"}
IMAGE = (64, 64)
CHANNELS = 8  # feature channels of the hand-built heads


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The toy detectors are made of tiny ops: with 2 OpenMP threads on a busy 2-core machine every op waits at a
    thread barrier (a train step takes ~5 s instead of ~0.1 s). One thread for this module, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy_cascade(seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return make_cascade(build_mask_rcnn("itpn_pyramid", ITPN, TOY_HIVIT, num_classes=3, **SMALL_RCNN), **kwargs)


def hand_heads(box_predictors=None, mask_predictors=None, mask_heads=None, **kwargs) -> CascadeRoIHeads:
    """Cascade heads on one stride-4 feature map of CHANNELS channels, 3 classes (background + 2)."""
    torch.manual_seed(0)
    n = 3
    kwargs.setdefault("batch_size_per_image", 512)
    kwargs.setdefault("score_thresh", 0.0)
    return CascadeRoIHeads(
        MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2),
        [TwoMLPHead(CHANNELS * 49, 16) for _ in range(n)],
        box_predictors or [ClassAgnosticPredictor(16, 3) for _ in range(n)],
        MultiScaleRoIAlign(["0"], output_size=14, sampling_ratio=2),
        mask_heads or [MaskRCNNHeads(CHANNELS, [8], 1) for _ in range(n)],
        mask_predictors or [MaskRCNNPredictor(8, 8, 3) for _ in range(n)],
        **kwargs,
    )


def features(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"0": torch.randn(1, CHANNELS, 16, 16, generator=g)}


def decode(box: list[float], delta: list[float], weights: tuple[float, ...], size: int = 64) -> list[float]:
    """BoxCoder.decode by hand for one box, then clipped to the image."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx, cy = x1 + 0.5 * w, y1 + 0.5 * h
    dx, dy, dw, dh = (d / wt for d, wt in zip(delta, weights, strict=True))
    pcx, pcy, pw, ph = dx * w + cx, dy * h + cy, math.exp(dw) * w, math.exp(dh) * h
    out = [pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph]
    return [min(max(v, 0.0), float(size)) for v in out]


def record_pooled_boxes(heads: CascadeRoIHeads) -> list[list[torch.Tensor]]:
    """The boxes given to the box RoI pool at each call (one call per stage)."""
    calls = []
    heads.box_roi_pool.register_forward_pre_hook(lambda module, args: calls.append([b.clone() for b in args[1]]))
    return calls


# ---- full detector -----------------------------------------------------------------------------------------------
def test_train_step_returns_stage_weighted_losses():
    model = toy_cascade()
    assert isinstance(model.roi_heads, CascadeRoIHeads)
    images, targets = toy_batch()
    model.train()
    torch.manual_seed(1)
    weighted = model(images, targets)
    assert set(weighted) == STAGE_KEYS | RPN_KEYS
    assert all(torch.isfinite(v) for v in weighted.values()), weighted
    # same seed, stage weights 1: the returned stage-t losses are weight_t x the unweighted losses
    model.roi_heads.stage_weights = (1.0, 1.0, 1.0)
    torch.manual_seed(1)
    plain = model(images, targets)
    for key in weighted:
        weight = {"_s2": 0.5, "_s3": 0.25}.get(key[-3:], 1.0)
        assert plain[key] > 0, key
        torch.testing.assert_close(weighted[key], weight * plain[key], msg=key)
    # the three stages see different samples / heads: their unweighted losses are not copies of each other
    assert len({round(plain[f"loss_mask_s{t}"].item(), 6) for t in (1, 2, 3)}) == 3


def test_eval_outputs_boxes_scores_and_pasted_masks():
    model = toy_cascade().eval()
    images, _ = toy_batch()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det in out:
        n = det["boxes"].shape[0]
        assert 0 < n <= 10  # score_thresh 0, detections_per_img 10
        assert det["labels"].shape == (n,) and det["scores"].shape == (n,)
        assert set(det["labels"].tolist()) <= {1, 2}
        assert det["masks"].shape == (n, 1, 64, 64)
        assert det["masks"].min() >= 0 and det["masks"].max() <= 1 and det["masks"].max() > 0
        assert ((det["scores"] > 0) & (det["scores"] < 1)).all()
        assert (det["boxes"] >= 0).all() and (det["boxes"] <= 64).all()
        assert torch.all(det["scores"][:-1] >= det["scores"][1:])  # NMS output sorted by score


def test_make_cascade_reuses_stage1_and_reinitialises_later_stages():
    torch.manual_seed(0)
    model = build_mask_rcnn("itpn_pyramid", ITPN, TOY_HIVIT, num_classes=3, **SMALL_RCNN)
    old = model.roi_heads
    box_head, mask_head, mask_predictor = old.box_head, old.mask_head, old.mask_predictor
    with torch.no_grad():  # mark the stage-1 weights: copies that were not re-initialised would keep them
        for p in (*box_head.parameters(), *mask_head.parameters(), *mask_predictor.parameters()):
            p.fill_(0.5)
        for m in box_head.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(3.0)
    heads = make_cascade(model).roi_heads
    assert heads.num_stages == 3
    assert heads.stage(0).box_head is box_head and heads.stage(0).mask_head is mask_head
    assert heads.stage(0).mask_predictor is mask_predictor
    assert (heads.fg_bg_sampler.batch_size_per_image, heads.fg_bg_sampler.positive_fraction) == (16, 0.25)
    assert (heads.score_thresh, heads.nms_thresh, heads.detections_per_img) == (0.0, 0.5, 10)
    for t, (iou, weight, coder) in enumerate(
        zip((0.5, 0.6, 0.7), (1.0, 0.5, 0.25), DEFAULT_BBOX_REG_WEIGHTS, strict=True)
    ):
        stage = heads.stage(t)
        assert stage.matcher.high_threshold == stage.matcher.low_threshold == iou
        assert not stage.matcher.allow_low_quality_matches
        assert stage.box_coder.weights == coder and stage.weight == weight
        pred = stage.box_predictor
        assert isinstance(pred, ClassAgnosticPredictor)
        assert (pred.cls_score.in_features, pred.cls_score.out_features, pred.bbox_pred.out_features) == (64, 3, 4)
        assert 0.005 < pred.cls_score.weight.std() < 0.02 and 0.0005 < pred.bbox_pred.weight.std() < 0.002
        assert not pred.cls_score.bias.any() and not pred.bbox_pred.bias.any()
        if t == 0:
            continue
        assert stage.box_head is not box_head and stage.mask_head is not mask_head
        for new, orig in ((stage.box_head, box_head), (stage.mask_head, mask_head)):
            assert [p.shape for p in new.parameters()] == [p.shape for p in orig.parameters()]
        params = [p for m in (stage.box_head, stage.mask_head, stage.mask_predictor) for p in m.parameters()]
        assert all(not torch.all(p == 0.5) for p in params)
        assert all(not m.running_mean.any() for m in stage.box_head.modules() if isinstance(m, nn.BatchNorm2d))
    assert heads.stage(1).box_head is not heads.stage(2).box_head
    logits_1, logits_2 = (heads.stage(t).mask_predictor.mask_fcn_logits.weight for t in (1, 2))
    assert not torch.equal(logits_1, logits_2)


def test_make_cascade_keeps_c4_res5_shared_within_each_stage():
    model = make_cascade(build_mask_rcnn("resnet_c4", "resnet18", {}, num_classes=3, **SMALL_RCNN))
    heads = model.roi_heads
    for t in range(3):
        assert heads.stage(t).mask_head is heads.stage(t).box_head.res5
    assert heads.stage(1).box_head.res5 is not heads.stage(0).box_head.res5


# ---- matching, refinement, merging on hand-built heads -----------------------------------------------------------
GT = [[0.0, 0.0, 10.0, 10.0]]
# IoU with GT: 0.55, 0.65, 0.75, 0
PROPOSALS = torch.tensor([[0.0, 0.0, 10.0, 5.5], [0.0, 0.0, 10.0, 6.5], [0.0, 0.0, 10.0, 7.5], [40, 40, 60, 60.0]])


def test_each_stage_matches_at_its_own_iou_threshold():
    heads = hand_heads()
    targets = [box_target(GT, [2])]
    expected = {0: [2, 2, 2, 0, 2], 1: [0, 2, 2, 0, 2], 2: [0, 0, 2, 0, 2]}  # last row: the appended gt box
    for t, labels in expected.items():
        rois, matched, got, regression, is_gt = heads.select_stage_samples(t, [PROPOSALS.clone()], targets)
        torch.testing.assert_close(rois[0], torch.cat([PROPOSALS, torch.tensor(GT)]))
        assert got[0].tolist() == labels, t
        assert is_gt[0].tolist() == [False] * 4 + [True]
        assert matched[0].tolist() == [0] * 5
        # IoU-0.75 proposal: dx = dw = 0, dy = wy * (5 - 3.75) / 7.5, dh = wh * log(10 / 7.5)
        wx, wy, ww, wh = DEFAULT_BBOX_REG_WEIGHTS[t]
        torch.testing.assert_close(regression[0][2], torch.tensor([0.0, wy * 1.25 / 7.5, 0.0, wh * math.log(4 / 3)]))


@pytest.mark.parametrize("delta", [(0.0, 0.0, 0.0, 0.0), (1.0, -0.6, 0.4, -0.2)])
def test_refinement_feeds_each_stage_the_previous_regression(delta):
    heads = hand_heads()
    for t in range(3):
        with torch.no_grad():
            heads.stage(t).box_predictor.bbox_pred.weight.zero_()
            heads.stage(t).box_predictor.bbox_pred.bias.copy_(torch.tensor(delta))
    calls = record_pooled_boxes(heads)
    props = PROPOSALS.tolist()
    hand = [props]  # the proposals each stage sees, by hand
    for t in range(3):
        hand.append([decode(b, list(delta), DEFAULT_BBOX_REG_WEIGHTS[t]) for b in hand[-1]])

    heads.train()
    losses = heads(features(), [PROPOSALS.clone()], [IMAGE], [box_target(GT, [2])])[1]
    assert set(losses) == STAGE_KEYS
    assert len(calls) == 3
    for t in range(3):  # the appended gt is dropped after each stage and appended again: exactly one gt row
        torch.testing.assert_close(calls[t][0], torch.tensor(hand[t] + GT), msg=f"stage {t + 1}")
    if delta[0] == 0.0:
        assert all(torch.equal(c[0][:4], PROPOSALS) for c in calls)

    calls.clear()
    heads.eval()
    with torch.no_grad():
        result = heads(features(), [PROPOSALS.clone()], [IMAGE])[0][0]
    for t in range(3):
        torch.testing.assert_close(calls[t][0], torch.tensor(hand[t]), msg=f"stage {t + 1}")
    # final boxes: the last stage's regression, the same box for every class
    final = torch.tensor(hand[3])
    assert result["boxes"].shape[0] > 0
    for box in result["boxes"]:
        assert torch.isclose(box, final, atol=1e-4).all(dim=1).any(), box


def test_later_stage_losses_do_not_backpropagate_into_earlier_regressors():
    heads = hand_heads().train()
    losses = heads(features(), [PROPOSALS.clone()], [IMAGE], [box_target(GT, [2])])[1]
    sum(v for k, v in losses.items() if k.endswith("_s3")).backward()
    for t in (0, 1):  # the refined boxes are detached: stage 3's loss reaches neither stage 1 nor stage 2
        assert all(p.grad is None for p in heads.stage(t).box_predictor.parameters()), t
    assert heads.stage(2).box_predictor.bbox_pred.weight.grad.abs().sum() > 0


def test_refine_boxes_decodes_with_the_stage_coder_and_drops_rows():
    heads = hand_heads()
    boxes = [torch.tensor([[8.0, 8.0, 24.0, 16.0], [30.0, 10.0, 40.0, 50.0]])]
    delta = [0.5, 0.25, -0.3, 0.2]
    deltas = torch.tensor([delta, delta])
    for t in range(3):
        out = heads.refine_boxes(t, boxes, deltas, [IMAGE])[0]
        hand = [decode(b, delta, DEFAULT_BBOX_REG_WEIGHTS[t]) for b in boxes[0].tolist()]
        torch.testing.assert_close(out, torch.tensor(hand))
        kept = heads.refine_boxes(t, boxes, deltas, [IMAGE], keep=[torch.tensor([False, True])])[0]
        torch.testing.assert_close(kept, torch.tensor(hand[1:]))
    unchanged = heads.refine_boxes(1, boxes, torch.zeros(2, 4), [IMAGE])[0]
    torch.testing.assert_close(unchanged, boxes[0])


class FixedBoxPredictor(nn.Module):
    """Fixed class logits and zero deltas for every RoI."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        return self.logits.expand(n, -1), x.new_zeros(n, 4)


class FixedMaskPredictor(nn.Module):
    """Mask logits constant per class (28 x 28)."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[None, :, None, None].expand(x.shape[0], -1, 28, 28)


STAGE_LOGITS = [[0.0, 1.0, 2.0], [1.0, 0.0, -1.0], [2.0, 2.5, 0.0]]
MASK_LOGITS = [[0.0, -1.0, 2.0], [0.0, 3.0, -2.0], [0.0, 0.5, 1.0]]


@pytest.mark.parametrize("score_merge", ["prob", "logit"])
def test_scores_and_masks_average_the_stages(score_merge):
    heads = hand_heads(
        box_predictors=[FixedBoxPredictor(lg) for lg in STAGE_LOGITS],
        mask_heads=[nn.Identity() for _ in range(3)],
        mask_predictors=[FixedMaskPredictor(lg) for lg in MASK_LOGITS],
        score_merge=score_merge,
    ).eval()
    with torch.no_grad():
        result = heads(features(), [PROPOSALS[:1].clone()], [IMAGE])[0][0]
    logits = torch.tensor(STAGE_LOGITS)
    if score_merge == "prob":
        expected = logits.softmax(dim=-1).mean(dim=0)
    else:
        expected = logits.mean(dim=0).softmax(dim=-1)
    assert sorted(result["labels"].tolist()) == [1, 2]  # one box, both foreground classes, class-agnostic box
    for label, score in zip(result["labels"].tolist(), result["scores"], strict=True):
        torch.testing.assert_close(score, expected[label])
    assert torch.equal(result["boxes"][0], result["boxes"][1])
    other = logits.mean(dim=0).softmax(dim=-1) if score_merge == "prob" else logits.softmax(dim=-1).mean(dim=0)
    assert not torch.allclose(expected[1:], other[1:], atol=1e-3)  # the two merges differ on this case
    masks = result["masks"]
    assert masks.shape == (2, 1, 28, 28)
    mask_probs = torch.tensor(MASK_LOGITS).sigmoid().mean(dim=0)
    for label, mask in zip(result["labels"].tolist(), masks, strict=True):
        torch.testing.assert_close(mask, torch.full((1, 28, 28), float(mask_probs[label])))


def test_optimising_the_cascade_lowers_the_loss():
    model = toy_cascade().train()
    images, targets = toy_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def losses() -> dict[str, torch.Tensor]:
        torch.manual_seed(0)  # same RPN / RoI sampling draws each step
        return model(images, targets)

    first = losses()
    sum(first.values()).backward()
    heads = model.roi_heads
    for t in range(3):  # every stage's heads receive gradients
        stage = heads.stage(t)
        for module in (stage.box_head, stage.box_predictor, stage.mask_head, stage.mask_predictor):
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), (t, module)
    optimizer.step()
    for _ in range(19):
        optimizer.zero_grad()
        sum(losses().values()).backward()
        optimizer.step()
    with torch.no_grad():
        last = losses()
    before, after = sum(first.values()).item(), sum(last.values()).item()
    assert after < 0.8 * before, (before, after)
    cascade_before = sum(v for k, v in first.items() if k in STAGE_KEYS).item()
    cascade_after = float(sum(v for k, v in last.items() if k in STAGE_KEYS))
    assert cascade_after < cascade_before, (cascade_before, cascade_after)


# ---- configuration errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(stage_ious=(0.5, 0.6)), "one entry per stage"),
        (dict(stage_weights=(1.0, 0.5, 0.25, 0.1)), "one entry per stage"),
        (dict(bbox_reg_weights=DEFAULT_BBOX_REG_WEIGHTS[:2]), "one entry per stage"),
        (dict(stage_ious=(), stage_weights=(), bbox_reg_weights=()), "at least one stage"),
        (dict(bbox_reg_weights=((10, 10, 5), (20, 20, 10, 10), (30, 30, 15, 15))), "4 positive numbers"),
        (dict(stage_ious=(0.5, 0.6, 1.5)), r"\(0, 1\]"),
    ],
)
def test_make_cascade_config_errors(kwargs, match):
    model = build_mask_rcnn("itpn_pyramid", ITPN, TOY_HIVIT, num_classes=3, **SMALL_RCNN)
    with pytest.raises(ConfigError, match=match):
        make_cascade(model, **kwargs)


def test_make_cascade_needs_a_mask_branch_and_a_plain_mask_rcnn():
    model = build_mask_rcnn("itpn_pyramid", ITPN, TOY_HIVIT, num_classes=3, **SMALL_RCNN)
    model.roi_heads.mask_predictor = None
    with pytest.raises(ConfigError, match="no mask branch"):
        make_cascade(model)
    model = make_cascade(build_mask_rcnn("itpn_pyramid", ITPN, TOY_HIVIT, num_classes=3, **SMALL_RCNN))
    with pytest.raises(ConfigError, match="already a CascadeRoIHeads"):
        make_cascade(model)


def test_cascade_heads_reject_wrong_module_counts_and_class_specific_regression():
    with pytest.raises(ConfigError, match="one module of each kind per stage"):
        hand_heads(mask_heads=[MaskRCNNHeads(CHANNELS, [8], 1) for _ in range(2)])
    heads = hand_heads(box_predictors=[FastRCNNPredictor(16, 3) for _ in range(3)]).eval()
    with pytest.raises(ConfigError, match="class-agnostic"):
        heads(features(), [PROPOSALS.clone()], [IMAGE])
