"""Drawing of the synthetic pedestrians (:mod:`datamodules.toy.pedestrians`): the pen over a frame stack, the walking
figure with its head, clothes pattern and accessories, and the occluders."""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import ImageDraw

OUTLINE = (28, 26, 32)
OCCLUSION_P = {"a": 0.35, "b": 0.4}


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return round(255 * r), round(255 * g), round(255 * b)


def _mix(a: tuple, b: tuple, t: float) -> tuple[int, int, int]:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b, strict=True))


def _scale(c: tuple, f: float) -> tuple[int, int, int]:
    if f == 1.0:
        return c
    return tuple(min(255, max(0, round(x * f))) for x in c)


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
