"""Tables from results files: fake run folders written as the pipeline writes them (config.yaml from the real
Hydra config, metrics.json with the pipeline's keys), then layouts, mean ± std, bold best, missing with
reason, failed members, the paper's numbers and flags, and the .md/.csv/.tex files. Metric values here are
synthetic test input."""

from __future__ import annotations

import copy
import csv
import hashlib
import importlib.util
import io
import re
from importlib import resources
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mole_exp.evaluation.metrics import AVERAGE, metric_key
from mole_exp.files import write_atomic, write_json
from mole_exp.reporting.paper import OUR_DATASET, flagged_averages, load_paper_results
from mole_exp.reporting.run_results import collect_runs
from mole_exp.reporting.table_columns import PAPER_MODEL
from mole_exp.reporting.table_layouts import detect_layouts
from mole_exp.reporting.table_render import render_csv, render_latex, render_markdown
from mole_exp.reporting.tables import build_table
from tests.conftest import ROOT, compose_cfg

NLI = ["anli_r1", "anli_r2", "anli_r3", "qnli", "wnli"]
BBH7 = [OUR_DATASET[f"bbh/{t}"] for t in ("boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa",
                                          "penguins_in_a_table", "reasoning_about_colored_objects", "ruin_names")]
BBH6 = BBH7[:-1]


@pytest.fixture(scope="module")
def base_config() -> dict:
    return OmegaConf.to_container(compose_cfg(["model=tiny", "experts=tiny"]), resolve=True)


class RunWriter:
    """Writes a run folder as `mole_exp.training.pipeline.run` does: config.yaml first, metrics.json last (if it finished)."""

    def __init__(self, base_config: dict):
        self.base = base_config

    def config(self, run_dir, composer, task, eval_task, seed, alpha, temperature, count, layer_range, granularity):
        cfg = copy.deepcopy(self.base)
        cfg["paths"]["output_dir"] = str(run_dir)
        cfg["trainer"]["default_root_dir"] = cfg["logger"]["save_dir"] = str(run_dir)
        cfg["seed"] = cfg["experts"]["seed"] = cfg["task"]["seed"] = seed
        cfg["experts"].update(count=count, layer_range=layer_range)
        if composer == "mole":
            cfg["composer"].update(alpha=alpha)
            cfg["composer"]["gate"]["granularity"] = granularity
            cfg["composer"]["gate"]["temperature"].update(temperature or {})
        else:
            cfg["composer"] = {"_target_": f"mole_exp.composers.{composer}.Composer", "name": composer, "mask": None}
        datasets = NLI if task == "nli" else BBH7
        cfg["task"].update(name=task, datasets={d: {"loader": task, "metric": "exact_match"} for d in datasets})
        cfg["eval_task"] = None if eval_task is None else {**cfg["task"], "name": eval_task}
        cfg["overrides"] = [f"composer={composer}", f"task={task}", f"seed={seed}", *self.base.get("overrides", [])]
        return cfg

    def __call__(self, root: Path, name: str, composer: str = "mole", task: str = "nli", values: dict | None = None,
                 eval_task: str | None = None, seed: int = 0, alpha: float = 0.5, temperature: dict | None = None,
                 count: int = 8, layer_range: list | None = None, granularity: str = "layer",
                 skipped: dict | None = None, lower_is_better: tuple = (), finished: bool = True,
                 model: str = PAPER_MODEL, eval_limit: int | None = None) -> Path:
        run_dir = root / name
        cfg = self.config(run_dir, composer, task, eval_task, seed, alpha, temperature, count, layer_range, granularity)
        cfg["data"]["eval_limit"] = eval_limit
        write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(cfg)))
        write_atomic(run_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(cfg)))  # Hydra's: not a run
        write_json(run_dir / "run_state.json", {"config_hash": "0" * 12, "status": "running"})
        if not finished:
            return run_dir
        suite = eval_task or task
        metrics = {metric_key("test", d, "em"): float(v) for d, v in values.items()}
        metrics[metric_key("test", suite, AVERAGE)] = sum(values.values()) / len(values)
        summary = {"name": composer, "experts": [f"e{i}" for i in range(count)], "mask": []}
        if composer == "mole":
            summary.update(gate=cfg["composer"]["gate"], alpha=alpha, granularity=granularity, num_gates=8)
        write_json(run_dir / "metrics.json", {
            "metrics": metrics,
            "higher_is_better": {k: not any(f"/{d}/" in k for d in lower_is_better) for k in metrics},
            "num_examples": {d: 100 for d in values}, "extras": {}, "status": "completed", "task": task,
            "eval_task": suite, "skipped": skipped or {}, "split_notes": {d: "" for d in values},
            "model": model, "composer": summary,  # the paper's base unless a test says otherwise
            "experts": {"names": summary["experts"], "count": count, "sources": summary["experts"]},
            "seed": seed, "config_hash": hashlib.sha256(str(cfg).encode()).hexdigest()[:12], "overrides": cfg["overrides"],
        })
        (run_dir / "predictions.jsonl").write_text("")
        return run_dir


