"""The paper's NLP tables (3-8) from results files: runs grouped into cells, the paper's numbers beside ours.

    runs = collect_runs([sweep_dir])                 # mole_exp.reporting.run_results
    table = build_table("table3", runs)              # rows x columns of cells, paper values, failed runs
    write_table(table, out_dir)                      # mole_exp.reporting.table_render: .md, .csv, .tex

Runs of one cell that differ only by seed are aggregated (mean, std, n); runs of one cell that differ in
any other setting split the column into sub-columns named by the differing config keys, so different
settings are never averaged together. A cell without a value says why (no run, skipped, failed, ...).
What each table is (rows, runs, columns) lives in `mole_exp.reporting.table_layouts`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from mole_exp.reporting.paper import PaperValue, flagged_averages, paper_table
from mole_exp.reporting.run_results import Run, differing_keys
from mole_exp.reporting.table_columns import short_differences
from mole_exp.reporting.table_layouts import DATASET, LAYOUTS, MEAN_OF_ROWS, ROWS_AVERAGE, SUITE_AVERAGE, Layout, Row

LISTED = 6  # datasets named in a caveat before "and N more"


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)  # one per run (or per row, for a mean of rows)
    runs: list[Run] = field(default_factory=list)  # the runs the values came from
    failed: list[Run] = field(default_factory=list)  # failed runs that belonged here
    missing: str | None = None  # why there is no value, in short: no run | skipped | not evaluated | failed | rows missing
    reason: str | None = None  # the full reason
    caveat: str | None = None  # said of a value, e.g. an average over other datasets than the paper's
    of_rows: bool = False  # the values are rows' means, not runs'
    coverage: frozenset[str] = frozenset()  # an average's datasets: those every one of its runs evaluated
    best: bool = False
    intervals: Any = None  # table_intervals.CellIntervals, when intervals were asked for (make_tables.py --intervals)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n > 1 and not self.of_rows else None


def named(datasets: set[str] | frozenset[str]) -> str:
    names = sorted(datasets)
    return ", ".join(names[:LISTED]) + (f" and {len(names) - LISTED} more" if len(names) > LISTED else "")


def average_caveats(cell: Cell, paper_datasets: set[str]) -> list[str]:
    """What an average covers, where that is not what the paper's average covers."""
    caveats = []
    skipped = {d for r in cell.runs for d in r.skipped}
    if skipped:
        caveats.append(f"average over the evaluated datasets only; skipped: {named(skipped)}")
    if paper_datasets and cell.coverage != paper_datasets:
        extra, lacking = cell.coverage - paper_datasets, paper_datasets - cell.coverage
        parts = ([f"also {named(extra)}"] if extra else []) + ([f"without {named(lacking)}"] if lacking else [])
        caveats.append(f"averages {len(cell.coverage)} datasets, the paper's {len(paper_datasets)}: " + ", ".join(parts))
    return caveats


def rows_average(row: Row, run: Run) -> tuple[float | None, frozenset[str]]:
    """A run's value of a ROWS_AVERAGE row: the mean of its values of the rows it averages, and their datasets."""
    found = [(dataset, run.value(key)) for (dataset, _), key in zip(row.members, row.member_keys(), strict=True)]
    values = [v for _, v in found if v is not None]
    return (sum(values) / len(values) if values else None), frozenset(d for d, v in found if v is not None)


def rows_average_caveats(row: Row, cell: Cell) -> list[str]:
    wanted = {dataset for dataset, _ in row.members}
    lacking = wanted - cell.coverage
    if not lacking:
        return []
    skipped = {d: r.skipped[d] for r in cell.runs for d in lacking if d in r.skipped}
    why = f" (skipped: {named(set(skipped))})" if skipped else ""
    return [f"the mean of {len(cell.coverage)} of the table's {len(wanted)} datasets: without {named(lacking)}{why}"]


def absent_reason(run: Run, row: Row) -> tuple[str, str]:
    if row.kind == ROWS_AVERAGE:
        return "not evaluated", f"metrics.json has none of this average's rows ({named({d for d, _ in row.members})})"
    if row.dataset in run.skipped:
        return "skipped", f"{row.dataset} skipped: {run.skipped[row.dataset]}"
    return "not evaluated", f"metrics.json has no {row.key(run)}"


