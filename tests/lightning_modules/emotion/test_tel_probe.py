"""The frozen-encoder linear probe (TEL baselines): hand-computed unit scores of both scoring modes, the probe beats
the class-frequency prior on the toy clips (per-subtitle scoring also beats clip-score scoring there), and its fit
reads only the training split."""

from __future__ import annotations

import math
import shutil
import types

import numpy as np
import pytest
import torch

import datamodules.video_subtitles as video_subtitles
from datamodules.video_subtitles import VideoSubtitlesDataModule
from experiments.errors import ConfigError
from lightning_modules.emotion.probe import LinearProbe, fit_logistic, held_out_movies, probe_unit_probs
from lightning_modules.emotion.text import SubtitleEncoder
from tests.lightning_modules.emotion.test_tel_toy import chance_segment_map


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_probe_unit_scores_by_hand():
    # 2 classes on 2-d embeddings: class 0 reads dimension 0, class 1 reads dimension 1 minus 1
    weight, bias = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0.0, -1.0])
    emb = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]])  # one clip, 2 real units and a padded one
    mask = torch.tensor([[True, True, False]])
    per_unit = probe_unit_probs(emb, mask, weight, bias, "per_subtitle")
    expected = torch.tensor([[[sigmoid(2), sigmoid(-1)], [sigmoid(0), sigmoid(1)], [0, 0]]])
    torch.testing.assert_close(per_unit, expected)
    # clip score: the mean embedding (0.5, 1.0) gives logits (1.0, 0.0) on every real unit
    clip = probe_unit_probs(emb, mask, weight, bias, "clip_score")
    expected = torch.tensor([[[sigmoid(1), 0.5], [sigmoid(1), 0.5], [0, 0]]])
    torch.testing.assert_close(clip, expected)
    with pytest.raises(ConfigError, match="scoring"):
        probe_unit_probs(emb, mask, weight, bias, "mean")


def test_fit_logistic_separates_and_l2_shrinks():
    x = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
    y = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    weak_w, weak_b = fit_logistic(x, y, 1e-2)
    strong_w, _ = fit_logistic(x, y, 10.0)
    assert weak_w.item() > 1 and abs(weak_b.item()) < 1e-6  # symmetric data: no bias
    assert 0 < strong_w.item() < 0.1 * weak_w.item()
    # the optimum: gradient of the mean BCE + l2 w^2 vanishes
    w = weak_w.item()
    grad = sum((sigmoid(w * xi) - yi) * xi for xi, yi in ((-2, 0), (-1, 0), (1, 1), (2, 1))) / 4 + 2 * 1e-2 * w
    assert abs(grad) < 1e-6


def test_held_out_movies_are_seeded_and_never_all():
    movies = [f"tt{i}" for i in range(10)]
    held = held_out_movies(movies * 3, 3, seed=0)
    assert len(held) == 3 and held <= set(movies) and held == held_out_movies(movies, 3, seed=0)
    with pytest.raises(ConfigError, match="val_movies"):
        held_out_movies(movies, 10, seed=0)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_tel_probe")
    dm = VideoSubtitlesDataModule(root=str(root), dataset="toy", toy_train=96, toy_val=16, toy_test=40,
                                  batch_size=64, num_workers=0, pin_memory=False, persistent_workers=False)  # fmt: skip
    dm.prepare_data()
    probe = LinearProbe(SubtitleEncoder("minilm-offline"), num_classes=6, val_movies=2, pictures=0)
    probe._trainer = types.SimpleNamespace(datamodule=dm)
    return root, dm, probe


def evaluate(probe: LinearProbe, dm: VideoSubtitlesDataModule, scoring: str) -> tuple[float, float]:
    """(segment mAP, instance mAP) of ``probe`` on the toy test split with ``scoring``."""
    probe.scoring = scoring
    dm.setup("test")
    for batch in dm.test_dataloader():
        probe._evaluate(batch, "test")
    out = float(probe.test_segment.compute()), float(probe.test_instance.compute()["map"])
    for metric in (probe.test_clip, probe.test_segment, probe.test_instance):
        metric.reset()
    return out


def test_probe_fit_reads_only_the_training_split(toy, monkeypatch):
    root, dm, probe = toy
    opened = []
    original = video_subtitles.read_tel

    def recording(path, *args, **kwargs):
        opened.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(video_subtitles, "read_tel", recording)
    test_json = root / "test.json"
    hidden = root / "test.json.hidden"
    shutil.move(test_json, hidden)  # a fit that reads the test split fails
    try:
        probe.weight.fill_(float("nan"))
        probe.on_test_start()
    finally:
        shutil.move(hidden, test_json)
    assert opened and all(p.endswith("train.json") for p in opened), opened
    assert not torch.isnan(probe.weight).any() and probe.chosen_l2 in probe.l2_grid
    train_movies = {c.movie for c in dm.clips("train")}
    held = held_out_movies([c.movie for c in dm.clips("train")], probe.val_movies, probe.seed)
    assert held < train_movies
    assert set(probe.l2_scores) == set(probe.l2_grid)


def test_probe_beats_the_prior_on_the_toy_and_localizes(toy):
    root, dm, probe = toy
    if torch.isnan(probe.weight).any():
        probe.fit_probe(dm.clips("train"))
    per_subtitle, per_instance = evaluate(probe, dm, "per_subtitle")
    clip_segment, _ = evaluate(probe, dm, "clip_score")
    prior = chance_segment_map(root / "test.json", 6)  # the prior's per-unit scores tie: AP = positive share
    print(f"toy probe: segment mAP {per_subtitle:.1f} per subtitle, {clip_segment:.1f} clip score, prior {prior:.1f}")
    assert per_subtitle > 5 * prior, (per_subtitle, prior)
    assert per_subtitle > clip_segment + 10, (per_subtitle, clip_segment)  # the toy's cues sit in single subtitles
    assert per_instance > 30
    assert np.isfinite(probe.l2_scores[probe.chosen_l2])
