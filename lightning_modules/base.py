"""The base every task's LightningModule stands on: optimizer/schedule wiring and the run's monitored metric."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torchvision.utils import make_grid

from experiments.errors import ConfigError
from lightning_modules.optim import OptimConfig, build_optimizer, build_scheduler


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

    def log_image_grid(self, tag: str, images: torch.Tensor, mean=None, std=None, nrow: int = 8) -> None:
        """Log ``[N, 3, H, W]`` images as one grid to TensorBoard (un-normalised with ``mean``/``std`` if given)."""
        if not self.trainer.is_global_zero:
            return
        images = images.detach().float().cpu()
        if mean is not None and std is not None:
            images = images * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
        grid = make_grid(images.clamp(0, 1), nrow=nrow)
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, grid, self.global_step)

    def lr_scheduler_step(self, scheduler, metric) -> None:
        # timm schedulers are driven by the number of optimizer updates done so far
        scheduler.step_update(num_updates=self.global_step)