@pytest.fixture
def write_run(base_config) -> RunWriter:
    return RunWriter(base_config)


def md_row(markdown: str, suite: str, dataset: str, metric: str) -> list[str]:
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if cells[:3] == [suite, dataset, metric]:
            return cells
    raise AssertionError(f"no row {suite} / {dataset} / {metric} in\n{markdown}")


def column(markdown: str, label: str) -> int:
    header = next(line for line in markdown.splitlines() if line.startswith("| suite"))
    return [c.strip() for c in header.strip("|").split(" | ")].index(label)


def note_text(markdown: str, marker: str) -> str:
    number = re.search(r"\[(\d+)\]", marker).group(1)
    return next(line for line in markdown.splitlines() if line.startswith(f"{number}. "))


NLI_SKIP = "QNLI's labelled test split is not available offline (DataUnavailableError)"


@pytest.fixture
def table3_sweep(tmp_path, write_run) -> Path:
    sweep = tmp_path / "sweep3"
    for seed in (0, 1, 2):
        write_run(sweep, f"{seed}_composer=mole,seed={seed}", "mole", seed=seed, lower_is_better=("anli_r3",),
                  values={"anli_r1": 44 + seed, "anli_r2": 60, "anli_r3": 60, "qnli": 70, "wnli": 50})
    write_run(sweep, "3_composer=lorahub", "lorahub", lower_is_better=("anli_r3",),
              values={"anli_r1": 40, "anli_r2": 61, "anli_r3": 55, "qnli": 71, "wnli": 50})
    write_run(sweep, "4_composer=pems", "pems", lower_is_better=("anli_r3",), skipped={"qnli": NLI_SKIP},
              values={"anli_r1": 47, "anli_r2": 62, "anli_r3": 65, "wnli": 50})
    write_run(sweep, "5_composer=nla", "nla", lower_is_better=("anli_r3",),
              values={"anli_r1": 30, "anli_r2": 63, "anli_r3": 70, "qnli": 72, "wnli": 50})
    write_run(sweep, "6_composer=lorahub,task=bbh_paper", "lorahub", task="bbh_paper", values={d: 30 for d in BBH7})
    write_run(sweep, "7_composer=mole,task=bbh_paper", "mole", task="bbh_paper", finished=False)
    return sweep


