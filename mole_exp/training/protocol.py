"""The protocol choices of a run that the paper leaves open, as recorded in metrics.json's `protocol` object
and printed by dry runs: the expert pool and its exact expert ids, the evaluation splits, the scorers.

Each part is a pure function of the config (and, once loaded, of the bank and tasks), so a dry run prints
the same expert ids the run will compose.
"""

from __future__ import annotations

from typing import Any

from mole_exp.experts.catalogue import PoolSpec, pool_datasets
from mole_exp.experts.sources import source_name


def experts_protocol(cfg: Any, names: list[str], ids: list[str], entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The pool (experts.pool, pool_seed, family, exclude_scored) and the experts it gave, each with the
    datasets it was trained on and its family; `in_domain`: those trained on the suite's datasets."""
    suite, scored = pool_datasets(cfg)
    trained = [list(e.get("tasks") or ([e["task"]] if e.get("task") else [])) for e in entries] or [[] for _ in names]
    return {
        **PoolSpec.from_cfg(cfg.experts).record(),
        "library": str(cfg.experts.get("ids_file") or cfg.experts.get("library_dir") or source_name(cfg.experts)),
        "ids": list(ids),
        "names": list(names),
        "trained_on": dict(zip(names, trained, strict=True)),
        "families": dict(zip(names, [e.get("family") for e in entries] or [None] * len(names), strict=True)),
        "in_domain": [n for n, datasets in zip(names, trained, strict=True) if set(datasets) & set(suite)],
        "suite_datasets": suite,
        "scored_datasets": scored,
    }


def data_protocol(cfg: Any) -> dict[str, Any]:
    return {
        "split_seed": int(cfg.data.get("split_seed", 0)),
        "eval_subset": cfg.data.get("eval_subset", "random"),
        "eval_limit": cfg.data.get("eval_limit"),
    }


def scorer_protocol(*tasks: Any) -> dict[str, dict[str, Any]]:
    """Per evaluated dataset: its metric and, for exact match, the normalisation (task.em_normalization)."""
    return {key: {"metric": spec.metric, "normalization": spec.normalization} for task in tasks for key, spec in task.specs.items()}


def run_protocol(cfg: Any, bank: Any, task: Any, eval_task: Any) -> dict[str, Any]:
    """metrics.json's `protocol` keys of this module (other parts of the code add theirs)."""
    return {
        "experts": experts_protocol(cfg, bank.names, bank.sources, bank.manifest_entries),
        "data": data_protocol(cfg),
        "scorers": scorer_protocol(eval_task),
    }


def dry_run_experts(cfg: Any, chosen: list[tuple[str, str]]) -> str:
    """The dry run's line of expert ids for one sweep member."""
    spec = PoolSpec.from_cfg(cfg.experts)
    draws = spec.pool in ("random", "in_domain") or (spec.pool == "family" and spec.count is not None)
    how = spec.pool + (f" {spec.family}" if spec.family else "") + (f" pool_seed={spec.pool_seed}" if draws else "")
    how += ", exclude_scored" if spec.exclude_scored else ""
    return f"[dry run]   experts ({how}; {len(chosen)}): " + " ".join(source for _, source in chosen)
