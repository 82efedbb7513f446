"""DE-Net metrics: manipulative precision by hand, FID of a set against itself and against a shifted set."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.editing.metrics import ManipulativePrecision, fid_metric


def test_manipulative_precision_hand_computed():
    mp = ManipulativePrecision()
    source = torch.zeros(2, 3, 2, 2)
    edited = source.clone()
    edited[0] += 0.2  # diff 0.2
    edited[1, 0] = 0.6  # one channel of three: diff 0.2
    image = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # cosines 1 and 1/sqrt(2)
    mp.update(source[:1], edited[:1], image[:1], text[:1])
    mp.update(source[1:], edited[1:], image[1:], text[1:])
    out = mp.compute()
    sim = (1 + 1 / math.sqrt(2)) / 2
    assert out["diff"].item() == pytest.approx(0.2, abs=1e-6)
    assert out["sim"].item() == pytest.approx(sim, abs=1e-6)
    assert out["mp"].item() == pytest.approx(0.8 * sim, abs=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        mp.update(source, edited[:, :, :1], image, text)


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_a_shift():
    torch.manual_seed(0)
    images = torch.rand(48, 3, 32, 32)
    fid = fid_metric("resnet10t", input_size=32)
    fid.update(images, real=True)
    fid.update(images, real=False)
    same = fid.compute().item()
    fid.reset()
    fid.update(images, real=True)
    fid.update((images * 0.5 + 0.5).clamp(0, 1), real=False)
    shifted = fid.compute().item()
    assert abs(same) < 1e-2 * max(shifted, 1.0) and shifted > 100 * max(abs(same), 1e-4), (same, shifted)


def test_missing_local_feature_weights_are_a_clear_error():
    from experiments.errors import ConfigError

    with pytest.raises(ConfigError, match="pretrained weights '/no/such.pth' for resnet10t do not exist"):
        fid_metric("resnet10t", pretrained="/no/such.pth")
    with pytest.raises(ConfigError, match="unknown backbone 'resnet10x'"):
        fid_metric("resnet10x")
