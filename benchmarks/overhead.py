"""Suite overhead: time per training step of Visformer-S through the suite vs a bare PyTorch loop, same batch.

    python benchmarks/overhead.py [--batch 8] [--steps 6] [--warmup 2] [--repeats 2]

The suite path is the real one: ``ImageClassifier`` (timm optimizer factory with weight-decay groups, per-step
warm-up/cosine scheduler, torchmetrics, logging) driven by a Lightning ``Trainer`` with the suite's loggers and
metrics callback. The bare path is ``model(x) -> cross_entropy -> backward -> AdamW.step`` in a for loop, with the
same optimizer (timm's AdamW over the same parameter groups) but no scheduler, logging or metrics. Both see
the same in-memory batch, so the difference is what the suite adds per step. Steps are timed from the start of
one step to the start of the next (data fetch, logging and scheduler included); medians over the timed steps.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import lightning as L
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from experiments.bench import StepTimer, SyntheticData
from experiments.callbacks import MetricsJSON
from lightning_modules.backbones import registered_model
from lightning_modules.classification import ImageClassifier
from lightning_modules.optim import OptimConfig, build_optimizer


def suite_step_times(batch: dict, steps: int, warmup: int) -> list[float]:
    torch.manual_seed(0)
    model = ImageClassifier(
        registered_model("visformer_small", num_classes=1000, drop_path_rate=0.0, drop_rate=0.0),
        mixup_alpha=0.0, cutmix_alpha=0.0, optim=OptimConfig(base_batch_size=512, warmup_steps=0),
    )  # fmt: skip
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=warmup + steps,
            logger=[TensorBoardLogger(run_dir, name="", version="v"), CSVLogger(run_dir, name="", version="v")],
            callbacks=[timer, MetricsJSON(run_dir)],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
        )
        trainer.fit(model, datamodule=SyntheticData(batch, warmup + steps))
    deltas = [b - a for a, b in zip(timer.starts, timer.starts[1:], strict=False)]
    return deltas[warmup:]


def bare_step_times(batch: dict, steps: int, warmup: int) -> list[float]:
    torch.manual_seed(0)
    model = timm.create_model("visformer_small", num_classes=1000).train()
    # the same optimizer the suite builds, so the difference is the suite's per-step work, not the optimizer
    optimizer = build_optimizer(
        model, OptimConfig(base_batch_size=512, warmup_steps=0), global_batch=len(batch["target"])
    )
    images, targets = batch["image"], batch["target"]
    times = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        loss = F.cross_entropy(model(images), targets, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times[warmup:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternating bare/suite rounds")
    args = parser.parse_args()
    torch.manual_seed(0)
    batch = {"image": torch.randn(args.batch, 3, 224, 224), "target": torch.randint(0, 1000, (args.batch,))}
    bare, suite = [], []
    for _ in range(args.repeats):
        bare += bare_step_times(batch, args.steps, args.warmup)
        suite += suite_step_times(batch, args.steps, args.warmup)
    b, s = statistics.median(bare), statistics.median(suite)
    print(f"device: cpu ({torch.get_num_threads()} threads), torch {torch.__version__}, batch {args.batch} x 224^2")
    print(f"bare PyTorch loop : {b * 1000:8.1f} ms/step (median of {len(bare)})")
    print(f"suite (Lightning) : {s * 1000:8.1f} ms/step (median of {len(suite)})")
    print(f"overhead          : {(s / b - 1) * 100:+.1f} %  (ratio {s / b:.3f})")


if __name__ == "__main__":
    main()
