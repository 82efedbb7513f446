"""Synthesized pedestrian video tracklets in the MARS layout: the toy data and the pre-training source of video re-ID.

STT (arXiv 2103.16469) pre-trains on synthesized videos of people and fine-tunes on real ones. This generator draws
such videos with PIL and numpy, fast enough to write tens of thousands of tracklets (``workers`` processes) and small
enough for CPU tests. It writes MARS's on-disk format, so the same reader loads the toy, the synthetic pre-training
set and the real dataset:

* ``bbox_train/<pid>/`` and ``bbox_test/<pid>/`` hold the frames, named ``{pid:04d}C{cam}T{tracklet:04d}F{frame:03d}
  .jpg`` (camera 1-9, tracklet counted per person and camera, frames from 001). Person ids are 1-based: the first
  ``train_ids`` are training people, the next ``test_ids`` test people. ``bbox_test/00-1/`` holds junk tracklets
  (background, blobs, fragments of people: detector false positives), person id -1.
* ``info/train_name.txt`` and ``info/test_name.txt`` list every frame of a split, one per line, tracklet after
  tracklet in the order of the track tables; ``info/tracks_{train,test}_info.mat`` (keys ``track_train_info``,
  ``track_test_info``) hold one row per tracklet: ``start, end`` (1-based, inclusive indices into the name list),
  ``pid, camid``. ``info/query_IDX.mat`` (key ``query_IDX``, 1 x M) holds the 1-based rows of the test table that
  are queries: one tracklet per test person; every other row is gallery, and every query person has a gallery
  tracklet from another camera. Rows are in name order, as in MARS (so the junk comes first).

The content is built to make re-ID learnable but not trivial:

* **People.** :func:`identity_attributes` draws a person from its own seed: shirt, trouser, skin, hair and shoe
  colours from continuous ranges (so some people look alike), body height, width, head size and leg length, and
  optional accessories: backpack, hat, shoulder bag on one side, striped shirt, short sleeves, shorts, long hair,
  and a gait (stride period, arm and leg swing). The same person looks the same in all of its tracklets.
* **Tracklets.** :func:`render_tracklet` films one person by one camera: a walk (limbs swing with a phase that
  advances per frame, the body bobs, the box drifts and jitters in scale and position, as a detector's does), a
  viewpoint (front, back, or walking left or right: the side view is narrower and shows the backpack behind the back,
  the back view shows it whole, the front view only its straps), lighting (gain, contrast, colour cast and a vertical
  gradient, per camera and jittered per tracklet), a background that slides as the box follows the walker, an
  occluder with some probability (a pole, a car, another person) over part of the figure in some frames, and noise.
  A person's tracklets use distinct cameras where possible, so each person is seen by at least two cameras.
* **Cameras.** :func:`camera_scene` is a fixed scene per (domain, camera), like MARS's six cameras: wall and ground
  textures and colours, horizon, lighting and the usual walking direction. The dataset seed changes the people and
  the tracklets, not the cameras.
* **Domains.** ``domain="b"`` is a second synthetic world for transfer tests: parks and malls instead of streets
  (sky, foliage, glass, pastel walls over grass or tiles instead of bricks, panels and windows over asphalt),
  vivid sporty clothes, a cool colour cast, lower contrast, a cartoon body (bigger head, stockier, rounded torso,
  dark outlines), and blur plus stronger noise. The domain enters every seed, so person 7 of domain b is not person
  7 of domain a.

The figures, their colours and the occluders are drawn by :mod:`datamodules.toy.pedestrian_drawing`.

Every tracklet is drawn from its own seeded generator (seeded by the options, person, camera and tracklet), so the
dataset is a pure function of the options and byte-identical for any ``workers``. Only the ``.mat`` headers (which
scipy stamps with the time) differ between runs.
"""

from __future__ import annotations

import math
import multiprocessing
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, ImageDraw

from datamodules.toy.pedestrian_drawing import (
    OCCLUSION_P,
    OUTLINE,
    _draw_occluder,
    _draw_person,
    _mix,
    _occluder,
    _Pen,
    _rgb,
    _scale,
)

