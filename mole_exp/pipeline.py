"""run(cfg): build the frozen base and experts, compose, fit, evaluate, write the run's results.

    model + experts -> composer.compose -> (Lightning fit | composer.search) -> evaluate -> metrics.json

Results of a run (its Hydra folder): config.yaml, metrics.json, predictions.jsonl, gate_stats.jsonl
(gate composers), checkpoints/composer.safetensors (only what trained), logs/ (Lightning's logger).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from mole_exp.composers.base import Composer, SearchData
from mole_exp.data import collator, tokenize, train_loader
from mole_exp.evaluation.evaluator import GenerationSettings, evaluate_task, score_examples
from mole_exp.expert_catalogue import pool_datasets
from mole_exp.experts import load_experts, select_pool
from mole_exp.experts import precheck as precheck_experts
from mole_exp.io import METRICS_FILE, PREDICTIONS_FILE, guard_run_dir, write_atomic, write_json, write_jsonl
from mole_exp.lit_module import ComposerLitModule, GateStatisticsWriter
from mole_exp.models import BaseModel
from mole_exp.protocol import dry_run_experts, run_protocol
from mole_exp.tasks.base import EVAL_SUBSETS

log = logging.getLogger(__name__)

MODES = ("train", "eval")
CHECKPOINT_FILE = "composer.safetensors"


def build(node: DictConfig, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, but a bad value surfaces as the object's own error, not Hydra's wrapper."""
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, (ValueError, TypeError, OSError, RuntimeError)):
            raise cause.with_traceback(cause.__traceback__) from None
        raise


def config_hash(cfg: DictConfig) -> str:
    data = OmegaConf.to_container(cfg, resolve=True)
    for volatile in ("paths", "hydra", "logger", "resume", "callbacks", "overrides", "checkpoint_every_n_steps"):
        data.pop(volatile, None)
    data.get("trainer", {}).pop("default_root_dir", None)
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(data)).encode()).hexdigest()[:12]


def validate(cfg: DictConfig) -> None:
    """Cheap checks of the config, before any model or data is loaded."""
    if cfg.mode not in MODES:
        raise ValueError(f"mode={cfg.mode!r} is not one of {list(MODES)}")
    if cfg.mode == "eval" and not cfg.get("checkpoint"):
        raise ValueError("mode=eval needs checkpoint=<a run folder or its checkpoints/composer.safetensors>")
    for key in ("batch_size", "eval_batch_size", "max_source_length", "max_target_length"):
        value = cfg.data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"data.{key}={value!r} must be a positive integer")
    for key in ("train_limit", "eval_limit"):
        value = cfg.data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"data.{key}={value!r} must be a positive integer or null")
    if cfg.data.get("eval_subset", "random") not in EVAL_SUBSETS:
        raise ValueError(f"data.eval_subset={cfg.data.eval_subset!r} is not one of {list(EVAL_SUBSETS)}")
    precheck_experts(cfg.experts)
    max_steps = cfg.trainer.get("max_steps", -1)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps == 0 or max_steps < -1:
        raise ValueError(f"trainer.max_steps={max_steps!r} must be a positive integer (or -1 with max_epochs)")


def resolve_checkpoint(path: str) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / CHECKPOINT_FILE
    if not path.exists():
        raise FileNotFoundError(f"checkpoint={str(path)!r} does not exist (expected <run dir>/checkpoints/{CHECKPOINT_FILE})")
    return path


def save_composer_state(composer: Composer, run_dir: Path) -> Path | None:
    from safetensors.torch import save_file

    module = composer.trainable_module()
    if module is None:
        return None
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    path = run_dir / "checkpoints" / CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".tmp")
    save_file(state, str(temp), metadata={"composer": composer.name})
    os.replace(temp, path)
    return path


def load_composer_state(composer: Composer, path: Path) -> None:
    from safetensors.torch import load_file

    module = composer.trainable_module()
    if module is None:
        raise ValueError(f"composer {composer.name!r} has no trained state to load from {path}")
    state = load_file(str(path))
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not fit composer {composer.name!r} with this config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} (same experts, granularity and input form needed)"
        )


def generation_settings(cfg: DictConfig) -> GenerationSettings:
    return GenerationSettings(
        batch_size=cfg.data.eval_batch_size,
        num_beams=cfg.generation.num_beams,
        max_source_length=cfg.data.max_source_length,
        max_new_tokens=cfg.generation.get("max_new_tokens"),
        progress=cfg.generation.get("progress", True),
    )


