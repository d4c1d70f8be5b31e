"""Markdown tables of the mini reproduction, read from the runs' metrics.json (mean ± std over seeds).

The paper's own table code (mole_exp/evaluation/tables.py) lays out the paper's suites and numbers; these
synthetic runs have neither, so this small writer lays out the same comparisons for them. Exact match
(0-100) everywhere; a cell holds `mean ± std (n=seeds)`, or why it has no value.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mole_exp.io import METRICS_FILE
from mole_exp.mini.plan import COMPOSE_TASK, MIXTURE_TASK, Plan, RunSpec

NO_RUN = "—"


def read_metrics(spec: RunSpec) -> dict[str, Any] | None:
    path = Path(spec.run_dir) / METRICS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def em(metrics: dict[str, Any], dataset: str) -> float | None:
    return (metrics.get("metrics") or {}).get(f"test/{dataset}/em")


def average(metrics: dict[str, Any], task: str) -> float | None:
    return (metrics.get("metrics") or {}).get(f"test/{task}/avg")


def format_cell(values: list[float], failures: int = 0) -> str:
    if not values:
        return f"failed ({failures})" if failures else NO_RUN
    text = f"{statistics.fmean(values):.1f}"
    if len(values) > 1:
        text += f" ± {statistics.stdev(values):.1f} (n={len(values)})"
    return text + (f", {failures} failed" if failures else "")


def cell(specs: list[RunSpec], value: Callable[[dict[str, Any]], float | None]) -> str:
    values, failures = [], 0
    for spec in specs:
        metrics = read_metrics(spec)
        if metrics is None:
            failures += (Path(spec.run_dir) / "run_state.json").exists()
            continue
        number = value(metrics)
        if number is not None:
            values.append(float(number))
    return format_cell(values, failures)


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def by_label(specs: list[RunSpec]) -> dict[str, list[RunSpec]]:
    groups: dict[str, list[RunSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.label, []).append(spec)
    return groups


def dataset_table(columns: dict[str, list[RunSpec]], datasets: list[str], task: str) -> str:
    """Rows: each dataset's EM, then the suite average; one column per variant."""
    rows = [[d, *(cell(specs, lambda m, d=d: em(m, d)) for specs in columns.values())] for d in datasets]
    rows.append(["**average**", *(cell(specs, lambda m: average(m, task)) for specs in columns.values())])
    return markdown(["dataset", *columns], rows)


def composer_table(plan: Plan, datasets: list[str]) -> str:
    """Table 3 style: every composer on the held-out mixture of the tasks."""
    return dataset_table(by_label(plan.study("table3")), datasets, MIXTURE_TASK)


def compose_table(plan: Plan) -> str:
    """Every composer on the held-out two-skill task."""
    return dataset_table(by_label(plan.study("compose")), ["reverse_shift"], COMPOSE_TASK)


def balance_table(plan: Plan, datasets: list[str]) -> str:
    """Table 7 style: NLA, MoLE, MoLE without L_balance, MoLE without L_balance at fixed raised temperatures."""
    table3 = by_label(plan.study("table3"))
    columns = {label: table3[label] for label in ("nla", "mole") if label in table3}
    columns.update(by_label(plan.study("balance")))
    return dataset_table(columns, datasets, MIXTURE_TASK)


def granularity_table(plan: Plan, datasets: list[str], order: tuple[str, ...], default: str) -> str:
    """Table 9 style: MoLE's gate at each granularity (matrix, layer, block, network)."""
    table3 = by_label(plan.study("table3"))
    found = by_label(plan.study("granularity"))
    columns = {}
    for granularity in order:
        label = f"mole {granularity}"
        specs = table3.get("mole", []) if granularity == default else found.get(label, [])
        if specs:
            columns[label] = specs
    return dataset_table(columns, datasets, MIXTURE_TASK)


def count_table(plan: Plan, total: int) -> str:
    """Table 6 style: average EM over the mixture by the number of experts composed."""
    counted = plan.study("count")
    composers = list(dict.fromkeys(s.composer for s in counted))
    table3 = by_label(plan.study("table3"))
    counts = sorted({s.facts["count"] for s in counted})
    rows = []
    for count in counts:
        rows.append([f"{count} LoRAs", *(cell([s for s in counted if s.composer == c and s.facts["count"] == count],
                                              lambda m: average(m, MIXTURE_TASK)) for c in composers)])
    rows.append([f"{total} LoRAs (all)", *(cell(table3.get(c, []), lambda m: average(m, MIXTURE_TASK)) for c in composers)])
    return markdown(["experts composed", *composers], rows)


def mask_table(plan: Plan, datasets: list[str]) -> str:
    """Figure 8 as a table: one expert masked at inference; the average over the *remaining* tasks with and
    without the mask (MoLE: same trained gates, renormalised; NLA: merged over the remaining experts)."""
    masked = plan.study("mask")
    table3 = by_label(plan.study("table3"))
    composers = list(dict.fromkeys(s.composer for s in masked))
    header = ["masked expert"]
    for composer in composers:
        header += [f"{composer}: rest, unmasked", f"{composer}: rest, masked", f"{composer}: masked task"]
    rows = []
    for task in (t for t in datasets if any(s.facts.get("masked") == t for s in masked)):
        rest = [d for d in datasets if d != task]

        def rest_average(metrics: dict[str, Any], rest=rest) -> float | None:
            values = [em(metrics, d) for d in rest]
            return None if any(v is None for v in values) else statistics.fmean(values)

        row = [task]
        for composer in composers:
            mine = [s for s in masked if s.composer == composer and s.facts.get("masked") == task]
            row += [cell(table3.get(composer, []), rest_average), cell(mine, rest_average), cell(mine, lambda m, t=task: em(m, t))]
        rows.append(row)
    return markdown(header, rows)


def expert_table(manifest: dict[str, Any]) -> str:
    """The library: each expert on its own task's test split, and the bare base there."""
    rows = [[a["name"], str(a.get("base_score")), str(a.get("eval_score")), str(a.get("train_steps")), str(a.get("final_loss"))]
            for a in manifest.get("adapters", [])]
    return markdown(["expert (= its task)", "base EM", "expert EM", "train steps", "final train loss"], rows)
