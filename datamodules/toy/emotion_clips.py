"""Toy TEL data: short mp4 clips with .srt subtitles, labelled in the official TEL JSON format.

Each clip is a sequence of subtitle units (1-2 s each, short gaps). One or two emotions of the first ``num_classes``
TEL classes occupy a run of 1-3 consecutive units each. During an emotional unit

* the video shows a blob in the emotion's own colour drifting in the emotion's own direction (neutral units show a
  grey blob drifting at random), unless the unit's visual cue is dropped (probability ``visual_miss``);
* the subtitle is a line that expresses the emotion ("I love you, sweetheart" for affection), unless its text cue is
  dropped (probability ``text_miss``), when it is a neutral line.

Cues are dropped independently per modality, so neither stream alone sees every emotional unit: agreement between
the streams (TEL's cross-modal consensus) is what recovers the rest. Labels are written like the official splits:
``train.json`` clip-level (``{"emo": {emotion: 1}, "time", "dialog"}``), ``test.json`` (and ``val.json``)
subtitle-level (``{"emo": {emotion: {"time", "dialog", "segment"}}, "dialog", "dialog_name"}``). Videos and
subtitles go to ``<root>/videos/<movie>/<clip>.mp4`` / ``.srt`` (MovieGraphs-style tree); frames are encoded
losslessly (H.264 RGB, PyAV), so decoding gives back exactly the written frames. Generation is a pure function of
the options (per-clip seeded generators).
"""

from __future__ import annotations

import colorsys
import json
import math
from pathlib import Path

import numpy as np

from suite_base.tel import EMOTIONS

LINES = {
    "affection": ["I love you, sweetheart.", "Come here, give me a hug, darling.", "You mean the world to me, dear."],
    "anger": ["Get out of my house right now!", "I am furious with you!", "How dare you do this to me!"],
    "anticipation": ["I can't wait for tomorrow.", "Soon we will finally know.", "Any minute now, it's coming."],
    "aversion": ["That is disgusting, take it away.", "I can't stand the sight of him.", "Ugh, that smell is awful."],
    "confident": ["Trust me, I can do this.", "I know exactly what I'm doing.", "Nothing can stop us now."],
    "disconnection": ["Whatever, I don't care.", "Leave me alone, I'm not listening.", "It doesn't matter anyway."],
    "disquietment": ["I'm so worried about her.", "Something is wrong, I'm scared.", "I feel nervous about this."],
    "doubt": ["I'm not sure that's true.", "Are you certain about that?", "I don't believe his story."],
    "embarrassment": ["Oh no, this is so embarrassing.", "I wish I could disappear.", "Everyone saw me fall."],
    "engagement": ["Tell me more, what happened next?", "Look at this, it's fascinating.", "Let's focus on it."],
    "esteem": ["I really admire your courage.", "You are a great leader, sir.", "We respect what you did."],
    "excitement": ["Yes! We did it! Amazing!", "This is so thrilling!", "Wow, let's go, go, go!"],
    "happiness": ["I'm so happy today!", "What a wonderful, joyful day.", "Ha ha, that's great news!"],
    "peace": ["Everything is calm and quiet now.", "Relax, breathe, all is well.", "Such a peaceful evening."],
    "sadness": ["I miss him so much.", "She's gone, and I'm heartbroken.", "I can't stop crying."],
    "suffering": ["It hurts, the pain is unbearable.", "Please, make it stop hurting.", "I'm in agony."],
    "surprise": ["What? I can't believe it!", "Oh! You startled me!", "No way, that's unexpected!"],
    "sympathy": ["I'm so sorry for your loss.", "I understand how you feel.", "Poor thing, let me help you."],
}
NEUTRAL = [
    "The train leaves at six.", "Pass me the salt, please.", "We parked the car outside.", "It's on the second floor.",
    "The meeting is on Tuesday.", "I bought some bread.", "Turn left at the corner.", "The report is on the desk.",
    "He called this morning.", "Open the window a little.", "The store closes at nine.", "Take the blue folder.",
]  # fmt: skip
SPLIT_OFFSETS = {"train": 0, "val": 7_000_003, "test": 9_000_011}


def class_colour(c: int, num_classes: int) -> np.ndarray:
    """The toy colour of class ``c``: evenly spaced hues at full saturation."""
    return np.array(colorsys.hsv_to_rgb(c / num_classes, 0.9, 0.95)) * 255


def _clip_layout(rng: np.random.Generator, num_classes: int, min_units: int, max_units: int) -> dict:
    units = int(rng.integers(min_units, max_units + 1))
    starts, ends, t = [], [], 0.3
    for _ in range(units):
        length = float(rng.uniform(1.0, 2.0))
        starts.append(round(t, 3))
        ends.append(round(t + length, 3))
        t += length + float(rng.uniform(0.1, 0.4))
    labels = np.full(units, -1)
    emotions = rng.choice(num_classes, size=int(rng.integers(1, 3)), replace=False)
    for c in emotions:
        free = [k for k in range(units) if labels[k] < 0]
        run = int(rng.integers(1, 4))
        starts_ok = [k for k in free if all(0 <= k + j < units and labels[k + j] < 0 for j in range(run))]
        if not starts_ok:
            continue
        k0 = int(rng.choice(starts_ok))
        labels[k0 : k0 + run] = c
    return dict(starts=starts, ends=ends, labels=labels, duration=round(t + 0.3, 3))


