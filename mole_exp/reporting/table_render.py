"""A built table as markdown, csv and LaTeX, written atomically as <out>/<table>.md, .csv, .tex.

Ours: a run's value, or `mean ± std (n=k)` over the runs of one setting (seeds); the best of ours per row in
bold. A missing cell says why (no run, skipped, not evaluated, failed) with a numbered note. The paper's
numbers are printed as printed; † marks an average its own rows do not give. The csv has one line per
cell of ours, with the paper's number of its method and the run folders it came from (relative to `base`,
the first folder given to scripts/make_tables.py).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from mole_exp.files import write_atomic
from mole_exp.reporting.run_results import Run
from mole_exp.reporting.table_columns import column_caption, extra_column_note, not_comparable
from mole_exp.reporting.table_layouts import MEAN_OF_ROWS, Row
from mole_exp.reporting.tables import Cell, Table

METRIC_NAMES = {"bleu": "BLEU", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "em": "EM", "avg": "avg"}
MISSING = "—"
FLAG = "†"
HEADER = ("suite", "dataset", "metric")
CSV_FIELDS = (
    "table", "suite", "dataset", "metric", "column", "paper_method", "mean", "std", "n", "values", "seeds", "best",
    "missing", "reason", "caveat", "paper_value", "paper_flag", "paper_note", "runs", "failed_runs", "not_comparable",
)
INTERVAL_FIELDS = ("ci_low", "ci_high", "difference", "difference_low", "difference_high", "significance")  # with --intervals


def shown_path(path: Path, base: Path | None) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve())) if base else str(path)
    except ValueError:
        return str(path)


def row_label(row: Row) -> str:
    if row.dataset.startswith("n_experts="):
        label = f"{row.dataset.split('=')[1]} LoRAs"
    elif row.kind == MEAN_OF_ROWS:
        label = "average of the paper's rows"
    else:
        label = row.dataset
    return label if row.paper_dataset is not None else f"{label} (not in paper table)"


@dataclass
class Notes:
    """Numbered notes under a table, each text once."""

    texts: list[str] = field(default_factory=list)

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"


def value_text(cell: Cell, decimals: int) -> str:
    if cell.intervals is not None:
        from mole_exp.reporting.table_intervals import interval_text

        return interval_text(cell, decimals)
    if cell.std is None:
        return f"{cell.mean:.{decimals}f}"
    return f"{cell.mean:.{decimals}f} ± {cell.std:.{decimals}f} (n={cell.n})"


def cell_text(cell: Cell, decimals: int, notes: Notes) -> str:
    if cell.mean is None:
        return f"{MISSING} ({cell.missing} {notes.mark(cell.reason)})" if cell.reason else f"{MISSING} ({cell.missing})"
    text = value_text(cell, decimals) + (f" {notes.mark(cell.caveat)}" if cell.caveat else "")
    return text + "".join(f" {notes.mark(note)}" for note in (cell.intervals.notes if cell.intervals is not None else []))


@dataclass
class Presentation:
    """A table as plain text cells, shared by the markdown and LaTeX renderings."""

    title: str
    header: list[str]
    body: list[list[tuple[str, bool]]]  # (text, bold)
    notes: list[str]
    failed: list[str]
    sources: list[str]
    captions: list[str] = field(default_factory=list)  # per column: model, expert pool, evaluated examples


def present(table: Table, base: Path | None = None) -> Presentation:
    notes = Notes()
    decimals = table.layout.decimals
    header = list(HEADER) + [c.label for c in table.columns] + [f"paper {m}" for m in table.paper_methods]
    body = []
    for index, row in enumerate(table.rows):
        line = [(row.suite, False), (row_label(row), False), (METRIC_NAMES.get(row.metric, row.metric), False)]
        for column in table.columns:
            cell = table.cells[(index, column.label)]
            text = cell_text(cell, decimals, notes)
            reason = not_comparable(cell.runs) if cell.mean is not None and table.paper_methods else None
            line.append((text + (f" (not comparable {notes.mark(reason)})" if reason else ""), cell.best))
        for method in table.paper_methods:
            value = table.paper.get((index, method))
            text = "" if value is None else value.printed
            if (index, method) in table.paper_flags:
                text += f" {FLAG}{notes.mark('paper: ' + table.paper_flags[(index, method)])}"
            elif value is not None and value.note:
                text += f" {notes.mark('paper: ' + value.note)}"
            line.append((text, False))
        body.append(line)
    notes.texts += [text for text in table.layout.notes if text not in notes.texts]
    failed = [
        f"{shown_path(r.path, base)}: {r.problem} (column {table.column_of[str(r.path)]}, task {r.task}, eval {r.eval_task}, seed {r.seed})"
        for r in table.failed
    ] + [f"{shown_path(r.path, base)}: {r.problem} (not placed: no readable config.yaml)" for r in table.unplaced]
    return Presentation(table.layout.title, header, body, notes.texts, failed, sources(table, base), captions(table))


def captions(table: Table) -> list[str]:
    """One line per column of ours: what it compares (mole_exp.reporting.table_columns)."""
    lines = []
    for column in table.columns:
        runs = [r for r in table.runs if r.completed and table.column_of[str(r.path)] == column.label]
        line = column_caption(column.label, runs)
        if column.paper_method is None and table.paper_methods:
            line += " — " + extra_column_note(column.label).split(": ", 1)[1]
        lines.append(line)
    return lines


def sources(table: Table, base: Path | None) -> list[str]:
    lines = []
    for column in table.columns:
        runs = [r for r in table.runs if r.completed and table.column_of[str(r.path)] == column.label]
        if runs:
            lines.append(f"{column.label}: " + ", ".join(f"{shown_path(r.path, base)} ({r.eval_task}, seed {r.seed})" for r in runs))
    return lines


# ---- markdown -----------------------------------------------------------------------------------------


def markdown_cell(text: str, bold: bool) -> str:
    text = text.replace("|", "\\|")
    return f"**{text}**" if bold and text else text


def render_markdown(table: Table, base: Path | None = None) -> str:
    shown = present(table, base)
    lines = [f"## {shown.title}", "", "| " + " | ".join(shown.header) + " |", "|" + "---|" * len(HEADER) + "---:|" * (len(shown.header) - len(HEADER))]
    lines += ["| " + " | ".join(markdown_cell(text, bold) for text, bold in line) + " |" for line in shown.body]
    lines += ["", "Columns (model; experts; evaluated examples):", *(f"- {line}" for line in shown.captions)] if shown.captions else []
    lines += ["", f"Ours: mean ± std (n runs) where runs of one setting differ by seed; best of ours per row in **bold**. "
              f"Paper: as printed; {FLAG} an average its own rows do not give."]
    lines += ["", table.interval_legend] if table.interval_legend else []
    lines += ["", "Notes:", *(f"{i}. {text}" for i, text in enumerate(shown.notes, 1))] if shown.notes else []
    lines += ["", "Failed runs (config.yaml without a completed metrics.json):", *(f"- {line}" for line in shown.failed)] if shown.failed else []
    where = f" (folders relative to {base})" if base else ""
    lines += ["", f"Runs per column{where}:", *(f"- {line}" for line in shown.sources)] if shown.sources else []
    return "\n".join(lines) + "\n"


# ---- LaTeX --------------------------------------------------------------------------------------------

TEX_REPLACEMENTS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "—": "--", FLAG: r"$^\dagger$",
    "α": r"$\alpha$", "τ": r"$\tau$", "<": r"$<$", ">": r"$>$", "↑": r"$\uparrow$", "↓": r"$\downarrow$",
}


def tex_escape(text: str) -> str:
    return "".join(TEX_REPLACEMENTS.get(ch, ch) for ch in text)


def render_latex(table: Table, base: Path | None = None) -> str:
    shown = present(table, base)
    spec = "l" * len(HEADER) + "r" * (len(shown.header) - len(HEADER))
    lines = [
        "% made by scripts/make_tables.py from metrics.json and config.yaml files; needs \\usepackage{booktabs}",
        "\\begin{table}[t]", "\\centering", "\\scriptsize", f"\\caption{{{tex_escape(shown.title)}}}",
        f"\\label{{tab:ours-{table.name}}}", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
        " & ".join(tex_escape(h) for h in shown.header) + " \\\\", "\\midrule",
    ]
    for line in shown.body:
        lines.append(" & ".join(f"\\textbf{{{tex_escape(t)}}}" if bold and t else tex_escape(t) for t, bold in line) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    if shown.notes or shown.captions:
        lines += ["\\par\\smallskip", "\\begin{minipage}{\\linewidth}\\tiny"]
        lines += [f"{tex_escape(text)}\\\\" for text in shown.captions]
        lines += [f"[{i}] {tex_escape(text)}\\\\" for i, text in enumerate(shown.notes, 1)]
        lines += ["\\end{minipage}"]
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


# ---- csv ----------------------------------------------------------------------------------------------


def csv_line(table: Table, index: int, row: Row, column_label: str, base: Path | None) -> dict[str, object]:
    cell = table.cells[(index, column_label)]
    method = next(c.paper_method for c in table.columns if c.label == column_label)
    paper = table.paper.get((index, method)) if method else None
    runs: list[Run] = cell.runs
    return {
        "table": table.name, "suite": row.suite, "dataset": row.dataset, "metric": row.metric, "column": column_label,
        "paper_method": method or "", "mean": "" if cell.mean is None else cell.mean,
        "std": "" if cell.std is None else cell.std, "n": cell.n, "values": ";".join(map(str, cell.values)),
        "seeds": "" if cell.of_rows else ";".join(str(r.seed) for r in runs), "best": cell.best,
        "missing": cell.missing or "", "reason": cell.reason or "", "caveat": cell.caveat or "",
        "paper_value": paper.printed if paper else "", "paper_flag": table.paper_flags.get((index, method), "") if method else "",
        "paper_note": paper.note if paper else "",
        "runs": ";".join(shown_path(r.path, base) for r in runs),
        "failed_runs": ";".join(shown_path(r.path, base) for r in cell.failed),
        "not_comparable": (not_comparable(cell.runs) or "") if cell.mean is not None and table.paper_methods else "",
        **(interval_fields(cell) if table.interval_legend else {}),
    }


def interval_fields(cell: Cell) -> dict[str, object]:
    found = cell.intervals
    interval = found.interval if found is not None else None
    difference = found.difference if found is not None else None
    return {
        "ci_low": "" if interval is None else interval.low, "ci_high": "" if interval is None else interval.high,
        "difference": "" if difference is None else difference.estimate,
        "difference_low": "" if difference is None else difference.low,
        "difference_high": "" if difference is None else difference.high,
        "significance": found.mark if found is not None else "",
    }


def render_csv(table: Table, base: Path | None = None) -> str:
    out = io.StringIO()
    fields = CSV_FIELDS + (INTERVAL_FIELDS if table.interval_legend else ())
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for index, row in enumerate(table.rows):
        for column in table.columns:
            writer.writerow(csv_line(table, index, row, column.label, base))
    return out.getvalue()


def write_table(table: Table, out_dir: str | Path, base: Path | None = None) -> list[Path]:
    """<out_dir>/<table>.md, .csv and .tex, each written atomically."""
    out_dir = Path(out_dir)
    renderings = {"md": render_markdown, "csv": render_csv, "tex": render_latex}
    return [write_atomic(out_dir / f"{table.name}.{ext}", render(table, base)) for ext, render in renderings.items()]
