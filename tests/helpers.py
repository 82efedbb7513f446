"""Test-only helpers that runs load by class path (``--trainer.callbacks+=tests.helpers.KillAfterEpoch``)."""

import os
import signal

import lightning as L


class KillAfterEpoch(L.Callback):
    """SIGKILLs the process once training epoch ``epoch`` (0-based) is over and its checkpoints are written (at the
    start of the next epoch): the hardest way a job can die (no handler, no cleanup), as on a node failure."""

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch + 1:
            os.kill(os.getpid(), signal.SIGKILL)


class RecordRankState(L.Callback):
    """Writes each rank's final weights and the sample indices its sampler gave it to ``$RANK_STATE_DIR``."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        sampler = trainer.train_dataloader.sampler
        self.indices = [int(i) for i in sampler]

    def on_train_end(self, trainer, pl_module) -> None:
        import torch

        assert self.indices, "the rank's sampler gave no training indices"
        out = os.environ["RANK_STATE_DIR"]
        state = {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}
        torch.save({"state_dict": state, "indices": self.indices, "world_size": trainer.world_size,
                    "num_nodes": trainer.num_nodes}, f"{out}/rank{trainer.global_rank}.pt")  # fmt: skip


def validate_fit_validate(module: L.LightningModule, datamodule: L.LightningDataModule, steps: int) -> tuple:
    """(validation metrics before, after) ``steps`` CPU training steps without loggers, checkpoints or validation in
    between: the toy learning tests' "trained beats untrained" measurement."""

    def validate() -> dict:
        judge = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
        return judge.validate(module, datamodule, verbose=False)[0]

    trainer = L.Trainer(accelerator="cpu", max_steps=steps, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)  # fmt: skip
    before = validate()
    trainer.fit(module, datamodule)
    return before, validate()