__all__ = [
    "DOMAINS",
    "JPEG_QUALITY",
    "JUNK",
    "NOISE_SIGMA",
    "OCCLUSION_P",
    "OUTLINE",
    "VIEWS",
    "camera_scene",
    "identity_attributes",
    "render_junk",
    "render_tracklet",
    "write_synthetic_tracklets",
]

DOMAINS = {"a": 1, "b": 2}  # the code of a domain enters every seed
VIEWS = ("front", "back", "left", "right")
JUNK = "00-1"  # MARS's folder (and name prefix) of junk tracklets
JPEG_QUALITY = 92
NOISE_SIGMA = {"a": 3.0, "b": 7.0}


def _domain_code(domain: str) -> int:
    if domain not in DOMAINS:
        raise ValueError(f"unknown pedestrian domain {domain!r}; known: {sorted(DOMAINS)}")
    return DOMAINS[domain]


def identity_attributes(pid: int, domain: str = "a", seed: int = 0) -> dict:
    """The look of person ``pid`` of ``domain`` (colours as RGB tuples, sizes as fractions of the body height)."""
    if pid < 0:
        raise ValueError(f"person ids are non-negative, got {pid}")
    rng = np.random.default_rng([seed, _domain_code(domain), pid, 101])
    vivid = domain == "b"
    if vivid:  # sporty: saturated, bright tops and coloured trousers or shorts
        shirt = _rgb(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.6, 1.0))
        trousers = _rgb(rng.random(), rng.uniform(0.3, 0.8), rng.uniform(0.35, 0.9))
    else:  # street clothes: any top; denim, dark or khaki trousers
        shirt = _rgb(rng.random(), rng.uniform(0.1, 0.85), rng.uniform(0.25, 0.95))
        kinds = (
            _rgb(0.6 + rng.normal(0, 0.03), rng.uniform(0.3, 0.65), rng.uniform(0.2, 0.55)),
            _rgb(rng.random(), rng.uniform(0.0, 0.15), rng.uniform(0.08, 0.45)),
            _rgb(0.1 + rng.normal(0, 0.02), rng.uniform(0.25, 0.5), rng.uniform(0.45, 0.75)),
        )
        trousers = kinds[int(rng.choice(3, p=[0.45, 0.35, 0.2]))]
    skin = _mix((236, 201, 178), (92, 58, 40), rng.random())
    tone = rng.random()
    hair = (
        _mix((24, 20, 18), (112, 72, 42), tone / 0.7)
        if tone < 0.7
        else _mix((112, 72, 42), (214, 184, 124), (tone - 0.7) / 0.3)
    )
    if rng.random() < 0.1:
        hair = _scale((170, 170, 168), rng.uniform(0.8, 1.2))
    shoes = _rgb(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.05, 0.9))
    if vivid:
        body = dict(height=rng.uniform(0.75, 0.9), width=rng.uniform(0.95, 1.35), head=rng.uniform(0.16, 0.2),
                    legs=rng.uniform(0.38, 0.45))  # fmt: skip
    else:
        body = dict(height=rng.uniform(0.8, 0.95), width=rng.uniform(0.8, 1.2), head=rng.uniform(0.12, 0.145),
                    legs=rng.uniform(0.45, 0.52))  # fmt: skip
    backpack = _rgb(rng.random(), rng.uniform(0.2, 0.8), rng.uniform(0.15, 0.7)) if rng.random() < 0.35 else None
    hat = _rgb(rng.random(), rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.95)) if rng.random() < 0.2 else None
    bag = None
    if rng.random() < 0.25:
        bag = dict(
            colour=_rgb(rng.random(), rng.uniform(0.1, 0.8), rng.uniform(0.2, 0.8)), side=int(rng.choice([-1, 1]))
        )
    pattern = str(rng.choice(["plain", "hstripes", "vstripes"], p=[0.55, 0.3, 0.15]))
    if rng.random() < 0.5:
        pattern_colour = _scale(shirt, 0.45) if sum(shirt) > 384 else _mix(shirt, (250, 250, 250), 0.6)
    else:
        pattern_colour = _rgb(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0))
    return dict(
        pid=pid, domain=domain, shirt=shirt, trousers=trousers, skin=skin, hair=hair, shoes=shoes,
        **{k: float(v) for k, v in body.items()},
        backpack=backpack, hat=hat, bag=bag, pattern=pattern, pattern_colour=pattern_colour,
        long_sleeves=bool(rng.random() < 0.5), shorts=bool(rng.random() < (0.4 if vivid else 0.15)),
        long_hair=bool(rng.random() < 0.3), gait_period=float(rng.uniform(8, 12)),
        arm_swing=float(rng.uniform(0.25, 0.5)), leg_swing=float(rng.uniform(0.3, 0.45)),
    )  # fmt: skip


