"""The base every task's LightningModule stands on: optimizer/schedule wiring and the run's monitored metric."""

from __future__ import annotations

import copy
import inspect
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from torch import nn
from torchvision.utils import make_grid

from lightning_modules.optim import OptimConfig, build_optimizer, build_scheduler
from suite_base.errors import ConfigError

# borders of drawn predictions (right, wrong, neutral); saved as (0, 191, 0), (217, 0, 0), (38, 89, 217)
GREEN, RED, BLUE = (0.0, 0.75, 0.0), (0.85, 0.0, 0.0), (0.15, 0.35, 0.85)


def picture_name(tag: str, epoch: int) -> str:
    """File stem of a logged picture: ``val/predictions`` at epoch 3 -> ``val_predictions_epoch003``."""
    return f"{tag.replace('/', '_')}_epoch{epoch:03d}"


def save_picture(trainer: L.Trainer, name: str, image: torch.Tensor) -> Path | None:
    """Save ``image`` (``[3 or 1, H, W]``, floats in [0, 1] or uint8) as ``<run>/pictures/<name>.png``, the run being
    ``trainer.default_root_dir``; returns the path. Only rank zero writes, and nothing is written during the sanity
    check, in ``fast_dev_run`` or without loggers (``logger: false``: the run keeps no logs, so no pictures either).
    The file is written under a temporary name in the same folder and renamed, so no half-written PNG is left."""
    if not trainer.is_global_zero or trainer.sanity_checking or trainer.fast_dev_run or not trainer.loggers:
        return None
    image = image.detach().cpu()
    if image.dtype != torch.uint8:
        image = image.float().mul(255).round().clamp(0, 255).to(torch.uint8)
    array = (image.expand(3, -1, -1) if image.shape[0] == 1 else image).permute(1, 2, 0).numpy()
    folder = Path(trainer.default_root_dir) / "pictures"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}.png"
    partial = folder / f".{name}.png.{os.getpid()}.partial"
    try:
        Image.fromarray(np.ascontiguousarray(array)).save(partial, format="PNG")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out


