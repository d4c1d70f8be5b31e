"""What each of the paper's NLP tables (3-8) is: its rows, which runs it uses, how runs name its columns,
and which of the paper's methods a column compares with.

Rows are what is measured (a dataset's metric, a suite average, a LoRA count), in the paper's order, with
the datasets our runs evaluated that the paper's table lacks; columns are variants named from config.yaml.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from mole_exp.evaluation.metrics import AVERAGE, metric_key
from mole_exp.reporting.paper import AVERAGE_ROW, PaperValue, our_dataset, paper_suite, paper_table
from mole_exp.reporting.run_results import (
    SPLIT,
    Run,
    fixed_temperature,
    setting,
    split_metric_key,
    variant_label,
    without_balance,
)

SINGLE_LORA_COMPOSERS = ("single", "single_lora")  # the names of the one-LoRA composer (conf/composer/single.yaml)
TABLE3_SUITES = ("translation", "struct2text", "cbqa", "bbh", "nli")

DATASET = "dataset"  # the row holds test/<dataset>/<metric>
SUITE_AVERAGE = "suite average"  # the row holds test/<the run's task>/avg
MEAN_OF_ROWS = "mean of rows"  # the row holds the mean of the paper's rows above it (Table 6)
ROWS_AVERAGE = "average of the table's rows"  # per run: the mean of its values of the table's dataset rows (`members`)


@dataclass(frozen=True)
class Row:
    suite: str  # the paper's suite; runs of our tasks in OUR_SUITES[suite] fill it
    dataset: str  # our dataset key, "average", or "n_experts=<N>" (Table 6)
    metric: str  # the metric's name in metrics.json ("avg" for an average)
    kind: str = DATASET
    paper_dataset: str | None = None  # the row's dataset in the paper's CSV; None: the paper's table has no such row
    paper_metric: str | None = None
    experts_count: int | None = None  # Table 6: only runs that composed this many experts
    members: tuple[tuple[str, str], ...] = ()  # ROWS_AVERAGE: the (dataset, metric) of the rows it averages

    def key(self, run: Run) -> str:
        """The metrics.json key of this row's value in a run."""
        if self.kind in (SUITE_AVERAGE, ROWS_AVERAGE):
            return metric_key(SPLIT, run.eval_task, AVERAGE)
        return metric_key(SPLIT, self.dataset, self.metric)

    def member_keys(self) -> list[str]:
        return [metric_key(SPLIT, dataset, metric) for dataset, metric in self.members]

    def holds(self, run: Run) -> bool:
        return paper_suite(run.eval_task) == self.suite and (self.experts_count is None or run.experts_count == self.experts_count)


def row_of_paper_value(value: PaperValue) -> Row:
    if value.is_average:
        return Row(value.suite, AVERAGE_ROW, AVERAGE, SUITE_AVERAGE, value.dataset, value.metric)
    return Row(value.suite, our_dataset(value.dataset), value.metric, DATASET, value.dataset, value.metric)


def extra_rows(suite: str, known: set[tuple[str, str]], suite_metrics: list[str], runs: list[Run]) -> list[Row]:
    """Datasets our runs of the suite evaluated (or skipped) that the paper's table lacks."""
    rows: dict[tuple[str, str], Row] = {}
    for run in (r for r in runs if r.completed and paper_suite(r.eval_task) == suite):
        found = [split_metric_key(k) for k in run.metric_keys()]
        pairs = [(p[1], p[2]) for p in found if p and p[0] == SPLIT and p[1] != run.eval_task]
        pairs += [(dataset, metric) for dataset in run.skipped for metric in suite_metrics]
        for pair in pairs:
            if pair not in known:
                rows.setdefault(pair, Row(suite, *pair))
    return list(rows.values())


def paper_rows(table: str, runs: list[Run]) -> list[Row]:
    """The paper table's rows in its order; datasets only our runs have go before their suite's average.

    A suite's average row is the table's own definition (`ROWS_AVERAGE`): per run, the mean of every metric of
    the paper's dataset rows of that suite (e.g. Table 3's NLI average: ANLI-R1/R2/R3 and QNLI, not WNLI, which
    the NLI suite also scores; struct-to-text: the 12 ROUGE-1/2/L values of its four datasets)."""
    rows: list[Row] = []
    for value in paper_table(table):
        row = row_of_paper_value(value)
        if row not in rows:
            rows.append(row)
    for suite in dict.fromkeys(r.suite for r in rows):
        datasets = [r for r in rows if r.suite == suite and r.kind == DATASET]
        members = tuple((r.dataset, r.metric) for r in datasets)
        rows = [replace(r, kind=ROWS_AVERAGE, members=members) if r.suite == suite and r.kind == SUITE_AVERAGE else r for r in rows]
        metrics = list(dict.fromkeys(r.metric for r in datasets))
        extras = extra_rows(suite, {(r.dataset, r.metric) for r in datasets}, metrics, runs)
        end = rows.index(datasets[-1]) + 1
        rows[end:end] = extras
    return rows