def render_frames(layout: dict, rng: np.random.Generator, num_classes: int, fps: float, size: int,
                  visual_cue: np.ndarray) -> np.ndarray:  # fmt: skip
    """``[T, size, size, 3]`` uint8 frames of a clip: a drifting blob on a grey, lightly noisy background."""
    count = int(math.floor(layout["duration"] * fps))
    times = (np.arange(count) + 0.5) / fps
    frames = np.full((count, size, size, 3), 110, dtype=np.float32)
    frames += rng.normal(0, 6, size=frames.shape)
    yy, xx = np.mgrid[0:size, 0:size]
    radius = size / 5
    pos = rng.uniform(radius, size - radius, size=2)
    for f, t in enumerate(times):
        unit = [k for k, (s, e) in enumerate(zip(layout["starts"], layout["ends"], strict=True)) if s <= t < e]
        c = layout["labels"][unit[0]] if unit and visual_cue[unit[0]] else -1
        if c >= 0:
            angle = 2 * math.pi * c / num_classes
            velocity, colour = np.array([math.cos(angle), math.sin(angle)]) * size / 10, class_colour(c, num_classes)
        else:
            velocity, colour = rng.normal(0, size / 20, size=2), np.array([150.0, 150.0, 150.0])
        pos = pos + velocity
        pos = np.where((pos < radius) | (pos > size - radius), np.clip(pos, radius, size - radius), pos)
        inside = (xx - pos[0]) ** 2 + (yy - pos[1]) ** 2 <= radius**2
        frames[f][inside] = colour
    return np.clip(frames, 0, 255).astype(np.uint8)


def write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    """Lossless H.264 (RGB) mp4 with PyAV."""
    from fractions import Fraction

    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "rgb24"
        stream.options = {"crf": "0", "preset": "ultrafast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def srt_time(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def write_srt(path: Path, starts: list[float], ends: list[float], texts: list[str]) -> None:
    import pysrt

    subs = pysrt.SubRipFile()
    for k, (s, e, text) in enumerate(zip(starts, ends, texts, strict=True)):
        subs.append(pysrt.SubRipItem(k + 1, start=pysrt.SubRipTime(milliseconds=int(round(s * 1000))),
                                     end=pysrt.SubRipTime(milliseconds=int(round(e * 1000))), text=text))  # fmt: skip
    subs.save(str(path), encoding="utf-8")


def make_clip(split: str, index: int, num_classes: int, fps: float, size: int, visual_miss: float, text_miss: float,
              min_units: int, max_units: int, seed: int) -> dict:  # fmt: skip
    """Layout, texts, frames and cue masks of one clip (a pure function of its arguments)."""
    rng = np.random.default_rng(seed + SPLIT_OFFSETS[split] + index)
    layout = _clip_layout(rng, num_classes, min_units, max_units)
    units = len(layout["starts"])
    emotional = layout["labels"] >= 0
    visual_cue = emotional & (rng.random(units) >= visual_miss)
    text_cue = emotional & (rng.random(units) >= text_miss)
    texts = [
        str(rng.choice(LINES[EMOTIONS[layout["labels"][k]]])) if text_cue[k] else str(rng.choice(NEUTRAL))
        for k in range(units)
    ]
    frames = render_frames(layout, rng, num_classes, fps, size, visual_cue)
    return dict(layout=layout, texts=texts, frames=frames, visual_cue=visual_cue, text_cue=text_cue)


def write_toy_tel(root: str | Path, num_classes: int = 6, train: int = 240, val: int = 40, test: int = 60,
                  fps: float = 4.0, size: int = 32, visual_miss: float = 0.3, text_miss: float = 0.3,
                  min_units: int = 5, max_units: int = 9, seed: int = 0) -> None:  # fmt: skip
    """Write the toy dataset under ``root`` (a fresh folder: use ``datamodules.toy.ensure_written``)."""
    root = Path(root)
    if not 2 <= num_classes <= len(EMOTIONS):
        raise ValueError(f"num_classes must be in 2..{len(EMOTIONS)}, got {num_classes}")
    for split, count in (("train", train), ("val", val), ("test", test)):
        movies: dict[str, dict] = {}
        for i in range(count):
            clip = make_clip(split, i, num_classes, fps, size, visual_miss, text_miss, min_units, max_units, seed)
            lay, texts = clip["layout"], clip["texts"]
            movie, name = f"tt{split[:2]}{i // 20:05d}", f"scene-{i % 20:03d}.ss-0001.es-0002"
            times = [f"{srt_time(s)}-->{srt_time(e)}" for s, e in zip(lay["starts"], lay["ends"], strict=True)]
            emotions = sorted({int(c) for c in lay["labels"] if c >= 0})
            if split == "train":
                entry = {"emo": {EMOTIONS[c]: 1 for c in emotions}, "time": times, "dialog": texts}
            else:
                emo = {}
                for c in emotions:
                    seg = [k for k in range(len(texts)) if lay["labels"][k] == c]
                    emo[EMOTIONS[c]] = {"time": [times[k] for k in seg], "dialog": [texts[k] for k in seg],
                                        "segment": seg}  # fmt: skip
                entry = {"emo": emo, "dialog": texts, "dialog_name": times}
            movies.setdefault(movie, {})[name] = entry
            folder = root / "videos" / movie
            write_mp4(folder / f"{name}.mp4", clip["frames"], fps)
            write_srt(folder / f"{name}.srt", lay["starts"], lay["ends"], texts)
        (root / f"{split}.json").write_text(json.dumps(movies, indent=1))
