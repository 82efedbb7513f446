"""Video clips with aligned subtitles for temporal emotion localization (TEL, arXiv 2208.01954).

Annotations are the official TEL JSON splits (:mod:`datamodules.tel_annotations`). Per clip the data gives the
subtitle units (times and texts, from the JSON or from ``<video_root>/<movie>/<clip>.srt`` with pysrt), labels
(clip-level for training, per unit for evaluation) and, unless ``visual: none`` (subtitle-only; the public splits ship
no video), the visual stream:

* ``visual: frames``: the clip ``<video_root>/<movie>/<clip>.mp4`` (a MovieGraphs-style tree) decoded with decord at
  ``fps`` frames per second (frame ``i`` at ``(i + 1/2) / fps`` seconds) and resized to ``frame_size``; the model
  embeds them with its frozen visual backbone.
* ``visual: features``: per-clip feature shards ``<features_root>/<movie>/<clip>.npy`` (``[T, D]``, one row per frame
  at the fps recorded in ``<features_root>/features.json``) written once by ``python -m experiments data extract``.

``dataset: toy`` writes the toy clips (:mod:`datamodules.toy.emotion_clips`) under ``root`` first; its features are
extracted on first use when ``visual: features``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import SuiteDataModule
from datamodules.tel_annotations import EMOTIONS, Clip, read_tel, runs
from suite_base.errors import ConfigError, CorruptFileError, DataError

_SRT_TIMING = re.compile(r"^\s*\d{1,2}:\d{2}:\d{2}[,.]\d{1,3}\s*-->\s*\d{1,2}:\d{2}:\d{2}[,.]\d{1,3}")
FEATURES_META = "features.json"


def read_srt(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Subtitle units ``(starts, ends, texts)`` of an .srt file; a malformed timing line is reported with its line
    number (pysrt itself would silently misread it)."""
    import pysrt

    if not path.is_file():
        raise DataError(f"subtitle file {path} not found")
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if "-->" in line and not _SRT_TIMING.match(line):
            raise DataError(f"{path}:{number}: malformed timestamp line {line.strip()!r}; expected "
                            "'HH:MM:SS,mmm --> HH:MM:SS,mmm'")  # fmt: skip
    subs = pysrt.open(str(path), encoding="utf-8")
    starts = np.array([s.start.ordinal / 1000 for s in subs], dtype=np.float64)
    ends = np.array([s.end.ordinal / 1000 for s in subs], dtype=np.float64)
    return starts, ends, [s.text.replace("\n", " ").strip() for s in subs]


def frame_times(count: int, fps: float) -> np.ndarray:
    """Times (s) of the frames sampled at ``fps``: the centre of each ``1/fps`` step."""
    return (np.arange(count) + 0.5) / fps


def decode_clip(path: Path, fps: float, size: int | None) -> tuple[np.ndarray, float]:
    """``(frames [T, H, W, 3] uint8 sampled at fps, duration s)`` with decord; errors name the file."""
    import decord

    if not path.is_file():
        raise DataError(f"video {path} not found")
    try:
        kwargs = {"width": size, "height": size} if size else {}
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), **kwargs)
        native, total = float(reader.get_avg_fps()), len(reader)
        if total == 0 or native <= 0:
            raise CorruptFileError(f"{path}: no decodable frames")
        duration = total / native
        count = max(1, int(np.floor(duration * fps)))
        index = np.minimum((frame_times(count, fps) * native).astype(np.int64), total - 1)
        frames = reader.get_batch(index.tolist()).asnumpy()
    except CorruptFileError:
        raise
    except Exception as err:  # decord raises DECORDError / RuntimeError on broken streams
        raise CorruptFileError(f"{path}: cannot decode video ({type(err).__name__}: {err})") from err
    return frames, duration


