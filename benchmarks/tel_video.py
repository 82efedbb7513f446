"""TEL's video pipeline: decoding throughput (decord) and feature-extraction throughput (frozen timm backbone).

    python benchmarks/tel_video.py [--clips 8] [--seconds 20] [--source-fps 24] [--size 224] [--fps 2]
        [--backbone resnet50] [--workers 0 2] [--device cpu] [--markdown docs/benchmarks.md]

1. Writes ``--clips`` synthetic clips of ``--seconds`` s at ``--source-fps`` and ``--size`` px (H.264, PyAV; moving
   shapes on noise, so the encoder cannot skip frames) to a temporary folder, as MovieGraphs-style mp4 files.
2. Decoding: the data pipeline's decoder (:func:`datamodules.video_subtitles.decode_clip`) samples every clip at
   ``--fps`` (TEL's setting) and at the full source rate; frames per second of decoded output, single process.
3. Loader: a DataLoader over the clips in ``visual: frames`` mode with each ``--workers`` count; clips/s and frames/s.
4. Extraction: the frozen ``--backbone`` on the decoded frames (batches of 32): frames/s, as ``python -m experiments
   data extract`` runs it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules.tel_annotations import Clip  # noqa: E402
from datamodules.toy.emotion_clips import write_mp4  # noqa: E402
from datamodules.video_subtitles import TelClips, collate_clips, decode_clip  # noqa: E402
from experiments.io import append_table_rows  # noqa: E402


def synthetic_clip(seconds: float, fps: float, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    count = int(seconds * fps)
    frames = rng.integers(0, 60, size=(count, size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    for f in range(count):
        cx, cy = (size / 2 + size / 3 * np.cos(f / 10 + seed)), (size / 2 + size / 3 * np.sin(f / 13 + seed))
        frames[f][(xx - cx) ** 2 + (yy - cy) ** 2 < (size / 8) ** 2] = (200, 80 + seed * 10 % 150, 40)
    return frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--source-fps", type=float, default=24.0)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clips = []
        for i in range(args.clips):
            path = root / "videos" / "tt0000001" / f"clip{i:03d}.mp4"
            write_mp4(path, synthetic_clip(args.seconds, args.source_fps, args.size, i), args.source_fps)
            starts = np.arange(0, args.seconds - 2, 2.0)
            clips.append(Clip("tt0000001", f"clip{i:03d}", starts, starts + 1.5, ["line"] * len(starts),
                              np.zeros(18, dtype=bool), None, "synthetic"))  # fmt: skip
        paths = [root / "videos" / c.movie / f"{c.clip}.mp4" for c in clips]
        results = {}
        for label, fps in ((f"{args.fps:g} fps sampling", args.fps), ("every frame", args.source_fps)):
            start, frames = time.perf_counter(), 0
            for path in paths:
                frames += len(decode_clip(path, fps, None)[0])
            results[label] = frames / (time.perf_counter() - start)
        loader_rows = {}
        for workers in args.workers:
            dataset = TelClips(clips, "frames", root / "videos", None, "json", args.fps, None, "raise", None)
            loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=collate_clips)
            start, frames = time.perf_counter(), 0
            for batch in loader:
                frames += int(batch["frame_mask"].sum())
            seconds = time.perf_counter() - start
            loader_rows[workers] = (len(clips) / seconds, frames / seconds)
        import timm

        net = timm.create_model(args.backbone, num_classes=0).eval().requires_grad_(False).to(args.device)
        decoded = decode_clip(paths[0], args.fps, None)[0]
        x = torch.from_numpy(np.concatenate([decoded] * max(1, 64 // len(decoded) + 1))[:64]).permute(0, 3, 1, 2)
        x = x.float().div(255).to(args.device)
        times = []
        with torch.no_grad():
            net(x[:8])
            for _ in range(3):
                start = time.perf_counter()
                for i in range(0, len(x), 32):
                    net(x[i : i + 32])
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
        extract_fps = len(x) / statistics.median(times)
    source = f"{args.clips} clips x {args.seconds:g} s, {args.source_fps:g} fps source, {args.size} px H.264"
    print(f"setting: {source}")
    for label, value in results.items():
        print(f"decord decode ({label}): {value:.0f} frames/s")
    for workers, (clips_s, frames_s) in loader_rows.items():
        print(f"loader, {workers} workers: {clips_s:.2f} clips/s, {frames_s:.0f} frames/s at {args.fps:g} fps")
    print(f"extraction ({args.backbone}, {args.size} px, {args.device}): {extract_fps:.1f} frames/s")
    if args.markdown:
        loader_text = "; ".join(f"{w} workers {c:.2f} clips/s ({f:.0f} frames/s)" for w, (c, f) in loader_rows.items())
        row = (f"| {date.today()} | {args.device} | {source} | "
               + " / ".join(f"{v:.0f}" for v in results.values())
               + f" | {loader_text} | {args.backbone}: {extract_fps:.1f} frames/s |")  # fmt: skip
        append_table_rows(args.markdown, HEADER, [row])
    print(json.dumps({"decode": results, "extract_fps": extract_fps}))
    return 0


HEADER = """## TEL video pipeline (`make bench-tel`)

`benchmarks/tel_video.py`: synthetic H.264 clips written with PyAV, decoded by the data pipeline's decord reader
(frames of output per second, one process, sampling at TEL's frame rate and at the full source rate), the DataLoader
in `visual: frames` mode, and the frozen backbone of `python -m experiments data extract` (batches of 32).

| date | device | clips | decode frames/s (sampled / every frame) | loader | extraction |
|---|---|---|---|---|---|
"""


if __name__ == "__main__":
    raise SystemExit(main())
