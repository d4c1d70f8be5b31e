"""The paper's NLP numbers (MoLE, ICLR 2024, Tables 3-8), shipped as `mole_exp/resources/paper_results.csv`.

One row per printed number: table, suite, dataset, metric, method, value (as printed), printed_as (the
label as printed) and a note where the printed table is garbled. `OUR_DATASET` is the one place that maps
the paper's dataset names onto our dataset keys (the keys of `conf/task/<suite>.yaml`, i.e. the middle of
`test/<dataset>/<metric>` in metrics.json); `OUR_SUITES` maps the paper's suites onto our task names.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from importlib import resources

PAPER_RESULTS_FILE = "paper_results.csv"
AVERAGE_ROW = "average"  # the `dataset` of an average row in the CSV

# paper dataset name (CSV `dataset` column) -> our dataset key
OUR_DATASET: dict[str, str] = {
    "wmt14_en_fr": "wmt14_en_fr",
    "wmt14_fr_en": "wmt14_fr_en",
    "wmt16_en_de": "wmt16_en_de",
    "wmt16_de_en": "wmt16_de_en",
    "wmt16_en_ro": "wmt16_en_ro",
    "wmt16_ro_en": "wmt16_ro_en",
    "common_gen": "common_gen",
    "dart": "dart",
    "e2e_nlg": "e2e_nlg",
    "web_nlg": "web_nlg",
    "arc_challenge": "arc_challenge",
    "arc_easy": "arc_easy",
    "natural_questions": "natural_questions",
    "trivia_qa": "trivia_qa",
    "bbh/boolean_expressions": "boolean_expressions",  # BBH keys: the task's file name in BIG-Bench-Hard
    "bbh/causal_judgement": "causal_judgement",
    "bbh/date_understanding": "date_understanding",
    "bbh/disambiguation_qa": "disambiguation_qa",
    "bbh/penguins_in_a_table": "penguins_in_a_table",
    "bbh/reasoning_about_colored_objects": "reasoning_about_colored_objects",
    "bbh/ruin_names": "ruin_names",
    "anli_r1": "anli_r1",
    "anli_r2": "anli_r2",
    "anli_r3": "anli_r3",
    "qnli": "qnli",
    "wnli": "wnli",
}


# paper suite (CSV `suite` column) -> the names of our tasks (conf/task/<task>.yaml `name`) whose runs fill its rows
OUR_SUITES: dict[str, tuple[str, ...]] = {
    "translation": ("translation",),
    "struct2text": ("struct2text",),
    "cbqa": ("cbqa",),
    "bbh": ("bbh_paper", "bbh_table8", "bbh"),  # Table 3's seven tasks, Table 8's six, all 27
    "nli": ("nli",),
}


@dataclass(frozen=True)
class PaperValue:
    table: str
    suite: str
    dataset: str  # the paper's name (see OUR_DATASET), "average", or "n_experts=<N>" (Table 6)
    metric: str
    method: str
    printed: str  # the number exactly as printed
    printed_as: str
    note: str

    @property
    def value(self) -> float:
        return float(self.printed)

    @property
    def is_average(self) -> bool:
        return self.dataset == AVERAGE_ROW


@lru_cache(maxsize=1)
def load_paper_results() -> tuple[PaperValue, ...]:
    text = resources.files("mole_exp.resources").joinpath(PAPER_RESULTS_FILE).read_text(encoding="utf-8")
    rows = csv.DictReader(io.StringIO(text))
    return tuple(
        PaperValue(r["table"], r["suite"], r["dataset"], r["metric"], r["method"], r["value"], r["printed_as"], r["note"])
        for r in rows
    )


def paper_table(table: str) -> list[PaperValue]:
    values = [v for v in load_paper_results() if v.table == table]
    if not values:
        raise ValueError(f"the paper results hold no {table!r}; tables: {sorted({v.table for v in load_paper_results()})}")
    return values


def our_dataset(paper_dataset: str) -> str:
    if paper_dataset not in OUR_DATASET:
        raise ValueError(f"paper dataset {paper_dataset!r} has no entry in OUR_DATASET (mole_exp/reporting/paper.py)")
    return OUR_DATASET[paper_dataset]


def paper_suite(task_name: str | None) -> str | None:
    """The paper's suite that one of our tasks belongs to (None: none of the paper's)."""
    return next((suite for suite, names in OUR_SUITES.items() if task_name in names), None)


def last_digit_unit(printed: str) -> Decimal:
    """0.1 for '24.2', 0.01 for '76.53', 1 for '40'."""
    exponent = Decimal(printed).as_tuple().exponent
    return Decimal(1).scaleb(exponent if isinstance(exponent, int) else 0)


def average_mismatch(average: PaperValue, values: list[PaperValue]) -> str | None:
    """Why a printed average is not given by its own rows (same table, suite and method), or None.

    The rows as printed are averaged exactly; the average is accepted within one unit of its last printed
    digit (the paper both rounds and truncates)."""
    rows = [v for v in values if not v.is_average and v.table == average.table and v.suite == average.suite and v.method == average.method]
    if not rows:
        return None
    mean = sum(Decimal(v.printed) for v in rows) / len(rows)
    if abs(mean - Decimal(average.printed)) < last_digit_unit(average.printed):
        return None
    mean_text = f"{mean:.3f}".rstrip("0").rstrip(".")
    return f"printed {average.printed}, but its {len(rows)} rows as printed average {mean_text}"


def flagged_averages(table: str) -> dict[tuple[str, str], str]:
    """(suite, method) -> why the printed average of that suite and method is not given by its rows."""
    values = paper_table(table)
    flags = {}
    for value in values:
        if value.is_average:
            reason = average_mismatch(value, values)
            if reason:
                flags[(value.suite, value.method)] = reason
    return flags
