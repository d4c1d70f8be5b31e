"""What a run would do, from its config alone: its fit units and a one-line plan (dry runs, sweep planning)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from mole_exp.experts.sources import source_name
from mole_exp.training.fit_units import SUITE, FitUnit, configured_datasets, plan_units


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
        "experts": f"{source_name(cfg.experts)}:{cfg.experts.get('count') or 'all'}",
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
