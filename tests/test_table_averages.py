"""Each paper table's average rows follow that table's own definition: the mean of the metrics of its own
dataset rows (Table 3: NLI over ANLI-R1/R2/R3 and QNLI, not WNLI; struct-to-text over the 12 ROUGE values;
Tables 4 and 7: the five NLI datasets; Table 8: its six BBH tasks; Table 6: the mean of its count rows), and
the definition is printed under the table. Metric values are synthetic test input; the expected averages are
computed here by hand from them."""

from __future__ import annotations

import json
import statistics

import pytest
from omegaconf import OmegaConf

from mole_exp.evaluation.metrics import AVERAGE, metric_key
from mole_exp.reporting.paper import last_digit_unit, load_paper_results, our_dataset
from mole_exp.reporting.run_results import collect_runs
from mole_exp.reporting.table_render import render_markdown
from mole_exp.reporting.tables import build_table
from tests.conftest import compose_cfg
from tests.test_tables import BBH6, BBH7, RunWriter, column, md_row, note_text


@pytest.fixture(scope="module")
def writer() -> RunWriter:
    return RunWriter(OmegaConf.to_container(compose_cfg(["model=tiny", "experts=tiny"]), resolve=True))


def average_cell(markdown: str, suite: str, label: str) -> str:
    return md_row(markdown, suite, "average", "avg")[column(markdown, label)]


def set_metrics(run_dir, suite: str, values: dict[str, float]) -> None:
    """Replace a written run's metrics with `values` ({dataset/metric: value}) and its suite average (all of them)."""
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["metrics"] = {f"test/{k}": v for k, v in values.items()}
    metrics["metrics"][metric_key("test", suite, AVERAGE)] = statistics.fmean(values.values())
    metrics["higher_is_better"] = dict.fromkeys(metrics["metrics"], True)
    metrics["num_examples"] = {k.split("/")[0]: 10 for k in values}
    path.write_text(json.dumps(metrics))


def test_table3_nli_average_is_over_its_four_rows_not_the_suites_five(tmp_path, writer):
    writer(tmp_path, "mole", "mole", values={"anli_r1": 80, "anli_r2": 70, "anli_r3": 60, "qnli": 90, "wnli": 0})
    markdown = render_markdown(build_table("table3", collect_runs([tmp_path])))
    assert average_cell(markdown, "nli", "mole") == "75.0"  # (80 + 70 + 60 + 90) / 4; the suite's own avg is 60.0
    assert md_row(markdown, "nli", "wnli (not in paper table)", "EM")[column(markdown, "mole")] == "0.0"
    assert "nli: the mean of em over its 4 dataset rows (anli_r1, anli_r2, anli_r3, qnli)" in markdown


def test_table3_struct2text_average_is_over_the_twelve_rouge_values(tmp_path, writer):
    run_dir = writer(tmp_path, "mole_s2t", "mole", task="struct2text", values={"dart": 0})
    values = {}
    for i, dataset in enumerate(("common_gen", "dart", "e2e_nlg", "web_nlg")):
        values.update({f"{dataset}/rouge1": 50.0 + i, f"{dataset}/rouge2": 20.0 + i, f"{dataset}/rougeL": 40.0 + i})
    set_metrics(run_dir, "struct2text", values)
    markdown = render_markdown(build_table("table3", collect_runs([tmp_path])))
    assert average_cell(markdown, "struct2text", "mole") == f"{statistics.fmean(values.values()):.1f}" == "38.2"


def test_table3_bbh_average_is_over_its_seven_tasks_and_notes_missing_rows(tmp_path, writer):
    values = {d: 10.0 * i for i, d in enumerate(BBH7)}
    writer(tmp_path, "lorahub_bbh", "lorahub", task="bbh_paper", values={**values, "word_sorting": 100.0})
    partial = dict(list(values.items())[:5])
    writer(tmp_path, "pems_bbh", "pems", task="bbh_paper", values=partial)
    markdown = render_markdown(build_table("table3", collect_runs([tmp_path])))
    assert average_cell(markdown, "bbh", "lorahub") == f"{statistics.fmean(values.values()):.1f}"  # word_sorting left out
    pems = average_cell(markdown, "bbh", "pems")
    assert pems.startswith(f"{statistics.fmean(partial.values()):.1f} [")
    assert "the mean of 5 of the table's 7 datasets: without" in note_text(markdown, pems)