def make_search_data(base: BaseModel, task, cfg: DictConfig) -> SearchData:
    """Examples, a loss (mean token cross-entropy per example) and a task score for gradient-free composers."""
    tokenizer, model = base.tokenizer, base.model
    collate = collator(tokenizer)

    @torch.no_grad()
    def loss(examples: list[dict[str, Any]]) -> float:
        model.eval()
        device = next(model.parameters()).device
        features = tokenize(tokenizer, examples, cfg.data.max_source_length, cfg.data.max_target_length)
        total = 0.0
        for start in range(0, len(features), cfg.data.eval_batch_size):
            batch = {k: v.to(device) for k, v in collate(features[start : start + cfg.data.eval_batch_size]).items()}
            total += float(model(**batch).loss) * len(batch["input_ids"])
        return total / len(features)

    def task_score(examples: list[dict[str, Any]]) -> float:
        return score_examples(model, tokenizer, task, examples, generation_settings(cfg))

    mixture = task.train_mixture(cfg.data.mixture, cfg.data.get("mixture_cap"))
    return SearchData(train_examples=mixture, validation_examples=mixture, loss=loss, score=task_score, seed=int(cfg.seed))


RESUME_CHECKPOINT = "last.ckpt"
RUN_STATE_FILE = "run_state.json"


def find_resumable_run(cfg: DictConfig, run_dir: Path) -> Path | None:
    """resume=true: this run folder if it has a checkpoint, else the newest unfinished run with the same
    config hash under paths.outputs_dir; resume=<folder>: that folder."""
    if cfg.resume in (None, False):
        return None
    if cfg.resume is not True:
        folder = Path(str(cfg.resume))
        if not (folder / "checkpoints" / RESUME_CHECKPOINT).exists():
            raise FileNotFoundError(f"resume={str(folder)!r}: no checkpoints/{RESUME_CHECKPOINT} there to resume from")
        return folder
    if (run_dir / "checkpoints" / RESUME_CHECKPOINT).exists():
        return run_dir
    wanted = config_hash(cfg)
    candidates = []
    for state_file in Path(cfg.paths.outputs_dir).rglob(RUN_STATE_FILE):
        folder = state_file.parent
        try:
            state = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if state.get("config_hash") == wanted and not (folder / METRICS_FILE).exists() and (folder / "checkpoints" / RESUME_CHECKPOINT).exists():
            candidates.append(((folder / "checkpoints" / RESUME_CHECKPOINT).stat().st_mtime, folder))
    return max(candidates)[1] if candidates else None


def fit(
    cfg: DictConfig, base: BaseModel, composer: Composer, examples: list[dict[str, Any]], run_dir: Path, resume_from: Path | None = None
) -> tuple[dict[str, Any], L.Trainer]:
    from lightning.pytorch.callbacks import ModelCheckpoint

    loader = train_loader(
        base.tokenizer, examples, cfg.data.batch_size, cfg.data.max_source_length, cfg.data.max_target_length, int(cfg.seed), cfg.data.num_workers
    )
    module = ComposerLitModule(base.model, composer, build(cfg.optimizer))
    logger = build(cfg.logger) if cfg.get("logger") else False
    callbacks = [GateStatisticsWriter(run_dir / "gate_stats.jsonl", cfg.get("gate_stats_every_n_steps", 1))]
    if cfg.get("checkpoint_every_n_steps"):
        # gates-only checkpoints (see ComposerLitModule.on_save_checkpoint), for resume after a crash
        callbacks.append(
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints", filename="last", every_n_train_steps=int(cfg.checkpoint_every_n_steps),
                save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=False,
            )
        )
    callbacks += [build(callback) for callback in cfg.get("callbacks") or []]
    enable_checkpointing = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    trainer: L.Trainer = build(cfg.trainer, logger=logger, callbacks=callbacks, enable_checkpointing=enable_checkpointing)
    base.model.train()  # dropout as in ordinary fine-tuning; only the gates receive gradients
    started = time.perf_counter()
    checkpoint = str(resume_from / "checkpoints" / RESUME_CHECKPOINT) if resume_from else None
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


