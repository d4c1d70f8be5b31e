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

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from mole_exp.base.models import BaseModel
from mole_exp.composers.base import Composer
from mole_exp.evaluation.evaluator import evaluate_task
from mole_exp.experts.bank import ExpertBank
from mole_exp.experts.catalogue import pool_datasets
from mole_exp.experts.loading import load_experts, select_pool, unit_pool_views
from mole_exp.files import METRICS_FILE, PREDICTIONS_FILE, write_atomic, write_json, write_jsonl
from mole_exp.tasks.truncation import fit_to_length
from mole_exp.training.checkpoints import load_composer_state, resolve_unit_checkpoint, save_composer_state
from mole_exp.training.config import build, config_hash, generation_settings, validate
from mole_exp.training.describe import describe
from mole_exp.training.fit import fit, make_search_data
from mole_exp.training.fit_units import (
    SUITE,
    FitUnit,
    is_flat,
    plan_units,
    require_training_rows,
    task_slice,
)
from mole_exp.training.hub_preflight import check_hub_artifacts
from mole_exp.training.logs import silence_third_party_notices
from mole_exp.training.protocol import dry_run_experts, run_protocol
from mole_exp.training.provenance import code_version
from mole_exp.training.resume import RUN_STATE_FILE, find_resumable_run
from mole_exp.training.run_folder import accept_run_folder, end_state
from mole_exp.training.unit_metrics import combine_unit_results
from mole_exp.training.unit_store import load_unit, save_unit

log = logging.getLogger(__name__)


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
    composer.check_base(base)  # a family the composer cannot run on: refused before the experts load
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