def framed(images: torch.Tensor, colours: list[tuple[float, float, float]], width: int | None = None) -> torch.Tensor:
    """``[N, 3, H, W]`` images in [0, 1] with a border of ``width`` pixels (default ``max(2, H // 16)``) in each
    image's colour: ``[N, 3, H + 2 width, W + 2 width]``."""
    n, _, height, w = images.shape
    width = width if width is not None else max(2, height // 16)
    out = torch.tensor(colours, dtype=torch.float32).view(n, 3, 1, 1).repeat(1, 1, height + 2 * width, w + 2 * width)
    out[:, :, width : width + height, width : width + w] = images.detach().float().cpu()
    return out


def unnormalise(images: torch.Tensor, mean=None, std=None) -> torch.Tensor:
    """``images * std + mean`` (per channel, when both are given), clamped to [0, 1], on the CPU."""
    images = images.detach().float().cpu()
    if mean is not None and std is not None:
        images = images * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    return images.clamp(0, 1)


class SuiteModule(L.LightningModule):
    """Adds the shared optimizer helper and a per-step timm scheduler to a LightningModule.

    Subclasses set ``monitor`` / ``monitor_mode`` (the metric that picks the best checkpoint) and may override
    :meth:`optimizer_root` to choose the module whose parameters are optimised (it carries ``group_matcher``
    for layer-wise lr decay).
    """

    monitor: str = "val/loss"
    monitor_mode: str = "min"

    def __init__(self, optim: OptimConfig | None = None) -> None:
        super().__init__()
        self.optim = optim if optim is not None else OptimConfig()

    def save_hyperparameters_with_networks(self) -> None:
        """``save_hyperparameters()`` of the calling ``__init__`` for a module whose networks are injected.

        Built by the CLI (or by ``load_from_checkpoint`` of a CLI-built checkpoint), Lightning hands in the config's
        own form of the arguments, each injected network as ``{class_path, init_args}``, and that is stored: so
        ``load_from_checkpoint(path)`` rebuilds the networks and then loads their weights. Built in Python, the
        ``nn.Module`` arguments have no such form and are left out (no module is pickled into the checkpoint's
        hyper-parameters): pass them again, ``Module.load_from_checkpoint(path, net=net)``, as Lightning documents.
        """
        frame = inspect.currentframe().f_back
        ignore = []
        if _given_hyperparameters.get() is None:
            ignore = [name for name, value in frame.f_locals.items() if isinstance(value, nn.Module) and name != "self"]
        self.save_hyperparameters(ignore=ignore, frame=frame)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """``load_from_checkpoint`` of a CLI-built checkpoint rebuilds the networks from the stored config form
        (``{class_path, init_args}``) but hands ``__init__`` the built objects, which it leaves out of ``hparams``:
        take the stored form back whole, so that the loaded model's hyper-parameters are the saved ones and a
        checkpoint saved again from it rebuilds (and loads with ``weights_only``) as well. Subclasses call this."""
        stored = checkpoint.get("hyper_parameters") or {}
        if "_instantiator" in stored:
            self.hparams.clear()
            self.hparams.update(stored)
            self._hparams_initial = copy.deepcopy(self.hparams)

    def optimizer_root(self) -> nn.Module:
        return self

    def global_batch_size(self) -> int:
        """Samples per optimizer step across all devices: batch x world size x gradient accumulation."""
        batch = getattr(self.trainer.datamodule, "batch_size", None)
        if batch is None:
            raise ConfigError(
                "the learning rate is scaled by the global batch, but the run has no DataModule with a batch_size "
                "attribute; train through a DataModule (every suite config does)"
            )
        return int(batch) * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def configure_optimizers(self):
        optimizer = build_optimizer(self.optimizer_root(), self.optim, self.global_batch_size())
        self.adjust_param_groups(optimizer)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = build_scheduler(optimizer, self.optim, total, self.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scales(self) -> dict[str, float]:
        """Submodules (names as in ``named_modules``, dotted for nested ones) trained at a multiple of the scheduled
        learning rate; none by default."""
        return {}

    def adjust_param_groups(self, optimizer: torch.optim.Optimizer) -> None:
        """Move the parameters of each submodule in :meth:`lr_scales` into groups of their own whose ``lr_scale`` (which
        timm's schedulers multiply into the scheduled lr) is the group's times the submodule's factor. Runs before
        the scheduler reads the groups."""
        for name, factor in self.lr_scales().items():
            own = {id(p) for p in self.get_submodule(name).parameters()}
            moved = []
            for group in optimizer.param_groups:
                mine = [p for p in group["params"] if id(p) in own]
                if mine:
                    group["params"] = [p for p in group["params"] if id(p) not in own]
                    settings = {k: v for k, v in group.items() if k != "params"}
                    moved.append({**settings, "params": mine, "lr_scale": group.get("lr_scale", 1.0) * factor})
            for group in moved:
                optimizer.add_param_group(group)

    def save_picture(self, name: str, image: torch.Tensor) -> Path | None:
        """:func:`save_picture` with this module's trainer: ``<run>/pictures/<name>.png``."""
        return save_picture(self.trainer, name, image)

    def log_image_grid(
        self, tag: str, images: torch.Tensor, mean=None, std=None, nrow: int = 8, padding: int = 2, save: bool = True
    ) -> Path | None:
        """Log ``[N, 3, H, W]`` images as one grid to TensorBoard (un-normalised with ``mean``/``std`` if given) and
        save it as ``<run>/pictures/<tag, / as _>_epoch<NNN>.png`` (unless ``save`` is false); rank zero only,
        nothing during the sanity check. Returns the PNG's path (None when none was written)."""
        if self._trainer is None or not self.trainer.is_global_zero or self.trainer.sanity_checking:
            return None
        grid = make_grid(unnormalise(images, mean, std), nrow=nrow, padding=padding)
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, grid, self.global_step)
        return self.save_picture(picture_name(tag, self.current_epoch), grid) if save else None

    def lr_scheduler_step(self, scheduler, metric) -> None:
        # timm schedulers are driven by the number of optimizer updates done so far
        scheduler.step_update(num_updates=self.global_step)
