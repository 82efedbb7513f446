"""`python -m experiments data check` for TEL (official splits, toy video + .srt tree) and the caption datasets
(Karpathy JSON, AttnGAN / DF-GAN layout), and that TEL's fit stage opens only the training annotations."""

from __future__ import annotations

import builtins
import io
import json
import pickle
import shutil
from pathlib import Path

import pytest

from datamodules.toy.emotion_clips import write_toy_tel
from datamodules.video_subtitles import VideoSubtitlesDataModule
from experiments.data import main as data_main
from tests.helpers import SHARED

OFFICIAL = SHARED / "data" / "tel"
TEL_CONFIG = "configs/tel/subtitles_official.yaml"


def official_dir() -> Path:
    if not ((OFFICIAL / "train.json").is_file() and (OFFICIAL / "test.json").is_file()):
        pytest.skip(f"official TEL splits not found at {OFFICIAL} (set VISION_SUITE_SHARED to the folder of data/tel)")
    return OFFICIAL


def test_official_splits_check_counts(capsys):
    code = data_main(["check", "--config", TEL_CONFIG, "--data.init_args.root", str(official_dir())])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "  train: clips 3561, movies 38, units 48908, clips held out as val (4 movies) 250\n" in out
    assert "  test: clips 1010, movies 13, units 13224, instances 3003, runs 4109, annotated units 9805\n" in out
    assert "0 problem(s)" in out


