"""Test-only Lightning callbacks, loaded by Hydra in subprocess runs (`callbacks=[{_target_: ...}]`)."""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """kill -9 the training process once `step` optimizer steps are done (a crash, not an exception)."""

    def __init__(self, step: int):
        self.step = int(step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
