"""COSOC's two offline costs: COS time per 1,000 training images and SOC evaluation time per episode.

    python benchmarks/cosoc_times.py [--device cpu] [--bf16] [--cos-images 16] [--episodes 2]
        [--channels 64 160 320 640] [--img-size 84] [--markdown docs/benchmarks.md]

* **COS**: the backbone's pooled features of 31 views (the image + 30 crops) for ``--cos-images`` images, batched on
  the device, timed and scaled to 1,000 images; plus scikit-learn K-means (K = 5, 10 initialisations) and the
  selection (:func:`lightning_modules.fewshot.cos.seek_objects`) on 1,000 images' worth of features (31,000 x 640,
  one class of 1,000 images; miniImageNet's 600-image classes cost proportionally less). Crop decoding and resizing
  are not included (data loaders overlap them with the device).
* **SOC**: one 5-way episode with 15 queries per class, 7 views per image: the backbone on all views, then
  :func:`lightning_modules.fewshot.soc.soc_logits` (1-shot and 5-shot; the 7^5 combination search for 5-shot).

Random weights and inputs: the cost does not depend on them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning_modules.backbones  # noqa: E402,F401 (registers resnet12)
from experiments.io import append_table_rows  # noqa: E402
from lightning_modules.fewshot.cos import seek_objects  # noqa: E402
from lightning_modules.fewshot.heads import pooled_features  # noqa: E402
from lightning_modules.fewshot.soc import soc_logits  # noqa: E402


def timed(fn, device: torch.device, repeats: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--cos-images", type=int, default=16, help="images whose 31 views are embedded and timed")
    parser.add_argument("--episodes", type=int, default=2, help="timed episodes per shot setting")
    parser.add_argument("--channels", type=int, nargs=4, default=[64, 160, 320, 640])
    parser.add_argument("--img-size", type=int, default=84)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model("resnet12", channels=tuple(args.channels)).to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    s = args.img_size

    @torch.no_grad()
    def embed(images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            return pooled_features(model.forward_features(images)).float()

    views = torch.randn(args.cos_images * 31, 3, s, s, device=device)
    cos_embed = timed(lambda: embed(views), device) * 1000 / args.cos_images
    feats = F.normalize(torch.randn(1000, 31, args.channels[-1]), dim=-1)
    labels = torch.zeros(1000, dtype=torch.long)
    cos_cluster = timed(lambda: seek_objects(feats, labels), torch.device("cpu"))
    soc = {}
    for shot in (1, 5):
        n_img = 5 * (shot + 15)
        images = torch.randn(n_img, 7, 3, s, s, device=device)
        features = F.normalize(torch.randn(n_img, 7, args.channels[-1], device=device), dim=-1)

        def episode(images=images, shot=shot):
            f = embed(images.flatten(0, 1)).view(images.shape[0], 7, -1)
            return soc_logits(f[: 5 * shot], f[5 * shot :], 5, shot)

        def soc_only(f=features, shot=shot):
            return soc_logits(f[: 5 * shot], f[5 * shot :], 5, shot)

        soc[shot] = (timed(episode, device, args.episodes), timed(soc_only, device, 3))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    net = f"ResNet-12 {'/'.join(map(str, args.channels))} @ {s} px, {'bf16' if args.bf16 else 'fp32'}"
    rows = [
        f"| {date.today()} | {name} | {net} | COS, per 1,000 images: 31,000 view features | {cos_embed:.1f} s |",
        f"| {date.today()} | {name} | {net} | COS, per 1,000 images: K-means (K=5, 10 inits) + selection | "
        f"{cos_cluster:.1f} s |",
    ]
    for shot, (total, head) in soc.items():
        rows.append(f"| {date.today()} | {name} | {net} | SOC, 5-way {shot}-shot episode (15 queries, 7 views): "
                    f"backbone + SOC (SOC alone {1000 * head:.1f} ms) | {total:.2f} s |")  # fmt: skip
    print("\n".join(rows))
    if args.markdown:
        header = ("## COSOC: COS and SOC costs (`make bench-cosoc`)\n\nbenchmarks/cosoc_times.py; random weights "
                  "and inputs; crop decoding not included.\n\n| date | device | backbone | what | time |\n"
                  "|---|---|---|---|---|")  # fmt: skip
        append_table_rows(Path(args.markdown), header, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
