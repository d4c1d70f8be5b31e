"""Compare two run or sweep folders: per dataset, the difference B - A with its 95% interval.

    comparisons = compare_folders(folder_a, folder_b)      # scripts/compare_runs.py prints them

Each folder's finished runs are grouped by setting (their config without the seed and its copies); a
folder of one setting is compared with the other folder's one setting, otherwise groups are matched by
their label (composer and what sets it apart). Inside a matched pair, runs are paired by seed: the interval
is the paired bootstrap over examples (`mole_exp.reporting.intervals`), two-level when there are several
seeds. BLEU of a single pair of runs uses sacreBLEU's own paired bootstrap. Runs that evaluated different
examples are refused with an error that says where they differ.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mole_exp.reporting.intervals import (
    RESAMPLES,
    SEED,
    Interval,
    paired_difference,
    paired_run_scores,
    point_estimate,
    sacrebleu_paired,
    target_of,
)
from mole_exp.reporting.predictions import align, read_predictions
from mole_exp.reporting.run_results import Run, collect_runs, seed_keys, setting, variant_label

AVERAGE_ROW = "average"


@dataclass
class Group:
    label: str
    runs: list[Run]  # completed, one per seed

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]


@dataclass
class Row:
    dataset: str  # a dataset key, or AVERAGE_ROW (the mean of every metric value of the compared datasets)
    metric: str  # the metric value's name (em, bleu, rougeL, ...; "avg" for the average row)
    value_a: float
    value_b: float
    interval: Interval


@dataclass
class Comparison:
    label_a: str
    label_b: str
    seeds: list[int]
    runs_a: list[str]
    runs_b: list[str]
    rows: list[Row] = field(default_factory=list)
    unpaired: list[str] = field(default_factory=list)  # runs without a partner of the same seed
    not_compared: list[str] = field(default_factory=list)  # datasets only one side evaluated


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Finished runs grouped by setting (seeds aside), each named by its variant label; settings that share
    a label are told apart by the config keys in which they differ."""
    completed = [r for r in runs if r.completed]
    settings = [setting(r) for r in completed]
    seeded = seed_keys(completed, settings)
    keyed: dict[str, list[tuple[Run, dict[str, str]]]] = {}
    for run, values in zip(completed, settings, strict=True):
        plain = {k: v for k, v in values.items() if k not in seeded}
        keyed.setdefault(json.dumps(plain, sort_keys=True), []).append((run, plain))
    by_label: dict[str, list[dict[str, str]]] = {}
    for members in keyed.values():
        by_label.setdefault(variant_label(members[0][0]), []).append(members[0][1])
    groups = []
    for members in keyed.values():
        run, values = members[0]
        label = variant_label(run)
        siblings = by_label[label]
        differing = sorted(k for k in set().union(*siblings) if len({s.get(k) for s in siblings}) > 1)
        if differing:
            label += " [" + ", ".join(f"{k}={values.get(k, 'unset')}" for k in differing) + "]"
        seeds = [r.seed for r, _ in members]
        if len(set(seeds)) != len(seeds):
            paths = ", ".join(str(r.path) for r, _ in members)
            raise ValueError(f"setting {label!r} has several runs of one seed ({paths}); give folders that hold one run per seed")
        groups.append(Group(label, sorted((r for r, _ in members), key=lambda r: (r.seed is None, r.seed or 0))))
    return groups


def match_groups(groups_a: list[Group], groups_b: list[Group]) -> list[tuple[Group, Group]]:
    if not groups_a or not groups_b:
        side = "A" if not groups_a else "B"
        raise ValueError(f"folder {side} holds no finished run (metrics.json with status completed)")
    if len(groups_a) == 1 and len(groups_b) == 1:
        return [(groups_a[0], groups_b[0])]
    by_label = {g.label: g for g in groups_b}
    pairs = [(g, by_label[g.label]) for g in groups_a if g.label in by_label]
    if not pairs:
        raise ValueError(
            f"the folders hold several settings and none match by label: A has {[g.label for g in groups_a]}, "
            f"B has {[g.label for g in groups_b]}; give one setting per folder (a run folder, or a sweep member's)"
        )
    return pairs


