"""``python -m experiments gpu_check [--dry_run] [--markdown FILE] [--budget_s S]`` (``make gpu-check``).

One script for the day a GPU is lent: in one process, on one GPU, in under 8 minutes, it measures every task's
paper config (:data:`GPU_PLAN`) at bf16-mixed with the config's per-GPU batch (halved until it fits, and then said
so): median step time, samples/s, peak CUDA memory, training FLOPs per step and model FLOP utilisation (MFU) against
the card's dense bf16 peak; ``torch.compile`` off and on for Visformer-S and iTPN-B (the goal is MFU >= 40 % for
both); and the DataLoader alone, on the toy data at the config's worker count. The rows go into FILE (default
``docs/benchmarks.md``) under "GPU check", with the card's name and the date.

How each row is measured: the config is built with the smoke run's stand-ins (:mod:`experiments.smoke`: the
DataModule's synthetic data at the config's shapes, random weights in place of external ones); one batch of its
training loader is repeated (no loading in the timed steps); one training step runs under
``torch.utils.flop_counter.FlopCounterMode`` (forward, backward, every matmul / convolution / attention the module's
own ``training_step`` does, teachers and losses included), then ``warmup + steps`` timed steps in a Lightning
``Trainer``. MFU = FLOPs per step / median step time / peak.

``--dry_run`` (any machine, a fast test runs it): the toy configs of :data:`DRY_PLAN`, CPU, fp32, 2 steps, batch 2
(batch 1 would fail the BatchNorm1d of the BYOL / E-DIY heads), no time budget, and ``torch.compile`` with the
``eager`` backend (TorchDynamo traces the module as on the GPU, but no kernels are generated: Inductor's C++ build
takes minutes on a CPU), so the script cannot rot while no GPU is at hand.
``--only NAME`` keeps the rows whose task name contains NAME.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import tempfile
import time
from pathlib import Path

from experiments.errors import OneLineArgumentParser
from experiments.flags import canonical_flags

# (task, paper config, also with torch.compile)
GPU_PLAN = [
    ("Visformer-S", "configs/visformer/visformer_small_in1k.yaml", True),
    ("iTPN-B CLIP pre-training", "configs/itpn/pretrain_base_clip_800ep.yaml", True),
    ("iTPN-B pixel pre-training", "configs/itpn/pretrain_base_pixel_1600ep.yaml", False),
    ("iTPN-B fine-tuning", "configs/itpn/finetune_base_clip.yaml", False),
    ("MVP ViT-B pre-training", "configs/mvp/pretrain_vit_base_clip_b_300ep.yaml", False),
    ("E-DIY ResNet-50", "configs/ediy/ediy_r50_in1k_300ep.yaml", False),
    ("compression ResNet-50", "configs/compression/resnet50_in1k.yaml", False),
    ("LOUPE fine-tuning", "configs/loupe/finetune_coco.yaml", False),
    ("TEL video + subtitles", "configs/tel/video_subtitles_official.yaml", False),
    ("DE-Net CUB", "configs/denet/cub.yaml", False),
    ("COSOC 1-shot", "configs/cosoc/mini_cosoc_1shot.yaml", False),
    ("STT MARS", "configs/stt/mars.yaml", False),
    ("iTPN-B Mask R-CNN", "configs/downstream/itpn_base_clip_mask_rcnn_1x.yaml", False),
    ("iTPN-B UperNet", "configs/downstream/itpn_base_clip_ade20k_upernet.yaml", False),
]
# the same tasks at toy scale: what --dry_run runs
DRY_PLAN = [
    ("Visformer-S", "configs/visformer/toy.yaml", True),
    ("iTPN-B pixel pre-training", "configs/itpn/toy_pixel.yaml", True),
    ("E-DIY ResNet-50", "configs/ediy/toy_ediy.yaml", False),
    ("compression ResNet-50", "configs/compression/toy.yaml", False),
    ("LOUPE fine-tuning", "configs/loupe/toy_loupe.yaml", False),
    ("TEL video + subtitles", "configs/tel/toy.yaml", False),
    ("COSOC 1-shot", "configs/cosoc/toy_protonet.yaml", False),
    ("STT MARS", "configs/stt/toy.yaml", False),
    ("iTPN-B Mask R-CNN", "configs/downstream/toy_mask_rcnn.yaml", False),
    ("iTPN-B UperNet", "configs/downstream/toy_upernet.yaml", False),
]
MFU_GOAL = 0.40
SECTION = "## GPU check (`make gpu-check`)"
HEADER = (
    "| date | device | task | config | precision | batch | compile | step (median) | samples/s | GFLOPs/step | MFU "
    "| peak memory | loader alone (workers) |\n" + "|---" * 13 + "|"
)


def train_flops_per_step(model, batch, precision: str) -> float:
    """FLOPs of one training step (forward and backward of everything ``training_step`` runs), counted by
    ``FlopCounterMode`` around a one-step fit on the same batch."""
    import lightning as L
    from torch.utils.flop_counter import FlopCounterMode

    from experiments.bench import _lightning_classes

    trainer = L.Trainer(accelerator="auto", devices=1, precision=precision, max_steps=1, max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0)  # fmt: skip
    with FlopCounterMode(display=False) as counter:
        trainer.fit(model, datamodule=_lightning_classes()["SyntheticData"](batch, 1))
    return float(counter.get_total_flops())


def build(config: str, scratch: str, batch_size: int, compile_model: bool):
    """The config's model and DataModule on synthetic data (smoke's stand-ins), batch ``batch_size``; a toy config
    (the dry run) reads its own toy data folder, written once."""
    from experiments.sections import build_sections
    from experiments.smoke import standin_args

    overrides = standin_args(config, scratch, batch_size=batch_size, num_workers=None, keep_toy_root=True)
    if compile_model:
        overrides += ["--model.init_args.compile", "true"]
    built = build_sections(config, ("model", "data"), overrides)
    return built["model"], built["data"]


def config_batch_size(config: str) -> int:
    from experiments.configs import load_config

    return int(((load_config(config).get("data") or {}).get("init_args") or {}).get("batch_size", 1))


def measure(task: str, config: str, *, compile_model: bool, batch_size: int, steps: int, warmup: int,
            precision: str, loader_batches: int, flops_cache: dict[int, float] | None = None) -> dict:  # fmt: skip
    """One row: ``batch_size`` halved on each CUDA out-of-memory error until it fits. ``flops_cache`` maps a batch
    size to its FLOPs per step (counted once, on the eager model; the compiled row of the same config reuses it, and
    a halved batch is counted again)."""
    import torch

    from experiments.bench import bench_loader, bench_training, device_peak_flops

    wanted = batch_size
    flops_cache = {} if flops_cache is None else flops_cache
    while True:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
            try:
                model, data = build(config, scratch, batch_size, compile_model)
                data.prepare_data()
                data.setup("fit")
                batch = next(iter(data.train_dataloader()))
                if batch_size not in flops_cache:
                    flops_cache[batch_size] = train_flops_per_step(model, batch, precision)
                flops = flops_cache[batch_size]
                timing = bench_training(model, batch, steps, warmup, precision)
                loader = bench_loader(data, loader_batches) if loader_batches else None
                workers = getattr(data, "num_workers", 0)
                break
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                batch_size //= 2
            finally:
                model = data = batch = None
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
    device, peak = device_peak_flops()
    per_s = flops / timing["step_s"]
    return {"task": task, "config": config, "device": device, "precision": precision, "batch": batch_size,
            "wanted_batch": wanted, "compile": compile_model, "flops": flops, "tflops_per_s": per_s / 1e12,
            "mfu": per_s / peak if peak else None, "loader": loader, "workers": workers, **timing}  # fmt: skip


def markdown_row(r: dict) -> str:
    batch = (
        f"{r['batch']}"
        if r["batch"] == r["wanted_batch"]
        else f"{r['batch']} (largest that fit; config {r['wanted_batch']})"
    )
    mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else "n/a (CPU)" if r["device"] == "cpu" else "n/a"
    loader = r.get("loader") or {}
    loader_text = f"{loader['samples_per_s']:.0f}/s ({r['workers']})" if "samples_per_s" in loader else "not measured"
    cells = [time.strftime("%Y-%m-%d"), r["device"], r["task"], Path(r["config"]).name, r["precision"], batch,
             "yes" if r["compile"] else "no", f"{1000 * r['step_s']:.1f} ms", f"{r['samples_per_s']:.1f}",
             f"{r['flops'] / 1e9:.1f}", mfu, r["memory"], loader_text]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def append_rows(path: str, rows: list[str], note: str) -> None:
    """Append ``rows`` (after a one-line ``note``) under the GPU-check section of ``path``, atomically."""
    from suite_base.io import atomic_write_bytes

    file = Path(path)
    text = file.read_text() if file.exists() else "# Benchmarks\n"
    block = f"\n{note}\n\n{HEADER}\n" + "\n".join(rows) + "\n"
    start = text.find(SECTION)
    if start < 0:
        text = text.rstrip() + f"\n\n{SECTION}\n" + block
    else:
        end = text.find("\n## ", start + len(SECTION))
        end = len(text) if end < 0 else end + 1
        text = text[:end].rstrip() + "\n" + block + ("\n" + text[end:] if end < len(text) else "")
    atomic_write_bytes(file, text.encode())


def main(argv: list[str]) -> int:
    parser = OneLineArgumentParser(prog="python -m experiments gpu_check", description=__doc__, allow_abbrev=False,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--dry_run", action="store_true", help="CPU, toy configs, 2 steps, batch 2")
    parser.add_argument("--markdown", default="docs/benchmarks.md", help="file the rows are appended to ('' : none)")
    parser.add_argument("--budget_s", type=float, default=450.0, help="no new row starts after this (GPU) run time")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10; dry run 2)")
    parser.add_argument("--only", default=None, help="only the tasks whose name contains this")
    args = parser.parse_args(canonical_flags(argv, parser._option_string_actions, {}, "gpu_check"))

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU, or pass --dry_run to check the script on this machine")
    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    if args.only:
        plan = [row for row in plan if args.only.lower() in row[0].lower()]
        if not plan:
            parser.error(f"--only {args.only}: no task of the plan matches")
    steps = args.steps or (2 if args.dry_run else 10)
    warmup = 1 if args.dry_run else 3
    precision = "32-true" if args.dry_run else "bf16-mixed"
    budget = float("inf") if args.dry_run else args.budget_s
    start, rows, skipped, failed = time.perf_counter(), [], [], []
    with eager_compile() if args.dry_run else contextlib.nullcontext():
        run_plan(plan, args, budget, start, rows, skipped, failed, steps, warmup, precision)
    total = time.perf_counter() - start
    device = "CPU dry run" if args.dry_run else torch.cuda.get_device_name()
    note = (f"{time.strftime('%Y-%m-%d')}, {device}: {len(rows)} rows in {total:.0f} s"
            + (f"; not measured (time budget): {', '.join(skipped)}" if skipped else "")
            + (f"; failed: {'; '.join(failed)}" if failed else "") + ".")  # fmt: skip
    print(note)
    if args.markdown and rows:
        append_rows(args.markdown, rows, note)
    return 1 if failed else 0


@contextlib.contextmanager
def eager_compile():
    """``torch.compile`` with the ``eager`` backend while the block runs (the dry run's compiled rows)."""
    import torch

    original = torch.compile
    torch.compile = functools.partial(original, backend="eager")
    try:
        yield
    finally:
        torch.compile = original


def run_plan(plan, args, budget, start, rows, skipped, failed, steps, warmup, precision) -> None:
    """Measure each row of ``plan`` into ``rows`` (``skipped`` past the budget, ``failed`` with the error)."""
    for task, config, with_compile in plan:
        flops_cache: dict[int, float] = {}
        for compile_model in (False, True) if with_compile else (False,):
            if time.perf_counter() - start > budget:
                skipped.append(f"{task}{' (compiled)' if compile_model else ''}")
                continue
            batch = 2 if args.dry_run else config_batch_size(config)
            try:
                r = measure(task, config, compile_model=compile_model, batch_size=batch, steps=steps, warmup=warmup,
                            precision=precision, loader_batches=2 if args.dry_run else 20,
                            flops_cache=flops_cache)  # fmt: skip
            except Exception as err:  # noqa: BLE001 - one broken row is reported, the others still run
                failed.append(f"{task} ({config}{', compiled' if compile_model else ''}): {type(err).__name__}: {err}")
                print(f"FAIL {failed[-1]}", flush=True)
                continue
            rows.append(markdown_row(r))
            goal = ""
            if r["mfu"] is not None and task in ("Visformer-S", "iTPN-B CLIP pre-training"):
                goal = f" (goal {100 * MFU_GOAL:.0f} %: {'met' if r['mfu'] >= MFU_GOAL else 'NOT met'})"
            print(f"{rows[-1]}{goal}", flush=True)
