"""STT's two speeds: frames/s of the tracklet loader and the training step time for T = 8 clips.

    python benchmarks/stt_speed.py [--device cpu] [--[no-]bf16] [--height 256 --width 128] [--batch-size 32]
        [--workers 2] [--backbone resnet50] [--steps 3] [--markdown docs/benchmarks.md]

* **Loader**: synthetic pedestrians (``datamodules/toy/pedestrians.py``, MARS layout) written once at the frame size
  under ``--data`` (``data/bench_pedestrians_<H>x<W>``); the training DataLoader of
  :class:`datamodules.tracklets.TrackletDataModule` (P x K batches of T-frame clips: JPEG decoding, restricted random
  sampling, clip-consistent augmentation) is read for ``--loader-batches`` batches after one warm-up batch;
  frames/s = clips x T / seconds.
* **Training step**: :class:`lightning_modules.reid.module.STTModule`'s model and loss on random clips
  ``[batch, T, 3, H, W]``: forward, backward and an AdamW step, median of ``--steps`` after a warm-up step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules.tracklets import TrackletDataModule  # noqa: E402
from experiments.io import append_table_rows  # noqa: E402
from lightning_modules.reid.losses import stt_loss  # noqa: E402
from lightning_modules.reid.stt import SpatioTemporalTransformer  # noqa: E402


def loader_speed(args) -> float:
    """Training-loader frames/s (module docstring)."""
    root = args.data or f"data/bench_pedestrians_{args.height}x{args.width}"
    dm = TrackletDataModule(root=root, dataset="toy", height=args.height, width=args.width, seq_len=args.seq_len,
                            batch_size=args.batch_size, num_workers=args.workers, pin_memory=False,
                            persistent_workers=False, toy_train_ids=64, toy_test_ids=8,
                            toy_tracklets_per_id=4)  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    batches = iter(dm.train_dataloader())
    next(batches)
    start, clips = time.perf_counter(), 0
    for _ in range(args.loader_batches):
        try:
            clips += len(next(batches)["pid"])
        except StopIteration:
            batches = iter(dm.train_dataloader())
            clips += len(next(batches)["pid"])
    return clips * args.seq_len / (time.perf_counter() - start)


def step_time(args, device: torch.device) -> float:
    """Median seconds of one STT training step (module docstring)."""
    torch.manual_seed(0)
    kwargs = {}
    if args.narrow:
        kwargs = dict(backbone_kwargs={"channels": (32, 64, 128, 256), "stem_width": 32}, embed_dim=128, heads=4,
                      spatial_depth=1, temporal_depth=1, global_depth=1)  # fmt: skip
    model = SpatioTemporalTransformer(625, backbone=args.backbone, img_size=(args.height, args.width),
                                      seq_len=args.seq_len, **kwargs).to(device)  # fmt: skip
    if device.type == "cuda":
        model.cnn = model.cnn.to(memory_format=torch.channels_last)
        model.channels_last = True
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    clips = torch.randn(args.batch_size, args.seq_len, 3, args.height, args.width, device=device)
    labels = torch.arange(args.batch_size // 4, device=device).repeat_interleave(4)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = stt_loss(model(clips), labels)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on GPUs")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=None, help="clips per step, P x K (32 on GPUs, 8 on CPUs)")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--narrow", action="store_true", help="the toy's narrow ResNet and 128-wide transformers")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--loader-batches", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--data", default=None, help="where the synthetic tracklets are written (once)")
    parser.add_argument("--skip-loader", action="store_true")
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.batch_size is None:
        args.batch_size = 32 if device.type == "cuda" else 8
    if args.bf16 is None:
        args.bf16 = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    size = f"{args.height}x{args.width}, T={args.seq_len}, batch {args.batch_size}"
    rows = []
    if not args.skip_loader:
        fps = loader_speed(args)
        rows.append(f"| {date.today()} | {name} | {size}, {args.workers} workers | tracklet loader (JPEG decode, "
                    f"sampling, clip augmentation) | {fps:.0f} frames/s |")  # fmt: skip
    seconds = step_time(args, device)
    net = f"{args.backbone}{' (narrow)' if args.narrow else ''}, {'bf16' if args.bf16 else 'fp32'}"
    rows.append(f"| {date.today()} | {name} | {size} | STT training step, {net} | {seconds:.3f} s "
                f"({args.batch_size * args.seq_len / seconds:.0f} frames/s) |")  # fmt: skip
    print("\n".join(rows))
    if args.markdown:
        header = ("## STT: tracklet loader and training step (`make bench-stt`)\n\nbenchmarks/stt_speed.py; the "
                  "loader reads synthetic pedestrians in the MARS layout; the step uses random clips.\n\n"
                  "| date | device | setting | what | speed |\n|---|---|---|---|---|")  # fmt: skip
        append_table_rows(Path(args.markdown), header, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
