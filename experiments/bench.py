"""``python -m experiments bench --config C.yaml [--steps N] [--data.batch_size B] [--compile] [--markdown FILE]``.

Two measurements for any config:

1. **Training step** on synthetic batches of the config's shapes (the DataModule's ``synthetic_batch``), no data
   loading: a Lightning ``Trainer`` with the config's precision (fp32 on a CPU, where bf16 is slower) runs
   ``warmup + steps`` optimizer steps; we report the median step time, samples/s, peak memory (CUDA allocator peak,
   or the process's peak RSS on a CPU), model FLOPs per training sample (``torch.utils.flop_counter`` on the
   forward pass, x3 for forward + backward) and, on a GPU whose peak is known, model FLOP utilisation (MFU).
2. **Data loading** alone: the DataModule's training loader, batches/s and samples/s, when its data exists.

``--markdown FILE`` appends the result as a table row under the "Benchmarks by config" section of FILE.
"""

from __future__ import annotations

import argparse
import functools
import resource
import statistics
import tempfile
import time
import warnings
from pathlib import Path

from experiments.errors import ConfigError, DataError, OneLineArgumentParser, SuiteError, find_suite_error
from experiments.flags import canonical_flags

# dense bf16 tensor-core peaks (FLOP/s) of the cards this suite meets
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def build_model_and_data(config: str, overrides: list[str]) -> tuple:
    """Instantiate the config's ``model`` and ``data`` (no trainer), with ``--model.*`` / ``--data.*`` overrides."""
    from experiments.sections import build_sections

    built = build_sections(config, ("model", "data"), overrides)
    return built["model"], built["data"], built["trainer"]