def run_cell(row: Row, members: list[Run], paper_datasets: set[str]) -> Cell:
    in_row = [r for r in members if row.holds(r)]
    cell = Cell(failed=[r for r in in_row if not r.completed])
    absent = []
    covered = []
    for run in (r for r in in_row if r.completed):
        value, datasets = rows_average(row, run) if row.kind == ROWS_AVERAGE else (run.value(row.key(run)), frozenset())
        if value is None:
            absent.append(absent_reason(run, row))
        else:
            cell.values.append(value)
            cell.runs.append(run)
            covered.append(datasets)
    caveats = []
    if row.kind == SUITE_AVERAGE and cell.runs:
        cell.coverage = frozenset.intersection(*(r.evaluated for r in cell.runs))
        caveats += average_caveats(cell, paper_datasets)
    if row.kind == ROWS_AVERAGE and cell.runs:
        cell.coverage = frozenset.intersection(*covered)
        caveats += rows_average_caveats(row, cell)
    if cell.values and absent:
        caveats.append(f"{len(absent)} more run(s) lack it: " + "; ".join(dict.fromkeys(text for _, text in absent)))
    cell.caveat = "; ".join(caveats) or None
    if cell.values:
        return cell
    if absent:
        kinds = {kind for kind, _ in absent}
        cell.missing = kinds.pop() if len(kinds) == 1 else "not evaluated"
        cell.reason = "; ".join(dict.fromkeys(text for _, text in absent))
    elif cell.failed:
        cell.missing, cell.reason = "failed", f"{len(cell.failed)} run(s) failed (listed under the table)"
    else:
        cell.missing = "no run"
    return cell


def mean_of_rows_cell(cells: list[Cell], labels: list[str]) -> Cell:
    missing = [label for label, cell in zip(labels, cells, strict=True) if cell.mean is None]
    if missing:
        return Cell(missing="rows missing", reason=f"the mean of rows needs every row; missing: {', '.join(missing)}")
    return Cell(values=[c.mean for c in cells], runs=[r for c in cells for r in c.runs], of_rows=True)


# ---- columns ------------------------------------------------------------------------------------------


def split_mixed_settings(rows: list[Row], runs: list[Run], labels: dict[str, str]) -> dict[str, str]:
    """Run path -> column label, where a column whose cell would mix settings splits by the differing keys."""
    split = dict(labels)
    for label in dict.fromkeys(labels.values()):
        members = [r for r in runs if labels[str(r.path)] == label and r.config]
        keys: set[str] = set()
        for row in (r for r in rows if r.kind != MEAN_OF_ROWS):
            keys |= differing_keys([r for r in members if row.holds(r)])
        suffixes = short_differences(members, keys) if keys else {}  # only what differs, shortened
        for run in members if keys else []:
            split[str(run.path)] = f"{label} [{suffixes[str(run.path)]}]"
    return split


@dataclass(frozen=True)
class Column:
    label: str
    paper_method: str | None


def order_columns(labels: list[str], method_of: dict[str, str | None], methods: list[str]) -> list[Column]:
    """The paper's methods first, in its order (a column even without runs), then the rest by name."""
    columns = []
    for method in methods:
        mine = sorted(label for label in labels if method_of[label] == method)
        columns += [Column(label, method) for label in mine] or [Column(method, method)]
    columns += [Column(label, None) for label in sorted(labels) if method_of[label] is None]
    return columns


# ---- the table ----------------------------------------------------------------------------------------