def camera_scene(camera: int, domain: str = "a") -> dict:
    """The fixed scene of ``camera`` in ``domain``: background kinds and colours, lighting, usual viewpoint.

    The wall and ground kinds cycle with the camera number, so six cameras show the six combinations."""
    rng = np.random.default_rng([_domain_code(domain), camera, 202])
    if domain == "a":  # streets: bricks, panels or windows over asphalt or paving, neutral-warm light
        scene = dict(
            wall_kind=("bricks", "panels", "windows")[(camera - 1) % 3],
            ground_kind=("asphalt", "paving")[(camera - 1) % 2],
            wall=_rgb(rng.uniform(0.0, 0.14), rng.uniform(0.1, 0.5), rng.uniform(0.35, 0.75)),
            accent=_rgb(rng.uniform(0.0, 0.7), rng.uniform(0.0, 0.3), rng.uniform(0.15, 0.5)),
            ground=_rgb(rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.1), rng.uniform(0.3, 0.6)),
            horizon=rng.uniform(0.45, 0.7), texture=rng.uniform(0.8, 1.3),
            gain=rng.uniform(0.8, 1.1), contrast=rng.uniform(0.85, 1.1),
            cast=tuple(rng.normal(1.0, 0.05, 3) * (1.04, 1.0, 0.95)), shade=rng.uniform(-0.12, 0.12),
        )  # fmt: skip
    else:  # parks and malls: sky and foliage, pastel walls or glass over grass or tiles, cool low-contrast light
        scene = dict(
            wall_kind=("sky", "pastel", "glass")[(camera - 1) % 3],
            ground_kind=("grass", "tiles")[(camera - 1) % 2],
            wall=_rgb(rng.uniform(0.45, 0.95), rng.uniform(0.15, 0.4), rng.uniform(0.75, 0.95)),
            accent=_rgb(rng.uniform(0.2, 0.45), rng.uniform(0.4, 0.8), rng.uniform(0.3, 0.7)),
            ground=_rgb(rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.6), rng.uniform(0.45, 0.8)),
            horizon=rng.uniform(0.4, 0.6), texture=rng.uniform(0.8, 1.3),
            gain=rng.uniform(0.95, 1.2), contrast=rng.uniform(0.6, 0.85),
            cast=tuple(rng.normal(1.0, 0.08, 3) * (0.9, 1.0, 1.14)), shade=rng.uniform(-0.2, 0.2),
        )  # fmt: skip
    scene["view"] = VIEWS[int(rng.integers(len(VIEWS)))]
    return scene


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Value noise in [0, 1]: a random grid of ``cell`` pixels, bilinearly interpolated."""
    grid = rng.random((int(h / cell) + 2, int(w / cell) + 2), dtype=np.float32)
    y, x = np.arange(h, dtype=np.float32) / cell, np.arange(w, dtype=np.float32) / cell
    y0, x0 = y.astype(np.int64), x.astype(np.int64)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _background(scene: dict, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A ``h x w`` uint8 RGB view of ``scene``, with per-tracklet jitter of colours, horizon and texture."""
    u = h / 64
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :] + np.float32(rng.uniform(0, 400) * u)
    horizon = h * float(np.clip(scene["horizon"] + rng.normal(0, 0.03), 0.3, 0.8))
    wall = np.asarray(scene["wall"], np.float32) + rng.normal(0, 8, 3).astype(np.float32)
    accent = np.asarray(scene["accent"], np.float32) + rng.normal(0, 8, 3).astype(np.float32)
    ground = np.asarray(scene["ground"], np.float32) + rng.normal(0, 8, 3).astype(np.float32)
    size = scene["texture"] * u * rng.uniform(0.9, 1.1)
    line = 0.7 * u
    kind = scene["wall_kind"]
    if kind == "bricks":
        bh = 3.5 * size
        row = np.floor(yy / bh)
        shifted = xx + (row % 2) * 1.1 * bh
        col = np.floor(shifted / (2.2 * bh))
        hashed = np.sin(row * 12.9898 + col * 78.233) * 43758.5453
        shade = 1 + 0.16 * (hashed - np.floor(hashed) - 0.5)
        mortar = ((yy % bh) < line) | ((shifted % (2.2 * bh)) < line)
        top = np.where(mortar[..., None], accent, wall * shade[..., None])
    elif kind == "panels":
        period = 9 * size
        wave = 0.9 + 0.2 * (0.5 + 0.5 * np.sin(2 * math.pi * xx / period))
        seam = np.broadcast_to((xx % period) < line, (h, w))
        top = np.where(seam[..., None], accent, wall * wave[..., None] * np.ones((h, 1, 1), np.float32))
    elif kind == "windows":
        px, py = 11 * size, 14 * size
        win = ((xx % px) > 0.3 * px) & ((xx % px) < 0.85 * px) & ((yy % py) > 0.25 * py) & ((yy % py) < 0.8 * py)
        top = np.where(win[..., None], accent, wall)
    elif kind == "sky":
        t = np.clip(yy / max(horizon, 1.0), 0, 1)[..., None]
        sky = wall * (1 - t) + np.float32(245) * t
        trees = _smooth_noise(rng, h, w, 6 * size)
        foliage = yy > horizon - 0.22 * h * (0.4 + trees)
        top = np.where(foliage[..., None], accent * (0.7 + 0.5 * trees)[..., None], sky)
    elif kind == "pastel":
        light = 0.85 + 0.3 * _smooth_noise(rng, 1, w, 20 * size)
        period = 16 * size
        poster = ((xx % period) > 0.45 * period) & ((xx % period) < 0.8 * period) & (yy > 0.15 * h) & (yy < 0.4 * h)
        top = np.where(poster[..., None], accent, wall * light[..., None] * np.ones((h, 1, 1), np.float32))
    elif kind == "glass":
        glare = 0.85 + 0.25 * (np.sin((xx + 0.6 * yy) * 2 * math.pi / (14 * size)) > 0.6)
        mullion = np.broadcast_to((xx % (10 * size)) < line, (h, w))
        top = np.where(mullion[..., None], accent, wall * glare[..., None])
    else:
        raise ValueError(f"unknown wall kind {kind!r}")
    kind = scene["ground_kind"]
    below = yy - horizon
    if kind == "asphalt":
        grain = 1 + 0.06 * rng.standard_normal((h, w), dtype=np.float32)
        kerb = (below >= 0) & (below < 2 * u)
        bottom = ground * (grain + 0.25 * kerb)[..., None]
    elif kind == "paving":
        joints = ((xx % (8 * size)) < line) | ((below % (5 * size)) < line)
        bottom = np.where(joints[..., None], ground * 0.75, ground)
    elif kind == "grass":
        bottom = ground * (0.8 + 0.4 * _smooth_noise(rng, h, w, 3 * size))[..., None]
    elif kind == "tiles":
        checker = (np.floor(xx / (6 * size)) + np.floor(below / (4 * size))) % 2
        bottom = np.where(checker[..., None] > 0, ground, ground * 0.8 + 40)
    else:
        raise ValueError(f"unknown ground kind {kind!r}")
    top, bottom = np.broadcast_to(top, (h, w, 3)), np.broadcast_to(bottom, (h, w, 3))
    return np.clip(np.where((yy < horizon)[..., None], top, bottom), 0, 255).astype(np.uint8)


