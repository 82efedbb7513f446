"""TEL timeline figure: a trained model's per-subtitle emotion probabilities on a few real test clips (docs/tel.md).

Regenerate both committed files from a checkpoint (the model's class comes from ``--config``'s ``model.class_path``,
else from the checkpoint's hyper-parameters; the data settings from ``--config``'s ``data.init_args``):

    python benchmarks/tel_timelines.py --ckpt runs/subtitles_official/version_0/checkpoints/best.ckpt \
        --config configs/tel/subtitles_official.yaml --root /path/to/tel \
        --predictions docs/figures/tel_timelines.json --out docs/figures/tel_timelines.png

Redraw the PNG from the saved predictions alone (no checkpoint, no model; what
tests/lightning_modules/emotion/test_tel_figure.py does):

    python benchmarks/tel_timelines.py --predictions docs/figures/tel_timelines.json --root /path/to/tel \
        --out docs/figures/tel_timelines.png

Which clips (fixed before any prediction is seen, so nothing is cherry-picked): the clips of ``<root>/test.json``
with 6 to 16 subtitles and at least one annotated emotion, in file order; ``--clips`` K of them (default 4) drawn
without replacement by ``numpy.random.default_rng(--seed)`` (default 0) and drawn in file order.

The JSON holds, per clip, its ``movie/clip`` key and its per-subtitle probabilities of every class rounded to 3
decimals, plus the drawing settings and the provenance (checkpoint, config, model class, date). The PNG is always
drawn from the JSON's rounded probabilities and ``test.json``'s subtitles and labels, one ``draw_timeline`` panel per
clip stacked top to bottom, palette-quantised and PIL-optimised: the same inputs give the same bytes.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules.tel_annotations import EMOTIONS, Clip, read_tel  # noqa: E402
from experiments.errors import DataError, SuiteError  # noqa: E402

MIN_UNITS, MAX_UNITS = 6, 16
COLORS = 64  # palette size of the PNG


def choose_clips(clips: list[Clip], count: int, seed: int) -> list[Clip]:
    """``count`` clips with ``MIN_UNITS``..``MAX_UNITS`` subtitles and an annotated emotion, seeded, in file order."""
    eligible = [c for c in clips if MIN_UNITS <= len(c.texts) <= MAX_UNITS and c.units]
    if len(eligible) < count:
        raise DataError(f"only {len(eligible)} test clips have {MIN_UNITS}-{MAX_UNITS} subtitles and an annotated "
                        f"emotion; asked for --clips {count}")  # fmt: skip
    picked = np.random.default_rng(seed).choice(len(eligible), size=count, replace=False)
    return [eligible[i] for i in sorted(picked.tolist())]


def _load_class(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def load_model(ckpt: str, config: dict):
    """The Lightning module of ``ckpt``, its class from the config's ``model.class_path`` or the checkpoint."""
    path = (config.get("model") or {}).get("class_path")
    if path is None:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        path = state.get("hyper_parameters", {}).get(
            "_class_path", "lightning_modules.emotion.module.TemporalEmotionLocalizer"
        )
    model = _load_class(path).load_from_checkpoint(ckpt, map_location="cpu").eval()
    return model, path


def test_dataset(config: dict, root: str, num_classes: int):
    """The test split as the config's data module builds it (root replaced by ``root``, no workers)."""
    data = config.get("data") or {}
    cls = _load_class(data.get("class_path", "datamodules.video_subtitles.VideoSubtitlesDataModule"))
    kwargs = {**data.get("init_args", {}), "root": root, "num_workers": 0, "pin_memory": False}
    dataset = cls(**kwargs).dataset_for("test")
    if dataset.num_classes != num_classes:
        raise DataError(f"the data has {dataset.num_classes} classes but the model {num_classes}")
    return dataset


@torch.no_grad()
def predict(args: argparse.Namespace) -> dict:
    """Run the checkpoint on the chosen test clips; the JSON document of their rounded probabilities."""
    from datamodules.video_subtitles import collate_clips
    from experiments.configs import load_config

    config = load_config(args.config) if args.config else {}  # merged over its bases, resolved
    model, class_path = load_model(args.ckpt, config)
    dataset = test_dataset(config, args.root, model.num_classes)
    chosen = choose_clips(dataset.clips, args.clips, args.seed)
    index = {c.key: i for i, c in enumerate(dataset.clips)}
    batch = collate_clips([dataset[index[c.key]] for c in chosen])
    probs = model.unit_probs(batch).float()
    if not torch.isfinite(probs).all():
        raise DataError(f"{args.ckpt} gives non-finite probabilities (a probe that is fitted at test start?)")
    clips = []
    for b, clip in enumerate(chosen):
        n = int(batch["unit_mask"][b].sum())
        clips.append({"key": clip.key, "probs": np.round(probs[b, :n].numpy().astype(np.float64), 3).tolist()})
    return {
        "provenance": {
            "checkpoint": args.ckpt, "config": args.config, "model": class_path,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "rule": f"test clips with {MIN_UNITS}-{MAX_UNITS} subtitles and an annotated emotion, "
                    f"{args.clips} drawn with numpy default_rng({args.seed}), file order",
        },
        "class_names": list(model.class_names), "threshold": args.threshold, "width": args.width, "clips": clips,
    }  # fmt: skip


