"""Markdown tables of the mini reproduction, read from the runs' metrics.json and predictions.jsonl.

The paper's own table code (mole_exp/reporting/tables.py) lays out the paper's suites and numbers; these
synthetic runs have neither, so this small writer lays out the same comparisons for them. Exact match
(0-100) everywhere; a cell holds `mean [95% CI] (n=seeds)`: the mean over seeds of metrics.json's value and
the interval of `mole_exp.reporting.intervals` (a bootstrap over the test examples and, with several seeds,
over the seeds). With a reference column, ↑ / ↓ mark cells significantly above / below it (a paired
bootstrap of the difference, runs paired by seed, examples by input). A cell without a value says why.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from mole_exp.files import METRICS_FILE
from mole_exp.reporting.intervals import (
    Interval,
    RunScores,
    mean_interval,
    paired_difference,
    paired_run_scores,
    run_scores,
)
from mole_exp.tools.mini.plan import COMPOSE_TASK, MIXTURE_TASK, TWO_SKILL, Plan, RunSpec

NO_RUN = "—"
BETTER, WORSE = "↑", "↓"
METRIC = "em"


def read_metrics(spec: RunSpec) -> dict[str, Any] | None:
    path = Path(spec.run_dir) / METRICS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def em(metrics: dict[str, Any], dataset: str) -> float | None:
    return (metrics.get("metrics") or {}).get(f"test/{dataset}/{METRIC}")


def format_cell(values: list[float], failures: int = 0, interval: Interval | None = None) -> str:
    if not values:
        return f"failed ({failures})" if failures else NO_RUN
    text = f"{statistics.fmean(values):.1f}"
    if interval is not None:
        text += f" [{interval.low:.1f}, {interval.high:.1f}]"
    elif len(values) > 1:
        text += f" ± {statistics.stdev(values):.1f}"
    if len(values) > 1:
        text += f" (n={len(values)})"
    return text + (f", {failures} failed" if failures else "")


class Scores:
    """Every run's predictions read once; comparisons and intervals from them."""

    def __init__(self, resamples: int = 1000):
        self.resamples = resamples
        self._runs: dict[Path, RunScores] = {}
        self._pairs: dict[tuple[Path, Path], tuple[RunScores, RunScores]] = {}

    def run(self, spec: RunSpec) -> RunScores:
        key = Path(spec.run_dir)
        if key not in self._runs:
            self._runs[key] = run_scores(key)
        return self._runs[key]

    def pair(self, a: RunSpec, b: RunSpec) -> tuple[RunScores, RunScores]:
        key = (Path(a.run_dir), Path(b.run_dir))
        if key not in self._pairs:
            self._pairs[key] = paired_run_scores(*key)
        return self._pairs[key]

    def interval(self, specs: list[RunSpec], datasets: list[str]) -> Interval:
        """The mean EM over `datasets` of these runs (one per seed), with its interval."""
        return mean_interval([self.run(s) for s in specs], tuple((d, METRIC) for d in datasets), self.resamples)

    def difference(self, better: list[RunSpec], worse: list[RunSpec], datasets: list[str]) -> Interval | None:
        """mean EM over `datasets` of `better` minus `worse`, runs paired by seed; None when no seed pairs up."""
        by_seed = {s.seed: s for s in worse}
        pairs = [(by_seed[s.seed], s) for s in better if s.seed in by_seed and finished(s) and finished(by_seed[s.seed])]
        if not pairs:
            return None
        return paired_difference([self.pair(a, b) for a, b in pairs], tuple((d, METRIC) for d in datasets), self.resamples)


def finished(spec: RunSpec) -> bool:
    return (Path(spec.run_dir) / METRICS_FILE).exists()


def value(metrics: dict[str, Any], datasets: list[str]) -> float | None:
    values = [em(metrics, d) for d in datasets]
    return None if any(v is None for v in values) else statistics.fmean(values)


