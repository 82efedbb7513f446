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

Every tracklet is drawn from its own seeded generator (seeded by the options, person, camera and tracklet), so the
dataset is a pure function of the options and byte-identical for any ``workers``. Only the ``.mat`` headers (which
scipy stamps with the time) differ between runs.
"""

from __future__ import annotations

import colorsys
import math
import multiprocessing
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, ImageDraw

DOMAINS = {"a": 1, "b": 2}  # the code of a domain enters every seed
VIEWS = ("front", "back", "left", "right")
JUNK = "00-1"  # MARS's folder (and name prefix) of junk tracklets
JPEG_QUALITY = 92
OUTLINE = (28, 26, 32)
OCCLUSION_P = {"a": 0.35, "b": 0.4}
NOISE_SIGMA = {"a": 3.0, "b": 7.0}


def _domain_code(domain: str) -> int:
    if domain not in DOMAINS:
        raise ValueError(f"unknown pedestrian domain {domain!r}; known: {sorted(DOMAINS)}")
    return DOMAINS[domain]


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return round(255 * r), round(255 * g), round(255 * b)


def _mix(a: tuple, b: tuple, t: float) -> tuple[int, int, int]:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b, strict=True))


def _scale(c: tuple, f: float) -> tuple[int, int, int]:
    if f == 1.0:
        return c
    return tuple(min(255, max(0, round(x * f))) for x in c)


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


class _Pen:
    """Filled primitives, with dark outlines in domain b's cartoon style."""

    def __init__(self, draw: ImageDraw.ImageDraw, outline: int):
        self.draw, self.outline = draw, outline

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: tuple, round_: float = 0.0) -> None:
        box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        if self.outline:
            self.draw.rounded_rectangle(box, radius=round_, fill=fill, outline=OUTLINE, width=self.outline)
        else:
            self.draw.rectangle(box, fill=fill)

    def ellipse(self, x0: float, y0: float, x1: float, y1: float, fill: tuple) -> None:
        box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        self.draw.ellipse(box, fill=fill, outline=OUTLINE if self.outline else None, width=max(self.outline, 1))

    def limb(self, p0: tuple, p1: tuple, fill: tuple, width: int) -> None:
        if self.outline:
            self.draw.line([p0, p1], fill=OUTLINE, width=width + 2 * self.outline)
        self.draw.line([p0, p1], fill=fill, width=width)