def test_paper_results_are_shipped_and_loaded_as_printed():
    text = resources.files("mole_exp.resources").joinpath("paper_results.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["table", "suite", "dataset", "metric", "method", "value", "printed_as", "note"]
    loaded = load_paper_results()
    assert [(v.table, v.dataset, v.metric, v.method, v.printed, v.note) for v in loaded] == [
        (r["table"], r["dataset"], r["metric"], r["method"], r["value"], r["note"]) for r in rows
    ]
    shared = ROOT.parent / "shared" / "paper" / "mole_nlp_results.csv"
    if shared.exists():
        assert shared.read_text(encoding="utf-8") == text


def test_every_paper_dataset_maps_to_one_of_our_keys():
    names = {v.dataset for v in load_paper_results() if not v.is_average and not v.dataset.startswith("n_experts=")}
    assert names == set(OUR_DATASET)
    assert len(set(OUR_DATASET.values())) == len(OUR_DATASET)


def test_flagged_averages_are_those_the_csv_notes_name():
    noted = {(v.table, v.suite, v.method) for v in load_paper_results() if v.is_average and "printed average does not match" in v.note}
    flagged = {(t, s, m) for t in ("table3", "table4", "table5", "table6", "table7", "table8") for s, m in flagged_averages(t)}
    assert flagged == noted
    assert flagged_averages("table3")[("translation", "pems")] == "printed 24.2, but its 6 rows as printed average 23.75"


def test_table3_columns_rows_and_seed_aggregation(table3_sweep):
    markdown = render_markdown(build_table("table3", collect_runs([table3_sweep])))
    header = next(line for line in markdown.splitlines() if line.startswith("| suite"))
    assert header.split(" | ")[3:] == ["lorahub", "pems", "mole", "nla", "paper lorahub", "paper pems", "paper mole |"]
    assert md_row(markdown, "nli", "anli_r1", "EM")[column(markdown, "mole")] == "45.0 ± 1.0 (n=3)"
    assert md_row(markdown, "nli", "anli_r1", "EM")[column(markdown, "lorahub")] == "40.0"
    rows = [line.split(" | ")[1] for line in markdown.splitlines() if line.startswith("| nli")]
    assert rows == ["anli_r1", "anli_r2", "anli_r3", "qnli", "wnli (not in paper table)", "average"]


def test_best_of_ours_is_bold_respecting_higher_is_better(table3_sweep):
    markdown = render_markdown(build_table("table3", collect_runs([table3_sweep])))
    assert md_row(markdown, "nli", "anli_r1", "EM")[column(markdown, "pems")] == "**47.0**"
    assert md_row(markdown, "nli", "anli_r2", "EM")[column(markdown, "nla")] == "**63.0**"
    lower_better = md_row(markdown, "nli", "anli_r3", "EM")  # metrics.json marks it higher_is_better=false
    assert lower_better[column(markdown, "lorahub")] == "**55.0**"
    assert lower_better[column(markdown, "nla")] == "70.0"
    assert not any("**" in cell for cell in md_row(markdown, "nli", "wnli (not in paper table)", "EM"))  # all tied


def test_missing_cells_say_why_and_failed_members_are_listed(table3_sweep):
    write_atomic(table3_sweep / "8_broken" / "config.yaml", "composer: [unclosed")
    markdown = render_markdown(build_table("table3", collect_runs([table3_sweep])))
    skipped = md_row(markdown, "nli", "qnli", "EM")[column(markdown, "pems")]
    assert skipped.startswith("— (skipped [")
    assert NLI_SKIP in note_text(markdown, skipped)
    average = md_row(markdown, "nli", "average", "avg")[column(markdown, "pems")]  # Table 3's: its four rows, not wnli
    assert average.startswith("58.0 [") and "without qnli (skipped: qnli)" in note_text(markdown, average)  # and not bold:
    mole = md_row(markdown, "nli", "average", "avg")[column(markdown, "mole")]
    assert mole == "**58.8 ± 0.2 (n=3)**"  # bold: over all four of the table's datasets
    assert md_row(markdown, "translation", "wmt14_en_fr", "BLEU")[column(markdown, "mole")] == "— (no run)"
    failed = md_row(markdown, "bbh", "boolean_expressions", "EM")[column(markdown, "mole")]
    assert failed.startswith("— (failed [")
    section = markdown.split("Failed runs")[1]
    assert "7_composer=mole,task=bbh_paper: no metrics.json" in section
    assert "8_broken: config.yaml is unreadable" in section and "not placed" in section
    assert ".hydra" not in markdown
    assert "0.0" not in md_row(markdown, "bbh", "ruin_names", "EM")[column(markdown, "mole")]


def test_paper_columns_are_the_csv_values_as_printed(table3_sweep):
    markdown = render_markdown(build_table("table3", collect_runs([table3_sweep])))
    text = resources.files("mole_exp.resources").joinpath("paper_results.csv").read_text(encoding="utf-8")
    for row in csv.DictReader(io.StringIO(text)):
        if row["table"] != "table3":
            continue
        dataset = "average" if row["dataset"] == "average" else OUR_DATASET[row["dataset"]]
        metric = {"bleu": "BLEU", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "em": "EM"}.get(row["metric"], row["metric"])
        cell = md_row(markdown, row["suite"], dataset, metric)[column(markdown, f"paper {row['method']}")]
        assert cell.split(" ")[0] == row["value"]
    flagged = md_row(markdown, "translation", "average", "avg")[column(markdown, "paper pems")]
    assert flagged.startswith("24.2 †[")
    assert "rows as printed average 23.75" in note_text(markdown, flagged)
    assert md_row(markdown, "translation", "average", "avg")[column(markdown, "paper lorahub")] == "25.4"


def test_table6_rows_are_lora_counts_with_the_mean_of_the_papers_rows(tmp_path, write_run):
    for count, value in zip((8, 24, 48, 128), (36, 38, 39, 38), strict=True):
        write_run(tmp_path, f"mole_{count}", "mole", task="bbh", count=count, values={d: value for d in BBH7})
    for count in (8, 24):
        write_run(tmp_path, f"lorahub_{count}", "lorahub", task="bbh", count=count, values={d: 30 for d in BBH7})
    write_run(tmp_path, "nla_20", "nla", task="bbh", count=20, values={d: 20 for d in BBH7})
    runs = collect_runs([tmp_path])
    assert "table6" in detect_layouts(runs)
    markdown = render_markdown(build_table("table6", runs))
    assert md_row(markdown, "bbh", "24 LoRAs", "avg")[column(markdown, "mole")] == "**38.0**"
    assert md_row(markdown, "bbh", "20 LoRAs (not in paper table)", "avg")[column(markdown, "nla")] == "20.0"
    average = md_row(markdown, "bbh", "average of the paper's rows", "avg")
    assert average[column(markdown, "mole")] == "37.8"
    assert average[column(markdown, "lorahub")].startswith("— (rows missing [")
    assert average[column(markdown, "paper mole")] == "38.3"
    assert md_row(markdown, "bbh", "8 LoRAs", "avg")[column(markdown, "pems")] == "— (no run)"


def test_table7_variants_come_from_alpha_and_temperature(tmp_path, write_run):
    values = {d: 70 for d in NLI}
    write_run(tmp_path, "nla", "nla", values=values)
    write_run(tmp_path, "mole", "mole", values=values)
    write_run(tmp_path, "mole_alpha0", "mole", alpha=0.0, values=values)
    for tau in (4.0, 2.0, 8.0):
        write_run(tmp_path, f"mole_tau{tau:g}", "mole", alpha=0.0, temperature={"init": tau, "learnable": False}, values=values)
    runs = collect_runs([tmp_path])
    assert "table7" in detect_layouts(runs)
    table = build_table("table7", runs)
    assert {c.label: c.paper_method for c in table.columns} == {
        "nla": "nla", "mole": "mole", "mole (α=0)": "mole_no_balance", "mole (α=0, τ=2 fixed)": "mole_tau1",
        "mole (α=0, τ=4 fixed)": "mole_tau2", "mole (α=0, τ=8 fixed)": "mole_tau3",
    }
    markdown = render_markdown(table)
    assert md_row(markdown, "nli", "average", "avg")[column(markdown, "paper mole_tau3")].startswith("76.35")


def test_table5_columns_are_layer_slices_and_the_same_setting_in_full(tmp_path, write_run):
    values = {"anli_r1": 80, "anli_r2": 79, "qnli": 76}
    write_run(tmp_path, "full", "single_lora", count=1, values=values)
    write_run(tmp_path, "slice_0_20", "single_lora", count=1, layer_range=[0.0, 0.2], values={**values, "anli_r1": 82})
    write_run(tmp_path, "slice_20_40", "single_lora", count=1, layer_range=[0.2, 0.4], values=values)
    write_run(tmp_path, "other_mole", "mole", values={d: 10 for d in NLI})  # another setting: not Table 5's
    table = build_table("table5", collect_runs([tmp_path]))
    labels = [c.label for c in table.columns]
    assert labels == ["full_lora", "layers_0_20", "layers_20_40", "layers_40_60", "layers_60_80", "layers_80_100"]
    markdown = render_markdown(table)
    anli_r1 = md_row(markdown, "nli", "anli_r1", "EM")
    assert anli_r1[column(markdown, "layers_0_20")] == "**82.00**"
    assert anli_r1[column(markdown, "full_lora")] == "80.00"
    assert anli_r1[column(markdown, "layers_40_60")] == "— (no run)"
    assert anli_r1[column(markdown, "paper layers_80_100")] == "82.59"
    assert "other_mole" not in markdown


def test_table4_single_lora_vs_nla_and_table8_nli_to_bbh(tmp_path, write_run):
    write_run(tmp_path, "single", "single_lora", values={d: 75 for d in NLI})
    write_run(tmp_path, "nla", "nla", values={d: 74 for d in NLI})
    write_run(tmp_path, "mole_nli_to_bbh", "mole", eval_task="bbh_table8", values={d: 40 for d in BBH6})
    write_run(tmp_path, "pems_nli_to_bbh", "pems", eval_task="bbh_table8", values={d: 35 for d in BBH6})
    runs = collect_runs([tmp_path])
    assert {"table4", "table8"} <= set(detect_layouts(runs))
    table4 = render_markdown(build_table("table4", runs))
    assert md_row(table4, "nli", "wnli", "EM")[column(table4, "single_lora")] == "**75.00**"
    assert md_row(table4, "nli", "anli_r3", "EM")[column(table4, "paper nla")].startswith("74.42 [")
    assert md_row(table4, "nli", "average", "avg")[column(table4, "paper nla")].startswith("76.53 †[")
    table8 = render_markdown(build_table("table8", runs))
    rows = [line.split(" | ")[1] for line in table8.splitlines() if line.startswith("| bbh")]
    assert rows == BBH6 + ["average"]
    assert md_row(table8, "bbh", "average", "avg")[column(table8, "mole")] == "**40.0**"
    assert md_row(table8, "bbh", "average", "avg")[column(table8, "lorahub")] == "— (no run)"


def test_runs_of_different_settings_are_never_averaged_together(tmp_path, write_run):
    write_run(tmp_path, "mole_layer", "mole", granularity="layer", values={d: 60 for d in NLI})
    write_run(tmp_path, "mole_block", "mole", granularity="block", values={d: 70 for d in NLI})
    labels = [c.label for c in build_table("table3", collect_runs([tmp_path])).columns]
    assert "mole [granularity=block]" in labels  # gate.granularity, and its copy composer.gate.granularity, named once
    assert "mole [granularity=layer]" in labels


def load_cli():
    spec = importlib.util.spec_from_file_location("make_tables", ROOT / "scripts" / "make_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_writes_md_csv_tex_with_sources(table3_sweep, tmp_path, capsys):
    assert load_cli().main(["--layout", "table3", str(table3_sweep)]) == 0
    assert "| nli | anli_r1 | EM |" in capsys.readouterr().out
    written = sorted(p.name for p in table3_sweep.iterdir() if p.is_file())
    assert written == ["table3.csv", "table3.md", "table3.tex"]  # and no temp files left
    lines = list(csv.DictReader(io.StringIO((table3_sweep / "table3.csv").read_text())))
    mole = next(r for r in lines if r["dataset"] == "anli_r1" and r["column"] == "mole")
    assert (mole["n"], mole["seeds"], mole["paper_value"], mole["best"]) == ("3", "0;1;2", "82.7", "False")
    assert mole["runs"].split(";") == [f"{s}_composer=mole,seed={s}" for s in (0, 1, 2)]
    pems = next(r for r in lines if r["dataset"] == "qnli" and r["column"] == "pems")
    assert (pems["missing"], pems["mean"]) == ("skipped", "") and NLI_SKIP in pems["reason"]
    failed = next(r for r in lines if r["dataset"] == "boolean_expressions" and r["column"] == "mole")
    assert (failed["missing"], failed["failed_runs"]) == ("failed", "7_composer=mole,task=bbh_paper")
    tex = (table3_sweep / "table3.tex").read_text()
    assert "\\toprule" in tex and "\\textbf{47.0}" in tex and "45.0 $\\pm$ 1.0 (n=3)" in tex and "anli\\_r1" in tex

    out = tmp_path / "tables"
    assert load_cli().main(["--out", str(out), str(table3_sweep)]) == 0
    assert {p.name for p in out.iterdir()} == {"table3.md", "table3.csv", "table3.tex"}  # auto: these runs are Table 3's


def test_same_tables_from_the_same_results(table3_sweep):
    runs = collect_runs([table3_sweep, table3_sweep / "3_composer=lorahub"])  # overlapping folders: each run once
    assert len(runs) == 8
    first = build_table("table3", runs)
    assert render_csv(first) == render_csv(build_table("table3", collect_runs([table3_sweep])))
    assert render_latex(first).count("\\\\\n") >= len(first.rows)


# ---- what the columns compare: captions, "not comparable", short headers, settings the paper lacks --------


def test_each_column_says_its_model_experts_and_examples_and_cells_off_the_papers_setting_are_marked(tmp_path, write_run):
    tiny = "tiny-t5-d64-ff128-l2x2-h4-v32100-untied-seed0"
    write_run(tmp_path, "mole_tiny", "mole", model=tiny, eval_limit=16, values={d: 0.0 for d in NLI})
    write_run(tmp_path, "nla_paper", "nla", count=20, values={d: 60 for d in NLI})  # FLAN-T5-large, full test sets
    markdown = render_markdown(build_table("table3", collect_runs([tmp_path])))
    captions = markdown.split("Columns (model; experts; evaluated examples):\n")[1].split("\n\n")[0].splitlines()
    assert f"- mole: model {tiny}; experts 8 from tiny, first; evaluated 100 per dataset (5 datasets), data.eval_limit=16; 1 run(s)" in captions
    assert "- nla: model google/flan-t5-large; experts 20 from tiny, first; evaluated 100 per dataset (5 datasets); 1 run(s) — a setting" in "\n".join(captions)
    mole_cell = md_row(markdown, "nli", "anli_r1", "EM")[column(markdown, "mole")]
    assert mole_cell.startswith("0.0 (not comparable [")
    assert note_text(markdown, mole_cell.split("not comparable")[1]).endswith(
        f"not comparable with the paper's numbers: model {tiny} (the paper's: google/flan-t5-large); at most 16 evaluated "
        "examples per dataset (data.eval_limit; the paper: the full test sets)")
    assert "not comparable" not in md_row(markdown, "nli", "anli_r1", "EM")[column(markdown, "nla")]
    lines = list(csv.DictReader(io.StringIO(render_csv(build_table("table3", collect_runs([tmp_path]))))))
    assert {r["column"]: bool(r["not_comparable"]) for r in lines if r["dataset"] == "anli_r1"} == {
        "nla": False, "lorahub": False, "pems": False, "mole": True}


def test_column_headers_name_only_the_differing_groups_and_keys_shortened(tmp_path, base_config):
    paper_setting = RunWriter(OmegaConf.to_container(compose_cfg([]), resolve=True))  # FLAN-T5-large, LoRAHub's experts
    paper_setting(tmp_path, "mole_large", "mole", values={d: 60 for d in NLI})
    RunWriter(base_config)(tmp_path, "mole_tiny", "mole", values={d: 10 for d in NLI})
    RunWriter(base_config)(tmp_path, "mole_tiny_block", "mole", granularity="block", values={d: 20 for d in NLI})
    labels = sorted(c.label for c in build_table("table3", collect_runs([tmp_path])).columns if c.label.startswith("mole"))
    assert labels == ["mole [experts=lorahub, model=google/flan-t5-large, granularity=layer]",
                      "mole [experts=tiny, model=tiny, granularity=block]",
                      "mole [experts=tiny, model=tiny, granularity=layer]"]


def test_a_setting_the_paper_lacks_gets_its_own_column_or_row_with_a_note(tmp_path, write_run):
    write_run(tmp_path, "mole", "mole", values={d: 60 for d in NLI})
    write_run(tmp_path, "mixer", "mixer", values={d: 55 for d in NLI})
    markdown = render_markdown(build_table("table3", collect_runs([tmp_path])))
    assert md_row(markdown, "nli", "anli_r1", "EM")[column(markdown, "mixer")] == "55.0"
    assert "- mixer: model google/flan-t5-large; " in markdown
    assert "1 run(s) — a setting the paper's table does not have (its own column; no paper number to compare with)" in markdown
    for count in (8, 10):
        write_run(tmp_path / "t6", f"mole_{count}", "mole", task="bbh_paper", count=count, values={d: count for d in BBH7})
    table6 = render_markdown(build_table("table6", collect_runs([tmp_path / "t6"])))
    assert md_row(table6, "bbh", "10 LoRAs (not in paper table)", "avg")[column(table6, "mole")] == "10.0"