class TelClips(Dataset):
    """One item per clip: subtitle units, labels and (optionally) frames or frame features.

    Item keys: ``index`` (clip id), ``texts`` (list), ``starts``/``ends`` ``[U]`` (s), ``labels`` ``[C]`` (clip
    level), ``unit_labels`` ``[U, C]`` (evaluation splits; else absent), and ``frames`` ``[T, H, W, 3]`` uint8 or
    ``features`` ``[T, D]`` float with ``frame_times`` ``[T]``.
    """

    def __init__(
        self,
        clips: list[Clip],
        visual: str,
        video_root: Path | None,
        features_root: Path | None,
        subtitles: str,
        fps: float,
        frame_size: int | None,
        on_missing_video: str,
        max_units: int | None,
        num_classes: int = len(EMOTIONS),
        check_times: bool = True,
    ) -> None:
        extra = [c.key for c in clips if c.labels[num_classes:].any()]
        if extra:
            raise DataError(f"{len(extra)} clips (first: {extra[0]} in {clips[0].source}) carry emotions beyond the "
                            f"first {num_classes} classes this data module was configured with")  # fmt: skip
        self.num_classes = num_classes
        self.clips, self.visual, self.subtitles = clips, visual, subtitles
        self.video_root, self.features_root = video_root, features_root
        self.fps, self.frame_size, self.on_missing_video = fps, frame_size, on_missing_video
        self.max_units, self.check_times = max_units, check_times
        if visual == "features":
            meta = features_root / FEATURES_META
            if not meta.is_file():
                raise DataError(f"{meta} not found: write the feature shards first with "
                                "`python -m experiments data extract --config ...`")  # fmt: skip
            self.fps = float(json.loads(meta.read_text())["fps"])

    def __len__(self) -> int:
        return len(self.clips)

    def _units(self, clip: Clip) -> tuple[np.ndarray, np.ndarray, list[str]]:
        if self.subtitles == "json":
            return clip.starts, clip.ends, clip.texts
        starts, ends, texts = read_srt(self.video_root / clip.movie / f"{clip.clip}.srt")
        if len(texts) != len(clip.texts):
            raise DataError(f"{self.video_root / clip.movie / clip.clip}.srt has {len(texts)} subtitles but the "
                            f"annotation of {clip.key} in {clip.source} has {len(clip.texts)}")  # fmt: skip
        return starts, ends, texts

    def __getitem__(self, index: int) -> dict:
        clip = self.clips[index]
        starts, ends, texts = self._units(clip)
        item = {"index": index, "texts": texts, "starts": torch.from_numpy(starts).float(),
                "ends": torch.from_numpy(ends).float(),
                "labels": torch.from_numpy(clip.labels[: self.num_classes])}  # fmt: skip
        if clip.units is not None:
            item["unit_labels"] = torch.from_numpy(clip.unit_labels()[:, : self.num_classes])
        if self.visual == "frames":
            path = self.video_root / clip.movie / f"{clip.clip}.mp4"
            if not path.is_file() and self.on_missing_video == "subtitles":  # this clip runs subtitle-only
                item["frames"], item["frame_times"] = torch.zeros(0, 1, 1, 3, dtype=torch.uint8), torch.zeros(0)
            else:
                frames, duration = decode_clip(path, self.fps, self.frame_size)
                self._check_duration(clip, ends, duration, path)
                item["frames"] = torch.from_numpy(frames)
                item["frame_times"] = torch.from_numpy(frame_times(len(frames), self.fps)).float()
        elif self.visual == "features":
            path = self.features_root / clip.movie / f"{clip.clip}.npy"
            if not path.is_file():
                if self.on_missing_video != "subtitles":
                    raise DataError(f"feature shard {path} for {clip.key} not found; run `python -m experiments "
                                    "data extract` or set data.init_args.on_missing_video: subtitles")  # fmt: skip
                feats = np.zeros((0, 1), dtype=np.float32)
            else:
                feats = np.load(path)
            item["features"] = torch.from_numpy(feats.astype(np.float32))
            item["frame_times"] = torch.from_numpy(frame_times(len(feats), self.fps)).float()
        if self.max_units is not None and len(texts) > self.max_units:
            keep = self.max_units
            item["texts"] = texts[:keep]
            for key in ("starts", "ends"):
                item[key] = item[key][:keep]
            if "unit_labels" in item:
                item["unit_labels"] = item["unit_labels"][:keep]
        return item

    def _check_duration(self, clip: Clip, ends: np.ndarray, duration: float, path: Path) -> None:
        if self.check_times and len(ends) and ends.max() > duration + 1.0:
            raise DataError(f"{clip.key}: subtitles run to {ends.max():.2f} s but {path} lasts {duration:.2f} s; "
                            "the annotation and the video do not match (times are relative to the clip)")  # fmt: skip


