"""Our scorer's and lm-eval's numbers for the same model, side by side: one row per run with lm-eval results.

    table = build_lm_eval_table(runs)           # None when no run has <run>/lm_eval/results_*.json
    print(render_markdown(table, base)); write_lm_eval_table(table, out_dir, base)   # lm_eval.md, lm_eval.csv

Columns: the run (its column label, as in the paper tables, and its folder); ours from metrics.json, named
`ours <suite> avg` and `ours <dataset> <metric>` for each dataset an lm-eval task of the row matches (the
task is the dataset's key or ends in `_<key>`: local_bbh_zeroshot_boolean_expressions, anli_r1); then
lm-eval's, named `lm-eval <task> <metric> (<filter>)`, for each group and each task in no group (a group's
tasks are in the csv). Each value is as its scorer reports it, with the examples it scored: ours in percent,
lm-eval's on its own scale (acc, exact_match: fractions of 1).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from mole_exp.evaluation.metrics import AVERAGE
from mole_exp.files import write_atomic
from mole_exp.reporting.lm_eval_results import LmEvalValue, lm_eval_values
from mole_exp.reporting.run_results import SPLIT, Run, split_metric_key, variant_label
from mole_exp.reporting.table_render import MISSING, markdown_cell, shown_path

NAME = "lm_eval"
TITLE = "lm-eval beside our scorer: the same models scored by both"
CSV_FIELDS = ("column", "run", "scorer", "name", "metric", "filter", "value", "stderr", "n", "top_level", "limit", "file")
NOTES = (
    "ours: metrics.json (percent; our prompts, FLAN templates, our evaluation subsets and scorers: BBH exact match by "
    "LoRAHub's scorer or strictly, NLI exact match of the generated option, sacreBLEU with its signature).",
    "lm-eval: its results files in <run>/lm_eval/ (scripts/lm_eval.py), newest per task; values on lm-eval's scale "
    "(acc, exact_match: fractions of 1). bbh_zeroshot: exact match ignoring case after its regex filters "
    "(flexible-extract: the answer pattern found in the generation); anli: multiple choice by log-likelihood of each "
    "option (acc), no generation; its BLEU prints no signature. Prompts and examples are lm-eval's own.",
)


@dataclass(frozen=True)
class Entry:
    """One number of one run: ours or lm-eval's."""

    scorer: str  # "ours" | "lm-eval"
    name: str  # our dataset or suite, or lm-eval's task or group
    metric: str
    filter: str
    value: float
    stderr: float | None
    n: int | None
    top_level: bool
    limit: float | None = None
    file: str = ""

    @property
    def label(self) -> str:
        if self.scorer == "ours":
            return f"ours {self.name} {self.metric}"
        return f"lm-eval {self.name} {self.metric}" + (f" ({self.filter})" if self.filter != "none" else "")


@dataclass
class LmEvalTable:
    runs: list[Run]
    entries: dict[str, list[Entry]]  # run path -> its numbers, ours first
    columns: list[str]  # the markdown's value columns (top-level entries), in order of first appearance

    name: str = NAME


def matches(task: str, dataset: str) -> bool:
    return task == dataset or task.endswith("_" + dataset)


def our_entries(run: Run, values: list[LmEvalValue]) -> list[Entry]:
    """The run's suite average and its datasets that one of the lm-eval tasks matches."""
    counts = (run.metrics or {}).get("num_examples") or {}
    entries = []
    average = run.value(f"{SPLIT}/{run.eval_task}/{AVERAGE}")
    if average is not None:
        entries.append(Entry("ours", str(run.eval_task), AVERAGE, "none", average, None, sum(counts.values()) or None, True))
    for key in run.metric_keys():
        parts = split_metric_key(key)
        matched = [v for v in values if not v.group and parts and matches(v.task, parts[1])]
        if parts and parts[0] == SPLIT and parts[1] != run.eval_task and matched:
            # shown in the markdown where its lm-eval task is (a group's tasks are in the csv only)
            top_level = any(v.top_level for v in matched)
            entries.append(Entry("ours", parts[1], parts[2], "none", run.value(key), None, counts.get(parts[1]), top_level))
    return entries


def lm_eval_entry(value: LmEvalValue) -> Entry:
    return Entry("lm-eval", value.task, value.metric, value.filter, value.value, value.stderr, value.samples,
                 value.top_level, value.limit, str(value.file))


def build_lm_eval_table(runs: list[Run]) -> LmEvalTable | None:
    """The runs with lm-eval results (completed runs only), or None when there are none."""
    entries: dict[str, list[Entry]] = {}
    shown: list[Run] = []
    for run in (r for r in runs if r.completed):
        values = lm_eval_values(run.path)
        if values:
            shown.append(run)
            entries[str(run.path)] = our_entries(run, values) + [lm_eval_entry(v) for v in values]
    if not shown:
        return None
    columns = list(dict.fromkeys(e.label for run in shown for e in entries[str(run.path)] if e.top_level))
    return LmEvalTable(shown, entries, columns)


def value_text(entry: Entry) -> str:
    text = f"{entry.value:.2f}" if entry.scorer == "ours" else f"{entry.value:.4f}"
    return text + (f" (n={entry.n})" if entry.n is not None else "")


def render_markdown(table: LmEvalTable, base: Path | None = None) -> str:
    header = ["column", "run", *table.columns]
    lines = [f"## {TITLE}", "", "| " + " | ".join(markdown_cell(h, False) for h in header) + " |", "|---|---|" + "---:|" * len(table.columns)]
    for run in table.runs:
        by_label = {e.label: e for e in table.entries[str(run.path)] if e.top_level}
        cells = [variant_label(run), shown_path(run.path, base)]
        cells += [value_text(by_label[c]) if c in by_label else MISSING for c in table.columns]
        lines.append("| " + " | ".join(markdown_cell(c, False) for c in cells) + " |")
    limits = sorted({e.limit for entries in table.entries.values() for e in entries if e.limit is not None})
    notes = list(NOTES) + ([f"lm-eval ran with --limit {', '.join(f'{x:g}' for x in limits)} (a subset of each task)."] if limits else [])
    lines += ["", "Notes:", *(f"{i}. {text}" for i, text in enumerate(notes, 1))]
    lines += ["", "Every value, a group's tasks included: lm_eval.csv."]
    return "\n".join(lines) + "\n"


def render_csv(table: LmEvalTable, base: Path | None = None) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for run in table.runs:
        for e in table.entries[str(run.path)]:
            writer.writerow({
                "column": variant_label(run), "run": shown_path(run.path, base), "scorer": e.scorer, "name": e.name,
                "metric": e.metric, "filter": e.filter, "value": e.value, "stderr": "" if e.stderr is None else e.stderr,
                "n": "" if e.n is None else e.n, "top_level": e.top_level, "limit": "" if e.limit is None else e.limit,
                "file": shown_path(Path(e.file), base) if e.file else "",
            })
    return out.getvalue()


def write_lm_eval_table(table: LmEvalTable, out_dir: str | Path, base: Path | None = None) -> list[Path]:
    """<out_dir>/lm_eval.md and lm_eval.csv, each written atomically."""
    out_dir = Path(out_dir)
    return [write_atomic(out_dir / f"{NAME}.md", render_markdown(table, base)), write_atomic(out_dir / f"{NAME}.csv", render_csv(table, base))]