def _lighting(scene: dict, rng: np.random.Generator) -> dict:
    """The camera's light, jittered per tracklet."""
    return dict(
        gain=scene["gain"] * rng.normal(1.0, 0.06), contrast=scene["contrast"] * rng.normal(1.0, 0.05),
        cast=np.asarray(scene["cast"], np.float32) * rng.normal(1.0, 0.03, 3).astype(np.float32),
        shade=scene["shade"] + rng.normal(0, 0.03),
    )  # fmt: skip


def _finish(frames: np.ndarray, light: dict, rng: np.random.Generator, domain: str) -> list[Image.Image]:
    """Light, blur (domain b) and noise a ``(T, H, W, 3)`` float32 stack of frames, vectorised; the frames."""
    n, h, w, _ = frames.shape
    rows = 1 + light["shade"] * (0.5 - np.arange(h, dtype=np.float32) / h)
    frames = (frames - 128) * np.float32(light["contrast"]) + 128
    frames *= np.float32(light["gain"]) * rows[:, None, None] * light["cast"]
    if domain == "b":  # a [1, 2, 1] / 4 blur along both axes
        padded = np.pad(frames, ((0, 0), (1, 1), (0, 0), (0, 0)), mode="edge")
        frames = 0.25 * padded[:, :-2] + 0.5 * padded[:, 1:-1] + 0.25 * padded[:, 2:]
        padded = np.pad(frames, ((0, 0), (0, 0), (1, 1), (0, 0)), mode="edge")
        frames = 0.25 * padded[:, :, :-2] + 0.5 * padded[:, :, 1:-1] + 0.25 * padded[:, :, 2:]
    # uniform noise of standard deviation sigma, from raw bytes (four times faster than normal deviates)
    sigma = NOISE_SIGMA[domain] * rng.uniform(0.6, 1.4)
    noise = np.frombuffer(rng.bytes(frames.size), np.uint8).reshape(frames.shape)
    frames += (noise.astype(np.float32) - np.float32(127.5)) * np.float32(sigma * math.sqrt(3) / 127.5)
    out = np.clip(frames + 0.5, 0, 255).astype(np.uint8)
    return [Image.fromarray(frame) for frame in out]