def test_tables_4_and_7_average_over_all_five_nli_rows(tmp_path, writer):
    values = {"anli_r1": 80, "anli_r2": 70, "anli_r3": 60, "qnli": 90, "wnli": 0}
    writer(tmp_path, "single", "single_lora", values=values)
    writer(tmp_path, "nla", "nla", values=values)
    runs = collect_runs([tmp_path])
    for table, label in (("table4", "single_lora"), ("table7", "nla")):
        markdown = render_markdown(build_table(table, runs))
        assert average_cell(markdown, "nli", label) == "60.00"
        assert "nli: the mean of em over its 5 dataset rows (anli_r1, anli_r2, anli_r3, qnli, wnli)" in markdown


def test_table8_average_is_over_its_six_bbh_tasks(tmp_path, writer):
    values = {d: 5.0 * i for i, d in enumerate(BBH7)}  # evaluated on Table 3's seven: ruin_names is not Table 8's
    writer(tmp_path, "mole_nli_to_bbh", "mole", eval_task="bbh_paper", values=values)
    markdown = render_markdown(build_table("table8", collect_runs([tmp_path])))
    assert average_cell(markdown, "bbh", "mole") == f"{statistics.fmean(values[d] for d in BBH6):.1f}" == "12.5"
    assert "bbh: the mean of em over its 6 dataset rows" in markdown


def test_table6_rows_are_suite_averages_and_the_average_is_the_mean_of_the_count_rows(tmp_path, writer):
    for count, value in zip((8, 24, 48, 128), (30, 40, 50, 60), strict=True):
        writer(tmp_path, f"mole_{count}", "mole", task="bbh_paper", count=count, values={d: value for d in BBH7})
    markdown = render_markdown(build_table("table6", collect_runs([tmp_path])))
    assert md_row(markdown, "bbh", "average of the paper's rows", "avg")[column(markdown, "mole")] == "45.0"
    assert "the average row is the mean over the paper's counts" in markdown


SUITE_TASK = {"translation": "translation", "struct2text": "struct2text", "cbqa": "cbqa", "bbh": "bbh_paper", "nli": "nli"}
COMPOSER = {"single_lora": "single_lora", "nla": "nla", "lorahub": "lorahub", "pems": "pems", "mole": "mole"}


@pytest.mark.parametrize("table", ["table3", "table4", "table8"])
def test_the_definition_gives_the_papers_own_averages_from_its_rows(tmp_path, writer, table):
    """Runs whose metrics are the paper's own rows (plus a dataset the paper's table lacks, scored 0) get, as
    their average, the paper's printed average, for every average the paper's rows do give (within one unit
    of its last printed digit: the paper both rounds and truncates)."""
    values = [v for v in load_paper_results() if v.table == table]
    averages = [v for v in values if v.is_average and "does not match" not in v.note and v.method in COMPOSER]
    for average in averages:
        rows = [v for v in values if v.suite == average.suite and v.method == average.method and not v.is_average]
        metrics = {f"{our_dataset(v.dataset)}/{v.metric}": float(v.printed) for v in rows}
        metrics["extra_dataset/" + rows[0].metric] = 0.0
        task, eval_task = (("nli", "bbh_table8") if table == "table8" else (SUITE_TASK[average.suite], None))
        run_dir = writer(tmp_path, f"{average.suite}_{average.method}", COMPOSER[average.method], task=task, eval_task=eval_task,
                         values={"x": 0})
        set_metrics(run_dir, eval_task or task, metrics)
    built = build_table(table, collect_runs([tmp_path]))
    for average in averages:
        index = next(i for i, r in enumerate(built.rows) if r.suite == average.suite and r.dataset == "average")
        ours = built.cells[(index, average.method)].mean
        assert abs(ours - float(average.printed)) < float(last_digit_unit(average.printed)), (average, ours)
    assert averages
