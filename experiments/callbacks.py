"""Callbacks every run gets from the command line."""

from __future__ import annotations

import io
import json
import math
import random
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from experiments.io import atomic_write_bytes, atomic_write_json


def _scalars(metrics: dict, prefix: str) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if not key.startswith(prefix):
            continue
        value = value.item() if isinstance(value, torch.Tensor) else float(value)
        if math.isfinite(value):
            out[key] = value
    return out


class MetricsJSON(L.Callback):
    """Writes ``<run_dir>/metrics.json`` atomically: final validation and test metrics of the run.

    Layout: ``{"val": {...}, "test": {...}, "best": {"metric", "score", "ckpt"}, "skipped": {"train", "val",
    "test"}, "epoch", "global_step", "ckpt_path", "config", "scale", "finished"}``; rewritten after every
    validation, training epoch and at test end, so a run that stops early still leaves its latest numbers.

    ``skipped`` counts, per split, the samples the data left out of its latest pass over that split (summed over
    all processes): undecodable files under ``data.on_corrupt: skip``, shard samples without an image or a
    caption. It is read from the batches' ``skipped`` entry, which the suite's collates fill in.
    """

    def __init__(self, run_dir: str, config_path: str | None = None, scale: str | None = None) -> None:
        self.path = Path(run_dir) / "metrics.json"
        self.record: dict = {"config": config_path, "scale": scale, "val": {}, "test": {}, "finished": False}
        if self.path.is_file():  # a resumed run keeps what it had written
            self.record.update(json.loads(self.path.read_text()), finished=False)
        self.record.setdefault("skipped", {})
        self.started = time.time()
        self.counting: dict[str, torch.Tensor | int] = {}

    # -- samples the data skipped, per split --------------------------------------------------------------------
    def _start(self, trainer: L.Trainer, split: str) -> None:
        if not trainer.sanity_checking:
            self.counting[split] = 0

    def _count(self, trainer: L.Trainer, split: str, batch) -> None:
        if not trainer.sanity_checking and isinstance(batch, dict) and "skipped" in batch:
            # a tensor sum stays on the batch's device: no host sync per step (int() would wait for the GPU)
            self.counting[split] = self.counting.get(split, 0) + batch["skipped"].detach()

    def _close(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        """Sum the split's count over processes (every rank calls this: it is a collective) into the record."""
        if trainer.sanity_checking or split not in self.counting:
            return
        count = torch.as_tensor(self.counting.pop(split), dtype=torch.float32, device=pl_module.device)
        total = trainer.strategy.reduce(count, reduce_op="sum")
        self.record["skipped"][split] = int(total.item())

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start(trainer, "train")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._count(trainer, "train", batch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._close(trainer, pl_module, "train")
        self._write(trainer)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._start(trainer, "val")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._count(trainer, "val", batch)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start(trainer, "test")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._count(trainer, "test", batch)

    def _write(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        self.record.update(
            epoch=trainer.current_epoch,
            global_step=trainer.global_step,
            wall_seconds=round(time.time() - self.started, 2),
        )
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and getattr(ckpt, "best_model_path", ""):
            score = ckpt.best_model_score
            self.record["best"] = {
                "metric": ckpt.monitor,
                "ckpt": ckpt.best_model_path,
                "score": None if score is None else float(score),
            }
        atomic_write_json(self.path, self.record)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.record["val"] = _scalars(trainer.callback_metrics, "val/")
        self._close(trainer, pl_module, "val")
        self._write(trainer)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record["test"] = _scalars(trainer.callback_metrics, "test/")
        self._close(trainer, pl_module, "test")
        self.record["ckpt_path"] = trainer.ckpt_path
        self.record["finished"] = True
        self._write(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record["finished"] = True
        self._write(trainer)


class PredictionsWriter(BasePredictionWriter):
    """Saves ``predict`` outputs to ``<run_dir>/predictions[_rank<r>].pt`` (a list of per-batch dicts), atomically."""

    def __init__(self, run_dir: str) -> None:
        super().__init__(write_interval="epoch")
        self.run_dir = Path(run_dir)

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        name = "predictions.pt" if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.pt"
        buffer = io.BytesIO()
        torch.save({"predictions": predictions, "batch_indices": batch_indices}, buffer)
        atomic_write_bytes(self.run_dir / name, buffer.getvalue())


class RNGStateCheckpoint(L.Callback):
    """Stores the Python, NumPy and torch RNG states in every checkpoint and restores them when a run resumes.

    A resumed run creates its first training iterator (which draws the shuffling seed and the workers' base seed)
    before any epoch hook, so the states are put back as soon as the checkpoint is loaded and again after the
    sanity-check validation; the resumed epoch then draws the same shuffling, augmentations and mixup as an
    uninterrupted run (bit-identical on the CPU when data workers are not persistent across epochs).
    """

    def __init__(self) -> None:
        self._pending: dict | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        _, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint["rng_states"] = {  # tensors and plain numbers only, so weights_only loading accepts them
            "python": random.getstate(),
            "numpy": {
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": pos,
                "has_gauss": has_gauss,
                "gauss": gauss,
            },
            "torch": torch.get_rng_state(),
        }

    def _restore(self) -> None:
        if self._pending is None:
            return
        random.setstate(self._pending["python"])
        state = self._pending["numpy"]
        np.random.set_state(("MT19937", state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
                             state["gauss"]))  # fmt: skip
        torch.set_rng_state(self._pending["torch"])

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._pending = checkpoint.get("rng_states")
        self._restore()

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_train_start(self, trainer, pl_module) -> None:
        self._pending = None
