"""Fit units: what one composition is fitted on, what it is scored on, and with which seed.

A run fits its composer once per unit, each time a fresh composer on the restored base:

    composer.fit_per=suite     one unit: fitted on the suite's training mixture, scored on every evaluated
                               dataset (today's behaviour; the paper's MoLE and PEMs)
    composer.fit_per=dataset   one unit per evaluated dataset: fitted on that dataset's training rows only
                               (its own few-shot examples, its own search or freshly initialised gates) and
                               scored on that dataset alone (LoRAHub's protocol)

and, for composers with `search_seeds` S > 1 (lorahub), each of those S times with independent seeds
base * S + k (k = 0..S-1; base = composer.seed, else the run's seed), so S = 1 keeps the base seed.

Unit ids name their files: "suite" (one fit, S = 1: the run's flat layout, checkpoints/composer.safetensors),
else "<dataset or suite>" with "-seed<k>" appended when S > 1 (checkpoints/<id>/, units/<id>.json).

Everything here is a pure function of the config and the dataset keys: `dry_run=true` shows the units
without loading anything.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

SUITE = "suite"


@dataclass(frozen=True)
class FitUnit:
    """One composition: fitted on `fit_datasets`, scored on `scored_datasets`, seeded by `seed`."""

    id: str
    scope: str  # "suite" or the dataset it is fitted and scored on
    fit_datasets: tuple[str, ...]
    scored_datasets: tuple[str, ...]
    seed: int
    search_seed_index: int = 0

    def record(self) -> dict[str, Any]:
        return {
            "scope": self.scope, "fit_datasets": list(self.fit_datasets), "scored_datasets": list(self.scored_datasets),
            "seed": self.seed, "search_seed_index": self.search_seed_index,
        }


def unit_seeds(run_seed: int, composer_seed: int | None, search_seeds: int) -> list[int]:
    """The seeds of a fit's S independent searches: base * S + k (S = 1: the base seed itself)."""
    base = int(run_seed if composer_seed is None else composer_seed)
    return [base * search_seeds + k for k in range(search_seeds)]


def plan_units(
    fit_per: str | None,
    fit_datasets: list[str],
    scored_datasets: list[str],
    run_seed: int,
    composer_seed: int | None = None,
    search_seeds: int = 1,
) -> list[FitUnit]:
    """The run's fit units, in the order they run (datasets in suite order, then search seeds)."""
    seeds = unit_seeds(run_seed, composer_seed, search_seeds)

    def suffix(k: int) -> str:
        return f"-seed{k}" if search_seeds > 1 else ""

    if fit_per == "dataset":
        return [
            FitUnit(f"{dataset}{suffix(k)}", dataset, (dataset,), (dataset,), seed, k)
            for dataset in scored_datasets
            for k, seed in enumerate(seeds)
        ]
    return [FitUnit(f"{SUITE}{suffix(k)}", SUITE, tuple(fit_datasets), tuple(scored_datasets), seed, k) for k, seed in enumerate(seeds)]


def is_flat(units: list[FitUnit]) -> bool:
    """One suite fit: the run keeps the single-fit file layout (checkpoints/composer.safetensors, ...)."""
    return len(units) == 1 and units[0].id == SUITE


def check_fit_config(cfg: DictConfig) -> None:
    """fit_per=dataset fits and scores each dataset of one suite: not a transfer run (eval_task)."""
    if cfg.composer.get("fit_per") == "dataset" and cfg.get("eval_task") and cfg.eval_task.name != cfg.task.name:
        raise ValueError(
            f"composer.fit_per=dataset fits each evaluated dataset on its own training rows, but this run is scored on "
            f"eval_task={cfg.eval_task.name!r}, not on the suite it trains on (task={cfg.task.name!r}): a transfer run has one "
            f"fit per suite; use composer.fit_per=suite"
        )


def require_training_rows(task: Any, datasets: list[str]) -> None:
    """Per-dataset fitting needs training rows for every scored dataset: one error naming all that lack them."""
    missing = [dataset for dataset in datasets if not task.train.get(dataset)]
    if missing:
        raise ValueError(
            f"composer.fit_per=dataset fits each dataset on its own training rows, but {missing} of suite {task.name!r} "
            f"have no training split; use composer.fit_per=suite (one fit on the rest of the suite's training data) "
            f"or leave them out with task.only=[...]"
        )


def task_slice(task: Any, train: list[str] | None = None, test: list[str] | None = None) -> Any:
    """The loaded task as one unit sees it: the training rows of `train`, the evaluation rows of `test`
    (None: all of them). A shallow copy: rows are shared, the suite's name, specs and seed are kept."""
    view = copy.copy(task)
    if train is not None:
        view.train = {dataset: task.train[dataset] for dataset in train}
    if test is not None:
        view.test = {dataset: task.test[dataset] for dataset in test}
    return view


def configured_datasets(task_cfg: DictConfig) -> list[str]:
    """The dataset keys a task config will load (its `only` filter applied), without loading anything."""
    keys = list(task_cfg.datasets)
    only = task_cfg.get("only")
    return [key for key in keys if key in only] if only else keys