def collate_clips(items: list[dict]) -> dict:
    """Pad units to the longest clip (``unit_mask``) and frames/features to the longest (``frame_mask``)."""
    B, U = len(items), max(len(it["texts"]) for it in items)
    out = {
        "index": torch.tensor([it["index"] for it in items]),
        "texts": [it["texts"] for it in items],
        "labels": torch.stack([it["labels"] for it in items]),
        "starts": torch.zeros(B, U), "ends": torch.zeros(B, U), "unit_mask": torch.zeros(B, U, dtype=torch.bool),
    }  # fmt: skip
    for b, it in enumerate(items):
        n = len(it["texts"])
        out["starts"][b, :n], out["ends"][b, :n], out["unit_mask"][b, :n] = it["starts"], it["ends"], True
    if all("unit_labels" in it for it in items):
        labels = torch.zeros(B, U, items[0]["labels"].shape[0], dtype=torch.bool)
        for b, it in enumerate(items):
            labels[b, : len(it["texts"])] = it["unit_labels"]
        out["unit_labels"] = labels
    for key in ("frames", "features"):
        if any(key in it for it in items):
            present = [it[key] for it in items if key in it and it[key].shape[0] > 0] or [items[0][key]]
            T = max(x.shape[0] for x in present)
            shape = present[0].shape[1:]  # every clip decodes to the same frame size / feature width
            if key == "features":
                shape = (max(x.shape[1] for x in present),)
            padded = torch.zeros(B, T, *shape, dtype=present[0].dtype)
            times = torch.zeros(B, T)
            mask = torch.zeros(B, T, dtype=torch.bool)
            for b, it in enumerate(items):
                x = it.get(key)
                if x is None or x.shape[0] == 0:
                    continue
                padded[b, : x.shape[0], ..., : x.shape[-1]] = x
                times[b, : x.shape[0]], mask[b, : x.shape[0]] = it["frame_times"], True
            out[key], out["frame_times"], out["frame_mask"] = padded, times, mask
    return out


