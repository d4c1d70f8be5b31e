"""Exact-match normalisations as named options (task.em_normalization): LoRAHub's scorer (the BBH default),
the strict forms, SQuAD's; each case by hand, and LoRAHub's scorer against the official lorahub==0.1.0
package's own `lorahub_inference` (when it is installed)."""

from __future__ import annotations

import pytest

from mole_exp.evaluation.metrics import EM_NORMALIZATIONS, get_metric, lorahub_normalize, normalization_for, score
from tests.conftest import DATA_DIR, TOKENIZER_DIR, compose_cfg, needs_data


@pytest.mark.parametrize(
    "prediction, reference, lorahub, strict",
    [
        ("yes", "Yes", 100.0, 0.0),  # LoRAHub folds case, the strict form does not
        ("(A).", "(A)", 100.0, 100.0),  # strict: the BBH answer drops a final period
        ("(a)", "(A)", 100.0, 0.0),
        ("  True \n", "True", 100.0, 100.0),
        ("1.5", "15", 100.0, 0.0),  # LoRAHub drops every period, not only a final one
        ("(B) 12/25/1937", "(B)", 0.0, 100.0),  # LoRAHub compares the whole generation; strict reads the letter
        ("So the answer is (D).", "(D)", 0.0, 100.0),  # and only strict reads a chain of thought's answer
        ("No", "Yes", 0.0, 0.0),
        ("it's impossible to say", "It's impossible to say", 100.0, 0.0),
    ],
)
def test_bbh_scorer_cases(prediction, reference, lorahub, strict):
    assert score("bbh_em", [prediction], [[reference]])[0]["em"] == lorahub  # the default: LoRAHub's scorer
    assert score("bbh_em", [prediction], [[reference]], "lorahub")[0]["em"] == lorahub
    assert score("bbh_em", [prediction], [[reference]], "strict")[0]["em"] == strict


def test_case_folding_and_the_normalisations_by_name():
    assert get_metric("bbh_em").fn(["yes"], [["Yes"]])["em"] == 100.0
    assert get_metric("bbh_em").fn(["yes"], [["Yes"]], normalization="strict")["em"] == 0.0
    assert lorahub_normalize(" The End. ") == "the end"
    assert EM_NORMALIZATIONS["squad"]("The  End!") == "end" and EM_NORMALIZATIONS["strict"](" The End. ") == "The End."
    # every EM metric takes the named forms; its default first
    assert normalization_for("exact_match", None) == "strict"
    assert normalization_for("squad_em", None) == "squad"
    assert normalization_for("bbh_em", None) == "lorahub"
    assert normalization_for("rouge", "lorahub") is None  # not exact match: no normalisation
    assert score("exact_match", ["yes"], [["Yes"]])[0]["em"] == 0.0
    assert score("exact_match", ["yes"], [["Yes"]], "lorahub")[0]["em"] == 100.0
    assert score("squad_em", ["the Eiffel Tower"], [["Eiffel tower"]], "strict")[0]["em"] == 0.0
    assert score("squad_em", ["the Eiffel Tower"], [["Eiffel tower"]])[0]["em"] == 100.0


def test_unknown_or_unsupported_normalisation_is_refused():
    with pytest.raises(ValueError, match=r"normalization='loose': metric bbh_em takes one of \['lorahub', 'strict'\] \(known"):
        score("bbh_em", ["a"], [["a"]], "loose")
    with pytest.raises(ValueError, match=r"task.em_normalization='squad': metric bbh_em takes one of \['lorahub', 'strict'\]"):
        normalization_for("bbh_em", "squad")


@needs_data
def test_the_normalisation_is_a_task_option_checked_before_loading(tmp_path):
    from mole_exp.training.config import build

    bbh = build(compose_cfg(["task=bbh", "task.only=[date_understanding]", f"paths.data_dir={DATA_DIR}"]).task, _convert_="all")
    assert bbh.specs["date_understanding"].normalization == "lorahub"
    strict = compose_cfg(["task=bbh", "task.only=[date_understanding]", "task.em_normalization=strict"]).task
    assert build(strict, _convert_="all").specs["date_understanding"].normalization == "strict"
    nli = build(compose_cfg(["task=nli", "task.em_normalization=lorahub"]).task, _convert_="all")
    assert {s.normalization for s in nli.specs.values()} == {"lorahub"}
    with pytest.raises(ValueError, match=r"task.em_normalization='fuzzy': metric exact_match takes one of"):
        build(compose_cfg(["task=nli", "task.em_normalization=fuzzy"]).task, _convert_="all")


@needs_data
def test_lorahub_scorer_equals_the_official_packages():
    """The official package's `lorahub_inference` scores generations with its own accuracy_score; a stand-in
    model hands it fixed generations, and its accuracy must equal ours on the texts it decoded."""
    algorithm = pytest.importorskip("lorahub.algorithm", reason="the official lorahub==0.1.0 package is not installed")
    from mole_exp.base.models import load_t5_tokenizer

    tokenizer = load_t5_tokenizer(str(TOKENIZER_DIR))
    generations = ["(A)", "yes.", "(b)", "False", "No", "3.5", "(C) 12/25/1937", "valid"]
    targets = ["(A)", "Yes", "(B)", "false", "Yes", "35", "(C)", "invalid"]

    class FixedGenerations:
        def __init__(self):
            self.given = iter(generations)

        def to(self, device):
            return self

        def generate(self, input_ids, max_new_tokens):
            texts = [next(self.given) for _ in range(len(input_ids))]
            return tokenizer(texts, return_tensors="pt", padding=True)["input_ids"]

    decoded, accuracy = algorithm.lorahub_inference([f"question {i}" for i in range(len(targets))], FixedGenerations(), tokenizer, 3, targets)
    assert len(decoded) == len(targets)
    ours = score("bbh_em", decoded, [[t] for t in targets])[0]["em"]
    assert ours == pytest.approx(accuracy) and 0 < accuracy < 100


@needs_data
def test_bbh_lorahub_prompt_is_lorahubs_zero_shot_form():
    """LoRAHub's BBH inputs (its example.py, data_bbh zero_shot.jsonl): the task's description, then "Q: ...\\nA:"."""
    from mole_exp.training.config import build

    task = build(compose_cfg(["task=bbh", "task.only=[date_understanding]", "task.args.prompt=lorahub", f"paths.data_dir={DATA_DIR}"]).task,
                 _convert_="all").load(need_train=False, eval_limit=3)
    plain = build(compose_cfg(["task=bbh", "task.only=[date_understanding]", f"paths.data_dir={DATA_DIR}"]).task,
                  _convert_="all").load(need_train=False, eval_limit=3)
    for row, raw in zip(task.test["date_understanding"], plain.test["date_understanding"], strict=True):
        assert row["source"] == f"Infer the date from context.\n\nQ: {raw['source']}\nA:" and row["target"] == raw["target"]
    assert "LoRAHub's prompt" in task.notes["date_understanding"]
    with pytest.raises(ValueError, match=r"BBH prompt='fewshot' is not one of \['input', 'lorahub'\]"):
        build(compose_cfg(["task=bbh", "task.only=[date_understanding]", "task.args.prompt=fewshot", f"paths.data_dir={DATA_DIR}"]).task,
              _convert_="all").load(need_train=False, eval_limit=1)
