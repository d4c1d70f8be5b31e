"""The training progress bar: one tqdm bar over optimizer steps, `train 12/800 steps`, that starts at the
step a resumed run continues from and does not restart each epoch (Lightning's own bar counts batches of
the current epoch: "Epoch 0/-2" with max_steps, "30/19" after a resume). tqdm, like the evaluator's
generation bars, so that log lines printed through `mole_exp.training.logs.TqdmConsoleHandler` go above it."""

from __future__ import annotations

import math
import sys

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm


class StepProgressBar(TQDMProgressBar):
    def __init__(self, refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate, leave=False)

    @staticmethod
    def total_steps(trainer) -> int | None:
        total = trainer.estimated_stepping_batches
        return None if total is None or math.isinf(total) else int(total)

    def init_train_tqdm(self) -> Tqdm:
        trainer = self.trainer
        return Tqdm(
            desc="train (steps)", total=self.total_steps(trainer), initial=trainer.global_step, unit="step",  # resumed: from its step
            position=2 * self.process_position, disable=self.is_disabled, leave=True, dynamic_ncols=True, file=sys.stdout,
            smoothing=0, bar_format=self.BAR_FORMAT,
        )

    def on_train_epoch_start(self, trainer, *_) -> None:
        """One bar for the whole run: epochs do not restart it."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        if bar is not None and not bar.disable and self._should_update(step, bar.total or 0):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.train_progress_bar is not None and not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
