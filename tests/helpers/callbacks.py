"""Callbacks that runs load by class path (``--trainer.callbacks+=tests.helpers.KillAfterEpoch``)."""

import os
import signal

import lightning as L
import torch


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
        assert self.indices, "the rank's sampler gave no training indices"
        out = os.environ["RANK_STATE_DIR"]
        state = {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}
        torch.save({"state_dict": state, "indices": self.indices, "world_size": trainer.world_size,
                    "num_nodes": trainer.num_nodes}, f"{out}/rank{trainer.global_rank}.pt")  # fmt: skip