def average_definition(table: str) -> str:
    """How this table's average rows are computed, for the note under the table."""
    parts = []
    for suite, values in groupby_suite(paper_table(table)).items():
        datasets = list(dict.fromkeys(v.dataset for v in values if not v.is_average))
        if any(v.is_average for v in values) and not any(d.startswith("n_experts=") for d in datasets):
            metrics = sorted({v.metric for v in values if not v.is_average})
            parts.append(f"{suite}: the mean of {'/'.join(metrics)} over its {len(datasets)} dataset rows "
                         f"({', '.join(our_dataset(d) for d in datasets)})")
    return ("Average rows follow the paper's definition, the mean of the table's own rows, per run then over seeds: "
            + "; ".join(parts) + ". Datasets our runs also scored (rows marked not in paper table) are left out of it.")


def groupby_suite(values: list[PaperValue]) -> dict[str, list[PaperValue]]:
    grouped: dict[str, list[PaperValue]] = {}
    for value in values:
        grouped.setdefault(value.suite, []).append(value)
    return grouped


def count_rows(table: str, runs: list[Run]) -> list[Row]:
    """Table 6: one row per number of experts (the paper's and ours), then the mean over the paper's rows."""
    paper_counts = {int(v.dataset.split("=")[1]): v.dataset for v in paper_table(table) if not v.is_average}
    counts = sorted(set(paper_counts) | {r.experts_count for r in runs if r.experts_count is not None})
    rows = [Row("bbh", f"n_experts={n}", AVERAGE, SUITE_AVERAGE, paper_counts.get(n), "em", n) for n in counts]
    return rows + [Row("bbh", AVERAGE_ROW, AVERAGE, MEAN_OF_ROWS, AVERAGE_ROW, "em")]


# ---- columns: labels and the paper's methods ----------------------------------------------------------


def methods_by_name(label: str, runs: list[Run], methods: list[str]) -> str | None:
    return label if label in methods else None


def table4_method(label: str, runs: list[Run], methods: list[str]) -> str | None:
    return "single_lora" if label in SINGLE_LORA_COMPOSERS else methods_by_name(label, runs, methods)


def table7_method(label: str, runs: list[Run], methods: list[str]) -> str | None:
    """nla, mole, mole_no_balance (α=0), and mole_tau1..3: α=0 with a fixed τ, matched by rank (the paper gives no τ)."""
    if label == "mole (α=0)":
        return "mole_no_balance"
    fixed = sorted({fixed_temperature(r) for r in runs if without_balance(r) and fixed_temperature(r) is not None})
    for run in runs:
        if variant_label(run) == label and without_balance(run) and fixed_temperature(run) is not None and len(fixed) <= 3:
            return f"mole_tau{fixed.index(fixed_temperature(run)) + 1}"
    return methods_by_name(label, runs, methods)


def layer_slice_label(run: Run) -> str:
    """Table 5's columns, named as the paper's: full_lora, layers_0_20, ..., layers_80_100."""
    if run.layer_range is None:
        return "full_lora"
    start, end = run.layer_range
    return f"layers_{round(start * 100)}_{round(end * 100)}"


# ---- which runs each table uses -----------------------------------------------------------------------


def trained_and_evaluated_on(suite: str, run: Run) -> bool:
    return paper_suite(run.task) == suite and run.eval_task == run.task


def select_table3(runs: list[Run]) -> list[Run]:
    return [r for r in runs if any(trained_and_evaluated_on(s, r) for s in TABLE3_SUITES) and not r.layer_range]


def select_table4(runs: list[Run]) -> list[Run]:
    return [r for r in runs if trained_and_evaluated_on("nli", r) and variant_label(r) in SINGLE_LORA_COMPOSERS + ("nla",)]


