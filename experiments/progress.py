"""Progress that shows in a file as well as on a terminal.

Lightning's progress bar redraws one line in place, so a run whose output goes to a file (``make demo > log``, a
SLURM ``.out``) shows nothing until the end. :func:`progress_callbacks` picks what a run gets instead:

* output is not a terminal: :class:`ProgressLog`, plain lines on stdout (flushed), and Lightning's bar off;
* output is a terminal: :class:`SuiteProgressBar`, Lightning's default bar without the ``v_num`` item.

:func:`progress_lines` is the same idea for loops outside a Trainer (``data extract``).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

LINES_PER_EPOCH = 10  # default: about this many step lines per epoch ...
MAX_EVERY_N_STEPS = 50  # ... and at least one every this many steps
VAL_METRICS_SHOWN = 4  # the monitored metric first, then others, on the epoch line


def format_seconds(seconds: float) -> str:
    """``h:mm:ss``."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def batch_size_of(batch: Any) -> int:
    """Length of the first tensor found in ``batch`` (tensor, sequence or mapping, depth first); 0 when none."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        size = batch_size_of(item)
        if size:
            return size
    return 0


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _metric_text(metrics: dict, keys: Iterable[str]) -> str:
    return "  ".join(f"{key} {value:.4g}" for key in keys if (value := _scalar(metrics.get(key))) is not None)


def _loss_key(metrics: dict) -> str | None:
    """The module's logged training loss: ``train/loss`` (``train_loss``, ``loss``), else the first ``train*loss*``."""
    for key in ("train/loss", "train/loss_step", "train_loss", "train_loss_step", "loss"):
        if key in metrics:
            return key
    return next((k for k in sorted(metrics) if k.startswith("train") and "loss" in k), None)


def stage_metric_keys(metrics: dict, prefix: str, monitor: str | None, limit: int | None = None) -> list[str]:
    """Scalar metric keys starting with ``prefix``, the monitored one first, the others sorted; at most ``limit``."""
    keys = sorted(k for k in metrics if k.startswith(prefix) and _scalar(metrics[k]) is not None)
    if monitor in keys:
        keys.remove(monitor)
        keys.insert(0, monitor)
    return keys[:limit]


