"""The LightningModule: only the composer's parameters train; loss = task loss + sum of weighted extras.

For MoLE the extra is alpha * L_balance (Eq. 16). Checkpoints hold only what trains (the gates).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch

from mole_exp.composers.base import Composer
from mole_exp.files import write_atomic


class ComposerLitModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, composer: Composer, optimizer: partial, scheduler: partial | None = None):
        super().__init__()
        self.model = model
        self.composer = composer
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.trainable_names = {f"model.{n}" for n, p in model.named_parameters() if p.requires_grad}
        if not self.trainable_names:
            raise ValueError(f"composer {composer.name!r} has no trainable parameters; nothing to fit")
        self.strict_loading = False  # checkpoints hold only the trainable parameters
        self.last_statistics: dict[str, Any] = {}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        outputs = self.model(**batch)
        task_loss = outputs.loss
        extras = self.composer.auxiliary_losses()
        loss = task_loss + sum((weight * value for weight, value in extras.values()), torch.zeros((), device=task_loss.device))
        if not torch.isfinite(loss):
            parts = {"task_loss": float(task_loss.detach()), **{name: float(value.detach()) for name, (_, value) in extras.items()}}
            raise FloatingPointError(
                f"non-finite training loss at step {self.global_step}: {parts}; lower optimizer.lr, check the experts "
                f"for NaN/inf weights, or use trainer.precision=32-true"
            )
        batch_size = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/task_loss", task_loss, batch_size=batch_size)
        for name, (_, value) in extras.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        statistics = self.composer.training_statistics()
        for name in ("gate_entropy", "temperature"):
            if name in statistics:
                self.log(f"train/{name}", statistics[name], batch_size=batch_size)
        self.last_statistics = {
            "step": self.global_step,
            "loss": float(loss.detach()),
            "task_loss": float(task_loss.detach()),
            **{name: float(value.detach()) for name, (_, value) in extras.items()},
            **statistics,
        }
        return loss

    def configure_optimizers(self):
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=parameters)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer), "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only what trains, plus the RNG state so a resumed run draws the same dropout masks."""
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in self.trainable_names}
        checkpoint["rng_state"] = {"torch": torch.get_rng_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        unexpected = set(checkpoint["state_dict"]) - self.trainable_names
        if unexpected or not checkpoint["state_dict"]:
            raise ValueError(f"checkpoint does not hold this composer's trainable parameters (unexpected: {sorted(unexpected)[:5]})")
        if "rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["rng_state"]["torch"])


class GateStatisticsWriter(L.Callback):
    """Appends the composer's per-step statistics (loss, gate entropy, per-gate weights) to a JSONL file.

    `tags` go into every row (a run with several fit units: {"unit": ..., "dataset": ...}). Steps of one
    unit strictly increase: a resumed run (or unit) first drops, atomically, that unit's lines at or past
    the step it resumes from, and a step at or before the last one written is never appended again."""

    def __init__(self, path: str | Path, every_n_steps: int = 1, tags: dict[str, Any] | None = None):
        self.path = Path(path)
        self.every_n_steps = max(1, int(every_n_steps))
        self.tags = dict(tags or {})
        self._last_step: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stats = getattr(pl_module, "last_statistics", None)
        if not stats or stats["step"] % self.every_n_steps != 0 or trainer.global_rank != 0:
            return
        if self._last_step is None:
            self._last_step = self._keep_lines_before(stats["step"])
        if stats["step"] <= self._last_step:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({**self.tags, **stats}) + "\n")
        self._last_step = stats["step"]

    def _keep_lines_before(self, step: int) -> int:
        """A resumed run (or unit): keep only this unit's lines before `step` (other units' lines stay);
        returns the last step of this unit kept (-1: none)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            return -1
        unit = self.tags.get("unit")
        rows = [(line, json.loads(line)) for line in self.path.read_text().splitlines() if line.strip()]
        kept = [(line, row) for line, row in rows if row.get("unit") != unit or row["step"] < step]
        write_atomic(self.path, "".join(line + "\n" for line, _ in kept))
        return max((row["step"] for _, row in kept if row.get("unit") == unit), default=-1)