def describe(cfg: DictConfig) -> dict[str, Any]:
    """What a run would do, from its config alone (for dry runs and sweep planning)."""
    model = cfg.model.get("name_or_path") or cfg.model._target_.rsplit(".", 1)[-1]
    return {
        "overrides": list(cfg.get("overrides") or []),
        "model": str(model),
        "experts": f"{cfg.experts.source}:{cfg.experts.get('count') or 'all'}",
        "composer": cfg.composer.name,
        "task": cfg.task.name,
        "eval_task": cfg.eval_task.name if cfg.get("eval_task") else cfg.task.name,
        "max_steps": cfg.trainer.max_steps,
        "seed": cfg.seed,
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    validate(cfg)
    if cfg.get("dry_run"):
        pool = select_pool(cfg.experts, *pool_datasets(cfg))  # the experts' (name, id), without loading a model
        plan = describe(cfg)
        print("[dry run] " + "  ".join(f"{k}={v}" for k, v in plan.items() if k != "overrides") + f"  <- {' '.join(plan['overrides'])}")
        print(dry_run_experts(cfg, pool))
        return {"status": "dry_run", **plan, "expert_ids": [source for _, source in pool]}
    run_dir = Path(cfg.paths.output_dir)
    resume_from = find_resumable_run(cfg, run_dir) if cfg.mode == "train" else None
    if resume_from is not None and resume_from != run_dir:
        log.info("resuming the unfinished run in %s", resume_from)
        run_dir = resume_from
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)  # logs and checkpoints continue there
    run_dir = guard_run_dir(run_dir)
    if resume_from is None:
        write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        write_json(run_dir / RUN_STATE_FILE, {"config_hash": config_hash(cfg), "status": "running"})
    try:
        return _run(cfg, run_dir, resume_from)
    except BaseException as error:
        if not (run_dir / METRICS_FILE).exists():
            write_json(run_dir / RUN_STATE_FILE, {"config_hash": config_hash(cfg), "status": "failed", "error": f"{type(error).__name__}: {error}"})
        raise


def _run(cfg: DictConfig, run_dir: Path, resume_from: Path | None) -> dict[str, Any]:
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    select_pool(cfg.experts, *pool_datasets(cfg))  # an unknown pool or family, too small a family, unknown names: before any load

    composer: Composer = build(cfg.composer, _convert_="all")  # validates its options
    task = build(cfg.task, _convert_="all")
    eval_task = build(cfg.eval_task, _convert_="all") if cfg.get("eval_task") else task
    needs_training = cfg.mode == "train" and composer.needs_training_data
    task.load(need_train=needs_training, train_limit=cfg.data.train_limit, eval_limit=cfg.data.eval_limit)
    if eval_task is not task:
        eval_task.load(need_train=False, eval_limit=cfg.data.eval_limit)

    base: BaseModel = build(cfg.model)
    bank = load_experts(cfg.experts, base, *pool_datasets(cfg))
    trainable = composer.compose(base, bank)
    device = torch.device(cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    base.model.to(device)

    report: dict[str, Any] = {}
    if cfg.mode == "eval":
        load_composer_state(composer, resolve_checkpoint(cfg.checkpoint))
        report["checkpoint"] = str(resolve_checkpoint(cfg.checkpoint))
    else:
        search_log = composer.search(make_search_data(base, task, cfg)) if composer.needs_search else {}
        if search_log:
            report["search"] = search_log
        if trainable:
            mixture = task.train_mixture(cfg.data.mixture, cfg.data.get("mixture_cap"))
            report["train"], trainer = fit(cfg, base, composer, mixture, run_dir, resume_from)
            if trainer.global_rank != 0:  # DDP: the other ranks only helped train
                return {"status": "rank_exit", "rank": trainer.global_rank}
            checkpoint = save_composer_state(composer, run_dir)
            report["checkpoint"] = str(checkpoint) if checkpoint else None
    base.model.to(device)
    composer.prepare_inference()

    if cfg.get("export_dir"):
        report["export"] = composer.export(str(cfg.export_dir))
    results, predictions = evaluate_task(
        base.model, base.tokenizer, eval_task, generation_settings(cfg), before_dataset=composer.before_dataset
    )
    metrics = {
        **results,
        "status": "completed",
        "task": task.name,
        "eval_task": eval_task.name,
        "skipped": eval_task.skipped,
        "split_notes": {**task.notes, **eval_task.notes},
        "model": base.model_id,
        "composer": composer.summary(),
        "experts": {"names": bank.names, "count": len(bank), "sources": bank.sources},
        "seed": int(cfg.seed),
        "protocol": run_protocol(cfg, bank, task, eval_task),
        "config_hash": config_hash(cfg),
        "overrides": list(cfg.get("overrides") or []),
        **report,
    }
    write_jsonl(run_dir / PREDICTIONS_FILE, predictions)
    write_json(run_dir / METRICS_FILE, metrics)  # last: its presence marks the run finished
    write_json(run_dir / RUN_STATE_FILE, {"config_hash": metrics["config_hash"], "status": "completed"})
    log.info("metrics: %s", {k: round(v, 3) for k, v in metrics["metrics"].items()})
    log.info("results written to %s", run_dir)
    return metrics

