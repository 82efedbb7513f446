"""Toy scenes for text-guided image editing, written in the AttnGAN / DF-GAN metadata layout that CUB and COCO use.

Each image (``img_size`` px) holds one shape (circle, square or triangle) in one of six colours on a muted textured
background; its five captions name the colour and the shape in varied words ("a red circle", "there is a circle
that is red", ...). An editing target is well defined: the same caption with another colour ("a green circle") asks
to recolour the object and leave the background alone. Layout (as the real datasets; ``edits/`` and
``objects.json`` are the toy's extras)::

    <root>/images/<name>.png               <name> = <colour>_<shape>/<split>_<index>: the class is the folder
    <root>/text/<name>.txt                 five captions, one per line
    <root>/{train,test}/filenames.pickle   list of names
    <root>/captions_DAMSM.pickle           [train_captions, test_captions, ixtoword, wordtoix] (AttnGAN's)
    <root>/edits/<name>.txt                one target caption per other colour (recolour edits)
    <root>/objects.json                    {name: {"shape", "colour", "cx", "cy", "r"}} for the attribute classifier

:func:`object_mask` redraws an object's pixels and :func:`classify_colour` names the colour inside a mask (nearest
palette colour of the median pixel): an attribute classifier that owes nothing to any model, used to score edits.
As in CUB, the class folder in each name lets DAMSM mask same-class pairs as negatives (images of one colour and shape
share their captions). Generation is a pure function of the options.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from datamodules.toy.scenes import COLOURS  # the retrieval toy's palette

SHAPES = ("circle", "square", "triangle")
TEMPLATES = (
    "a {c} {s}",
    "there is a {s} that is {c}",
    "a {c} {s} on a textured background",
    "this picture shows a {c} {s}",
    "the {s} in the middle is {c}",
)


def _draw(draw: ImageDraw.ImageDraw, obj: dict, fill) -> None:
    cx, cy, r = obj["cx"], obj["cy"], obj["r"]
    if obj["shape"] == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif obj["shape"] == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)


def object_mask(obj: dict, size: int) -> torch.Tensor:
    """``[size, size]`` bool: the pixels of ``obj``."""
    canvas = Image.new("L", (size, size), 0)
    _draw(ImageDraw.Draw(canvas), obj, 255)
    return torch.from_numpy(np.asarray(canvas) > 127)


def classify_colour(image: torch.Tensor, mask: torch.Tensor) -> str:
    """The palette colour nearest to the median pixel of ``image [3, H, W]`` (in ``[0, 1]``) inside ``mask``."""
    if not mask.any():
        raise ValueError("empty object mask")
    pixel = image[:, mask].median(dim=1).values * 255
    palette = torch.tensor(list(COLOURS.values()), dtype=pixel.dtype)
    return list(COLOURS)[int((palette - pixel).pow(2).sum(1).argmin())]


def caption(colour: str, shape: str, template: int = 0) -> str:
    return TEMPLATES[template].format(c=colour, s=shape)


def render(seed: int, size: int) -> tuple[Image.Image, dict]:
    rng = np.random.default_rng(seed)
    base = rng.integers(70, 150, size=3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None] * rng.uniform(-40, 40, size=3)
    noise = rng.normal(0, 8, size=(size, size, 1))
    background = np.clip(base + ramp + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(background)
    r = float(rng.uniform(0.24, 0.34) * size)
    obj = {
        "shape": SHAPES[int(rng.integers(len(SHAPES)))],
        "colour": list(COLOURS)[int(rng.integers(len(COLOURS)))],
        "cx": float(rng.uniform(r + 1, size - r - 1)),
        "cy": float(rng.uniform(r + 1, size - r - 1)),
        "r": r,
    }
    _draw(ImageDraw.Draw(image), obj, COLOURS[obj["colour"]])
    return image, obj


def tokenize(text: str) -> list[str]:
    """AttnGAN's tokenisation: lower-case word characters."""
    return re.findall(r"\w+", text.lower())


