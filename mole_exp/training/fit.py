"""Fitting a composer: Lightning training of its trainable parameters (gates, routers, a LoRA) with the run's
callbacks, checkpoints and logs; and what a gradient-free search fits on."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from mole_exp.base.models import BaseModel
from mole_exp.composers.base import Composer, SearchData
from mole_exp.evaluation.evaluator import score_examples
from mole_exp.training.config import build, generation_settings
from mole_exp.training.data import train_loader
from mole_exp.training.fit_units import SUITE, FitUnit
from mole_exp.training.gate_guard import GateHealthCheck
from mole_exp.training.lit_module import ComposerLitModule, GateStatisticsWriter
from mole_exp.training.progress import StepProgressBar
from mole_exp.training.search_loss import ExampleLoss
from mole_exp.training.unit_store import RESUME_CHECKPOINT


def fit(
    cfg: DictConfig,
    base: BaseModel,
    composer: Composer,
    examples: list[dict[str, Any]],
    run_dir: Path,
    resume_from: Path | None = None,
    unit: FitUnit | None = None,
) -> tuple[dict[str, Any], L.Trainer]:
    """Train the composer's parameters with Lightning. `unit` (a run with several fit units): its seed, and
    its own checkpoints/<unit>/, logs/<unit>/ and tagged gate_stats.jsonl rows; `resume_from`: a run folder
    holding the (unit's) last.ckpt to continue from."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    seed = int(cfg.seed) if unit is None else unit.seed
    checkpoint_dir = run_dir / "checkpoints" / (unit.id if unit else "")
    tags = {"unit": unit.id, **({"dataset": unit.scope} if unit.scope != SUITE else {})} if unit else {}
    loader = train_loader(
        base.tokenizer, examples, cfg.data.batch_size, cfg.data.max_source_length, cfg.data.max_target_length, seed, cfg.data.num_workers
    )
    module = ComposerLitModule(base.model, composer, build(cfg.optimizer))
    logger = (build(cfg.logger, **({"version": unit.id} if unit else {}))) if cfg.get("logger") else False
    callbacks = [GateStatisticsWriter(run_dir / "gate_stats.jsonl", cfg.get("gate_stats_every_n_steps", 1), tags)]
    if cfg.get("gate_guard") is not None:  # after the writer: a collapse stops with its step's statistics written
        callbacks.append(GateHealthCheck(**cfg.gate_guard))
    if cfg.get("checkpoint_every_n_steps"):
        # gates-only checkpoints (see ComposerLitModule.on_save_checkpoint), for resume after a crash
        callbacks.append(
            ModelCheckpoint(
                dirpath=checkpoint_dir, filename="last", every_n_train_steps=int(cfg.checkpoint_every_n_steps),
                save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=False,
            )
        )
    callbacks += [build(callback) for callback in cfg.get("callbacks") or []]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(StepProgressBar())  # steps done / max_steps, continued on resume
    enable_checkpointing = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    trainer: L.Trainer = build(cfg.trainer, logger=logger, callbacks=callbacks, enable_checkpointing=enable_checkpointing)
    base.model.train()  # dropout as in ordinary fine-tuning; only the gates receive gradients
    started = time.perf_counter()
    resumable = checkpoint_dir / RESUME_CHECKPOINT if resume_from else None
    checkpoint = str(resumable) if resumable is not None and resumable.exists() else None  # a unit may not have got that far
    # weights_only: resuming never unpickles arbitrary objects (the checkpoint holds tensors and plain state)
    trainer.fit(module, train_dataloaders=loader, ckpt_path=checkpoint, weights_only=True)
    return {
        "steps": int(trainer.global_step),
        "seconds": round(time.perf_counter() - started, 2),
        "final": {k: v for k, v in module.last_statistics.items() if k != "gates"},
        "num_trainable_parameters": sum(p.numel() for p in base.model.parameters() if p.requires_grad),
        "num_train_examples": len(examples),
        **({"resumed_from": checkpoint} if checkpoint else {}),
    }, trainer


def make_search_data(base: BaseModel, task, cfg: DictConfig, seed: int | None = None) -> SearchData:
    """Examples, a loss (mean token cross-entropy per example) and a task score for gradient-free composers."""
    tokenizer, model = base.tokenizer, base.model
    loss = ExampleLoss(model, tokenizer, cfg.data.max_source_length, cfg.data.max_target_length, cfg.data.eval_batch_size)

    def task_score(examples: list[dict[str, Any]]) -> float:
        return score_examples(model, tokenizer, task, examples, generation_settings(cfg))

    mixture = task.train_mixture(cfg.data.mixture, cfg.data.get("mixture_cap"))
    return SearchData(
        train_examples=mixture, validation_examples=mixture, loss=loss, score=task_score, seed=int(cfg.seed if seed is None else seed),
        prepare_loss=loss.prepare,
    )
