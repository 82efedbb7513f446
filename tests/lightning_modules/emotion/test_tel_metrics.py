"""TEL metrics against hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.emotion.metrics import InstanceMAP, SegmentMAP, average_precision, temporal_iou


def test_temporal_iou_by_hand():
    iou = temporal_iou(torch.tensor([[0.0, 10.0], [25.0, 40.0]]), torch.tensor([[5.0, 15.0], [20.0, 30.0], [50, 50]]))
    torch.testing.assert_close(iou, torch.tensor([[5 / 15, 0.0, 0.0], [0.0, 5 / 20, 0.0]]))


def test_average_precision_uses_the_monotone_envelope():
    # hits T F T T of 3 positives: precision 1, 1/2, 2/3, 3/4 -> envelope 1, 3/4, 3/4, 3/4 at recalls 1/3, 2/3, 1
    assert average_precision(torch.tensor([True, False, True, True]), 3) == pytest.approx((1 + 0.75 + 0.75) / 3)
    assert average_precision(torch.tensor([False, True]), 2) == pytest.approx(0.25)  # half recall at precision 1/2
    assert average_precision(torch.zeros(0, dtype=torch.bool), 2) == 0.0


def test_instance_map_hand_computed():
    metric = InstanceMAP(num_classes=3)
    gt = torch.tensor([[0, 0, 0, 10], [0, 0, 20, 30], [1, 0, 0, 5], [0, 1, 0, 4]], dtype=torch.float64)
    pred = torch.tensor(
        [
            [0, 0, 0, 10, 0.9],  # class 0, clip 0: tIoU 1 -> hit
            [0, 0, 1, 9, 0.8],  # overlaps the same (already matched) instance: a false positive
            [1, 0, 0, 10, 0.7],  # clip 1: tIoU 0.5 with [0, 5] -> hit up to threshold 0.5
            [0, 0, 25, 40, 0.6],  # tIoU 0.25 with [20, 30] -> hit at 0.1 and 0.2 only
            [0, 2, 0, 10, 0.99],  # class 2 has no ground truth: ignored
        ],
        dtype=torch.float64,
    )
    metric.update(pred[:3], gt[:2])  # two batches, rows split anywhere
    metric.update(pred[3:], gt[2:])
    out = metric.compute()
    # class 0: hits T F T T at tIoU <= 0.2 (AP 5/6), T F T F above (AP (1 + 2/3) / 3 = 5/9)
    # class 1: no prediction (AP 0)
    for t in (0.1, 0.2):
        assert out[f"map@{t}"].item() == pytest.approx(100 * (5 / 6) / 2)
    for t in (0.3, 0.4, 0.5):
        assert out[f"map@{t}"].item() == pytest.approx(100 * (5 / 9) / 2)
    assert out["map"].item() == pytest.approx((2 * 100 * 5 / 12 + 3 * 100 * 5 / 18) / 5)
    # a ground truth or prediction row that arrives twice (DDP padding) counts once
    metric.update(pred[:1], gt[:1])
    assert metric.compute()["map"].item() == pytest.approx(out["map"].item())


def test_instance_map_computes_from_the_states_a_ddp_sync_leaves():
    """After the DDP sync, torchmetrics has concatenated each list state into one tensor (dist_reduce_fx="cat");
    compute() read the list's truth value and raised on the tensor (the 2-process validate of configs/tel/toy.yaml)."""
    gt = torch.tensor([[0, 0, 0, 10], [1, 1, 0, 5]], dtype=torch.float64)
    pred = torch.tensor([[0, 0, 0, 10, 0.9], [1, 1, 2, 5, 0.4], [1, 0, 0, 3, 0.8]], dtype=torch.float64)
    listed = InstanceMAP(num_classes=2)
    listed.update(pred[:2], gt[:1])
    listed.update(pred[2:], gt[1:])
    synced = InstanceMAP(num_classes=2)
    synced.predictions, synced.ground_truth = pred.clone(), gt.clone()  # the synced (cat) form
    assert synced.compute()["map"].item() == pytest.approx(listed.compute()["map"].item())
    empty = InstanceMAP(num_classes=2)
    empty.predictions, empty.ground_truth = torch.zeros(0, 5, dtype=torch.float64), gt.clone()
    assert empty.compute()["map"].item() == 0.0  # every class has ground truth and no prediction


def test_instance_map_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[N, 5\]"):
        InstanceMAP().update(torch.zeros(2, 4), torch.zeros(1, 4))


def test_segment_map_hand_computed():
    metric = SegmentMAP(num_classes=3)
    scores = torch.tensor([[0.9, 0.2, 0.5], [0.8, 0.4, 0.5], [0.3, 0.6, 0.5], [0.1, 0.8, 0.5]])
    labels = torch.tensor([[1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]])
    metric.update(scores[:2], labels[:2])
    metric.update(scores[2:], labels[2:])
    # class 0: hits T F T F -> AP (1 + 2/3) / 2; class 1: its one positive ranked first -> 1; class 2: no positive
    assert metric.compute().item() == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1) / 2)