def write_toy_edit_scenes(root: str | Path, train: int = 400, test: int = 100, img_size: int = 32, seed: int = 0):
    """Write the toy under ``root`` (a fresh folder: use ``datamodules.toy.ensure_written``)."""
    root = Path(root)
    for sub in ("images", "text", "edits", "train", "test"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    objects, names = {}, {"train": [], "test": []}
    offsets = {"train": 0, "test": 7_000_003}
    for split, count in (("train", train), ("test", test)):
        for i in range(count):
            image, obj = render(seed * 10_000_019 + offsets[split] + i, img_size)
            name = f"{obj['colour']}_{obj['shape']}/{split}_{i:05d}"  # a class folder, as CUB's names have
            for sub in ("images", "text", "edits"):
                (root / sub / name).parent.mkdir(exist_ok=True)
            image.save(root / "images" / f"{name}.png")
            (root / "text" / f"{name}.txt").write_text(
                "\n".join(caption(obj["colour"], obj["shape"], t) for t in range(len(TEMPLATES))) + "\n"
            )
            others = [c for c in COLOURS if c != obj["colour"]]
            (root / "edits" / f"{name}.txt").write_text("\n".join(caption(c, obj["shape"]) for c in others) + "\n")
            objects[name] = obj
            names[split].append(name)
        with open(root / split / "filenames.pickle", "wb") as f:
            pickle.dump(names[split], f)
    (root / "objects.json").write_text(json.dumps(objects, indent=0))
    words = sorted({w for name in names["train"] + names["test"] for line in
                    (root / "text" / f"{name}.txt").read_text().splitlines() for w in tokenize(line)}
                   | {w for c in COLOURS for w in tokenize(c)})  # fmt: skip
    ixtoword = {0: "<end>", **{i + 1: w for i, w in enumerate(words)}}
    wordtoix = {w: i for i, w in ixtoword.items()}
    encoded = {
        split: [[wordtoix[w] for w in tokenize(line)] for name in names[split]
                for line in (root / "text" / f"{name}.txt").read_text().splitlines()]
        for split in ("train", "test")
    }  # fmt: skip
    with open(root / "captions_DAMSM.pickle", "wb") as f:
        pickle.dump([encoded["train"], encoded["test"], ixtoword, wordtoix], f, protocol=2)


def target_colour(text: str) -> str:
    """The first palette colour named in ``text``."""
    for word in tokenize(text):
        if word in COLOURS:
            return word
    raise ValueError(f"no colour named in {text!r}")


def score_edits(sources: torch.Tensor, edited: torch.Tensor, objects: list[dict], targets: list[str],
                margin: int = 2) -> dict[str, float]:  # fmt: skip
    """How well recolour edits worked, by the attribute classifier and the pixels.

    ``sources``/``edited`` ``[N, 3, S, S]`` in ``[0, 1]``, ``objects`` the scenes' objects, ``targets`` the target
    captions. Returns the share of edited (``success_edited``) and of unedited source images (``success_source``)
    whose object shows the target colour, and the mean absolute pixel change inside the object and outside it (the
    background, ``margin`` pixels away from the object's edge).
    """
    size = sources.shape[-1]
    hits_edit, hits_src, inside, outside = [], [], [], []
    for src, out, obj, text in zip(sources, edited, objects, targets, strict=True):
        mask = object_mask(obj, size)
        colour = target_colour(text)
        hits_edit.append(classify_colour(out, mask) == colour)
        hits_src.append(classify_colour(src, mask) == colour)
        near = torch.nn.functional.max_pool2d(mask[None, None].float(), 2 * margin + 1, 1, margin)[0, 0] > 0
        change = (out - src).abs().mean(0)
        inside.append(float(change[mask].mean()))
        outside.append(float(change[~near].mean()))
    n = len(hits_edit)
    return {"success_edited": sum(hits_edit) / n, "success_source": sum(hits_src) / n,
            "diff_inside": sum(inside) / n, "diff_outside": sum(outside) / n}  # fmt: skip
