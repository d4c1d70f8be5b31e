"""make_tables.py --intervals / --reference: cells show mean [95% CI] from the runs' predictions, cells that differ
significantly from the reference column are marked, identical runs are not, and a value the predictions do
not give back gets no interval. Run folders as the pipeline writes them (tests/test_tables.py's writer),
with predictions.jsonl holding as many correct answers as the metric says."""

from __future__ import annotations

import csv
import io

import pytest
from omegaconf import OmegaConf

from mole_exp.files import write_jsonl
from mole_exp.reporting.run_results import collect_runs
from mole_exp.reporting.table_intervals import BETTER, WORSE, add_intervals
from mole_exp.reporting.table_render import render_csv, render_latex, render_markdown
from mole_exp.reporting.tables import build_table
from tests.conftest import compose_cfg
from tests.test_tables import NLI, RunWriter, column, load_cli, md_row


@pytest.fixture(scope="module")
def writer() -> RunWriter:
    return RunWriter(OmegaConf.to_container(compose_cfg(["model=tiny", "experts=tiny"]), resolve=True))


def with_predictions(run_dir, values: dict[str, float], examples: int = 100, wrong_first: bool = False) -> None:
    """predictions.jsonl whose exact match per dataset is values[d] (the same inputs in every run)."""
    rows = []
    for dataset, value in values.items():
        hits = round(value * examples / 100)
        for i in range(examples):
            correct = (i >= examples - hits) if wrong_first else (i < hits)
            rows.append({"dataset": dataset, "input": f"{dataset} {i}", "prediction": "yes" if correct else "no",
                         "references": ["yes"], "metric": "exact_match"})
    write_jsonl(run_dir / "predictions.jsonl", rows)


def sweep(tmp_path, writer):
    root = tmp_path / "sweep"
    nla = {d: 50.0 for d in NLI}
    mole = {**nla, "anli_r1": 80.0, "anli_r2": 51.0}  # a planted gain on anli_r1; one example more on anli_r2
    for seed in (0, 1):
        with_predictions(writer(root, f"nla{seed}", "nla", seed=seed, values=nla), nla)
        with_predictions(writer(root, f"mole{seed}", "mole", seed=seed, values=mole), mole)
        with_predictions(writer(root, f"pems{seed}", "pems", seed=seed, values=nla), nla, wrong_first=True)
    return root


def test_intervals_and_significance_marks(tmp_path, writer):
    table = build_table("table3", collect_runs([sweep(tmp_path, writer)]))
    add_intervals(table, reference="nla", resamples=400)
    markdown = render_markdown(table)
    r1, r2, qnli = (md_row(markdown, "nli", d, "EM") for d in ("anli_r1", "anli_r2", "qnli"))
    mole, nla, pems = column(markdown, "mole"), column(markdown, "nla"), column(markdown, "pems")
    assert r1[mole].startswith("**80.0 [") and r1[mole].endswith(f"(n=2) {BETTER}**")
    assert r2[mole].endswith("(n=2)**") and BETTER not in r2[mole]  # one example in 100: not significant
    assert qnli[mole] == qnli[nla] and qnli[nla].startswith("50.0 [")  # identical predictions: the same interval, no mark
    assert BETTER not in qnli[pems] and WORSE not in qnli[pems]  # same score, other examples right: not significant
    low, high = (float(x) for x in r1[mole].split("[")[1].split("]")[0].split(", "))
    assert low < 80.0 < high and high - low < 20
    average = md_row(markdown, "nli", "average", "avg")
    assert BETTER in average[mole] and "[" in average[nla]
    assert "significantly better / worse than column 'nla'" in markdown

    lines = list(csv.DictReader(io.StringIO(render_csv(table))))
    cell = next(r for r in lines if r["dataset"] == "anli_r1" and r["column"] == "mole")
    assert cell["significance"] == BETTER and float(cell["difference"]) == 30.0 and float(cell["difference_low"]) > 0
    assert "$\\uparrow$" in render_latex(table)


def test_cells_the_predictions_do_not_give_get_no_interval(tmp_path, writer):
    root = tmp_path / "sweep"
    values = {d: 50.0 for d in NLI}
    with_predictions(writer(root, "nla", "nla", values=values), {**values, "qnli": 40.0})  # metrics.json says 50
    table = build_table("table3", collect_runs([root]))
    add_intervals(table, resamples=100)
    markdown = render_markdown(table)
    assert "no interval: predictions.jsonl give 40.0000, metrics.json 50.0000" in markdown
    assert md_row(markdown, "nli", "anli_r1", "EM")[column(markdown, "nla")].startswith("50.0 [")


def test_cli_options(tmp_path, writer, capsys):
    root = sweep(tmp_path, writer)
    assert load_cli().main(["--layout", "table3", "--reference", "nla", "--resamples", "200", str(root)]) == 0
    assert BETTER in capsys.readouterr().out
    assert load_cli().main(["--layout", "table3", "--reference", "nope", str(root)]) == 2
    assert "--reference 'nope' is not a column of table3" in capsys.readouterr().err
