"""A plain PyTorch loop that fits a seq2seq model's trainable parameters on (source, target) examples.

Used to pretrain the small synthetic base and to train LoRA experts; the composers' gates train with
Lightning in the pipeline instead. Seeded: the same examples, settings and seed give the same weights.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from mole_exp.training.data import train_loader

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    steps: int = 500
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_source_length: int = 64
    max_target_length: int = 32
    log_every: int = 100

    def validate(self, where: str) -> None:
        for key in ("steps", "batch_size", "max_source_length", "max_target_length"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}.{key}={value!r} must be a positive integer")
        if not self.lr > 0:
            raise ValueError(f"{where}.lr={self.lr!r} must be > 0")


def _schedule(settings: TrainSettings):
    """Linear warm-up, then cosine decay to 10% of the peak rate."""

    def factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def fit_seq2seq(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[dict[str, Any]],
    settings: TrainSettings,
    seed: int,
    what: str = "training",
) -> dict[str, Any]:
    """Train `model`'s parameters that require grad for `settings.steps` steps; returns a small log."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError(f"{what}: the model has no trainable parameters")
    if not examples:
        raise ValueError(f"{what}: no training examples")
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):  # the caller's generator is left as it was
        torch.manual_seed(seed)  # dropout masks
        loader = train_loader(tokenizer, examples, settings.batch_size, settings.max_source_length, settings.max_target_length, seed)
        optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(settings))
        model.train()
        started, step, recent = time.perf_counter(), 0, []
        try:
            while step < settings.steps:
                for batch in loader:
                    batch = {k: v.to(device) for k, v in batch.items()}
                    loss = model(**batch).loss
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"{what}: non-finite loss at step {step}; lower the learning rate")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
                    optimizer.step()
                    scheduler.step()
                    recent.append(float(loss.detach()))
                    step += 1
                    if step % settings.log_every == 0 or step == settings.steps:
                        log.info("%s: step %d/%d loss %.4f", what, step, settings.steps, sum(recent[-20:]) / len(recent[-20:]))
                    if step >= settings.steps:
                        break
        finally:
            model.eval()
    tail = recent[-min(20, len(recent)) :]
    return {"steps": step, "final_loss": round(sum(tail) / len(tail), 4), "seconds": round(time.perf_counter() - started, 2)}
