"""run(cfg): build the frozen base and experts, compose, fit, evaluate, write the run's results.

    model + experts -> for each fit unit: composer.compose -> (Lightning fit | composer.search) -> evaluate
                    -> metrics.json (the units' results combined)

A fit unit (mole_exp/training/fit_units.py) is one composition: `composer.fit_per=suite` is one unit for the suite,
`fit_per=dataset` one per evaluated dataset (times `search_seeds` for lorahub), each a fresh composer on
the restored base.

Results of a run (its Hydra folder): config.yaml, metrics.json, predictions.jsonl, gate_stats.jsonl
(gate composers), checkpoints/composer.safetensors (only what trained), logs/ (Lightning's logger); a run
with several units keeps checkpoints/<unit>/, logs/<unit>/ and units/<unit>.json (finished units).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from mole_exp.base.models import BaseModel
from mole_exp.composers.base import Composer, SearchData
from mole_exp.evaluation.evaluator import GenerationSettings, evaluate_task, score_examples
from mole_exp.experts.bank import ExpertBank
from mole_exp.experts.catalogue import pool_datasets
from mole_exp.experts.loading import load_experts, select_pool, unit_pool_views
from mole_exp.experts.loading import precheck as precheck_experts
from mole_exp.files import METRICS_FILE, PREDICTIONS_FILE, write_atomic, write_json, write_jsonl
from mole_exp.tasks.base import EVAL_SUBSETS
from mole_exp.tasks.truncation import fit_to_length
from mole_exp.training.data import train_loader
from mole_exp.training.fit_units import (
    SUITE,
    FitUnit,
    check_fit_config,
    configured_datasets,
    is_flat,
    plan_units,
    require_training_rows,
    task_slice,
)
from mole_exp.training.gate_guard import GateHealthCheck
from mole_exp.training.gate_guard import check_settings as check_gate_guard
from mole_exp.training.hub_preflight import check_hub_artifacts
from mole_exp.training.lit_module import ComposerLitModule, GateStatisticsWriter
from mole_exp.training.logs import silence_third_party_notices
from mole_exp.training.progress import StepProgressBar
from mole_exp.training.protocol import dry_run_experts, run_protocol
from mole_exp.training.provenance import code_version
from mole_exp.training.run_folder import accept_run_folder, end_state
from mole_exp.training.search_loss import ExampleLoss
from mole_exp.training.unit_metrics import combine_unit_results
from mole_exp.training.unit_store import RESUME_CHECKPOINT, has_progress, load_unit, progress_time, save_unit

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


MODULE_PATH = re.compile(r"mole_exp(\.[A-Za-z_]\w*)+")  # where an object of this package lives, e.g. a `_target_`


def without_module_paths(node: Any) -> Any:
    """The config without this package's module paths (`_target_: mole_exp.base.models.build_tiny`, and any other value
    that is a dotted `mole_exp.` path): dropped from mappings, blanked in lists. Moving a module keeps the hash."""
    if isinstance(node, dict):
        return {k: without_module_paths(v) for k, v in node.items() if not (isinstance(v, str) and MODULE_PATH.fullmatch(v))}
    if isinstance(node, list):
        return ["<module path>" if isinstance(v, str) and MODULE_PATH.fullmatch(v) else without_module_paths(v) for v in node]
    return node


def config_hash(cfg: DictConfig) -> str:
    """12 hex digits of the resolved config, less what does not change the result (paths, logging, resume
    settings, this package's module paths). Runs recorded with the hash of older code are matched through
    their config.yaml (`matches_config`)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for volatile in ("paths", "hydra", "logger", "resume", "callbacks", "overrides", "checkpoint_every_n_steps"):
        data.pop(volatile, None)
    data.get("trainer", {}).pop("default_root_dir", None)
    data = without_module_paths(data)
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(data)).encode()).hexdigest()[:12]


