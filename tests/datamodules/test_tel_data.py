"""TEL data: the official splits (when present), the toy clips (mp4 + .srt), and bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from datamodules.tel_annotations import EMOTIONS, instances, parse_interval, read_tel, runs
from datamodules.toy.emotion_clips import make_clip, write_toy_tel
from datamodules.video_subtitles import VideoSubtitlesDataModule, collate_clips, decode_clip, read_srt
from experiments.errors import ConfigError, CorruptFileError, DataError

ROOT = Path(__file__).resolve().parents[2]


def official_dir() -> Path | None:
    for candidate in (os.environ.get("TEL_ANNOTATIONS"), ROOT.parent / "shared" / "data" / "tel"):
        if candidate and (Path(candidate) / "train.json").is_file() and (Path(candidate) / "test.json").is_file():
            return Path(candidate)
    return None


needs_official = pytest.mark.skipif(
    official_dir() is None, reason="official TEL splits not found: set TEL_ANNOTATIONS to the folder of train.json"
)


@needs_official
def test_official_splits_counts():
    train, test = read_tel(official_dir() / "train.json"), read_tel(official_dir() / "test.json")
    assert len(train) == 3561 and len(test) == 1010
    assert len({c.movie for c in train}) == 38 and len({c.movie for c in test}) == 13
    assert sum(len(c.units) for c in test) == 3003  # (clip, emotion) instances: the paper's "3,000 boundaries"
    assert sum(len(instances(c)) for c in test) == 4109  # as contiguous runs of subtitles
    assert sum(int(c.unit_labels().sum()) for c in test) == 9805
    per_class = np.stack([c.labels for c in test]).sum(0)
    assert per_class[EMOTIONS.index("aversion")] == 200  # the "aversion " key (trailing space) is read
    assert (per_class > 0).all() and len(per_class) == 18
    assert np.stack([c.labels for c in train]).sum(0)[EMOTIONS.index("disquietment")] == 1253


@needs_official
def test_every_test_segment_time_is_its_subtitle_interval():
    raw = json.loads((official_dir() / "test.json").read_text())
    clips = {c.key: c for c in read_tel(official_dir() / "test.json")}
    checked = 0
    for movie, entries in raw.items():
        for name, entry in entries.items():
            clip = clips[f"{movie}/{name}"]
            for spec in entry["emo"].values():
                for k, t in zip(spec["segment"], spec["time"], strict=True):
                    assert parse_interval(t, "") == (clip.starts[k], clip.ends[k])
                    checked += 1
    assert checked == 9805


def test_runs_and_instances_by_hand():
    assert runs([4, 0, 1, 2, 7, 8]) == [(0, 2), (4, 4), (7, 8)]
    assert parse_interval("00:01:02.5-->01:00:00.250", "x") == (62.5, 3600.25)


def test_toy_mp4_decodes_to_the_written_frames_and_srt_parses(tmp_path):
    write_toy_tel(tmp_path, num_classes=4, train=3, val=1, test=2)
    clip = read_tel(tmp_path / "train.json")[1]
    written = make_clip("train", 1, 4, 4.0, 32, 0.3, 0.3, 5, 9, 0)
    frames, duration = decode_clip(tmp_path / "videos" / clip.movie / f"{clip.clip}.mp4", fps=4.0, size=None)
    assert frames.shape == written["frames"].shape and (frames == written["frames"]).all()  # lossless
    assert duration == pytest.approx(len(frames) / 4.0)
    starts, ends, texts = read_srt(tmp_path / "videos" / clip.movie / f"{clip.clip}.srt")
    np.testing.assert_allclose(starts, clip.starts)  # each call asserts (it returns None: no `and` chaining)
    np.testing.assert_allclose(ends, clip.ends)
    assert texts == clip.texts == written["texts"]
    test = read_tel(tmp_path / "test.json")
    assert all(c.units for c in test)  # every test clip holds an emotion, at subtitle level


def test_datamodule_batches_units_frames_and_labels(tmp_path):
    dm = VideoSubtitlesDataModule(root=str(tmp_path / "toy"), dataset="toy", visual="frames", fps=4.0,
                                  frame_size=None, subtitles="srt", batch_size=2, num_workers=0, toy_classes=4,
                                  toy_train=4, toy_val=2, toy_test=2)  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    B, U = batch["unit_mask"].shape
    assert B == 2 and batch["labels"].shape == (2, 4) and batch["frames"].dtype == torch.uint8
    assert batch["frames"].shape[2:] == (32, 32, 3) and batch["frame_mask"].sum() > 0
    assert "unit_labels" not in batch  # training clips carry clip-level labels only
    val = next(iter(dm.val_dataloader()))
    assert val["unit_labels"].shape[:2] == val["unit_mask"].shape
    assert (val["unit_labels"].any(1) == val["labels"].bool()).all()  # clip labels = classes with annotated units


def _write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_bad_annotations_name_the_clip_and_the_fix(tmp_path):
    ok = {"emo": {"anger": 1}, "time": ["00:00:01.000-->00:00:02.000"], "dialog": ["hi"]}
    with pytest.raises(DataError, match=r"tt1/c1.*unknown emotion 'rage'.*anger"):
        read_tel(_write_json(tmp_path / "a.json", {"tt1": {"c1": {**ok, "emo": {"rage": 1}}}}))
    with pytest.raises(DataError, match=r"tt1/c1, subtitle 0: malformed time '00:00:0x.000'"):
        read_tel(_write_json(tmp_path / "b.json", {"tt1": {"c1": {**ok, "time": ["00:00:0x.000-->00:00:02.000"]}}}))
    with pytest.raises(DataError, match="2 times for 1 subtitles"):
        read_tel(_write_json(tmp_path / "c.json", {"tt1": {"c1": {**ok, "time": ok["time"] * 2}}}))
    bad_test = {"emo": {"anger": {"time": [], "dialog": [], "segment": [3]}}, "dialog": ["a"],
                "dialog_name": ["00:00:01.000-->00:00:02.000"]}  # fmt: skip
    with pytest.raises(DataError, match=r"subtitle indices \[3\] outside 0..0"):
        read_tel(_write_json(tmp_path / "d.json", {"tt1": {"c1": bad_test}}))
    with pytest.raises(DataError, match="not found"):
        read_tel(tmp_path / "missing.json")


def test_malformed_srt_names_file_and_line(tmp_path):
    path = tmp_path / "clip.srt"
    path.write_text("1\n00:00:01,000 --> 00:00:02,000\nhello\n\n2\n00:00:0x,000 --> 00:00:03,000\nworld\n")
    with pytest.raises(DataError, match=r"clip.srt:6: malformed timestamp"):
        read_srt(path)


def test_missing_corrupt_and_too_short_videos(tmp_path):
    write_toy_tel(tmp_path, num_classes=4, train=2, val=1, test=1)
    clip = read_tel(tmp_path / "train.json")[0]
    video = tmp_path / "videos" / clip.movie / f"{clip.clip}.mp4"
    common = dict(root=str(tmp_path), dataset="tel", val_json="val.json", visual="frames", fps=4.0, frame_size=None,
                  batch_size=1, num_workers=0)  # fmt: skip
    dm = VideoSubtitlesDataModule(**common)
    dm.setup("fit")
    video.rename(video.with_suffix(".bak"))
    with pytest.raises(DataError, match=f"video .*{clip.clip}.mp4 not found"):
        dm.train_set[0]
    lenient = VideoSubtitlesDataModule(**common, on_missing_video="subtitles")
    lenient.setup("fit")
    assert lenient.train_set[0]["frames"].shape[0] == 0  # that clip runs subtitle-only
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    with pytest.raises(CorruptFileError, match=f"{clip.clip}.mp4: cannot decode"):
        dm.train_set[0]
    # subtitles that run past the end of the video
    video.with_suffix(".bak").rename(video)
    raw = json.loads((tmp_path / "train.json").read_text())
    raw[clip.movie][clip.clip]["time"][-1] = "00:00:01.000-->00:09:00.000"
    (tmp_path / "train.json").write_text(json.dumps(raw))
    dm.setup("fit")
    with pytest.raises(DataError, match="subtitles run to 540.00 s but .* lasts"):
        dm.train_set[0]


def test_collate_pads_units_and_frames():
    items = [
        {"index": 0, "texts": ["a", "b"], "starts": torch.tensor([0.0, 1.0]), "ends": torch.tensor([1.0, 2.0]),
         "labels": torch.tensor([True, False]), "features": torch.ones(3, 4), "frame_times": torch.arange(3.0)},
        {"index": 5, "texts": ["c"], "starts": torch.tensor([0.5]), "ends": torch.tensor([0.9]),
         "labels": torch.tensor([False, True]), "features": torch.ones(1, 4), "frame_times": torch.zeros(1)},
    ]  # fmt: skip
    batch = collate_clips(items)
    assert batch["unit_mask"].tolist() == [[True, True], [True, False]]
    assert batch["frame_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert batch["index"].tolist() == [0, 5] and batch["features"].shape == (2, 3, 4)


def test_extract_writes_shards_that_training_reads(tmp_path, capsys):
    from experiments.data import main as data_main

    sizes = ["--data.init_args.toy_train", "2", "--data.init_args.toy_val", "1", "--data.init_args.toy_test", "1"]
    root = ["--data.init_args.root", str(tmp_path)]
    assert data_main(["extract", "--config", "configs/tel/toy.yaml", *root, *sizes, "--batch_size", "16"]) == 0
    out = capsys.readouterr().out
    assert "4 clips written" in out and "frames/s" in out
    meta = json.loads((tmp_path / "features" / "features.json").read_text())
    assert meta["backbone"] == "resnet10t" and meta["fps"] == 4.0
    assert data_main(["extract", "--config", "configs/tel/toy.yaml", *root, *sizes]) == 0  # resumes: nothing to do
    assert "0 clips written, 4 already there" in capsys.readouterr().out
    dm = VideoSubtitlesDataModule(root=str(tmp_path), dataset="toy", visual="features", batch_size=2, num_workers=0,
                                  toy_classes=6, toy_train=2, toy_val=1, toy_test=1)  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    item = dm.train_set[0]
    frames, _ = decode_clip(tmp_path / "videos" / dm.train_set.clips[0].movie / f"{dm.train_set.clips[0].clip}.mp4",
                            4.0, None)  # fmt: skip
    assert item["features"].shape == (len(frames), meta["dim"]) and torch.isfinite(item["features"]).all()
    torch.testing.assert_close(item["frame_times"], torch.from_numpy((np.arange(len(frames)) + 0.5) / 4.0).float())


def test_extract_covers_the_training_movies_held_out_for_validation(tmp_path, capsys):
    """With ``val_movies`` the validation clips are training clips of held-out movies: they need shards too (an
    extraction of ``clips("train")`` alone left them out); the toy then has no val.json of its own."""
    from experiments.data import main as data_main

    sizes = ["--data.init_args.toy_train", "21", "--data.init_args.toy_val", "1", "--data.init_args.toy_test", "1"]
    args = ["--data.init_args.root", str(tmp_path), "--data.init_args.val_movies", "1", *sizes]
    assert data_main(["extract", "--config", "configs/tel/toy.yaml", *args, "--random_weights"]) == 0
    assert "22 clips written" in capsys.readouterr().out  # 21 training clips (2 movies) + 1 test clip
    dm = VideoSubtitlesDataModule(root=str(tmp_path), dataset="toy", visual="features", val_movies=1, toy_classes=6,
                                  toy_train=21, toy_val=1, toy_test=1, batch_size=2, num_workers=0)  # fmt: skip
    assert dm.paths["val"] is None
    held, kept = dm.clips("val"), dm.clips("train")
    assert len({c.movie for c in held}) == 1 and len(held) + len(kept) == 21
    shards = {p.relative_to(tmp_path / "features").with_suffix("").as_posix()
              for p in (tmp_path / "features").glob("*/*.npy")}  # fmt: skip
    assert {f"{c.movie}/{c.clip}" for c in held + kept} <= shards


def test_extract_checks_the_backbone_width_against_visual_dim(tmp_path):
    from experiments.configs import load_config
    from experiments.data import main as data_main

    config = load_config("configs/tel/toy.yaml")
    config["model"]["init_args"]["net"]["init_args"]["visual_dim"] = 7
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    sizes = ["--data.init_args.toy_train", "1", "--data.init_args.toy_val", "1", "--data.init_args.toy_test", "1"]
    with pytest.raises(ConfigError, match=r"resnet10t embeds frames in 512 dimensions but model\.init_args\.net\."
                       r"init_args\.visual_dim is 7 in .*c\.yaml; set visual_dim: 512"):  # fmt: skip
        data_main(["extract", "--config", str(tmp_path / "c.yaml"), "--data.init_args.root", str(tmp_path / "d"),
                   *sizes])  # fmt: skip


def test_val_movies_holds_out_whole_training_movies(tmp_path):
    clip = {"emo": {"anger": 1}, "time": ["00:00:01.000-->00:00:02.000"], "dialog": ["hi"]}
    train = {f"tt{m}": {f"c{k}": clip for k in range(m + 1)} for m in range(6)}  # movie m has m + 1 clips
    _write_json(tmp_path / "train.json", train)

    def split(seed: int, **kw) -> tuple[list, list]:
        dm = VideoSubtitlesDataModule(root=str(tmp_path), val_movies=2, seed=seed, num_workers=0, **kw)
        return dm.clips("train"), dm.clips("val")

    tr, va = split(0)
    held = {c.movie for c in va}
    assert len(held) == 2 and not held & {c.movie for c in tr}  # disjoint by movie
    assert len(tr) + len(va) == 21 and len(va) == sum(int(m[2:]) + 1 for m in held)  # every clip of a held movie
    assert {c.movie for c in split(0)[1]} == held  # seeded
    assert any({c.movie for c in split(s)[1]} != held for s in range(1, 6))
    with pytest.raises(ConfigError, match="val_movies is 6 but .*train.json has only 6 movies"):
        VideoSubtitlesDataModule(root=str(tmp_path), val_movies=6).clips("val")
    with pytest.raises(ConfigError, match="val_json: null"):
        VideoSubtitlesDataModule(root=str(tmp_path), val_movies=1, val_json="val.json")