def _sliding_background(scene: dict, rng: np.random.Generator, n: int, h: int, w: int, slide: float, d: float):
    """The scene behind a walker: a wide background and the crop offset of each frame (the box follows the walker)."""
    travel = slide * max(n - 1, 0)
    canvas = _background(scene, rng, h, w + math.ceil(travel) + 1)
    offsets = np.round(np.arange(n) * slide).astype(np.int64)
    if d < 0:
        offsets = canvas.shape[1] - w - offsets
    return canvas, np.clip(offsets, 0, canvas.shape[1] - w)


def render_tracklet(identity: dict, camera: int, n_frames: int, height: int = 64, width: int = 32, domain: str = "a",
                    seed: int = 0) -> list[Image.Image]:  # fmt: skip
    """``n_frames`` frames (``height x width``) of ``identity`` walking past ``camera`` (module docstring)."""
    if height < 16 or width < 8:
        raise ValueError(f"frames of at least 16 x 8 pixels are needed, got {height} x {width}")
    scene = camera_scene(camera, domain)
    rng = np.random.default_rng([seed, _domain_code(domain), camera, 404])
    view = scene["view"] if rng.random() < 0.6 else VIEWS[int(rng.integers(len(VIEWS)))]
    side = view in ("left", "right")
    d = -1.0 if view == "left" else 1.0
    slide = rng.uniform(0.6, 1.4) * width / 16 if side else rng.uniform(0.0, 0.1) * width / 16
    canvas, offsets = _sliding_background(scene, rng, n_frames, height, width, slide, d)
    light = _lighting(scene, rng)
    occ = _occluder(rng, domain, n_frames, height, width)
    period = identity["gait_period"] * rng.uniform(0.9, 1.1)
    phase0 = rng.uniform(0, 2 * math.pi)
    fig_h = height * identity["height"] * rng.uniform(0.92, 1.05)
    margin = height * rng.uniform(0.01, 0.06)
    x0, drift = width * rng.normal(0, 0.04), width * rng.normal(0, 0.06)
    jitter = rng.normal(0, 1, (n_frames, 4))
    outline = max(1, round(height / 96)) if domain == "b" else 0
    canvas = Image.fromarray(canvas)
    frames = np.empty((n_frames, height, width, 3), np.float32)
    for t in range(n_frames):
        img = canvas.crop((int(offsets[t]), 0, int(offsets[t]) + width, height))
        pen = _Pen(ImageDraw.Draw(img), outline)
        phase = phase0 + 2 * math.pi * t / period
        h = fig_h * (1 + 0.015 * jitter[t, 0])
        bottom = height - margin + 0.01 * height * jitter[t, 1]
        cx = width / 2 + x0 + drift * t / max(n_frames - 1, 1) + 0.015 * width * jitter[t, 2]
        top = bottom - h - 0.012 * h * abs(math.sin(phase))
        _draw_person(pen, identity, view, phase, cx, top, h)
        if occ is not None:
            _draw_occluder(pen, occ, t, height, width)
        frames[t] = np.asarray(img)
    return _finish(frames, light, rng, domain)


