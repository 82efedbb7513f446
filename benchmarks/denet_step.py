"""DE-Net training step time: one discriminator and one generator update (the module's losses and Adam settings).

    python benchmarks/denet_step.py [--image-size 256] [--batch-size 32] [--ngf 32] [--damsm-backbone inception_v3]
        [--damsm-input 299] [--device cuda] [--bf16] [--steps 10] [--warmup 3] [--markdown docs/benchmarks.md]

The DAMSM encoders are randomly initialised (weights do not change the cost) and frozen as in training; the captions
are random token sequences of 18 words. Reports milliseconds per step (D step + G step, including the MA-GP double
backward, the reconstruction pass and the DAMSM matching loss) and images per second.
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

from experiments.io import append_table_rows  # noqa: E402
from lightning_modules.editing.damsm import DAMSM, ImageEncoder, TextEncoder  # noqa: E402
from lightning_modules.editing.module import DENet  # noqa: E402
from lightning_modules.editing.networks import DENetDiscriminator, DENetGenerator  # noqa: E402


def build(args) -> DENet:
    text = TextEncoder("bilstm", args.vocab, args.cond_dim)
    damsm = DAMSM(text, ImageEncoder(args.damsm_backbone, args.cond_dim, args.damsm_input, train_backbone=False))
    generator = DENetGenerator(args.ngf, args.image_size, args.cond_dim)
    return DENet(generator, DENetDiscriminator(args.ngf, args.image_size), damsm, fid=False)


def batch_of(args, device) -> dict:
    B, L = args.batch_size, 18
    out = {"image": torch.rand(B, 3, args.image_size, args.image_size, device=device) * 2 - 1}
    for prefix in ("", "target_", "wrong_"):
        out[f"{prefix}tokens"] = torch.randint(1, args.vocab, (B, L), device=device)
        out[f"{prefix}lengths"] = torch.full((B,), L)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ngf", type=int, default=32)
    parser.add_argument("--cond-dim", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=5450)
    parser.add_argument("--damsm-backbone", default="inception_v3")
    parser.add_argument("--damsm-input", type=int, default=299)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU configs)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build(args).to(device).train()
    opt_g, opt_d = model.configure_optimizers()
    batch = batch_of(args, device)

    def amp():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    times = []
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.update(batch, opt_g, opt_d, lambda loss: loss.backward(), amp)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
        print(f"step {step}: {1000 * (time.perf_counter() - start):.0f} ms", file=sys.stderr)
    ms = 1000 * statistics.median(times)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    row = (f"| {date.today()} | {name} | {args.image_size} px, batch {args.batch_size}, ngf {args.ngf}, DAMSM "
           f"{args.damsm_backbone}@{args.damsm_input} | {'bf16-mixed' if args.bf16 else 'fp32'} | {ms:.0f} | "
           f"{1000 * args.batch_size / ms:.1f} |")  # fmt: skip
    print(row)
    if args.markdown:
        header = ("## DE-Net training step (`make bench-denet`)\n\nOne discriminator and one generator update "
                  "(benchmarks/denet_step.py): median over the timed steps.\n\n"
                  "| date | device | setting | precision | ms / step | images / s |\n"
                  "|---|---|---|---|---|---|")  # fmt: skip
        append_table_rows(Path(args.markdown), header, [row])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
