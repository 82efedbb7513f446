"""``python -m experiments data check|extract --config C.yaml [--data.key value ...]``.

``check [--no_decode]`` builds only the config's DataModule (no model, no trainer, no GPU) and asks it to validate its
dataset: layout, counts per split, unreadable files. Every problem is printed with its path; the exit code is 1 when
there is any.

``extract [--backbone NAME] [--batch_size N] [--device cuda] [--random_weights]`` (video datasets): decodes every
clip of the config's splits with decord at the data's ``fps``, embeds the frames once with a frozen timm backbone
(default: the config's ``model.init_args.net.init_args.visual_backbone``) and writes one feature shard per clip,
``<features_root>/<movie>/<clip>.npy`` (``[frames, dim]`` float16, written atomically; existing shards are kept, so an
interrupted run resumes), plus ``features.json`` (fps, backbone, width). Training then reads the shards with
``data.init_args.visual: features``. ``--random_weights`` leaves the backbone random (seeded) instead of loading the
config's weights: a dry run of the pipeline offline (the smoke run's stand-in), not features to train on.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from experiments.errors import ConfigError, DataError, find_suite_error
from experiments.flags import canonical_flags

if TYPE_CHECKING:  # torch, Lightning and the suite's packages load after parsing, so --help is quick
    import lightning as L


def build_datamodule(config: str, overrides: list[str]) -> L.LightningDataModule:
    """Instantiate the ``data`` section of ``config`` with ``--data.*`` overrides."""
    from experiments.sections import build_sections

    return build_sections(config, ("data",), overrides)["data"]


def check(config: str, overrides: list[str], decode: bool = True) -> int:
    try:
        datamodule = build_datamodule(config, overrides)
    except Exception as err:  # the DataModule's own early checks (missing root ...), wrapped by jsonargparse
        cause = find_suite_error(err)
        if not isinstance(cause, DataError):
            raise
        print(f"problem: {cause}")
        return 1
    if not hasattr(datamodule, "check_dataset"):
        raise ConfigError(f"{type(datamodule).__name__} has no check_dataset(); nothing to validate")
    if getattr(datamodule, "dataset", None) == "toy":
        datamodule.prepare_data()
    root, name = getattr(datamodule, "root", "?"), type(datamodule).__name__
    print(f"checking {root} ({name}{', decoding every file' if decode else ', layout only'}) ...", flush=True)
    start = time.perf_counter()
    summary, problems = datamodule.check_dataset(decode=decode)
    print(f"dataset: {root} ({name}, checked in {time.perf_counter() - start:.1f} s)")
    for split, counts in summary.items():
        print(f"  {split}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for problem in problems:
        print(f"problem: {problem}")
    print(f"{len(problems)} problem(s)", flush=True)
    return 1 if problems else 0


def extract(config: str, overrides: list[str], backbone: str | None, batch_size: int, device: str,
            random_weights: bool = False) -> int:  # fmt: skip
    import io

    import numpy as np
    import torch

    from datamodules.video_subtitles import FEATURES_META, decode_clip
    from experiments.configs import load_config
    from experiments.io import atomic_write_bytes, atomic_write_json
    from experiments.progress import progress_lines
    from lightning_modules.backbones import create_backbone

    datamodule = build_datamodule(config, overrides)
    if not hasattr(datamodule, "features_root"):
        raise ConfigError(f"{type(datamodule).__name__} has no video clips to extract features from")
    datamodule.prepare_data()
    # the TEL network's frame settings (model.init_args.net.init_args: lightning_modules.emotion.dcin.DCIN)
    net_args = (load_config(config).get("model", {}).get("init_args", {}).get("net") or {}).get("init_args") or {}
    key = "model.init_args.net.init_args"
    name = backbone or net_args.get("visual_backbone")
    if not name:
        raise ConfigError(f"no backbone: pass --backbone NAME or set {key}.visual_backbone in the config")
    # the config's weights belong to the config's backbone; another --backbone starts random
    own = backbone in (None, net_args.get("visual_backbone")) and not random_weights
    pretrained = net_args.get("visual_pretrained") if own else None
    torch.manual_seed(0)  # a backbone without pretrained weights is then the same in every extraction
    net = create_backbone(name, pretrained, weights_key=f"{key}.visual_pretrained", num_classes=0,
                          **(net_args.get("visual_backbone_kwargs") or {}))  # fmt: skip
    width = net_args.get("visual_dim")
    if width is not None and width != net.num_features:
        raise ConfigError(f"{name} embeds frames in {net.num_features} dimensions but {key}.visual_dim is "
                          f"{width} in {config}; set visual_dim: {net.num_features} (the model reads these "
                          "shards)")  # fmt: skip
    net = net.requires_grad_(False).eval().to(device)
    cfg = net.pretrained_cfg
    mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), device=device).view(1, 3, 1, 1)
    root = datamodule.features_root
    # the training movies held out for validation (val_movies) are a split of their own, absent from clips("train")
    held_out = getattr(datamodule, "val_movies", 0)
    splits = [split for split in ("train", "val", "test") if datamodule.paths[split] is not None or
              (split == "val" and held_out)]  # fmt: skip
    clips = {c.key: c for split in splits for c in datamodule.clips(split)}
    frames_total, decode_s, embed_s, written = 0, 0.0, 0.0, 0
    # a tqdm bar on a terminal; in a file (a SLURM .out) about ten plain lines with the rate and the time left
    for clip in progress_lines(clips.values(), len(clips), f"extract {name}", "clip"):
        out = root / clip.movie / f"{clip.clip}.npy"
        if out.is_file():
            continue
        start = time.perf_counter()
        frames, _ = decode_clip(datamodule.video_root / clip.movie / f"{clip.clip}.mp4", datamodule.fps,
                                datamodule.frame_size)  # fmt: skip
        decode_s += time.perf_counter() - start
        start = time.perf_counter()
        feats = []
        with torch.no_grad():
            for i in range(0, len(frames), batch_size):
                x = torch.from_numpy(frames[i : i + batch_size]).to(device).permute(0, 3, 1, 2).float() / 255
                feats.append(net((x - mean) / std).float().cpu())
        embed_s += time.perf_counter() - start
        buffer = io.BytesIO()
        np.save(buffer, torch.cat(feats).numpy().astype(np.float16))
        atomic_write_bytes(out, buffer.getvalue())
        frames_total, written = frames_total + len(frames), written + 1
    atomic_write_json(root / FEATURES_META, {"fps": datamodule.fps, "backbone": name, "dim": net.num_features,
                                             "frame_size": datamodule.frame_size})  # fmt: skip
    print(f"features: {root} ({written} clips written, {len(clips) - written} already there)")
    if frames_total:
        print(f"decoding: {frames_total / max(decode_s, 1e-9):.0f} frames/s (decord, {datamodule.fps} fps sampling); "
              f"embedding: {frames_total / max(embed_s, 1e-9):.0f} frames/s ({name} on {device})")  # fmt: skip
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments data", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("action", choices=["check", "extract"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--no_decode", action="store_true", help="check: skip decoding every image")
    parser.add_argument("--backbone", default=None, help="extract: timm model (default: the config's visual_backbone)")
    parser.add_argument("--batch_size", type=int, default=64, help="extract: frames per backbone call")
    parser.add_argument("--device", default="cpu", help="extract: torch device")
    parser.add_argument(
        "--random_weights",
        action="store_true",
        help="extract: a random backbone instead of the config's weights (an offline dry run)",
    )
    argv = canonical_flags(argv, parser._option_string_actions, prog="data")  # --no-decode, --batch-size: old
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("--") and not o.startswith("--data.")]
    if bad:
        raise ConfigError(f"data {args.action} takes only --data.* overrides, got {bad}")
    if args.action == "extract":
        return extract(args.config, overrides, args.backbone, args.batch_size, args.device, args.random_weights)
    return check(args.config, overrides, decode=not args.no_decode)