def _draw_person(pen: _Pen, ident: dict, view: str, phase: float, cx: float, top: float, h: float) -> None:
    """Draw ``ident`` walking (gait ``phase``) seen from ``view``: a figure of height ``h`` from row ``top``."""
    side = view in ("left", "right")
    d = -1.0 if view == "left" else 1.0  # the direction a side view faces
    cartoon = pen.outline > 0
    hh = ident["head"] * h
    hw = hh * 0.8
    neck = top + hh * 1.02
    hip = top + h * (1 - ident["legs"])
    foot = top + h
    tw = 0.125 * h * ident["width"] * (0.62 if side else 1.0)  # half the torso width
    limb = max(1, round(0.07 * h * ident["width"] * (1.0 if side else 0.8)))
    swing = math.sin(phase)
    shirt, trousers, skin = ident["shirt"], ident["trousers"], ident["skin"]
    leg_top = hip - 0.03 * h
    leg_len = foot - leg_top
    arm_len = 0.36 * h
    shoulder = neck + 0.03 * h
    bp = ident["backpack"]
    bag = ident["bag"]
    radius = 0.35 * tw if cartoon else 0.0

    def leg(x: float, angle: float, lift: float, shade: float) -> None:
        end = (x + leg_len * math.sin(angle), foot - lift)
        knee = (x + 0.5 * leg_len * math.sin(angle), leg_top + 0.5 * (end[1] - leg_top))
        pen.limb((x, leg_top), knee if ident["shorts"] else end, _scale(trousers, shade), limb)
        if ident["shorts"]:
            pen.limb(knee, end, _scale(skin, shade), max(1, limb - 1))
        toe = d * limb if side else 0.0  # a side view shows the shoe pointing forward
        pen.rect(end[0] - 0.6 * limb + min(0.0, toe), end[1] - 0.5 * limb, end[0] + 0.6 * limb + max(0.0, toe),
                 end[1] + 0.3 * limb, _scale(ident["shoes"], shade))  # fmt: skip

    def arm(x: float, angle: float, shade: float) -> None:
        hand = (x + arm_len * math.sin(angle), shoulder + arm_len * math.cos(angle))
        elbow = (x + 0.4 * arm_len * math.sin(angle), shoulder + 0.4 * arm_len * math.cos(angle))
        pen.limb((x, shoulder), hand if ident["long_sleeves"] else elbow, _scale(shirt, shade), limb)
        if not ident["long_sleeves"]:
            pen.limb(elbow, hand, _scale(skin, shade), max(1, limb - 1))
        r = 0.5 * limb + 0.3
        pen.ellipse(hand[0] - r, hand[1] - r, hand[0] + r, hand[1] + r, _scale(skin, shade))

    def bag_at(sign: float) -> None:
        x = cx + sign * (tw + 0.06 * h)
        pen.rect(x - 0.06 * h, hip - 0.1 * h, x + 0.06 * h, hip + 0.04 * h, bag["colour"], 0.02 * h)
        pen.limb((x, hip - 0.1 * h), (cx - sign * 0.8 * tw, shoulder), _scale(bag["colour"], 0.7), max(1, limb // 3))

    if side:  # far limbs (darker), torso, backpack behind, head, near limbs
        leg_angle, arm_angle = ident["leg_swing"] * swing, ident["arm_swing"] * swing
        arm(cx, -d * arm_angle, 0.75)
        leg(cx, -d * leg_angle, 0.0, 0.75)
        if bag is not None and bag["side"] != d:
            bag_at(d * 0.3)
        leg(cx, d * leg_angle, 0.0, 1.0)
        pen.rect(cx - tw * 0.95, hip - 0.04 * h, cx + tw * 0.95, hip + 0.04 * h, trousers)
        pen.rect(cx - tw, neck, cx + tw, hip, shirt, radius)
        _pattern(pen, ident, cx - tw, neck, cx + tw, hip, h)
        if bp is not None:
            pen.rect(cx - d * 0.6 * tw, shoulder + 0.02 * h, cx - d * (tw + 0.09 * h), shoulder + 0.2 * h, bp, 0.02 * h)
        hx = cx + d * 0.15 * hw
    else:
        lift = 0.035 * h
        for sign in (-1.0, 1.0):
            leg(cx + sign * 0.45 * tw, sign * 0.02, lift * max(0.0, sign * swing), 1.0)
        pen.rect(cx - tw * 0.95, hip - 0.04 * h, cx + tw * 0.95, hip + 0.04 * h, trousers)
        pen.rect(cx - tw, neck, cx + tw, hip, shirt, radius)
        _pattern(pen, ident, cx - tw, neck, cx + tw, hip, h)
        for sign in (-1.0, 1.0):
            arm(cx + sign * (tw + 0.4 * limb), sign * (0.06 + 0.05 * sign * swing), 1.0)
        if bp is not None and view == "back":
            pen.rect(
                cx - 0.72 * tw, shoulder + 0.03 * h, cx + 0.72 * tw, shoulder + 0.62 * (hip - shoulder), bp, 0.02 * h
            )
            pen.draw.line([(cx - 0.72 * tw, shoulder + 0.15 * h), (cx + 0.72 * tw, shoulder + 0.15 * h)],
                          fill=_scale(bp, 0.6), width=max(1, limb // 3))  # fmt: skip
        elif bp is not None:  # front: only the straps
            for sign in (-1.0, 1.0):
                pen.draw.line([(cx + sign * 0.55 * tw, neck), (cx + sign * 0.45 * tw, neck + 0.5 * (hip - neck))],
                              fill=bp, width=max(1, limb // 2))  # fmt: skip
        if bag is not None:
            bag_at(bag["side"] * (1.0 if view == "back" else -1.0))
        hx = cx
    if bag is not None and side and bag["side"] == d:
        bag_at(-d * 0.3)
    _draw_head(pen, ident, view, hx, top, hw, hh, h)
    if side:
        arm(cx, d * ident["arm_swing"] * swing, 1.0)


def _pattern(pen: _Pen, ident: dict, x0: float, y0: float, x1: float, y1: float, h: float) -> None:
    if ident["pattern"] == "plain":
        return
    period = max(2.0, 0.06 * h)
    colour = ident["pattern_colour"]
    if ident["pattern"] == "hstripes":
        y = y0 + 0.5 * period
        while y + 0.5 * period <= y1:
            pen.draw.rectangle((x0 + 1, y, x1 - 1, y + 0.45 * period), fill=colour)
            y += period
    else:
        x = x0 + 0.5 * period
        while x + 0.5 * period <= x1:
            pen.draw.rectangle((x, y0 + 1, x + 0.45 * period, y1 - 1), fill=colour)
            x += period


def _draw_head(pen: _Pen, ident: dict, view: str, hx: float, top: float, hw: float, hh: float, h: float) -> None:
    hair, box = ident["hair"], (hx - hw / 2, top, hx + hw / 2, top + hh)
    if ident["long_hair"] and view != "front":
        pen.rect(hx - 0.5 * hw, top + 0.4 * hh, hx + 0.5 * hw, top + 1.45 * hh, hair)
    pen.rect(hx - 0.2 * hw, top + 0.8 * hh, hx + 0.2 * hw, top + 1.1 * hh, ident["skin"])
    pen.ellipse(*box, ident["skin"] if view != "back" else hair)
    if view == "front":
        pen.draw.chord(box, 180, 360, fill=hair)
        if ident["long_hair"]:
            for sign in (-1.0, 1.0):
                pen.draw.rectangle((hx + sign * 0.5 * hw - 0.12 * hw, top + 0.4 * hh, hx + sign * 0.5 * hw + 0.12 * hw,
                                    top + 1.3 * hh), fill=hair)  # fmt: skip
    elif view in ("left", "right"):
        pen.draw.chord(box, 180, 360, fill=hair)
        back = (90, 180) if view == "right" else (0, 90)  # the back of the head: behind the walking direction
        pen.draw.pieslice(box, *back, fill=hair)
    if ident["hat"] is not None:
        pen.rect(hx - 0.55 * hw, top - 0.05 * hh, hx + 0.55 * hw, top + 0.35 * hh, ident["hat"])
        brim = {"left": (-0.9, 0.3), "right": (-0.3, 0.9)}.get(view, (-0.75, 0.75))
        pen.draw.line([(hx + brim[0] * hw, top + 0.35 * hh), (hx + brim[1] * hw, top + 0.35 * hh)],
                      fill=_scale(ident["hat"], 0.7), width=max(1, round(0.02 * h)))  # fmt: skip


def _occluder(rng: np.random.Generator, domain: str, n: int, h: int, w: int) -> dict | None:
    """With probability :data:`OCCLUSION_P`, something that covers part of the figure in some frames."""
    if rng.random() >= OCCLUSION_P[domain]:
        return None
    t0 = int(rng.integers(n))
    t1 = min(n, t0 + int(rng.integers(max(1, n // 4), max(2, 3 * n // 4) + 1)))
    kind = str(rng.choice(["pole", "car", "person"]))
    occ = dict(kind=kind, t0=t0, t1=t1, v=float(rng.choice([-1, 1]) * rng.uniform(0.3, 1.2) * w / 32))
    if kind == "pole":
        occ.update(x=w * rng.uniform(0.2, 0.8), width=w * rng.uniform(0.1, 0.22),
                   colour=_rgb(rng.random(), rng.uniform(0, 0.2), rng.uniform(0.2, 0.6)))  # fmt: skip
    elif kind == "car":
        occ.update(x=w * rng.uniform(-0.6, 0.4), length=w * rng.uniform(0.8, 1.5), y=h * rng.uniform(0.55, 0.75),
                   colour=_rgb(rng.random(), rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.95)))  # fmt: skip
    else:
        occ.update(x=w * (0.5 + rng.choice([-1, 1]) * rng.uniform(0.3, 0.55)), height=h * rng.uniform(1.0, 1.3),
                   shirt=_rgb(rng.random(), rng.uniform(0, 0.9), rng.uniform(0.2, 0.95)),
                   trousers=_rgb(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.1, 0.6)),
                   skin=_mix((236, 201, 178), (92, 58, 40), rng.random()))  # fmt: skip
    return occ


def _draw_occluder(pen: _Pen, occ: dict, t: int, h: int, w: int) -> None:
    if not occ["t0"] <= t < occ["t1"]:
        return
    x = occ["x"] + occ["v"] * (t - occ["t0"])
    if occ["kind"] == "pole":
        pen.rect(x, -1, x + occ["width"], h + 1, occ["colour"])
    elif occ["kind"] == "car":
        y, end = occ["y"], x + occ["length"]
        pen.rect(x, y, end, h + 1, occ["colour"], 0.04 * h)
        pen.rect(x + 0.1 * occ["length"], y + 0.05 * h, end - 0.1 * occ["length"], y + 0.13 * h, (60, 70, 80))
        for wheel in (x + 0.2 * occ["length"], end - 0.2 * occ["length"]):
            pen.ellipse(wheel - 0.06 * h, h - 0.08 * h, wheel + 0.06 * h, h + 0.04 * h, (20, 20, 22))
    else:
        fh = occ["height"]
        top = h - 0.92 * fh
        pen.ellipse(x - 0.06 * fh, top, x + 0.06 * fh, top + 0.14 * fh, occ["skin"])
        pen.rect(x - 0.13 * fh, top + 0.14 * fh, x + 0.13 * fh, top + 0.5 * fh, occ["shirt"], 0.03 * fh)
        pen.rect(x - 0.11 * fh, top + 0.5 * fh, x + 0.11 * fh, h + 1, occ["trousers"])


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
