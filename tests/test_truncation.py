"""An over-long input is cut inside its longest free-text slot, so the question and the options survive; the
cut is counted per dataset in metrics.json, flagged in predictions.jsonl and warned about once per dataset."""

from __future__ import annotations

import json
import logging

import pytest

from mole_exp.tasks import Task
from mole_exp.tasks.base import LOADERS, LoadedSplits
from mole_exp.tasks.truncation import fit_to_length
from tests.conftest import TOKENIZER_DIR, needs_data

HYPOTHESIS = "The committee met on a Tuesday in late autumn"
PREMISE = " ".join(f"word{i % 97} of the long premise" for i in range(1000))  # 5,000 words


def long_rows(**_):
    row = {"context": PREMISE, "hypothesis": HYPOTHESIS, "options": ["Yes", "It's impossible to say", "No"],
           "answer": "No", "answers": ["No"]}
    short = {**row, "context": "A short premise."}
    bbh_like = {"source": "Q: " + PREMISE + "\nQ: Is the sky green?\nA:", "target": "No", "answers": ["No"]}
    return LoadedSplits(train=[row, short], test=[row, short]), bbh_like


@pytest.fixture
def suite():
    LOADERS["long_for_test"] = lambda **kw: long_rows(**kw)[0]
    LOADERS["untemplated_for_test"] = lambda **kw: LoadedSplits(train=[long_rows()[1]], test=[long_rows()[1]])
    try:
        task = Task("t", {"long": {"loader": "long_for_test", "metric": "exact_match", "template": "anli"},
                          "plain": {"loader": "untemplated_for_test", "metric": "exact_match"}}, source="local", data_dir=".")
        yield task.load()
    finally:
        del LOADERS["long_for_test"], LOADERS["untemplated_for_test"]


@needs_data
def test_a_5000_word_premise_is_cut_so_the_question_and_options_survive(suite, caplog):
    from transformers import T5Tokenizer

    tokenizer = T5Tokenizer.from_pretrained(str(TOKENIZER_DIR))
    with caplog.at_level(logging.WARNING, logger="mole_exp.tasks.truncation"):
        report = fit_to_length([suite], tokenizer, max_source_length=512, max_target_length=1)
    long, short = suite.test["long"]
    assert len(tokenizer(long["source"]).input_ids) <= 512
    assert long["source"].endswith(f'can we conclude that "{HYPOTHESIS}"?\n\nOPTIONS:\n- Yes\n- It\'s impossible to say\n- No')
    assert long["source"].startswith("word0 of the long premise word1")  # the premise is cut at its end, not dropped
    assert long["truncated"]["cut"] == "slot context" and long["truncated"]["tokens"] > 5000
    assert "truncated" not in short and short["source"].startswith("A short premise.")
    plain = suite.test["plain"][0]
    assert plain["source"].endswith("Q: Is the sky green? A:") and len(tokenizer(plain["source"]).input_ids) <= 512  # T5 reads newlines as spaces
    assert plain["truncated"]["cut"].startswith("the start of the input")
    assert report["datasets"]["long"] == {"train": {"examples": 2, "inputs_cut": 1, "targets_cut": 2},  # "No" + </s> > 2
                                          "test": {"examples": 2, "inputs_cut": 1}}
    warnings = [r.getMessage() for r in caplog.records]
    assert len([w for w in warnings if w.startswith("long:")]) == 1  # once per dataset, both splits in it
    assert "1 of 2 train, 1 of 2 test; cut: slot context" in warnings[0]
    assert "2 training targets longer than data.max_target_length=1" in warnings[0]


@needs_data
def test_the_pipeline_records_and_flags_cut_inputs(tmp_path, smoke_overrides):
    from mole_exp.training.pipeline import run
    from tests.conftest import compose_cfg

    run_dir = tmp_path / "run"
    metrics = run(compose_cfg(smoke_overrides + ["task=nli", "task.only=[anli_r1]", "data.max_source_length=96"], output_dir=run_dir))
    counts = metrics["truncation"]["datasets"]["anli_r1"]
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    flagged = [p for p in predictions if p.get("truncated")]
    assert counts["test"]["examples"] == 4 and counts["test"]["inputs_cut"] == len(flagged) > 0
    for prediction in flagged:
        assert prediction["truncated"]["cut"] == "slot context"
        assert prediction["input"].endswith("OPTIONS:\n- Yes\n- It's impossible to say\n- No")
    assert json.loads((run_dir / "metrics.json").read_text())["truncation"]["max_source_length"] == 96