def render_junk(camera: int, n_frames: int, height: int = 64, width: int = 32, domain: str = "a",
                seed: int = 0) -> list[Image.Image]:  # fmt: skip
    """A junk tracklet (a detector false positive): background only, random blobs, or a fragment of a person."""
    scene = camera_scene(camera, domain)
    rng = np.random.default_rng([seed, _domain_code(domain), camera, 808])
    canvas, offsets = _sliding_background(scene, rng, n_frames, height, width, rng.uniform(0, 1.5) * width / 16, 1.0)
    light = _lighting(scene, rng)
    kind = str(rng.choice(["background", "blobs", "fragment"]))
    blobs = [(_rgb(rng.random(), rng.random(), rng.random()), rng.uniform(0, 1, 4)) for _ in range(rng.integers(2, 6))]
    person = identity_attributes(int(rng.integers(10_000, 1_000_000)), domain, seed % 1_000_003)
    scale, raise_ = rng.uniform(1.6, 2.6), rng.uniform(-0.8, 0.2)
    canvas = Image.fromarray(canvas)
    frames = np.empty((n_frames, height, width, 3), np.float32)
    for t in range(n_frames):
        img = canvas.crop((int(offsets[t]), 0, int(offsets[t]) + width, height))
        pen = _Pen(ImageDraw.Draw(img), max(1, round(height / 96)) if domain == "b" else 0)
        if kind == "blobs":
            for colour, (x, y, sx, sy) in blobs:
                x, y = (x + 0.03 * rng.normal()) * width, (y + 0.03 * rng.normal()) * height
                pen.ellipse(x - sx * width / 2, y - sy * height / 3, x + sx * width / 2, y + sy * height / 3, colour)
        elif kind == "fragment":  # a cut-off person, as in a box that slipped off its target
            h = height * scale
            _draw_person(pen, person, "front", 0.7 * t, width * 0.5, height * raise_, h)
        frames[t] = np.asarray(img)
    return _finish(frames, light, rng, domain)


def _tracklet_seed(*parts: int) -> int:
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2)
    return (int(state[0]) << 32) | int(state[1])


def _write_tracklet(task: dict) -> None:
    folder = Path(task["root"]) / task["folder"]
    if task["identity"] is None:
        frames = render_junk(task["cam"], task["frames"], task["height"], task["width"], task["domain"], task["seed"])
    else:
        frames = render_tracklet(task["identity"], task["cam"], task["frames"], task["height"], task["width"],
                                 task["domain"], task["seed"])  # fmt: skip
    for f, frame in enumerate(frames, start=1):
        frame.save(folder / f"{task['prefix']}C{task['cam']}T{task['tracklet']:04d}F{f:03d}.jpg", quality=JPEG_QUALITY)


