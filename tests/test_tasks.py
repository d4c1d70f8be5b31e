"""The paper's task suites on the real data: loading, FLAN prompting, split notes, and a tiny run per suite."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import hydra
import pytest
import torch
from hydra.errors import InstantiationException

from mole_exp.tasks import LOADERS, DataUnavailableError
from mole_exp.tasks.bbh import BBH_TASKS
from tests.conftest import DATA_DIR, SMOKE, compose_cfg, needs_data

pytestmark = [needs_data, pytest.mark.usefixtures("one_torch_thread")]  # tests/conftest.py

PAPER_RESULTS = DATA_DIR.parent / "paper" / "mole_nlp_results.csv"
SUITES = {
    "translation": ["wmt14_en_fr", "wmt14_fr_en", "wmt16_en_de", "wmt16_de_en", "wmt16_en_ro", "wmt16_ro_en"],
    "struct2text": ["common_gen", "dart", "e2e_nlg", "web_nlg"],
    "cbqa": ["arc_challenge", "arc_easy", "natural_questions", "trivia_qa"],
    "bbh": list(BBH_TASKS),
}
HUB_ONLY = {"wmt16_en_de", "wmt16_de_en", "wmt16_en_ro", "wmt16_ro_en"}
PRIMARY = {"translation": "bleu", "struct2text": "rougeL", "cbqa": "em", "bbh": "em"}


def make_task(suite: str, *overrides: str):
    cfg = compose_cfg(SMOKE + [f"paths.data_dir={DATA_DIR}", f"task={suite}", *overrides])
    return hydra.utils.instantiate(cfg.task, _convert_="all")


@pytest.fixture(scope="module")
def loaded():
    """Each suite loaded once (5 train / the first 5 eval rows per dataset), offline."""
    tasks = {}

    def get(suite: str):
        if suite not in tasks:
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("HF_HUB_OFFLINE", "1")
                tasks[suite] = make_task(suite, "data.eval_subset=first").load(need_train=True, train_limit=5, eval_limit=5)
        return tasks[suite]

    return get


def load_local(loader: str, **args):
    return LOADERS[loader](name=args.pop("name", loader), source="local", data_dir=str(DATA_DIR), seed=0, **args)


def check_rendered(task, dataset: str) -> None:
    assert task.test[dataset] and task.train[dataset], dataset
    for row in task.test[dataset] + task.train[dataset]:
        assert row["dataset"] == dataset
        assert row["source"].strip() and row["target"].strip()
        assert isinstance(row["references"], list) and row["target"] in row["references"]
        assert all(isinstance(r, str) and r.strip() for r in row["references"])
    assert task.notes[dataset].strip()


# ---------------------------------------------------------------- every suite
@pytest.mark.parametrize("suite", list(SUITES))
def test_every_suite_lists_the_papers_datasets_and_renders_them(suite, loaded):
    task = loaded(suite)
    assert task.dataset_names == SUITES[suite]
    assert set(task.test) | set(task.skipped) == set(SUITES[suite])
    for dataset in task.test:
        check_rendered(task, dataset)


def test_a_dataset_outside_the_suite_is_refused():
    with pytest.raises(InstantiationException, match="not datasets of suite 'bbh'"):
        make_task("bbh", "task.only=[not_a_bbh_task]")


# ---------------------------------------------------------------- translation
def test_translation_prompts_offline_skips_and_notes(loaded):
    task = loaded("translation")
    en_fr, fr_en = task.test["wmt14_en_fr"][0], task.test["wmt14_fr_en"][0]
    assert en_fr["source"].endswith("\n\nTranslate to French") and fr_en["source"].endswith("\n\nTranslate to English")
    assert en_fr["target"] in fr_en["source"] and fr_en["target"] in en_fr["source"]  # the same pair, both ways
    assert set(task.skipped) == HUB_ONLY
    assert all("'wmt/wmt16'" in message and "no local copy" in message for message in task.skipped.values())
    assert "newstest2014" in task.notes["wmt14_en_fr"] and "seeded" in task.notes["wmt14_en_fr"]


def test_wmt14_directions_share_one_disjoint_partition():
    en_fr, fr_en = load_local("wmt14", source_lang="en", target_lang="fr"), load_local("wmt14", source_lang="fr", target_lang="en")
    assert len(en_fr.train) + len(en_fr.test) == 3003
    english_eval = {row["sent1"] for row in en_fr.test}
    assert not english_eval & {row["sent1"] for row in en_fr.train}
    assert not english_eval & {row["sent2"] for row in fr_en.train}  # no eval sentence trains the other direction


def test_wmt16_from_the_hub_offline_is_unavailable_naming_the_hub_id():
    with pytest.raises(DataUnavailableError, match="'wmt/wmt16'.*'ro-en'"):
        LOADERS["wmt16"](name="wmt16_ro_en", source="hub", data_dir=None, seed=0, source_lang="ro", target_lang="en", hub_config="ro-en")


def test_a_template_asking_the_reverse_direction_is_refused():
    task = make_task("translation", "task.only=[wmt14_en_fr]", "task.datasets.wmt14_en_fr.template_index=1")
    with pytest.raises(ValueError, match="reverse translation direction"):
        task.load(train_limit=2, eval_limit=2)


# ---------------------------------------------------------------- struct-to-text
def test_struct2text_inputs_follow_flan_and_keep_every_reference(loaded):
    task = loaded("struct2text")
    assert task.test["common_gen"][0]["source"].startswith("Concepts: field, stand, look\n\n")
    assert len(task.test["common_gen"][0]["references"]) == 4  # the four references of this concept set
    assert "[TABLECONTEXT]" not in task.test["dart"][0]["source"]
    assert "name = Blue Spice, eatType = coffee shop" in task.test["e2e_nlg"][0]["source"]
    web_nlg = task.test["web_nlg"][0]["source"]
    assert " | " not in web_nlg and "_" not in web_nlg
    for dataset in SUITES["struct2text"]:  # training: one row per (input, reference)
        assert all(len(row["references"]) == 1 for row in task.train[dataset])
    assert any(len(row["references"]) > 1 for dataset in task.test for row in task.test[dataset] if dataset != "dart")
    assert "no train split" in task.notes["dart"] and "no train split" in task.notes["e2e_nlg"]


def test_an_inverted_flan_template_is_refused():
    task = make_task("struct2text", "task.only=[common_gen]", "task.datasets.common_gen.template_index=6")
    with pytest.raises(ValueError, match="common_gen\\[6\\].*inverted template"):
        task.load(train_limit=2, eval_limit=2)


# ---------------------------------------------------------------- closed-book QA
def test_cbqa_options_aliases_and_notes(loaded):
    task = loaded("cbqa")
    for dataset in ("arc_challenge", "arc_easy"):
        for row in task.test[dataset]:
            assert len(row["options"]) == 4 and row["target"] in row["options"] and row["references"] == [row["target"]]
            assert row["source"].endswith("\n\nOPTIONS:\n- " + "\n- ".join(row["options"]))
        assert "dropped" in task.notes[dataset]
    assert task.test["natural_questions"][0]["source"] == "Question: when was the last time anyone was on the moon?\nAnswer:"
    assert task.test["natural_questions"][0]["references"] == ["14 December 1972 UTC", "December 1972"]
    assert "DPR" in task.notes["trivia_qa"] and "DPR" in task.notes["natural_questions"]


def test_dpr_answer_lists_keep_aliases_with_quotes():
    from mole_exp.tasks.dpr import read_topics

    rows = read_topics(DATA_DIR / "dpr_qa" / "topics.dpr.trivia.test.txt")
    assert len(rows) == 11313
    stereo = next(row for row in rows if row["question"] == "In which decade did stereo records first go on sale?")
    assert {"1930s", "1930's", "'30s"} <= set(stereo["answers"])


# ---------------------------------------------------------------- BBH
def test_bbh_zero_shot_rows_are_the_tasks_own_inputs_on_a_carved_split(loaded):
    task = loaded("bbh")
    raw = json.loads((DATA_DIR / "bbh" / "data" / "date_understanding.json").read_text())["examples"]
    inputs = {e["input"]: e["target"] for e in raw}
    for row in task.test["date_understanding"]:
        assert inputs[row["source"]] == row["target"]
    assert "one split" in task.notes["date_understanding"] and "seeded" in task.notes["date_understanding"]
    splits = load_local("bbh", name="penguins_in_a_table")
    assert len(splits.train) + len(splits.test) == 146
    assert not {r["source"] for r in splits.train} & {r["source"] for r in splits.test}


def test_bbh_three_shot_chain_of_thought_prompt():
    task = make_task("bbh", "task.only=[date_understanding]", "task.args.shots=3").load(train_limit=1, eval_limit=1)
    source = task.test["date_understanding"][0]["source"]
    assert source.startswith("Infer the date from context.\n\nQ: ")
    assert source.count("\nA: Let's think step by step.") == 4 and source.count("So the answer is") == 3
    assert "BENCHMARK DATA SHOULD NEVER" not in source
    assert "3-shot chain-of-thought" in task.notes["date_understanding"]


@pytest.mark.skipif(not PAPER_RESULTS.exists(), reason=f"paper results table not found at {PAPER_RESULTS}")
@pytest.mark.parametrize("preset, table", [("bbh_paper", "table3"), ("bbh_table8", "table8")])
def test_bbh_presets_are_the_papers_tables(preset, table):
    with PAPER_RESULTS.open() as handle:
        names = {row["dataset"].removeprefix("bbh/") for row in csv.DictReader(handle) if row["table"] == table and row["suite"] == "bbh"}
    names.discard("average")
    task = make_task(preset)
    assert task.name == preset and set(task.dataset_names) == names and len(names) == {"table3": 7, "table8": 6}[table]


# ---------------------------------------------------------------- Hub rows get the local preprocessing
def test_hub_rows_get_the_same_preprocessing(monkeypatch):
    from mole_exp.tasks import bbh, cbqa, struct2text, translation

    hub = {
        ("tuetschek/e2e_nlg", "test"): [
            {"meaning_representation": "name[Blue Spice], area[city centre]", "human_reference": "Blue Spice is in the centre."},
            {"meaning_representation": "name[Blue Spice], area[city centre]", "human_reference": "A place called Blue Spice."},
        ],
        ("allenai/ai2_arc", "test"): [
            {"question": "Which is a gas?", "choices": {"text": ["ice", "steam", "rock", "wood"], "label": ["1", "2", "3", "4"]}, "answerKey": "2"},
            {"question": "Three options?", "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]}, "answerKey": "A"},
        ],
        ("wmt/wmt14", "test"): [{"translation": {"en": "A black box.", "fr": "Une boîte noire."}}],
        ("lukaemon/bbh", "test"): [{"input": "not ( True ) is", "target": "False"}, {"input": "True and False is", "target": "False"}],
    }

    def fake_hub_rows(hub_id, config, split, limit=None):
        return hub.get((hub_id, split), [])

    for module in (bbh, cbqa, struct2text, translation):
        monkeypatch.setattr(module, "hub_rows", fake_hub_rows)
    e2e = LOADERS["e2e_nlg"](name="e2e_nlg", source="hub", data_dir=None, seed=0)
    assert e2e.test == [
        {"meaning_representation": "name = Blue Spice, area = city centre", "target": "Blue Spice is in the centre.",
         "answers": ["Blue Spice is in the centre.", "A place called Blue Spice."]}
    ]
    arc = LOADERS["arc"](name="arc_easy", source="hub", data_dir=None, seed=0, config="ARC-Easy")
    assert arc.test == [{"question": "Which is a gas?", "options": ["ice", "steam", "rock", "wood"], "answer": "steam", "answers": ["steam"]}]
    wmt = LOADERS["wmt14"](name="wmt14_fr_en", source="hub", data_dir=None, seed=0, source_lang="fr", target_lang="en")
    assert wmt.test == [{"sent1": "Une boîte noire.", "lang1": "French", "sent2": "A black box.", "lang2": "English", "answers": ["A black box."]}]
    bbh_splits = LOADERS["bbh"](name="boolean_expressions", source="hub", data_dir=None, seed=0, eval_fraction=0.5)
    assert len(bbh_splits.train) == len(bbh_splits.test) == 1
    assert sorted(r["source"] for r in bbh_splits.train + bbh_splits.test) == ["True and False is", "not ( True ) is"]
    assert bbh_splits.note.startswith("hub lukaemon/bbh")


# ---------------------------------------------------------------- end to end, one tiny run per suite
def run_suite(suite: str, smoke_overrides, tmp_path):
    from mole_exp.training.pipeline import run

    run_dir = tmp_path / "run"
    metrics = run(compose_cfg(smoke_overrides + [f"task={suite}", "composer=mole"], output_dir=run_dir))
    return metrics, run_dir


def check_run(suite: str, datasets: list[str], metrics, run_dir: Path) -> None:
    expected = [d for d in datasets if d not in HUB_ONLY]
    for dataset in expected:
        assert f"test/{dataset}/{PRIMARY[suite]}" in metrics["metrics"], dataset
        assert metrics["num_examples"][dataset] == 4
        assert metrics["split_notes"][dataset]
    assert f"test/{metrics['task']}/avg" in metrics["metrics"]
    assert set(metrics["skipped"]) == set(datasets) - set(expected)
    predictions = (run_dir / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 4 * len(expected)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_translation_runs_end_to_end_and_records_the_skipped_wmt16(tmp_path, smoke_overrides):
    metrics, run_dir = run_suite("translation", smoke_overrides, tmp_path)
    check_run("translation", SUITES["translation"], metrics, run_dir)
    assert all("wmt/wmt16" in message for message in metrics["skipped"].values())
    assert "tok:13a" in metrics["extras"]["wmt14_en_fr"]["sacrebleu_signature"]


def test_bbh_paper_preset_runs_end_to_end(tmp_path, smoke_overrides):
    metrics, run_dir = run_suite("bbh_paper", smoke_overrides, tmp_path)
    check_run("bbh", ["boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa", "penguins_in_a_table",
                      "reasoning_about_colored_objects", "ruin_names"], metrics, run_dir)
    assert metrics["task"] == "bbh_paper"


@pytest.mark.parametrize("suite", ["struct2text", "cbqa", pytest.param("bbh", marks=pytest.mark.slow)])
def test_suite_runs_end_to_end(suite, tmp_path, smoke_overrides):
    metrics, run_dir = run_suite(suite, smoke_overrides, tmp_path)
    check_run(suite, SUITES[suite], metrics, run_dir)


def test_seeded_builders_leave_the_callers_generator_as_it_was(tmp_path):
    """Building the tiny T5 and the tiny library (seeded by their own seeds, under torch.random.fork_rng) draws
    nothing from the caller's generator: the next number is the one it would have been."""

    from mole_exp.experts.tiny_library import ensure_tiny_library
    from tests.conftest import make_tiny

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    base = make_tiny()
    ensure_tiny_library(base, str(tmp_path / "lib"), num_adapters=2, rank=2, alpha=4, targets=["q", "v"], seed=0)
    assert torch.equal(torch.rand(3), expected)
