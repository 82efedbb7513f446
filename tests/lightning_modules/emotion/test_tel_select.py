"""The held-out-training proxy of benchmarks/tel_select.py: pseudo-clips by hand (grouping, 1 s gaps, labels per
subtitle, skipped groups), proxy scores of hand-made probabilities (perfect localization, constant scores), the
chosen pair and its table, and the data function reading train.json only (no test.json present)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch

import datamodules.tel_annotations as tel_annotations
import datamodules.video_subtitles as video_subtitles
from datamodules.tel_annotations import CLASS_INDEX, EMOTIONS, Clip
from datamodules.toy.emotion_clips import write_toy_tel
from datamodules.video_subtitles import collate_clips
from experiments.errors import DataError
from lightning_modules.emotion.module import TemporalEmotionLocalizer

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))

import tel_select  # noqa: E402


def make_clip(movie: str, clip: str, starts: list[float], ends: list[float], emotions: list[str]) -> Clip:
    labels = np.zeros(len(EMOTIONS), dtype=bool)
    labels[[CLASS_INDEX[e] for e in emotions]] = True
    return Clip(movie, clip, np.array(starts), np.array(ends), [f"{clip} {k}" for k in range(len(starts))], labels)


def test_pseudo_clips_by_hand():
    a1 = make_clip("ttA", "c1", [0.5, 2.0], [1.5, 3.0], ["anger"])
    a2 = make_clip("ttA", "c2", [0.2], [1.0], ["happiness"])
    a10 = make_clip("ttA", "c10", [0.0, 1.0, 2.5], [0.8, 2.0, 3.0], ["anger", "sadness"])
    b1 = make_clip("ttB", "c1", [0.0], [1.0], ["peace"])
    clips = [a10, b1, a2, a1]  # sorted by (movie, clip id): c1, c2, c10 of ttA; ttB cannot fill a group
    (p,) = tel_select.pseudo_clips(clips, group=3)
    assert p["movie"] == "ttA" and p["keys"] == ["ttA/c1", "ttA/c2", "ttA/c10"] and p["members"] == [3, 2, 0]
    np.testing.assert_allclose(p["starts"], [0.5, 2.0, 4.0, 5.8, 6.8, 8.3])
    np.testing.assert_allclose(p["ends"], [1.5, 3.0, 4.8, 6.6, 7.8, 8.8])
    assert (np.diff(p["starts"]) > 0).all() and (np.diff(p["ends"]) > 0).all()
    np.testing.assert_allclose([p["starts"][2] - p["ends"][1], p["starts"][3] - p["ends"][2]], [1.0, 1.0])
    assert p["texts"] == a1.texts + a2.texts + a10.texts
    assert p["origin"].tolist() == [0, 0, 1, 2, 2, 2]
    expected = np.stack([c.labels for c in (a1, a1, a2, a10, a10, a10)])
    assert p["unit_labels"].shape == (6, len(EMOTIONS)) and (p["unit_labels"] == expected).all()
    assert (p["labels"] == (a1.labels | a2.labels | a10.labels)).all()
    # a group with a clip without subtitles is skipped; group 1 keeps every clip with subtitles
    empty = make_clip("ttA", "c11", [], [], ["anger"])
    assert tel_select.pseudo_clips([a1, a2, empty], group=3) == []
    singles = tel_select.pseudo_clips(clips + [empty], group=1)
    assert [q["keys"] for q in singles] == [["ttA/c1"], ["ttA/c2"], ["ttA/c10"], ["ttB/c1"]]


def toy_pseudo_batch() -> dict:
    """Two pseudo-clips of three 2-subtitle clips each, 2 classes: clip classes [0], [1], [0] and [], [1], []."""
    labels = torch.zeros(2, 6, 2, dtype=torch.bool)
    labels[0, [0, 1, 4, 5], 0] = True
    labels[0, [2, 3], 1] = True
    labels[1, [2, 3], 1] = True
    starts = torch.arange(6).float().repeat(2, 1)
    return dict(unit_labels=labels, starts=starts, ends=starts + 0.8, unit_mask=torch.ones(2, 6, dtype=torch.bool))


def test_proxy_scores_perfect_localization_and_constant():
    b = toy_pseudo_batch()
    args = (b["unit_mask"], b["starts"], b["ends"], b["unit_labels"])
    perfect = torch.where(b["unit_labels"], 0.9, 0.1)
    scores = tel_select.proxy_scores(perfect, *args, ratio=4.0, nms=0.6)
    assert set(scores) == {"unit", "product", "clip"}
    assert all(set(s["instance_map"]) == set(tel_select.RULES) for s in scores.values())
    assert scores["unit"]["segment_map"] == pytest.approx(100.0)
    assert scores["product"]["segment_map"] == pytest.approx(100.0)  # sqrt(p_clip p_unit) keeps the order here
    # clip: every subtitle gets its pseudo-clip's top-2 mean. Class 0: 0.9 on the 6 subtitles of pseudo-clip 0 (4
    # positive), 0.1 on the rest: AP 4/6. Class 1: 0.9 everywhere (4 positive of 12): AP 1/3. Mean 50.
    assert scores["clip"]["segment_map"] == pytest.approx(50.0)
    # the exact runs at relative thresholds >= 0.2 are each ground-truth instance, ranked first
    assert scores["unit"]["instance_map"]["runs"] == pytest.approx(100.0)
    assert tel_select.choose(scores) == ("unit", "runs")
    lines = tel_select.table(scores).splitlines()
    assert lines[0] == "| unit scores | proposals | proxy segment mAP | proxy instance mAP |"
    assert len(lines) == 2 + 3 * len(tel_select.RULES) and lines[2].startswith("| unit | runs | 100.00 | 100.00 |")

    constant = tel_select.proxy_scores(torch.full((2, 6, 2), 0.3), *args, ratio=4.0)
    values = [constant[r]["segment_map"] for r in ("unit", "product", "clip")]
    assert values == pytest.approx([values[0]] * 3)
    assert values[0] == pytest.approx(100 * (4 / 12 + 4 / 12) / 2)  # ties: AP is the positive share


def test_clip_map_and_marked_block(tmp_path):
    raw = torch.tensor([[[0.9, 0.1], [0.2, 0.1]], [[0.1, 0.8], [0.1, 0.0]]])
    mask = torch.tensor([[True, True], [True, False]])
    assert tel_select.clip_map(raw, mask, torch.tensor([[1, 0], [0, 1]]), ratio=4.0) == pytest.approx(100.0)
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{tel_select.BEGIN}\nold\n{tel_select.END}\noutro\n")
    tel_select.replace_block(doc, "| a |\n| b |")
    assert doc.read_text() == f"intro\n{tel_select.BEGIN}\n| a |\n| b |\n{tel_select.END}\noutro\n"
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n")
    with pytest.raises(DataError, match="tel_select:begin"):
        tel_select.replace_block(bare, "x")


def test_held_out_data_reads_only_train_json(tmp_path, monkeypatch):
    clip = {"emo": {"anger": 1}, "time": ["00:00:01.000-->00:00:02.000", "00:00:03.000-->00:00:04.500"],
            "dialog": ["hi", "there"]}  # fmt: skip
    train = {f"tt{m}": {f"c{k}": clip for k in range(3)} for m in range(5)}
    (tmp_path / "train.json").write_text(json.dumps(train))
    opened: list[str] = []
    original = tel_annotations.read_tel  # the one reader of annotation files; video_subtitles imports it by name

    def recording(path, *args, **kwargs):
        opened.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(tel_annotations, "read_tel", recording)
    monkeypatch.setattr(video_subtitles, "read_tel", recording)
    config = {"data": {"class_path": "datamodules.video_subtitles.VideoSubtitlesDataModule",
                       "init_args": {"root": "elsewhere", "val_movies": 2, "visual": "none", "subtitles": "json",
                                     "test_json": "test.json", "num_workers": 2}}}  # fmt: skip
    dm, dataset = tel_select.held_out_data(config, str(tmp_path))
    assert not (tmp_path / "test.json").exists() and not hasattr(dm, "test_set")
    assert opened and all(Path(p).name == "train.json" for p in opened), opened
    assert len({c.movie for c in dataset.clips}) == 2 and len(dataset) == 6
    pseudo = tel_select.pseudo_clips(dataset.clips, group=3)
    assert len(pseudo) == 2 and all(len(p["texts"]) == 6 for p in pseudo)
    batch = collate_clips(tel_select.pseudo_items(pseudo, dataset.num_classes))
    assert batch["unit_labels"].shape == (2, 6, 18) and batch["unit_labels"][..., CLASS_INDEX["anger"]].all()
    assert (batch["starts"][:, 1:] > batch["starts"][:, :-1]).all()


SMALL_DCIN = {
    "class_path": "lightning_modules.emotion.dcin.DCIN",
    "init_args": {
        "num_classes": 18, "modalities": "subtitles", "dim": 32, "rates": [1, 2], "heads": 2,
        "text_encoder": {"class_path": "lightning_modules.emotion.text.SubtitleEncoder",
                         "init_args": {"name_or_path": "minilm-offline"}},
    },
}  # fmt: skip


def untrained_checkpoint(path: Path) -> Path:
    """A small subtitle-only DCIN saved with random weights (nothing is trained), its network in the config form a
    CLI run stores, so that ``load_from_checkpoint(path)`` rebuilds it."""
    from lightning.pytorch.cli import instantiate_module

    torch.manual_seed(0)
    model = instantiate_module(TemporalEmotionLocalizer, {"net": SMALL_DCIN})
    hparams = {**model.hparams, "net": SMALL_DCIN, "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    state = {"state_dict": model.state_dict(), "hyper_parameters": hparams}
    torch.save({**state, "pytorch-lightning_version": lightning.__version__}, path)
    return path


def test_main_on_an_untrained_checkpoint_without_test_json(tmp_path):
    ckpt = untrained_checkpoint(tmp_path / "model.ckpt")
    write_toy_tel(tmp_path / "tel", num_classes=6, train=60, val=0, test=4, seed=0)  # 3 training movies of 20 clips
    (tmp_path / "tel" / "test.json").unlink()
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"data": {"init_args": {"val_movies": 2, "batch_size": 4}}}))  # YAML reads JSON
    doc = tmp_path / "doc.md"
    doc.write_text(f"{tel_select.BEGIN}\n{tel_select.END}\n")
    out = tmp_path / "select.json"
    assert tel_select.main(["--ckpt", str(ckpt), "--config", str(config), "--root", str(tmp_path / "tel"),
                            "--json", str(out), "--markdown", str(doc)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert result["held_out"]["clips"] == 40 and result["pseudo_clips"] == 12  # 6 groups of 3 in each 20-clip movie
    assert set(result["proxy"]) == {"unit", "product", "clip"}
    assert result["chosen"]["unit_scores"] in result["proxy"] and result["chosen"]["proposals"] in tel_select.RULES
    assert "| unit scores | proposals |" in doc.read_text() and "Chosen: unit_scores:" in doc.read_text()
