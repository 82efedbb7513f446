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