def matches_config(run_dir: Path, recorded_hash: str | None, wanted_hash: str) -> bool:
    """Whether the run in `run_dir` was made with the config that hashes to `wanted_hash`: its recorded hash, or,
    for a hash recorded by older code (which hashed module paths), its config.yaml hashed as today."""
    if recorded_hash == wanted_hash:
        return True
    config_file = Path(run_dir) / "config.yaml"
    if not config_file.exists():
        return False
    try:
        return config_hash(OmegaConf.load(config_file)) == wanted_hash
    except Exception as error:  # an unreadable record is not this config's run
        log.warning("%s cannot be read to compare its config (%s)", config_file, error)
        return False


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
    build(cfg.composer, _convert_="all").check_fit_per()  # the composer's options, fit_per included
    check_fit_config(cfg)
    check_gate_guard(cfg.get("gate_guard"))
    max_steps = cfg.trainer.get("max_steps", -1)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps == 0 or max_steps < -1:
        raise ValueError(f"trainer.max_steps={max_steps!r} must be a positive integer (or -1 with max_epochs)")


def resolve_checkpoint(path: str) -> Path:
    path = Path(path)
    if path.is_dir():
        if any(path.glob(f"checkpoints/*/{CHECKPOINT_FILE}")) and not (path / "checkpoints" / CHECKPOINT_FILE).exists():
            raise FileNotFoundError(
                f"checkpoint={str(path)!r} holds one checkpoint per fit unit (checkpoints/<dataset>/{CHECKPOINT_FILE}): "
                f"it was fitted per dataset; evaluate it with composer.fit_per=dataset"
            )
        path = path / "checkpoints" / CHECKPOINT_FILE
    if not path.exists():
        raise FileNotFoundError(f"checkpoint={str(path)!r} does not exist (expected <run dir>/checkpoints/{CHECKPOINT_FILE})")
    return path


def resolve_unit_checkpoint(checkpoint: str, unit: FitUnit, flat: bool) -> Path:
    """The gates of one fit unit: <run dir>/checkpoints/composer.safetensors (one suite fit) or
    <run dir>/checkpoints/<unit>/composer.safetensors."""
    if flat:
        return resolve_checkpoint(checkpoint)
    folder = Path(checkpoint)
    if not folder.is_dir():
        raise ValueError(
            f"checkpoint={checkpoint!r}: a run fitted per unit (composer.fit_per=dataset) keeps one checkpoint per dataset; "
            f"give its run folder (<run dir>/checkpoints/<dataset>/{CHECKPOINT_FILE})"
        )
    path = folder / "checkpoints" / unit.id / CHECKPOINT_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"checkpoint={checkpoint!r} has no checkpoints/{unit.id}/{CHECKPOINT_FILE}: that run did not fit {unit.scope!r} "
            f"on its own (composer.fit_per and the evaluated datasets must be the run's)"
        )
    return path