def write_synthetic_tracklets(root: Path, train_ids: int = 40, test_ids: int = 20, tracklets_per_id: int = 4,
                              height: int = 64, width: int = 32, domain: str = "a", seed: int = 0,
                              frames_per_tracklet: tuple[int, int] = (8, 16), cameras: int = 6,
                              junk_tracklets: int = 2, workers: int = 0) -> None:  # fmt: skip
    """Write synthesized pedestrian tracklets in MARS's layout under ``root`` (module docstring).

    ``frames_per_tracklet`` is the inclusive range of tracklet lengths; ``workers > 0`` renders in that many
    processes (the output does not depend on it).
    """
    code = _domain_code(domain)
    lo, hi = (int(v) for v in frames_per_tracklet)
    if train_ids < 1 or test_ids < 1 or train_ids + test_ids > 9999:
        raise ValueError(
            f"need 1 <= train_ids, 1 <= test_ids, train_ids + test_ids <= 9999; got {train_ids}, {test_ids}"
        )
    if tracklets_per_id < 2:
        raise ValueError(f"tracklets_per_id must be >= 2 (a query and a gallery tracklet), got {tracklets_per_id}")
    if not 2 <= cameras <= 9:
        raise ValueError(f"cameras must be in 2..9 (one digit in MARS names), got {cameras}")
    if not 1 <= lo <= hi <= 999:
        raise ValueError(f"frames_per_tracklet must be (lo, hi) with 1 <= lo <= hi <= 999, got {frames_per_tracklet}")
    if junk_tracklets < 0 or workers < 0:
        raise ValueError(f"junk_tracklets and workers must be >= 0, got {junk_tracklets}, {workers}")
    root = Path(root)
    common = dict(root=str(root), height=height, width=width, domain=domain)
    tasks: list[dict] = []
    rows: dict[str, list[tuple]] = {"train": [], "test": []}  # (prefix, cam, tracklet, frames, pid)
    pids = {"train": range(1, train_ids + 1), "test": range(train_ids + 1, train_ids + test_ids + 1)}
    for split, split_pids in pids.items():
        for pid in split_pids:
            identity = identity_attributes(pid, domain, seed)
            rng = np.random.default_rng([seed, code, pid, 505])
            cams = rng.permutation(cameras) + 1
            counts: dict[int, int] = {}
            for k in range(tracklets_per_id):
                cam = int(cams[k % cameras])
                counts[cam] = counts.get(cam, 0) + 1
                n = int(rng.integers(lo, hi + 1))
                prefix = f"{pid:04d}"
                rows[split].append((prefix, cam, counts[cam], n, pid))
                tseed = _tracklet_seed(seed, code, pid, cam, counts[cam])
                tasks.append(dict(common, folder=f"bbox_{split}/{prefix}", prefix=prefix, identity=identity, cam=cam,
                                  tracklet=counts[cam], frames=n, seed=tseed))  # fmt: skip
    rng = np.random.default_rng([seed, code, 909])
    counts = {}
    for j in range(junk_tracklets):
        cam = int(rng.integers(1, cameras + 1))
        counts[cam] = counts.get(cam, 0) + 1
        n = int(rng.integers(lo, hi + 1))
        rows["test"].append((JUNK, cam, counts[cam], n, -1))
        tseed = _tracklet_seed(seed, code, 10_000 + j, cam)  # person ids stop at 9999
        tasks.append(dict(common, folder=f"bbox_test/{JUNK}", prefix=JUNK, identity=None, cam=cam,
                          tracklet=counts[cam], frames=n, seed=tseed))  # fmt: skip
    for folder in sorted({task["folder"] for task in tasks}):
        (root / folder).mkdir(parents=True, exist_ok=True)
    if workers > 0:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            list(pool.imap_unordered(_write_tracklet, tasks, chunksize=max(1, len(tasks) // (8 * workers))))  # drain
    else:
        for task in tasks:
            _write_tracklet(task)
    info = root / "info"
    info.mkdir(parents=True, exist_ok=True)
    tables = {}
    for split, split_rows in rows.items():
        names, table = [], []
        for prefix, cam, tracklet, n, pid in sorted(split_rows):  # name order, as MARS (junk "00-1" first)
            table.append((len(names) + 1, len(names) + n, pid, cam))
            names += [f"{prefix}C{cam}T{tracklet:04d}F{f:03d}.jpg" for f in range(1, n + 1)]
        (info / f"{split}_name.txt").write_text("\n".join(names) + "\n")
        tables[split] = np.asarray(table, dtype=np.float64)
        scipy.io.savemat(info / f"tracks_{split}_info.mat", {f"track_{split}_info": tables[split]})
    rng = np.random.default_rng([seed, code, 606])
    test, queries = tables["test"], []
    for pid in pids["test"]:
        mine = np.flatnonzero(test[:, 2] == pid)
        query = int(mine[rng.integers(len(mine))])
        if not np.any(test[mine, 3] != test[query, 3]):
            raise AssertionError(f"person {pid} has no gallery tracklet from another camera")
        queries.append(query + 1)
    scipy.io.savemat(info / "query_IDX.mat", {"query_IDX": np.asarray(sorted(queries), dtype=np.float64)[None, :]})
