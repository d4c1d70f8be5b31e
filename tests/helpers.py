"""Test-only Lightning callbacks, loaded by Hydra in subprocess runs (`callbacks=[{_target_: ...}]`)."""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """kill -9 the training process once `step` optimizer steps are done (a crash, not an exception); with
    `unit`, only in that fit unit (the unit's logger version names it)."""

    def __init__(self, step: int, unit: str | None = None):
        self.step, self.unit = int(step), unit

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and (self.unit is None or getattr(trainer.logger, "version", None) == self.unit):
            os.kill(os.getpid(), signal.SIGKILL)


class RaiseAtStep(L.Callback):
    """Raise (a crash the run records) once `step` optimizer steps are done, in fit unit `unit` only (the
    unit's logger version names it); the checkpoints written so far stay."""

    def __init__(self, step: int, unit: str | None = None):
        self.step, self.unit = int(step), unit

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and (self.unit is None or getattr(trainer.logger, "version", None) == self.unit):
            raise RuntimeError(f"simulated crash at step {trainer.global_step}")


class InterruptAtStep(L.Callback):
    """Ctrl-C (SIGINT to itself) once `step` optimizer steps are done."""

    def __init__(self, step: int):
        self.step = int(step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGINT)


class SlowSteps(L.Callback):
    """Sleep after every training step (keeps a run busy while another process tries the same folder)."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import time

        time.sleep(self.seconds)