class ProgressLog(L.Callback):
    """Plain progress lines on ``stream`` (stdout by default, flushed), for output that is not a terminal.

    During fit, a line every ``every_n_steps`` training batches (default: about 10 lines per epoch and at least one
    every 50 batches) and one at each epoch end, after validation::

        epoch 3/10  step 120/400  loss 1.234  val/top1 0.456  val/loss 1.02  312 samples/s  eta 0:01:23

    ``step`` counts training batches (after ``limit_train_batches``; the total follows ``max_epochs`` and
    ``max_steps``); ``loss`` is the module's logged training loss; the epoch line adds the module's ``monitor``
    metric and a few other ``val/`` metrics; samples/s is the training batches' size times the number of processes
    over the wall time from batch end to batch end (loading included, validation excluded); the ETA is the batches
    left times the run's wall time per batch so far (validation included). At the end of ``validate`` and ``test``,
    one line with the metrics. Only global rank zero prints.
    """

    def __init__(self, every_n_steps: int | None = None, stream: TextIO | None = None) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.stream = stream
        self._every = every_n_steps or 1

    def _print(self, trainer: L.Trainer, text: str) -> None:
        if trainer.is_global_zero:
            print(text, file=self.stream or sys.stdout, flush=True)

    # -- sizes -----------------------------------------------------------------------------------------------
    @staticmethod
    def _batches_per_epoch(trainer: L.Trainer) -> float:
        n = trainer.num_training_batches
        return n if n and n != float("inf") else math.inf

    def _total_batches(self, trainer: L.Trainer) -> float:
        totals = []
        per_epoch = self._batches_per_epoch(trainer)
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            totals.append(per_epoch * trainer.max_epochs)
        if trainer.max_steps is not None and trainer.max_steps > 0:
            totals.append(trainer.max_steps * trainer.accumulate_grad_batches)
        return min(totals, default=math.inf)

    def _epochs(self, trainer: L.Trainer) -> str:
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            return str(trainer.max_epochs)
        total, per_epoch = self._total_batches(trainer), self._batches_per_epoch(trainer)
        return str(math.ceil(total / per_epoch)) if math.isfinite(total) and math.isfinite(per_epoch) else "?"

    # -- fit -------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        per_epoch = self._batches_per_epoch(trainer)
        if self.every_n_steps is None:
            tenth = math.ceil(per_epoch / LINES_PER_EPOCH) if math.isfinite(per_epoch) else MAX_EVERY_N_STEPS
            self._every = max(1, min(MAX_EVERY_N_STEPS, tenth))
        self._run_start, self._run_batches = time.perf_counter(), 0
        self._done = trainer.current_epoch * per_epoch if math.isfinite(per_epoch) else 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_samples, self._epoch_train_s = 0, 0.0
        self._window_samples, self._window_s = 0, 0.0
        self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        seconds, self._last = now - self._last, now  # loading the batch included
        samples = batch_size_of(batch) * trainer.world_size
        self._epoch_samples += samples
        self._epoch_train_s += seconds
        self._window_samples += samples
        self._window_s += seconds
        self._done += 1
        self._run_batches += 1
        if (batch_idx + 1) % self._every == 0 and batch_idx + 1 < self._batches_per_epoch(trainer):
            self._print(trainer, self._line(trainer, self._window_samples, self._window_s, ""))
            self._window_samples, self._window_s = 0, 0.0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning 2 validates at the end of the training epoch before this hook: the val metrics are current
        monitor = getattr(pl_module, "monitor", None)
        keys = stage_metric_keys(trainer.callback_metrics, "val/", monitor, VAL_METRICS_SHOWN)
        val = _metric_text(trainer.callback_metrics, keys)
        self._print(trainer, self._line(trainer, self._epoch_samples, self._epoch_train_s, val))

    def _line(self, trainer: L.Trainer, samples: int, seconds: float, val: str) -> str:
        total = self._total_batches(trainer)
        parts = [f"epoch {trainer.current_epoch + 1}/{self._epochs(trainer)}",
                 f"step {self._done}/{total if math.isfinite(total) else '?'}"]  # fmt: skip
        metrics = {**trainer.callback_metrics, **trainer.progress_bar_metrics}
        loss_key = _loss_key(metrics)
        loss = _scalar(metrics.get(loss_key)) if loss_key else None
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        if val:
            parts.append(val)
        if seconds > 0 and samples:
            parts.append(f"{samples / seconds:.0f} samples/s")
        if math.isfinite(total) and self._run_batches:
            per_batch = (time.perf_counter() - self._run_start) / self._run_batches
            parts.append(f"eta {format_seconds(max(0.0, total - self._done) * per_batch)}")
        return "  ".join(parts)

    # -- validate / test -------------------------------------------------------------------------------------
    def _stage_start(self) -> None:
        self._stage_t0, self._stage_samples = time.perf_counter(), 0

    def _stage_line(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        keys = stage_metric_keys(trainer.callback_metrics, f"{stage}/", getattr(pl_module, "monitor", None))
        seconds = time.perf_counter() - getattr(self, "_stage_t0", time.perf_counter())
        text = _metric_text(trainer.callback_metrics, keys) or "no metrics logged"
        self._print(trainer, f"{stage}  {text}  ({self._stage_samples} samples, {seconds:.1f} s)")

    def on_validation_start(self, trainer, pl_module) -> None:
        self._stage_start()

    def on_test_start(self, trainer, pl_module) -> None:
        self._stage_start()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._stage_samples += batch_size_of(batch) * trainer.world_size

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._stage_samples += batch_size_of(batch) * trainer.world_size

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate" and not trainer.sanity_checking:  # during fit the epoch line says it
            self._stage_line(trainer, pl_module, "val")
        self._last = time.perf_counter()  # a validation inside a training epoch is no training time

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stage_line(trainer, pl_module, "test")


_DefaultBar = RichProgressBar if _RICH_AVAILABLE else TQDMProgressBar  # what Lightning itself would pick


class SuiteProgressBar(_DefaultBar):
    """Lightning's default progress bar (Rich when installed, else tqdm) without the logger's ``v_num`` item."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


def progress_callbacks(is_tty: bool | None = None) -> tuple[list[L.Callback], bool]:
    """(callbacks to add, whether Lightning's own progress bar must be disabled) for stdout being a terminal or not
    (``is_tty`` None: ask ``sys.stdout``)."""
    if is_tty is None:
        is_tty = sys.stdout.isatty()
    if is_tty:
        return [SuiteProgressBar()], False
    return [ProgressLog()], True


def progress_lines(
    items: Iterable, total: int, desc: str, unit: str, is_tty: bool | None = None, lines: int = 10
) -> Iterator:
    """Iterate ``items`` with progress: tqdm's bar on a terminal; otherwise about ``lines`` plain lines on stdout
    (``desc: 50/500 clips (10%)  4.2 clips/s  eta 0:01:47``) and a last one at the end."""
    if is_tty is None:
        is_tty = sys.stdout.isatty()
    if is_tty:
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, unit=unit)
        return
    every = max(1, math.ceil(total / lines))
    start, done = time.perf_counter(), 0
    for item in items:
        yield item
        done += 1
        if done % every == 0 or done == total:
            seconds = time.perf_counter() - start
            rate = done / seconds if seconds > 0 else 0.0
            eta = f"  eta {format_seconds((total - done) / rate)}" if rate and done < total else ""
            print(f"{desc}: {done}/{total} {unit}s ({100 * done // max(total, 1)}%)  {rate:.1f} {unit}s/s{eta}",
                  flush=True)  # fmt: skip
