"""A run's metrics from its fit units' own (mole_exp/training/fit_units.py).

Each unit is evaluated on its scored datasets by `evaluate_task`. The run's metrics are then
- per dataset and metric: the unit's value, or with S search seeds the mean of the S values;
- the suite average `test/<suite>/avg`: the mean of every metric of every dataset, as `evaluate_task`
  computes it for a single fit (the paper's averages), from those per-dataset values;
- with S > 1, `per_search_seed`: each key's S values (the suite average of each search seed included)
  and their sample standard deviation (n - 1, as the tables' mean ± std).
"""

from __future__ import annotations

import statistics
from typing import Any

from mole_exp.evaluation.metrics import AVERAGE, metric_key
from mole_exp.training.fit_units import FitUnit


def combine_unit_results(suite: str, units: list[FitUnit], results: dict[str, dict[str, Any]], split: str = "test") -> dict[str, Any]:
    """`results[unit.id]` is evaluate_task's result for that unit; returns the run's (same keys)."""
    if len(units) == 1:
        return results[units[0].id]
    average_key = metric_key(split, suite, AVERAGE)
    values: dict[str, list[float]] = {}  # key -> one value per search seed, in dataset order
    higher_is_better: dict[str, bool] = {}
    num_examples: dict[str, int] = {}
    extras: dict[str, Any] = {}
    for unit in units:
        result = results[unit.id]
        for key, value in result["metrics"].items():
            if key != average_key:
                values.setdefault(key, []).append(float(value))
                higher_is_better[key] = result["higher_is_better"][key]
        for dataset, count in result["num_examples"].items():
            num_examples.setdefault(dataset, count)
        for dataset, extra in result.get("extras", {}).items():
            extras.setdefault(dataset, extra)
    metrics = {key: per_seed[0] if len(per_seed) == 1 else statistics.fmean(per_seed) for key, per_seed in values.items()}
    metrics[average_key] = sum(metrics.values()) / len(metrics)  # every metric of every dataset
    higher_is_better[average_key] = True
    combined = {"metrics": metrics, "higher_is_better": higher_is_better, "num_examples": num_examples, "extras": extras}
    seeds = max(len(per_seed) for per_seed in values.values())
    if seeds > 1:
        if any(len(per_seed) != seeds for per_seed in values.values()):
            raise ValueError(f"search seeds evaluated unevenly: {({k: len(v) for k, v in values.items()})}")
        per_seed_values = dict(values)
        per_seed_values[average_key] = [sum(v[k] for v in values.values()) / len(values) for k in range(seeds)]
        combined["per_search_seed"] = {
            "count": seeds,
            "values": per_seed_values,
            "std": {key: statistics.stdev(per_seed) for key, per_seed in per_seed_values.items()},
        }
    return combined