class VideoSubtitlesDataModule(SuiteDataModule):
    """TEL clips: official JSON annotations, subtitles, and video frames or feature shards.

    Args:
        root: dataset folder (the toy is written here); relative annotation, video and feature paths resolve
            against it.
        dataset: ``tel`` (the official splits) or ``toy``.
        train_json: training annotations (clip-level labels).
        val_json: validation annotations (subtitle-level); ``None``: no such split (the official release has none,
            and choosing checkpoints on the test split would leak: see ``val_movies``).
        test_json: test annotations (subtitle-level).
        val_movies: with ``val_json: None``, hold out this many training movies (drawn with ``seed``) as a
            validation split with clip-level labels, disjoint by movie as train and test are: checkpoints are then
            chosen on ``val/clip_map`` without touching the test split (0: no validation; the toy then has its own
            ``val.json``).
        visual: ``none`` (subtitle-only), ``frames`` (decode the mp4 files) or ``features`` (read the shards).
        video_root: ``<video_root>/<movie>/<clip>.mp4`` (and ``.srt``).
        features_root: ``<features_root>/<movie>/<clip>.npy``.
        subtitles: ``json`` (the annotation's own subtitles) or ``srt`` (files next to the videos).
        fps: frames per second sampled from the videos.
        frame_size: frames are resized to this square size when decoded (``None``: native size).
        on_missing_video: ``raise`` (clear error) or ``subtitles`` (that clip runs subtitle-only).
        max_units: clips with more subtitles are cut to this many (``None``: all; the longest real clip has 108).
        batch_size, num_workers, pin_memory, persistent_workers, seed: loader settings.
        toy_classes, toy_train, toy_val, toy_test: the toy's classes (the first ``toy_classes`` TEL classes) and clips.
    """

    def __init__(
        self,
        root: str = "data/tel",
        dataset: Literal["tel", "toy"] = "tel",
        train_json: str = "train.json",
        val_json: str | None = None,
        test_json: str = "test.json",
        val_movies: int = 0,
        visual: Literal["none", "frames", "features"] = "none",
        video_root: str = "videos",
        features_root: str = "features",
        subtitles: Literal["json", "srt"] = "json",
        fps: float = 2.0,
        frame_size: int | None = 224,
        on_missing_video: Literal["raise", "subtitles"] = "raise",
        max_units: int | None = None,
        batch_size: int = 16,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
        toy_classes: int = 6,
        toy_train: int = 240,
        toy_val: int = 40,
        toy_test: int = 60,
    ) -> None:
        super().__init__(root, dataset, batch_size, num_workers, pin_memory, persistent_workers, "raise", seed)
        if visual == "none" and subtitles == "srt":
            raise ConfigError("subtitles: srt reads the .srt files next to the videos; set data.init_args.video_root")
        base = Path(root)
        self.paths = {
            "train": base / train_json, "val": base / val_json if val_json else None, "test": base / test_json,
        }  # fmt: skip
        self.video_root, self.features_root = base / video_root, base / features_root
        self.visual, self.subtitles, self.fps, self.frame_size = visual, subtitles, fps, frame_size
        self.on_missing_video, self.max_units = on_missing_video, max_units
        self.toy_options = dict(num_classes=toy_classes, train=toy_train, val=toy_val, test=toy_test, seed=seed)
        self.num_classes = toy_classes if dataset == "toy" else len(EMOTIONS)
        self.class_names = EMOTIONS[: self.num_classes]
        if dataset == "toy" and val_json is None and not val_movies:  # else the toy's training movies are held out
            self.paths["val"] = base / "val.json"
        if val_movies < 0 or (val_movies and self.paths["val"] is not None):
            raise ConfigError(f"data.init_args.val_movies is {val_movies}: it holds out that many training movies "
                              "when no val_json is given; use a count >= 0 and val_json: null")  # fmt: skip
        self.val_movies = val_movies

    def prepare_data(self) -> None:
        if self.dataset == "toy":
            from datamodules.toy import ensure_written
            from datamodules.toy.emotion_clips import write_toy_tel

            ensure_written(self.root, write_toy_tel, **self.toy_options)

    def clips(self, split: str) -> list[Clip]:
        if self.val_movies and split in ("train", "val"):
            return self._held_out(split)
        if self.paths[split] is None:
            raise ConfigError(f"no {split} annotations configured (data.init_args.{split}_json)")
        return read_tel(self.paths[split])

    def _held_out(self, split: str, clips: list[Clip] | None = None) -> list[Clip]:
        """The training clips without (``train``) or of (``val``) ``val_movies`` movies drawn with ``seed``."""
        clips = read_tel(self.paths["train"]) if clips is None else clips
        movies = sorted({c.movie for c in clips})
        if self.val_movies >= len(movies):
            raise ConfigError(f"data.init_args.val_movies is {self.val_movies} but {self.paths['train']} has only "
                              f"{len(movies)} movies; hold out fewer")  # fmt: skip
        order = np.random.default_rng(self.seed).permutation(len(movies))
        held = {movies[i] for i in order[: self.val_movies]}
        return [c for c in clips if (c.movie in held) == (split == "val")]

    def check_dataset(self, decode: bool = True) -> tuple[dict, list[str]]:
        """Validate every configured split without training: clip, movie, subtitle-unit counts (test-style splits
        also (clip, emotion) instances, runs of consecutive annotated units and annotated units); malformed clip
        entries; and the files this configuration reads (``.srt`` with ``subtitles: srt``, videos with ``visual:
        frames``, feature shards with ``visual: features``), missing or unreadable, each naming its path. ``decode``:
        also decode every video / load every shard. Returns ``(summary, problems)``."""
        summary, problems = {}, []
        for split in ("train", "val", "test"):
            if self.paths[split] is None:
                continue
            found: list[str] = []
            try:
                clips = read_tel(self.paths[split], found)
            except DataError as err:
                problems.append(str(err))
                continue
            problems += found
            summary[split] = counts = {"clips": len(clips), "movies": len({c.movie for c in clips}),
                                       "units": sum(len(c.texts) for c in clips)}  # fmt: skip
            tested = [c for c in clips if c.units is not None]
            if tested:
                counts["instances"] = sum(len(c.units) for c in tested)
                counts["runs"] = sum(len(runs(u)) for c in tested for u in c.units.values())
                counts["annotated units"] = sum(len(u) for c in tested for u in c.units.values())
            if split == "train" and self.val_movies:
                try:
                    held = self._held_out("val", clips)
                    counts[f"clips held out as val ({self.val_movies} movies)"] = len(held)
                except ConfigError as err:
                    problems.append(str(err))
            extra = [c.key for c in clips if c.labels[self.num_classes :].any()]
            if extra:
                problems.append(f"{self.paths[split]}: {len(extra)} clips (first: {extra[0]}) carry emotions beyond "
                                f"the first {self.num_classes} classes configured")  # fmt: skip
            problems += self._check_files(clips, counts, decode)
        return summary, problems

    def _check_files(self, clips: list[Clip], counts: dict, decode: bool) -> list[str]:
        """Problems with the per-clip files this configuration reads; counts what was found into ``counts``."""
        problems: list[str] = []
        optional = self.on_missing_video == "subtitles"  # a clip without video runs subtitle-only: not a problem
        if self.subtitles == "srt":
            for clip, path in self._present(clips, self.video_root, ".srt", "subtitle file", False, counts, problems):
                try:
                    starts, ends, texts = read_srt(path)
                except DataError as err:
                    problems.append(str(err))
                    continue
                except Exception as err:  # pysrt's own parse and encoding errors
                    problems.append(f"{path}: pysrt cannot parse it ({type(err).__name__}: {err})")
                    continue
                if len(texts) != len(clip.texts):
                    problems.append(f"{path}: {len(texts)} subtitles but the annotation of {clip.key} in "
                                    f"{clip.source} has {len(clip.texts)}")  # fmt: skip
        if self.visual == "frames":
            for clip, path in self._present(clips, self.video_root, ".mp4", "video", optional, counts, problems):
                if not decode:
                    continue
                try:
                    _, duration = decode_clip(path, self.fps, self.frame_size)
                except DataError as err:
                    problems.append(str(err))
                    continue
                if len(clip.ends) and clip.ends.max() > duration + 1.0:
                    problems.append(f"{path}: lasts {duration:.2f} s but the subtitles of {clip.key} run to "
                                    f"{clip.ends.max():.2f} s")  # fmt: skip
        elif self.visual == "features":
            meta = self.features_root / FEATURES_META
            if not meta.is_file():
                problems.append(f"{meta} not found: write the feature shards with `python -m experiments data extract`")
            for _, path in self._present(clips, self.features_root, ".npy", "feature shard", optional, counts,
                                         problems):  # fmt: skip
                if not decode:
                    continue
                try:
                    shape = np.load(path, mmap_mode="r").shape
                except (OSError, ValueError) as err:
                    problems.append(f"{path}: cannot read the feature shard ({err}); re-extract it")
                    continue
                if len(shape) != 2:
                    problems.append(f"{path}: feature shard of shape {shape}, expected [frames, dim]")
        return problems

    @staticmethod
    def _present(clips: list[Clip], folder: Path, ext: str, what: str, optional: bool, counts: dict,
                 problems: list[str]) -> list[tuple[Clip, Path]]:  # fmt: skip
        """The clips whose ``<folder>/<movie>/<clip><ext>`` exists, with its path; the found files are counted
        (``counts[what + "s"]``) and each missing one is a problem unless ``optional``."""
        present = []
        for clip in clips:
            path = folder / clip.movie / f"{clip.clip}{ext}"
            if path.is_file():
                present.append((clip, path))
            elif not optional:
                problems.append(f"{path}: {what} of {clip.key} ({clip.source}) not found")
        counts[f"{what}s"] = len(present)
        return present

    def dataset_for(self, split: str) -> TelClips:
        return TelClips(self.clips(split), self.visual, self.video_root, self.features_root, self.subtitles,
                        self.fps, self.frame_size, self.on_missing_video, self.max_units, self.num_classes)  # fmt: skip

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.train_set = self.dataset_for("train")
        if stage in ("fit", "validate"):
            has_val = self.paths["val"] is not None or self.val_movies
            self.val_set = self.dataset_for("val") if has_val else None
        if stage in ("test", "predict"):
            self.test_set = self.dataset_for("test")

    def train_dataloader(self):
        return self.loader(self.train_set, train=True, drop_last=False, collate_fn=collate_clips)

    def val_dataloader(self):
        if self.val_set is None:  # no validation split: Lightning skips validation
            return []
        return self.loader(self.val_set, train=False, collate_fn=collate_clips)

    def test_dataloader(self):
        return self.loader(self.test_set, train=False, collate_fn=collate_clips)
