"""Intervals and significance marks for a built table (scripts/make_tables.py --intervals / --reference).

    table = build_table("table3", runs)
    add_intervals(table, reference="nla")       # each cell: mean [95% CI]; ↑ / ↓ where it differs from nla's

A cell's interval resamples its runs' test examples (predictions.jsonl), and its seeds when it has several
(`mole_exp.reporting.intervals.mean_interval`). With a reference column, each cell of the same row is
compared with the reference's cell: runs paired by seed (one run each: paired as they are), examples
paired by dataset and input, the difference's interval by the paired bootstrap; ↑ marks a cell
significantly better than the reference (the interval of the difference excludes 0, in the direction of
higher_is_better), ↓ significantly worse. A suite-average row resamples every metric of every dataset the
runs evaluated (the definition of `test/<suite>/avg`), a table's own average row the metrics of its dataset
rows; an interval is shown only where the value recomputed
from predictions.jsonl equals the cell's value, otherwise the cell says why it has none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mole_exp.reporting.intervals import (
    RESAMPLES,
    SEED,
    Interval,
    RunScores,
    Target,
    mean_interval,
    paired_difference,
    paired_run_scores,
    point_estimate,
    run_scores,
)
from mole_exp.reporting.run_results import Run
from mole_exp.reporting.table_layouts import DATASET, ROWS_AVERAGE, SUITE_AVERAGE, Row
from mole_exp.reporting.tables import Cell, Table

BETTER, WORSE = "↑", "↓"
TOLERANCE = 1e-6


@dataclass
class CellIntervals:
    """What add_intervals found for one cell (kept on `Cell.intervals`)."""

    interval: Interval | None = None
    difference: Interval | None = None  # this cell minus the reference column's cell
    mark: str = ""  # BETTER, WORSE or ""
    notes: list[str] = field(default_factory=list)  # why an interval or a comparison is missing


class ScoreCache:
    """Each run's predictions read and scored once; pairs aligned once."""

    def __init__(self) -> None:
        self.single: dict[Path, RunScores] = {}
        self.pairs: dict[tuple[Path, Path], tuple[RunScores, RunScores]] = {}

    def run(self, run: Run) -> RunScores:
        if run.path not in self.single:
            self.single[run.path] = run_scores(run.path)
        return self.single[run.path]

    def pair(self, a: Run, b: Run) -> tuple[RunScores, RunScores]:
        key = (a.path, b.path)
        if key not in self.pairs:
            self.pairs[key] = paired_run_scores(a.path, b.path)
        return self.pairs[key]


def row_target(row: Row, runs: list[Run], scores: list[RunScores]) -> Target:
    if row.kind == DATASET:
        return ((row.dataset, row.metric),)
    evaluated = set.intersection(*(set(r.evaluated) for r in runs))
    if row.kind == ROWS_AVERAGE:  # the table's own average: the mean of its dataset rows the runs evaluated
        return tuple(member for member in row.members if member[0] in evaluated)
    datasets = [d for d in scores[0] if d in evaluated]
    return tuple((d, name) for d in datasets for name in scores[0][d].outputs)


def cell_interval(row: Row, cell: Cell, cache: ScoreCache, resamples: int, seed: int) -> CellIntervals:
    found = CellIntervals()
    if row.kind not in (DATASET, SUITE_AVERAGE, ROWS_AVERAGE):
        found.notes.append("no interval for a mean of rows")
        return found
    try:
        scores = [cache.run(r) for r in cell.runs]
        target = row_target(row, cell.runs, scores)
        recomputed = point_estimate(scores, target)
        if abs(recomputed - cell.mean) > TOLERANCE * max(1.0, abs(cell.mean)):
            found.notes.append(f"no interval: predictions.jsonl give {recomputed:.4f}, metrics.json {cell.mean:.4f}")
            return found
        found.interval = mean_interval(scores, target, resamples, seed)
    except (ValueError, FileNotFoundError) as error:
        found.notes.append(f"no interval: {error}")
    return found


def compare_cells(row: Row, cell: Cell, reference: Cell, cache: ScoreCache, resamples: int, seed: int) -> tuple[Interval | None, str | None]:
    if len(cell.runs) == 1 and len(reference.runs) == 1:
        pairs = [(reference.runs[0], cell.runs[0])]
    else:
        by_seed = {r.seed: r for r in reference.runs}
        pairs = [(by_seed[r.seed], r) for r in cell.runs if r.seed in by_seed]
    if not pairs:
        return None, "not compared with the reference: no run of the same seed"
    try:
        scored = [cache.pair(a, b) for a, b in pairs]
        target = row_target(row, [r for pair in pairs for r in pair], [s for pair in scored for s in pair])
        return paired_difference(scored, target, resamples, seed), None
    except (ValueError, FileNotFoundError) as error:
        return None, f"not compared with the reference: {error}"


def add_intervals(table: Table, reference: str | None = None, resamples: int = RESAMPLES, seed: int = SEED) -> None:
    """Fill `cell.intervals` for every cell with a value; with `reference` (a column label), the differences
    from that column and the ↑ / ↓ marks."""
    labels = [c.label for c in table.columns]
    if reference is not None and reference not in labels:
        raise ValueError(f"--reference {reference!r} is not a column of {table.name}; its columns are {labels}")
    cache = ScoreCache()
    table.interval_legend = legend(reference, resamples)
    for index, row in enumerate(table.rows):
        for label in labels:
            cell = table.cells[(index, label)]
            if cell.mean is not None:
                cell.intervals = cell_interval(row, cell, cache, resamples, seed)
        if reference is None:
            continue
        base = table.cells[(index, reference)]
        if base.mean is None or row.kind not in (DATASET, SUITE_AVERAGE, ROWS_AVERAGE):
            continue
        higher = _higher_is_better(row, base)
        for label in labels:
            cell = table.cells[(index, label)]
            if label == reference or cell.mean is None:
                continue
            difference, why = compare_cells(row, cell, base, cache, resamples, seed)
            cell.intervals.difference = difference
            if why:
                cell.intervals.notes.append(why)
            elif difference.significant:
                cell.intervals.mark = BETTER if (difference.estimate > 0) == higher else WORSE


def _higher_is_better(row: Row, cell: Cell) -> bool:
    directions = {r.higher_is_better(row.key(r)) for r in cell.runs} - {None}
    return directions != {False}


def interval_text(cell: Cell, decimals: int) -> str:
    """`mean [low, high] (n=k)` and the mark; the plain value when there is no interval."""
    found: CellIntervals = cell.intervals
    text = f"{cell.mean:.{decimals}f}"
    if found.interval is not None:
        text += f" [{found.interval.low:.{decimals}f}, {found.interval.high:.{decimals}f}]"
    if cell.n > 1 and not cell.of_rows:
        text += f" (n={cell.n})"
    return text + (f" {found.mark}" if found.mark else "")


def legend(reference: str | None, resamples: int) -> str:
    text = (f"Intervals: [95% CI] of the mean, a bootstrap over the test examples (predictions.jsonl) and over seeds where a "
            f"cell has several ({resamples} resamples).")
    if reference:
        text += (f" {BETTER} / {WORSE}: significantly better / worse than column {reference!r} (paired bootstrap of the "
                 f"difference, runs paired by seed, examples by input; its 95% CI excludes 0).")
    return text