def save_composer_state(composer: Composer, run_dir: Path, unit_dir: str = "") -> Path | None:
    from safetensors.torch import save_file

    module = composer.trainable_module()
    if module is None:
        return None
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    path = run_dir / "checkpoints" / unit_dir / CHECKPOINT_FILE
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
    expected = module.state_dict()
    wrong = [f"{k}: checkpoint {tuple(v.shape)}, this config {tuple(expected[k].shape)}" for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise ValueError(
            f"checkpoint {path} holds gates of other shapes than composer {composer.name!r} builds with this config "
            f"({len(wrong)} tensors, e.g. {wrong[0]}): evaluate with the run's own experts, granularity and input form"
        )
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


RUN_STATE_FILE = "run_state.json"


def find_resumable_run(cfg: DictConfig, run_dir: Path) -> Path | None:
    """resume=true: this run folder if it has a checkpoint, else the newest unfinished run with the same
    config hash under paths.outputs_dir; resume=<folder>: that folder."""
    if cfg.resume in (None, False):
        return None
    if cfg.resume is not True:
        folder = Path(str(cfg.resume))
        if not has_progress(folder):
            raise FileNotFoundError(
                f"resume={str(folder)!r}: nothing there to resume from (no checkpoints/{RESUME_CHECKPOINT}, "
                f"checkpoints/<unit>/{RESUME_CHECKPOINT} or finished units/)"
            )
        return folder
    if has_progress(run_dir):
        return run_dir
    wanted = config_hash(cfg)
    candidates = []
    for state_file in Path(cfg.paths.outputs_dir).rglob(RUN_STATE_FILE):
        folder = state_file.parent
        try:
            state = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not (folder / METRICS_FILE).exists() and has_progress(folder) and matches_config(folder, state.get("config_hash"), wanted):
            candidates.append((progress_time(folder), folder))
    return max(candidates)[1] if candidates else None


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


def planned_units(cfg: DictConfig) -> list[FitUnit]:
    """The run's fit units from its config alone (the configured datasets; Hub-only ones may be skipped later)."""
    datasets = configured_datasets(cfg.task)
    scored = configured_datasets(cfg.eval_task) if cfg.get("eval_task") else datasets
    return plan_units(
        cfg.composer.get("fit_per"), datasets, scored, int(cfg.seed), cfg.composer.get("seed"), int(cfg.composer.get("search_seeds") or 1)
    )


def describe(cfg: DictConfig) -> dict[str, Any]:
    """What a run would do, from its config alone (for dry runs and sweep planning)."""
    model = cfg.model.get("name_or_path") or cfg.model._target_.rsplit(".", 1)[-1]
    units = planned_units(cfg)
    return {
        "overrides": list(cfg.get("overrides") or []),
        "model": str(model),
        "experts": f"{cfg.experts.source}:{cfg.experts.get('count') or 'all'}",
        "composer": cfg.composer.name,
        "task": cfg.task.name,
        "eval_task": cfg.eval_task.name if cfg.get("eval_task") else cfg.task.name,
        "max_steps": cfg.trainer.max_steps,
        "seed": cfg.seed,
        "fit_per": cfg.composer.get("fit_per"),
        "units": describe_units(units),
    }


def describe_units(units: list[FitUnit]) -> str:
    """e.g. "10 (per dataset: qnli wnli; x5 search seeds)" or "1 (suite)"."""
    scopes = list(dict.fromkeys(unit.scope for unit in units))
    seeds = len(units) // len(scopes)
    where = "suite" if scopes == [SUITE] else f"per dataset: {' '.join(scopes)}"
    return f"{len(units)} ({where}" + (f"; x{seeds} search seeds)" if seeds > 1 else ")")


def run(cfg: DictConfig) -> dict[str, Any]:
    silence_third_party_notices()
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
    run_dir, lock = accept_run_folder(run_dir, cfg, record=resume_from is None)  # finished: refused; in use: refused
    try:
        if resume_from is None:
            write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
            write_json(run_dir / RUN_STATE_FILE, {"config_hash": config_hash(cfg), "status": "running"})
        try:
            precheck_run(cfg)
            return _run(cfg, run_dir, resume_from)
        except BaseException as error:
            if not (run_dir / METRICS_FILE).exists():
                status, text = end_state(error)
                write_json(run_dir / RUN_STATE_FILE, {"config_hash": config_hash(cfg), "status": status, "error": text})
            raise
    finally:
        if lock is not None:
            lock.release()


def unit_experts(cfg: DictConfig, base: BaseModel, unit: FitUnit, loaded: dict[Any, ExpertBank]) -> ExpertBank:
    """The experts a fit unit composes: the run's pool, or, with `experts.exclude_scored` and one fit per
    dataset, a pool without the module of the unit's own dataset. Each distinct pool loads once (`loaded`
    is keyed by its expert names)."""
    suite, scored = pool_datasets(cfg)
    if unit.scope != SUITE and cfg.experts.get("exclude_scored"):
        scored = list(unit.scored_datasets)
    key = tuple(name for name, _ in select_pool(cfg.experts, suite, scored))
    if key not in loaded:
        loaded[key] = load_experts(cfg.experts, base, suite, scored)
    return loaded[key]


def run_unit(
    cfg: DictConfig,
    unit: FitUnit,
    flat: bool,
    base: BaseModel,
    banks: dict[Any, ExpertBank],
    task,
    eval_task,
    run_dir: Path,
    resume_from: Path | None,
    device: torch.device,
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """Compose a fresh composer on the base, fit it on the unit's datasets (or load its checkpoint), score it
    on the unit's datasets, and restore the base. Returns (record, predictions); None on DDP ranks > 0."""
    if not flat:
        L.seed_everything(unit.seed, workers=True, verbose=False)  # each unit from the same state, whatever ran before
    composer: Composer = build(cfg.composer, _convert_="all", **({"seed": unit.seed} if "seed" in cfg.composer else {}))
    bank = unit_experts(cfg, base, unit, banks)
    trainable = composer.compose(base, bank)
    base.model.to(device)
    record: dict[str, Any] = {**unit.record(), "experts": list(bank.names)}
    fit_view = task if unit.scope == SUITE else task_slice(task, train=list(unit.fit_datasets))
    score_view = eval_task if unit.scope == SUITE else task_slice(eval_task, test=list(unit.scored_datasets))
    if cfg.mode == "eval":
        if composer.trains:  # nothing was fitted otherwise (nla, single)
            checkpoint = resolve_unit_checkpoint(cfg.checkpoint, unit, flat)
            load_composer_state(composer, checkpoint)
            record["checkpoint"] = str(checkpoint)
    else:
        if composer.needs_search:
            record["search"] = composer.search(make_search_data(base, fit_view, cfg, seed=unit.seed))
        if trainable:
            mixture = fit_view.train_mixture(cfg.data.mixture, cfg.data.get("mixture_cap"))
            record["train"], trainer = fit(cfg, base, composer, mixture, run_dir, resume_from, None if flat else unit)
            if trainer.global_rank != 0:  # DDP: the other ranks only help train
                composer.release()
                return None
            checkpoint = save_composer_state(composer, run_dir, "" if flat else unit.id)
            record["checkpoint"] = str(checkpoint) if checkpoint else None
    base.model.to(device)
    composer.prepare_inference()
    if cfg.get("export_dir"):  # several units: one folder each
        record["export"] = composer.export(str(Path(cfg.export_dir) / ("" if flat else unit.id)))
    results, predictions = evaluate_task(
        base.model, base.tokenizer, score_view, generation_settings(cfg), before_dataset=composer.before_dataset
    )
    record["composer"] = composer.summary()
    record["results"] = results
    composer.release()
    if not flat:
        predictions = [{**row, "unit": unit.id} for row in predictions]
    return record, predictions


def unit_summary(record: dict[str, Any]) -> dict[str, Any]:
    """A unit's entry in metrics.json: its record with its own metrics instead of the full results."""
    return {**{k: v for k, v in record.items() if k != "results"}, "metrics": record["results"]["metrics"]}


def precheck_run(cfg: DictConfig) -> None:
    """The checks that need the expert library's list or the Hub cache, made once the run folder records the
    config (so that a sweep lists a member failing here) and before any model or data loads."""
    for suite, scored in unit_pool_views(cfg):  # an unknown pool or family, too small a family, unknown names
        select_pool(cfg.experts, suite, scored)
    suites = [build(cfg.task, _convert_="all")] + ([build(cfg.eval_task, _convert_="all")] if cfg.get("eval_task") else [])
    check_hub_artifacts(cfg, suites)  # offline: one error naming every missing model, adapter and dataset


def _run(cfg: DictConfig, run_dir: Path, resume_from: Path | None) -> dict[str, Any]:
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)

    composer: Composer = build(cfg.composer, _convert_="all")  # validates its options
    task = build(cfg.task, _convert_="all")
    eval_task = build(cfg.eval_task, _convert_="all") if cfg.get("eval_task") else task
    needs_training = cfg.mode == "train" and composer.needs_training_data
    per_dataset = composer.fit_per == "dataset"
    task.load(need_train=needs_training and not per_dataset, train_limit=cfg.data.train_limit, eval_limit=cfg.data.eval_limit)
    if eval_task is not task:
        eval_task.load(need_train=False, eval_limit=cfg.data.eval_limit)
    if needs_training and per_dataset:
        require_training_rows(task, list(eval_task.test))
    units = plan_units(
        composer.fit_per, list(task.train), list(eval_task.test), int(cfg.seed), cfg.composer.get("seed"), getattr(composer, "search_seeds", 1)
    )
    flat = is_flat(units)
    if cfg.mode == "eval" and composer.needs_search:
        raise ValueError(
            f"composer {composer.name!r} fits by search and keeps no checkpoint, so mode=eval cannot restore it "
            f"(its searched weights are recorded in the run's metrics.json)"
        )
    if cfg.mode == "eval" and composer.trains:  # every unit's checkpoint is there before any model loads
        for unit in units:
            resolve_unit_checkpoint(cfg.checkpoint, unit, flat)
    log.info("fit units (composer.fit_per=%s): %s", composer.fit_per, [unit.id for unit in units])

    base: BaseModel = build(cfg.model)
    truncation = fit_to_length([task, eval_task], base.tokenizer, cfg.data.max_source_length, cfg.data.max_target_length)
    device = torch.device(cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    banks: dict[Any, ExpertBank] = {}
    records: dict[str, dict[str, Any]] = {}
    predictions: list[dict[str, Any]] = []
    helper_rank = False
    for unit in units:
        finished = load_unit(run_dir, unit.id) if resume_from is not None and not flat else None
        if finished is not None:
            log.info("fit unit %s finished before the interruption: kept, not redone", unit.id)
        else:
            finished = run_unit(cfg, unit, flat, base, banks, task, eval_task, run_dir, resume_from, device)
            if finished is None:
                helper_rank = True
                continue
            if not flat:
                save_unit(run_dir, unit.id, *finished)
        records[unit.id], unit_predictions = finished
        predictions.extend(unit_predictions)
    if helper_rank:
        return {"status": "rank_exit"}

    results = combine_unit_results(eval_task.name, units, {unit_id: record["results"] for unit_id, record in records.items()})
    first = records[units[0].id]
    bank = next(iter(banks.values())) if banks else load_experts(cfg.experts, base, *pool_datasets(cfg))
    report = {k: first[k] for k in ("search", "train", "checkpoint", "export") if k in first} if flat else {}
    metrics = {
        **results,
        "status": "completed",
        "task": task.name,
        "eval_task": eval_task.name,
        "skipped": eval_task.skipped,
        "split_notes": {**task.notes, **eval_task.notes},
        "truncation": truncation,
        "model": base.model_id,
        "composer": first["composer"] if flat else {"name": composer.name, "fit_per": composer.fit_per, "units": [u.id for u in units]},
        "experts": {"names": bank.names, "count": len(bank), "sources": bank.sources,
                    **({"rank_padding": bank.rank_padding} if bank.rank_padding else {})},
        "seed": int(cfg.seed),
        "config_hash": config_hash(cfg),
        "code_version": code_version(),
        "overrides": list(cfg.get("overrides") or []),
        "protocol": {
            **run_protocol(cfg, bank, task, eval_task),
            "fit_per": composer.fit_per,
            "search_seeds": getattr(composer, "search_seeds", None),
            "fit_units": [unit.id for unit in units],
            "gate_guard": OmegaConf.to_container(cfg.gate_guard) if cfg.get("gate_guard") is not None else None,
            "input_truncation": "longest free-text slot of the row; inputs without a template keep their end",  # tasks/truncation.py
        },
        **({"evaluates": OmegaConf.to_container(cfg.evaluates)} if cfg.get("evaluates") else {}),
        "units": {unit_id: unit_summary(record) for unit_id, record in records.items()},
        **report,
    }
    write_jsonl(run_dir / PREDICTIONS_FILE, predictions)
    write_json(run_dir / METRICS_FILE, metrics)  # last: its presence marks the run finished
    write_json(run_dir / RUN_STATE_FILE, {"config_hash": metrics["config_hash"], "status": "completed"})
    log.info("metrics: %s", {k: round(v, 3) for k, v in metrics["metrics"].items()})
    log.info("results written to %s", run_dir)
    return metrics