def select_table5(runs: list[Run]) -> list[Run]:
    """Runs with experts.layer_range on NLI, and the runs of the same settings without one (the full LoRA)."""
    on_nli = [r for r in runs if trained_and_evaluated_on("nli", r) and not r.mask]

    def base(run: Run) -> dict[str, str]:
        return {k: v for k, v in setting(run, ignore=("experts.layer_range",)).items() if not k.endswith(".seed")}

    sliced = [r for r in on_nli if r.layer_range]
    bases = [base(r) for r in sliced]
    return sliced + [r for r in on_nli if not r.layer_range and base(r) in bases]


def select_table6(runs: list[Run]) -> list[Run]:
    return [r for r in runs if trained_and_evaluated_on("bbh", r) and not r.layer_range and not r.mask]


def select_table7(runs: list[Run]) -> list[Run]:
    return [
        r for r in runs
        if trained_and_evaluated_on("nli", r) and r.composer_name in ("nla", "mole") and not r.layer_range and not r.mask
    ]


def select_table8(runs: list[Run]) -> list[Run]:
    return [r for r in runs if paper_suite(r.task) == "nli" and paper_suite(r.eval_task) == "bbh" and not r.layer_range]


@dataclass(frozen=True)
class Layout:
    name: str
    title: str
    decimals: int  # as the paper prints this table
    select: Callable[[list[Run]], list[Run]]  # the runs (completed or failed) this table uses
    rows: Callable[[str, list[Run]], list[Row]]
    label: Callable[[Run], str]  # the column a run belongs to
    paper_method: Callable[[str, list[Run], list[str]], str | None]  # column label -> the paper's method
    notes: tuple[str, ...] = ()


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("table3", "Table 3: composers on five suites (translation BLEU, struct2text ROUGE-1/2/L, closed-book QA EM, BBH EM, NLI EM)",
               1, select_table3, paper_rows, variant_label, methods_by_name, (average_definition("table3"),)),
        Layout("table4", "Table 4: each NLI dataset with its own single LoRA vs NLA of the NLI LoRAs (EM)",
               2, select_table4, paper_rows, variant_label, table4_method,
               (f"single_lora: the composer named {' or '.join(SINGLE_LORA_COMPOSERS)} (composer.expert=matched).",
                average_definition("table4"))),
        Layout("table5", "Table 5: one LoRA applied to a slice of its layers (experts.layer_range) vs the full LoRA (EM)",
               2, select_table5, paper_rows, layer_slice_label, methods_by_name,
               ("full_lora: runs of the same settings as the sliced ones, without experts.layer_range.",)),
        Layout("table6", "Table 6: number of LoRAs composed (experts.count) vs average BBH EM",
               1, select_table6, count_rows, variant_label, methods_by_name,
               ("Average: each row is metrics.json's test/<task>/avg of the runs that composed that many experts (the mean "
                "of their evaluated BBH tasks: Table 3's seven with task=bbh_paper); the average row is the mean over "
                "the paper's counts (8, 24, 48, 128) and needs all four.",)),
        Layout("table7", "Table 7: gating balance: NLA, MoLE, MoLE without L_balance (α=0), MoLE with fixed raised τ (EM)",
               2, select_table7, paper_rows, variant_label, table7_method,
               ("The paper does not give τ1 < τ2 < τ3; runs with α=0 and a fixed τ are matched to them by rank.",
                average_definition("table7"))),
        Layout("table8", "Table 8: composers optimised on NLI, evaluated on BBH (EM)",
               1, select_table8, paper_rows, variant_label, methods_by_name,
               ("Runs with task nli and a BBH eval_task (e.g. eval_task=bbh_table8).", average_definition("table8"))),
    )
}


def detect_layouts(runs: list[Run]) -> list[str]:
    """The tables these runs are for: what sets each table's runs apart is present."""
    found = []
    if select_table3(runs):
        found.append("table3")
    if any(variant_label(r) in SINGLE_LORA_COMPOSERS for r in select_table4(runs)):
        found.append("table4")
    if any(r.layer_range for r in select_table5(runs)):
        found.append("table5")
    if len({r.experts_count for r in select_table6(runs)} - {None}) > 1:
        found.append("table6")
    if any(without_balance(r) or fixed_temperature(r) is not None for r in select_table7(runs)):
        found.append("table7")
    if select_table8(runs):
        found.append("table8")
    return found or ["table3"]