def test_official_copy_with_broken_clip_entries_names_each(tmp_path, capsys):
    root = tmp_path / "tel"
    root.mkdir()
    train = json.loads((official_dir() / "train.json").read_text())
    test = json.loads((official_dir() / "test.json").read_text())
    movie = sorted(train)[0]
    clip = sorted(train[movie])[0]
    del train[movie][clip]["time"]  # a training clip without its subtitle times
    test_movie = sorted(test)[0]
    test_clip = sorted(test[test_movie])[1]
    test[test_movie][test_clip]["emo"] = ["anger"]  # a list where an object belongs
    (root / "train.json").write_text(json.dumps(train))
    (root / "test.json").write_text(json.dumps(test))
    code = data_main(["check", "--config", TEL_CONFIG, "--data.init_args.root", str(root), "--no_decode"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"problem: {root / 'train.json'}: {movie}/{clip}: the entry needs 'time'" in out
    assert f"problem: {root / 'test.json'}: {test_movie}/{test_clip}: malformed entry (AttributeError" in out
    assert "2 problem(s)" in out
    assert "  train: clips 3560," in out and "  test: clips 1009," in out  # the broken entries are left out


def toy_check(root: Path, *flags: str) -> list[str]:
    return ["check", "--config", "configs/tel/toy.yaml", "--data.init_args.root", str(root),
            "--data.init_args.toy_train", "6", "--data.init_args.toy_val", "2", "--data.init_args.toy_test", "3",
            *flags]  # fmt: skip


def test_toy_tel_check_names_broken_entry_missing_srt_and_bad_files(tmp_path, capsys):
    root = tmp_path / "toy_tel"
    assert data_main(toy_check(root)) == 0  # writes the toy, then finds it clean (videos decoded)
    out = capsys.readouterr().out
    assert "  train: clips 6, movies 1, units" in out and "subtitle files 6, videos 6" in out
    assert "  test: clips 3, movies 1," in out and "0 problem(s)" in out
    videos = root / "videos" / "tttr00000"
    spec = json.loads((root / "train.json").read_text())
    spec["tttr00000"]["scene-001.ss-0001.es-0002"]["dialog"] = 7  # not a list of subtitles
    (root / "train.json").write_text(json.dumps(spec))
    (videos / "scene-002.ss-0001.es-0002.srt").unlink()
    bad_srt = videos / "scene-003.ss-0001.es-0002.srt"
    lines = bad_srt.read_text().splitlines()
    lines[1] = "00:00:zz,300 --> 00:00:01,537"  # the first timing line, unreadable
    bad_srt.write_text("\n".join(lines) + "\n")
    bad_mp4 = videos / "scene-004.ss-0001.es-0002.mp4"
    bad_mp4.write_bytes(b"not an mp4")
    code = data_main(toy_check(root))
    out = capsys.readouterr().out
    assert code == 1
    assert f"{root / 'train.json'}: tttr00000/scene-001.ss-0001.es-0002: malformed entry (TypeError" in out
    assert f"{videos / 'scene-002.ss-0001.es-0002.srt'}: subtitle file of tttr00000/scene-002" in out
    assert f"{bad_srt}:2: malformed timestamp line" in out
    assert f"{bad_mp4}: cannot decode video" in out
    assert "4 problem(s)" in out
    assert data_main(toy_check(root, "--no_decode")) == 1  # layout only: the undecodable video is not opened
    out = capsys.readouterr().out
    assert "3 problem(s)" in out and "cannot decode video" not in out


def test_subtitle_only_config_does_not_demand_videos(tmp_path, capsys):
    write_toy_tel(tmp_path, num_classes=4, train=3, val=1, test=2)
    shutil.rmtree(tmp_path / "videos")
    code = data_main(["check", "--config", TEL_CONFIG, "--data.init_args.root", str(tmp_path),
                      "--data.init_args.val_movies", "0"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "  train: clips 3, movies 1, units" in out and "videos" not in out and "subtitle files" not in out


def test_fit_stage_opens_only_train_json(tmp_path, monkeypatch):
    write_toy_tel(tmp_path, num_classes=4, train=40, val=1, test=4)  # two training movies of 20 clips
    (tmp_path / "test.json").write_text("{ not json: fit must never read this file")
    opened: list[str] = []
    for module in (builtins, io):
        real = module.open

        def recording(file, *args, _real=real, **kwargs):
            opened.append(str(file))
            return _real(file, *args, **kwargs)

        monkeypatch.setattr(module, "open", recording)
    data = VideoSubtitlesDataModule(str(tmp_path), dataset="tel", val_movies=1, visual="none", subtitles="json",
                                    batch_size=4, num_workers=0, pin_memory=False)  # fmt: skip
    data.prepare_data()
    data.setup("fit")
    train_batch, val_batch = next(iter(data.train_dataloader())), next(iter(data.val_dataloader()))
    monkeypatch.undo()
    assert len(train_batch["texts"]) == 4 and len(val_batch["texts"]) == 4
    assert "unit_labels" not in val_batch  # clip-level labels of held-out training movies, not test.json
    assert {c.movie for c in data.train_set.clips}.isdisjoint({c.movie for c in data.val_set.clips})
    assert len(data.train_set) == len(data.val_set) == 20
    read = {Path(name).name for name in opened if name.endswith(".json")}
    assert read == {"train.json"}, opened


def test_official_config_selects_on_held_out_training_movies():
    from experiments.data import build_datamodule

    data = build_datamodule(TEL_CONFIG, [])
    assert data.paths["val"] is None and data.val_movies == 4
    assert data.paths["test"].name == "test.json"


# ---- captions ---------------------------------------------------------------------------------------------------


def test_karpathy_toy_check_names_missing_and_undecodable_images(tmp_path, capsys):
    flags = ["--data.init_args.root", str(tmp_path / "scenes"), "--data.init_args.toy_train", "8",
             "--data.init_args.toy_eval", "3"]  # fmt: skip
    assert data_main(["check", "--config", "configs/loupe/toy_itc.yaml", *flags]) == 0
    out = capsys.readouterr().out
    assert "  train: images 8, captions 40\n" in out and "  test: images 3, captions 15\n" in out
    images = tmp_path / "scenes" / "images"
    (images / "toy_val_00001.jpg").unlink()
    (images / "toy_train_00002.jpg").write_bytes(b"not a jpeg")
    assert data_main(["check", "--config", "configs/loupe/toy_itc.yaml", *flags]) == 1
    out = capsys.readouterr().out
    assert f"problem: {images / 'toy_val_00001.jpg'}: named in " in out and "images[9]" in out
    assert f"problem: {images / 'toy_train_00002.jpg'}: cannot decode image" in out
    assert "2 problem(s)" in out and "  val: images 2, captions 10\n" in out
    assert data_main(["check", "--config", "configs/loupe/toy_itc.yaml", *flags, "--no_decode"]) == 1
    assert "1 problem(s)" in capsys.readouterr().out


def test_attngan_toy_check_names_missing_image_and_unknown_caption(tmp_path, capsys):
    root = tmp_path / "edit"
    flags = ["--data.init_args.root", str(root), "--data.init_args.toy_train", "12", "--data.init_args.toy_test", "4",
             "--data.init_args.val_images", "2"]  # fmt: skip
    assert data_main(["check", "--config", "configs/denet/toy.yaml", *flags]) == 0
    assert "  train: images 12, captions" in capsys.readouterr().out
    with open(root / "train" / "filenames.pickle", "rb") as f:
        names = pickle.load(f)
    ext = ".png"
    missing = root / "images" / f"{names[3]}{ext}"
    missing.unlink()
    text = root / "text" / f"{names[5]}.txt"
    text.write_text(text.read_text().rstrip("\n") + "\nzzyzx qwerty\n")
    assert data_main(["check", "--config", "configs/denet/toy.yaml", *flags, "--no_decode"]) == 1
    out = capsys.readouterr().out
    line = len(text.read_text().splitlines())
    assert f"problem: {missing}: named in {root / 'train' / 'filenames.pickle'} but missing" in out
    assert f"problem: {text} line {line}: the caption 'zzyzx qwerty' has no word of the vocabulary" in out
    assert "2 problem(s)" in out and "  train: images 11," in out
