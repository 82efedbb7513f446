"""The base every task's LightningModule stands on: optimizer/schedule wiring and the run's monitored metric."""

from __future__ import annotations

import lightning as L
from torch import nn

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
        datamodule = getattr(self.trainer, "datamodule", None)
        batch = getattr(datamodule, "batch_size", None)
        if batch is None:
            loader = self.trainer.fit_loop._combined_loader  # a Trainer.fit(model, loader) call without datamodule
            batch = loader.flattened[0].batch_size if loader is not None else 1
        return int(batch) * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def configure_optimizers(self):
        optimizer = build_optimizer(self.optimizer_root(), self.optim, self.global_batch_size())
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = build_scheduler(optimizer, self.optim, total, self.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        # timm schedulers are driven by the number of optimizer updates done so far
        scheduler.step_update(num_updates=self.global_step)