@functools.cache
def _lightning_classes() -> dict[str, type]:
    """RepeatedBatch, SyntheticData and StepTimer, defined on first use: they subclass torch / Lightning classes, and
    ``bench --help`` must not import those (see :func:`__getattr__`)."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, Dataset

    class RepeatedBatch(Dataset):
        """The same pre-made batch ``length`` times (loaded with ``batch_size=None``)."""

        def __init__(self, batch: dict, length: int) -> None:
            self.batch, self.length = batch, length

        def __len__(self) -> int:
            return self.length

        def __getitem__(self, index: int) -> dict:
            # a copy of the container: a step that pops or adds keys must not change the next step's batch
            return dict(self.batch) if isinstance(self.batch, dict) else self.batch

    class SyntheticData(L.LightningDataModule):
        """Serves one synthetic batch over and over (``batch_size`` is read by the lr scaling)."""

        def __init__(self, batch: dict, length: int) -> None:
            super().__init__()
            self.batch, self.length = batch, length
            self.batch_size = batch_size_of(batch)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(RepeatedBatch(self.batch, self.length), batch_size=None)

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def _sync(self, pl_module) -> None:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._sync(pl_module)
            self.starts.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module) -> None:
            self._sync(pl_module)
            self.starts.append(time.perf_counter())

    classes = {"RepeatedBatch": RepeatedBatch, "SyntheticData": SyntheticData, "StepTimer": StepTimer}
    for cls in classes.values():
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
    globals().update(classes)
    return classes


def __getattr__(name: str):
    """``from experiments.bench import StepTimer`` (and the other two) works as if they were defined at module level."""
    if name in ("RepeatedBatch", "SyntheticData", "StepTimer"):
        return _lightning_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def batch_size_of(batch) -> int:
    """Samples in a batch: a dict's ``image`` (or ``target``) tensor, else its first tensor's first dimension; the
    image list of a detection batch."""
    import torch

    if isinstance(batch, dict):
        for key in ("image", "target"):
            if key in batch:
                return len(batch[key])
        return next(len(v) for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
    return len(batch[0])


def first_sample(batch):
    """The batch cut to its first sample, in the same structure."""
    if isinstance(batch, dict):
        return {k: v[:1] for k, v in batch.items()}
    return type(batch)(part[:1] for part in batch)


def forward_flops_per_sample(model, batch) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    one = first_sample(batch)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()
        if hasattr(model, "flop_forward"):  # the task's own training forward (e.g. masking, teacher, decoder)
            model.flop_forward(one)
        else:
            model(one["image"])
        model.train()
    return float(counter.get_total_flops())


def device_peak_flops() -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    return name, peak


def bench_training(model, batch: dict, steps: int, warmup: int, precision: str) -> dict:
    import lightning as L
    import torch

    classes = _lightning_classes()
    timer = classes["StepTimer"]()
    trainer = L.Trainer(
        accelerator="auto", devices=1, precision=precision, max_steps=warmup + steps, max_epochs=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
        num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with warnings.catch_warnings():  # the bench times training steps only: no validation loader, on purpose
        warnings.filterwarnings("ignore", message=r"You defined a `validation_step` but have no `val_dataloader`")
        trainer.fit(model, datamodule=classes["SyntheticData"](batch, warmup + steps))
    deltas = [b - a for a, b in zip(timer.starts, timer.starts[1:], strict=False)][warmup:]
    step = statistics.median(deltas)
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**30
        memory = f"{peak:.2f} GiB (CUDA peak allocated)"
    else:
        memory = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (peak RSS)"
    return {"step_s": step, "samples_per_s": batch_size_of(batch) / step, "memory": memory}


def bench_loader(datamodule, batches: int) -> dict | None:
    try:
        datamodule.prepare_data()
        datamodule.setup("fit")
    except SuiteError as err:
        return {"skipped": str(err)}
    loader = iter(datamodule.train_dataloader())
    next(loader)  # workers start
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        try:
            seen += batch_size_of(next(loader))
        except StopIteration:
            break
    elapsed = time.perf_counter() - start
    return {"samples_per_s": seen / elapsed, "batches": batches}


def run(config: str, steps: int, warmup: int, batch_size: int | None, compile_model: bool, precision: str | None,
        loader_batches: int, overrides: list[str]) -> dict:  # fmt: skip
    if compile_model:
        overrides = [*overrides, "--model.init_args.compile", "true"]
    if batch_size:
        overrides = [*overrides, "--data.init_args.batch_size", str(batch_size)]
    # the bench runs by step, not epoch: no warm-up, and a schedule without epoch milestones
    overrides = [*overrides, "--model.init_args.optim.warmup_steps", "0", "--model.init_args.optim.schedule", "cosine"]
    missing_data = None
    try:
        model, datamodule, trainer_cfg = build_model_and_data(config, overrides)
    except Exception as err:
        cause = find_suite_error(err)
        if not isinstance(cause, DataError):
            raise cause or err from None
        # a real-data config on a machine without its data: benchmark the model on the config's shapes anyway
        missing_data = str(cause)
        scratch = ["--data.init_args.dataset", "toy", "--data.init_args.root", tempfile.mkdtemp(prefix="bench-")]
        model, datamodule, trainer_cfg = build_model_and_data(config, [*overrides, *scratch])
    if not hasattr(datamodule, "synthetic_batch"):
        raise ConfigError(f"{type(datamodule).__name__} has no synthetic_batch(); bench needs the batch shapes")
    batch = datamodule.synthetic_batch(datamodule.batch_size)
    device, peak = device_peak_flops()
    if precision is None:
        precision = trainer_cfg.get("precision", "32-true") if device != "cpu" else "32-true"
    fwd = forward_flops_per_sample(model, batch)
    result = {"config": config, "device": device, "precision": precision, "batch": datamodule.batch_size,
              "compile": compile_model, "fwd_gflops_per_sample": fwd / 1e9}  # fmt: skip
    result.update(bench_training(model, batch, steps, warmup, precision))
    train_flops = 3 * fwd * result["samples_per_s"]
    result["achieved_tflops"] = train_flops / 1e12
    result["mfu"] = train_flops / peak if peak else None
    if missing_data:
        result["loader"] = {"skipped": missing_data}
    else:
        result["loader"] = bench_loader(datamodule, loader_batches) if loader_batches else None
    return result


def markdown_row(r: dict) -> str:
    loader = r.get("loader") or {}
    loader_text = f"{loader['samples_per_s']:.0f}/s" if "samples_per_s" in loader else "no data"
    mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else "n/a (CPU)" if r["device"] == "cpu" else "n/a"
    return (f"| {time.strftime('%Y-%m-%d')} | {r['device']} | {Path(r['config']).name} | {r['precision']} | "
            f"{r['batch']} | {'yes' if r['compile'] else 'no'} | {1000 * r['step_s']:.1f} ms | "
            f"{r['samples_per_s']:.1f} | {r['fwd_gflops_per_sample']:.2f} | {r['memory']} | {mfu} "
            f"| {loader_text} |")  # fmt: skip


SECTION = "## Benchmarks by config (`python -m experiments bench`)"
HEADER = ("| date | device | config | precision | batch | compile | step (median) | samples/s | fwd GFLOPs/sample "
          "| peak memory | MFU | loader alone |\n|---|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip


def append_markdown(path: str, row: str) -> None:
    file = Path(path)
    text = file.read_text() if file.exists() else "# Benchmarks\n"
    if SECTION not in text:
        text = text.rstrip() + f"\n\n{SECTION}\n\n{HEADER}\n"
    text = text.rstrip() + "\n" + row + "\n" if text.rstrip().endswith("|") else text.rstrip() + "\n" + row + "\n"
    file.write_text(text)


def main(argv: list[str]) -> int:
    parser = OneLineArgumentParser(prog="python -m experiments bench", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--config", required=True, action="append", help="repeat for several configs")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--data.batch_size", dest="batch_size", type=int, default=None, help="default: the config's")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--precision", default=None, help="default: the config's on a GPU, 32-true on a CPU")
    parser.add_argument("--loader_batches", type=int, default=20, help="0 skips the data-loading measurement")
    parser.add_argument("--markdown", default=None, help="append the results to this Markdown file")
    # --batch-size / --batch_size: the spellings before flags were spelled one way (experiments.flags)
    aliases = {"--batch-size": "--data.batch_size", "--batch_size": "--data.batch_size"}
    args, overrides = parser.parse_known_args(canonical_flags(argv, parser._option_string_actions, aliases, "bench"))
    stray = [t for t in overrides if t.startswith("--") and not t.startswith(("--model.", "--data."))]
    if stray:  # only the config's model / data keys pass through; anything else is a misspelled bench option
        parser.error(f"unrecognized arguments: {stray[0]}")
    for config in args.config:
        r = run(config, args.steps, args.warmup, args.batch_size, args.compile, args.precision, args.loader_batches,
                overrides)  # fmt: skip
        mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a"
        print(f"{config}: {r['device']}, {r['precision']}, batch {r['batch']}, compile={r['compile']}")
        print(f"  train step {1000 * r['step_s']:.1f} ms (median of {args.steps}), {r['samples_per_s']:.1f} samples/s")
        print(
            f"  forward {r['fwd_gflops_per_sample']:.2f} GFLOPs/sample, {r['achieved_tflops']:.2f} TFLOP/s, MFU {mfu}"
        )
        print(f"  peak memory {r['memory']}; loader alone: {r['loader']}")
        if args.markdown:
            append_markdown(args.markdown, markdown_row(r))
    return 0