def cell(specs: list[RunSpec], datasets: list[str], scores: Scores | None, reference: list[RunSpec] | None = None) -> str:
    """mean [CI] (n) of the mean EM over `datasets`; ↑/↓ against `reference` when it differs significantly."""
    values, failures, done = [], 0, []
    for spec in specs:
        metrics = read_metrics(spec)
        if metrics is None:
            failures += (Path(spec.run_dir) / "run_state.json").exists()
            continue
        number = value(metrics, datasets)
        if number is not None:
            values.append(number)
            done.append(spec)
    interval, mark = None, ""
    if scores is not None and done:
        try:
            interval = scores.interval(done, datasets)
            if reference and specs is not reference:
                difference = scores.difference(done, reference, datasets)
                if difference is not None and difference.significant:
                    mark = f" {BETTER}" if difference.estimate > 0 else f" {WORSE}"
        except (ValueError, FileNotFoundError):
            interval = None  # no predictions to resample: the mean ± std alone
    return format_cell(values, failures, interval) + mark


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def by_label(specs: list[RunSpec]) -> dict[str, list[RunSpec]]:
    groups: dict[str, list[RunSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.label, []).append(spec)
    return groups


def dataset_table(columns: dict[str, list[RunSpec]], datasets: list[str], task: str, scores: Scores | None = None,
                  reference: str | None = None) -> str:
    """Rows: each dataset's EM, then the average over the datasets; one column per variant."""
    base = columns.get(reference) if reference else None
    rows = [[d, *(cell(specs, [d], scores, base) for specs in columns.values())] for d in datasets]
    rows.append(["**average**", *(cell(specs, list(datasets), scores, base) for specs in columns.values())])
    return markdown(["dataset", *columns], rows)


def composer_table(plan: Plan, datasets: list[str], scores: Scores | None = None) -> str:
    """Table 3 style: every composer and control on the held-out mixture of the tasks (marks against MoLE)."""
    return dataset_table(by_label(plan.study("table3")), datasets, MIXTURE_TASK, scores, "mole")


def compose_table(plan: Plan, scores: Scores | None = None) -> str:
    """Every composer and control on the held-out two-skill task (marks against MoLE)."""
    return dataset_table(by_label(plan.study("compose")), [TWO_SKILL], COMPOSE_TASK, scores, "mole")


def balance_table(plan: Plan, datasets: list[str], scores: Scores | None = None) -> str:
    """Table 7 style: NLA, MoLE, MoLE without L_balance, MoLE without L_balance at fixed raised temperatures."""
    table3 = by_label(plan.study("table3"))
    columns = {label: table3[label] for label in ("nla", "mole") if label in table3}
    columns.update(by_label(plan.study("balance")))
    return dataset_table(columns, datasets, MIXTURE_TASK, scores, "mole")


def granularity_columns(plan: Plan, order: tuple[str, ...], default: str) -> dict[str, list[RunSpec]]:
    table3 = by_label(plan.study("table3"))
    found = by_label(plan.study("granularity"))
    columns = {}
    for granularity in order:
        label = f"mole {granularity}"
        specs = table3.get("mole", []) if granularity == default else found.get(label, [])
        if specs:
            columns[label] = specs
    return columns


def granularity_table(plan: Plan, datasets: list[str], order: tuple[str, ...], default: str, scores: Scores | None = None) -> str:
    """Table 9 style: MoLE's gate at each granularity (matrix, layer, block, network); marks against the default."""
    return dataset_table(granularity_columns(plan, order, default), datasets, MIXTURE_TASK, scores, f"mole {default}")


def count_table(plan: Plan, datasets: list[str], scores: Scores | None = None) -> str:
    """Table 6 style: average EM over the mixture by the number of experts composed."""
    counted = plan.study("count")
    composers = list(dict.fromkeys(s.composer for s in counted))
    table3 = by_label(plan.study("table3"))
    counts = sorted({s.facts["count"] for s in counted})
    rows = []
    for count in counts:
        rows.append([f"{count} LoRAs", *(cell([s for s in counted if s.composer == c and s.facts["count"] == count], list(datasets), scores)
                                          for c in composers)])
    rows.append([f"{len(datasets)} LoRAs (all)", *(cell(table3.get(c, []), list(datasets), scores) for c in composers)])
    return markdown(["experts composed", *composers], rows)


def mask_table(plan: Plan, datasets: list[str], scores: Scores | None = None) -> str:
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
        row = [task]
        for composer in composers:
            mine = [s for s in masked if s.composer == composer and s.facts.get("masked") == task]
            row += [cell(table3.get(composer, []), rest, scores), cell(mine, rest, scores), cell(mine, [task], scores)]
        rows.append(row)
    return markdown(header, rows)


def expert_table(manifests: dict[int, dict[str, Any]]) -> str:
    """Each library (one per seed): each expert on its own task's test split, and the bare base there."""
    names = list(dict.fromkeys(a["name"] for m in manifests.values() for a in m.get("adapters", [])))

    def column(name: str, key: str, form: str = ".1f") -> str:
        values = [a.get(key) for m in manifests.values() for a in m.get("adapters", []) if a["name"] == name]
        values = [float(v) for v in values if v is not None]
        if not values:
            return NO_RUN
        return f"{statistics.fmean(values):{form}}" + (f" ± {statistics.stdev(values):{form}}" if len(values) > 1 else "")

    rows = [[name, column(name, "base_score"), column(name, "eval_score"), column(name, "train_steps", ".0f"),
             column(name, "final_loss", ".4f")] for name in names]
    header = ["expert (= its task)", "base EM", "expert EM", "train steps", "final train loss"]
    return markdown(header, rows) + (f"\n\nMean ± std over the {len(manifests)} libraries (one per seed)." if len(manifests) > 1 else "")


def random_library_table(folders: dict[int, Path]) -> str:
    """The random libraries' norms against the real ones: what was matched and what the deltas came out as."""
    rows = []
    for seed, folder in sorted(folders.items()):
        manifest = json.loads((Path(folder) / "manifest.json").read_text())
        ratios = {key: [] for key in ("A", "B", "delta")}
        for adapter in manifest["adapters"]:
            for module, found in adapter["norms"].items():
                real = adapter["reference_norms"][module]
                for key in ratios:
                    if real[key] > 0:
                        ratios[key].append(found[key] / real[key])
        rows.append([str(seed), manifest["match"], *(f"{statistics.fmean(v):.3f}" if v else NO_RUN for v in ratios.values())])
    return markdown(["seed", "matched", "mean ‖A'‖/‖A‖", "mean ‖B'‖/‖B‖", "mean ‖s B'A'‖/‖s BA‖"], rows)


FAMILY_LABELS = {"t5": "T5", "causal": "decoder-only"}


def families_table(plans: dict[str, Plan], datasets: dict[str, list[str]], scores: Scores | None = None) -> str:
    """The families side by side: one row per composer or control, per family (`plans`: family -> its plan,
    `datasets`: family -> its mixture's tasks) two columns: the mixture average (Table 3's study) and the held-out
    two-skill task; ↑ / ↓ against that family's MoLE. A composer a family did not run shows `—`."""
    columns = {family: (by_label(plan.study("table3")), by_label(plan.study("compose"))) for family, plan in plans.items()}
    labels = list(dict.fromkeys(label for mixture, two_skill in columns.values() for label in (*mixture, *two_skill)))
    header = ["composer"]
    for family in plans:
        name = FAMILY_LABELS.get(family, family)
        header += [f"{name}: mixture average", f"{name}: two-skill"]
    rows = []
    for label in labels:
        row = [label]
        for family, (mixture, two_skill) in columns.items():
            row.append(cell(mixture[label], list(datasets[family]), scores, mixture.get("mole")) if label in mixture else NO_RUN)
            row.append(cell(two_skill[label], [TWO_SKILL], scores, two_skill.get("mole")) if label in two_skill else NO_RUN)
        rows.append(row)
    return markdown(header, rows)