@dataclass
class Table:
    layout: Layout
    rows: list[Row]
    columns: list[Column]
    cells: dict[tuple[int, str], Cell]  # (row index, column label) -> ours
    paper_methods: list[str]
    paper: dict[tuple[int, str], PaperValue]  # (row index, paper method) -> the paper's number
    paper_flags: dict[tuple[int, str], str]  # (row index, paper method) -> why the printed average is off
    runs: list[Run]  # the runs this table used, completed and failed
    column_of: dict[str, str]  # run path -> column label
    unplaced: list[Run]  # failed runs without a readable config.yaml: no table can place them
    interval_legend: str | None = None  # set by table_intervals.add_intervals

    @property
    def name(self) -> str:
        return self.layout.name

    @property
    def failed(self) -> list[Run]:
        return [r for r in self.runs if not r.completed]


def mark_best(table: Table) -> None:
    """Bold the best of ours in each row where values differ (higher_is_better from metrics.json; ties all bold).

    Averages compete only with averages over the same datasets, the most complete ones."""
    for index, row in enumerate(table.rows):
        cells = [table.cells[(index, c.label)] for c in table.columns if table.cells[(index, c.label)].mean is not None]
        if cells:
            most_complete = max((c.coverage for c in cells), key=lambda coverage: (len(coverage), sorted(coverage)))
            cells = [c for c in cells if c.coverage == most_complete]
        if max((c.mean for c in cells), default=0.0) - min((c.mean for c in cells), default=0.0) < 1e-9:
            continue
        directions = {r.higher_is_better(row.key(r)) for c in cells for r in c.runs} - {None}
        higher = row.kind == MEAN_OF_ROWS or directions != {False}
        best = max(c.mean for c in cells) if higher else min(c.mean for c in cells)
        for cell in cells:
            cell.best = abs(cell.mean - best) < 1e-9


def paper_values(name: str, rows: list[Row], methods: list[str]) -> tuple[dict, dict]:
    """(row index, method) -> the paper's number, and -> why a printed average is not given by its rows."""
    values = {(v.suite, v.dataset, v.metric, v.method): v for v in paper_table(name)}
    flags = flagged_averages(name)
    paper, paper_flags = {}, {}
    for index, row in enumerate(rows):
        for method in methods:
            value = values.get((row.suite, row.paper_dataset, row.paper_metric, method))
            if value is not None:
                paper[(index, method)] = value
                if value.is_average and (row.suite, method) in flags:
                    paper_flags[(index, method)] = flags[(row.suite, method)]
    return paper, paper_flags


def build_table(name: str, runs: list[Run]) -> Table:
    if name not in LAYOUTS:
        raise ValueError(f"layout {name!r} is not one of {sorted(LAYOUTS)} (or auto)")
    layout = LAYOUTS[name]
    selected = layout.select(runs)
    rows = layout.rows(name, selected)
    column_of = split_mixed_settings(rows, selected, {str(r.path): layout.label(r) for r in selected})
    methods = list(dict.fromkeys(v.method for v in paper_table(name)))
    base_label = {column_of[str(r.path)]: layout.label(r) for r in selected}
    method_of = {label: layout.paper_method(base, selected, methods) for label, base in base_label.items()}
    columns = order_columns(list(base_label), method_of, methods)

    paper_datasets = {suite: {r.dataset for r in rows if r.suite == suite and r.kind == DATASET and r.paper_dataset}
                      for suite in {r.suite for r in rows}}
    paper_rows = [(i, r) for i, r in enumerate(rows) if r.kind != MEAN_OF_ROWS and r.paper_dataset is not None]
    cells: dict[tuple[int, str], Cell] = {}
    for column in columns:
        members = [r for r in selected if column_of[str(r.path)] == column.label]
        for index, row in enumerate(rows):
            if row.kind != MEAN_OF_ROWS:
                cells[(index, column.label)] = run_cell(row, members, paper_datasets[row.suite])
        for index, row in enumerate(rows):
            if row.kind == MEAN_OF_ROWS:
                above = [cells[(i, column.label)] for i, _ in paper_rows]
                cells[(index, column.label)] = mean_of_rows_cell(above, [r.dataset for _, r in paper_rows])

    paper, paper_flags = paper_values(name, rows, methods)
    unplaced = [r for r in runs if not r.completed and not r.config]
    table = Table(layout, rows, columns, cells, methods, paper, paper_flags, selected, column_of, unplaced)
    mark_best(table)
    return table