def check_predictions(doc: dict, source: str, test: list[Clip], test_path: Path) -> list[tuple[Clip, np.ndarray]]:
    """Each saved clip with its ``[U, C]`` probabilities; a :class:`DataError` naming ``source`` on a mismatch."""
    by_key = {c.key: c for c in test}
    names = doc.get("class_names", [])
    if list(names) != list(EMOTIONS[: len(names)]) or not names:
        raise DataError(f"{source}: class_names {names} are not the first TEL classes {list(EMOTIONS)}")
    out = []
    for entry in doc.get("clips", []):
        key = entry.get("key")
        if key not in by_key:
            raise DataError(f"{source}: clip {key!r} is not in {test_path}")
        clip, probs = by_key[key], np.asarray(entry.get("probs"), dtype=np.float64)
        if probs.shape != (len(clip.texts), len(names)):
            raise DataError(f"{source}: clip {key!r} has probabilities of shape {list(probs.shape)} but {test_path} "
                            f"gives it {len(clip.texts)} subtitles x {len(names)} classes")  # fmt: skip
        out.append((clip, probs))
    if not out:
        raise DataError(f"{source}: holds no clips")
    return out


def draw(predictions: str | Path, root: str | Path, out: str | Path) -> tuple[int, int]:
    """Redraw the PNG ``out`` from the saved ``predictions`` and ``<root>/test.json``; its ``(width, height)``."""
    from PIL import Image

    from lightning_modules.emotion.timeline import draw_timeline

    predictions, test_path = Path(predictions), Path(root) / "test.json"
    try:
        doc = json.loads(predictions.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{predictions}: cannot read the saved predictions ({err})") from err
    clips = check_predictions(doc, str(predictions), read_tel(test_path), test_path)
    names, threshold, width = doc["class_names"], float(doc.get("threshold", 0.5)), int(doc.get("width", 800))
    panels = []
    for clip, probs in clips:
        labels = torch.from_numpy(clip.unit_labels()[:, : len(names)])
        panels.append(draw_timeline(torch.from_numpy(clip.starts).float(), torch.from_numpy(clip.ends).float(),
                                    clip.texts, labels, torch.from_numpy(probs).float(), names, threshold, width,
                                    clip.key))  # fmt: skip
    height, full = sum(p.shape[1] for p in panels), max(p.shape[2] for p in panels)
    image = torch.ones(3, height, full)  # white padding right of narrower panels
    top = 0
    for panel in panels:
        image[:, top : top + panel.shape[1], : panel.shape[2]] = panel
        top += panel.shape[1]
    pixels = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.fromarray(pixels, "RGB").quantize(colors=COLORS, method=Image.Quantize.MEDIANCUT, dither=0)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    picture.save(out, format="PNG", optimize=True)
    return picture.size


def dump(doc: dict) -> str:
    """``doc`` as indented JSON with each list of numbers (a subtitle's probabilities) on one line."""
    text = json.dumps(doc, indent=1)
    return re.sub(r"\[([^\[\]{}\"]*)\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None, help="checkpoint to run (omit: redraw from --predictions)")
    parser.add_argument("--config", default=None, help="the run's config (model and data class, data settings)")
    parser.add_argument("--root", required=True, help="folder with test.json")
    parser.add_argument("--predictions", default="docs/figures/tel_timelines.json", help="JSON written / read")
    parser.add_argument("--out", default="docs/figures/tel_timelines.png", help="PNG written")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=800, help="panel width in pixels")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability outlined in the panels")
    args = parser.parse_args(argv)
    try:
        if args.ckpt:
            doc = predict(args)
            Path(args.predictions).parent.mkdir(parents=True, exist_ok=True)
            Path(args.predictions).write_text(dump(doc))
            print(f"wrote {args.predictions} ({len(doc['clips'])} clips)")
        size = draw(args.predictions, args.root, args.out)
    except SuiteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({size[0]}x{size[1]} px, {Path(args.out).stat().st_size / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