def compare_groups(a: Group, b: Group, resamples: int = RESAMPLES, seed: int = SEED) -> Comparison:
    seeds_a, seeds_b = {r.seed: r for r in a.runs}, {r.seed: r for r in b.runs}
    if len(a.runs) == 1 and len(b.runs) == 1:
        pairs = [(a.runs[0], b.runs[0])]  # one run each: compared even when their seeds differ
    else:
        pairs = [(seeds_a[s], seeds_b[s]) for s in seeds_a if s in seeds_b]
    if not pairs:
        raise ValueError(f"no seed is in both {a.label!r} (seeds {sorted(seeds_a)}) and {b.label!r} (seeds {sorted(seeds_b)}): nothing to pair")
    paired = {id(r) for pair in pairs for r in pair}
    comparison = Comparison(a.label, b.label, [p[1].seed for p in pairs], [str(p[0].path) for p in pairs], [str(p[1].path) for p in pairs])
    comparison.unpaired = [f"{r.path} (seed {r.seed})" for r in a.runs + b.runs if id(r) not in paired]
    evaluated = [set(read_predictions(r.path)) for pair in pairs for r in pair]
    common = [d for d in read_predictions(pairs[0][0].path) if all(d in e for e in evaluated)]
    comparison.not_compared = sorted(set().union(*evaluated) - set(common))
    if not common:
        raise ValueError(f"{a.label!r} and {b.label!r} have no evaluated dataset in common")
    scored = [paired_run_scores(x.path, y.path, common) for x, y in pairs]
    for dataset in common:
        for name in scored[0][0][dataset].outputs:
            target = ((dataset, name),)
            if scored[0][0][dataset].metric == "bleu" and len(pairs) == 1:
                interval = _sacrebleu_interval(pairs[0][0].path, pairs[0][1].path, dataset, resamples, seed)
            else:
                interval = paired_difference(scored, target, resamples, seed)
            comparison.rows.append(Row(dataset, name, _mean(scored, target, 0), _mean(scored, target, 1), interval))
    if len(common) > 1:
        target = target_of(scored[0][0], common)
        comparison.rows.append(Row(AVERAGE_ROW, "avg", _mean(scored, target, 0), _mean(scored, target, 1),
                                   paired_difference(scored, target, resamples, seed)))
    return comparison


def _mean(scored, target, side: int) -> float:
    return point_estimate([pair[side] for pair in scored], target)


def _sacrebleu_interval(run_a: Path, run_b: Path, dataset: str, resamples: int, seed: int) -> Interval:
    a, b = align(read_predictions(run_a)[dataset], read_predictions(run_b)[dataset], (str(run_a), str(run_b)))
    return sacrebleu_paired(a.predictions, b.predictions, a.references, resamples, seed).difference


def compare_folders(folder_a: str | Path, folder_b: str | Path, resamples: int = RESAMPLES, seed: int = SEED) -> list[Comparison]:
    groups = [group_runs(collect_runs([folder])) for folder in (folder_a, folder_b)]
    return [compare_groups(a, b, resamples, seed) for a, b in match_groups(*groups)]


def render(comparisons: list[Comparison], decimals: int = 1) -> str:
    lines = []
    for c in comparisons:
        lines += [f"## B = {c.label_b}  vs  A = {c.label_a}  (seeds {', '.join(map(str, c.seeds))})", "",
                  "| dataset | metric | A | B | B - A | 95% CI | p | significant | examples | method |",
                  "|---|---|---:|---:|---:|---|---:|---|---:|---|"]
        for row in c.rows:
            i = row.interval
            p = "" if i.p_value is None else f"{i.p_value:.3f}"
            lines.append(f"| {row.dataset} | {row.metric} | {row.value_a:.{decimals}f} | {row.value_b:.{decimals}f} | "
                         f"{i.estimate:+.{decimals}f} | [{i.low:+.{decimals}f}, {i.high:+.{decimals}f}] | {p} | "
                         f"{'yes' if i.significant else 'no'} | {i.examples} | {i.method} |")
        lines += ["", f"A runs: {', '.join(c.runs_a)}", f"B runs: {', '.join(c.runs_b)}"]
        if c.unpaired:
            lines.append(f"Not paired (no run of the same seed on the other side): {', '.join(c.unpaired)}")
        if c.not_compared:
            lines.append(f"Not compared (not evaluated by every run): {', '.join(c.not_compared)}")
        lines.append("")
    return "\n".join(lines)


def as_json(comparisons: list[Comparison]) -> list[dict[str, object]]:
    return [{"a": c.label_a, "b": c.label_b, "seeds": c.seeds, "runs_a": c.runs_a, "runs_b": c.runs_b, "unpaired": c.unpaired,
             "not_compared": c.not_compared,
             "rows": [{"dataset": r.dataset, "metric": r.metric, "a": r.value_a, "b": r.value_b, **r.interval.as_dict()} for r in c.rows]}
            for c in comparisons]
