"""The metrics against independently known answers (hand-worked or definitional), not against themselves."""

from __future__ import annotations

import pytest

from mole_exp.evaluation.metrics import bbh_answer, get_metric, score, squad_normalize

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A black box in your car could tell the insurer how you drive.",
    "Spectacular wingsuit jump over Bogota on Thursday afternoon.",
]


# ---------------------------------------------------------------- BLEU
def test_bleu_of_references_against_themselves_is_100_with_a_13a_signature():
    values, extras = score("bleu", CORPUS, [[sentence] for sentence in CORPUS])
    assert values["bleu"] == pytest.approx(100.0)
    signature = extras["sacrebleu_signature"]
    assert "tok:13a" in signature and "nrefs:1" in signature and "case:mixed" in signature


def test_bleu_takes_any_of_several_references_and_counts_them_in_the_signature():
    references = [[f"unrelated words number {i} here", sentence] for i, sentence in enumerate(CORPUS)]
    values, extras = score("bleu", CORPUS, references)
    assert values["bleu"] == pytest.approx(100.0)
    assert "nrefs:2" in extras["sacrebleu_signature"]
    # an example with fewer references than the others is allowed (its first one fills the gap)
    values, _ = score("bleu", CORPUS, [[CORPUS[0]], [CORPUS[1], "x y z w"], [CORPUS[2]]])
    assert values["bleu"] == pytest.approx(100.0)


def test_bleu_with_no_shared_word_is_0():
    values, _ = score("bleu", ["alpha beta gamma delta epsilon"], [["one two three four five"]])
    assert values["bleu"] == pytest.approx(0.0)


# ---------------------------------------------------------------- ROUGE
def test_rouge_matches_a_hand_worked_example():
    # prediction "the cat sat", reference "the cat sat on the mat" (6 tokens)
    # ROUGE-1: overlap 3 unigrams; P = 3/3, R = 3/6 -> F = 2 * 1 * 0.5 / 1.5 = 2/3
    # ROUGE-2: prediction bigrams {the cat, cat sat} both in the reference's 5 bigrams; P = 1, R = 2/5 -> F = 0.8 / 1.4 = 4/7
    # ROUGE-L: longest common subsequence "the cat sat" = 3; P = 1, R = 1/2 -> F = 2/3
    values = get_metric("rouge").fn(["the cat sat"], [["the cat sat on the mat"]])
    assert values["rouge1"] == pytest.approx(100 * 2 / 3)
    assert values["rouge2"] == pytest.approx(100 * 4 / 7)
    assert values["rougeL"] == pytest.approx(100 * 2 / 3)


def test_rouge_stems_and_takes_the_best_reference():
    # Porter stemming: "cats" -> "cat", "sitting" -> "sit"; the second reference matches exactly
    values = get_metric("rouge").fn(["the cats are sitting"], [["a dog barks loudly", "the cat are sit"]])
    assert values == pytest.approx({"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})
    # the average over examples: one perfect, one with nothing in common
    values = get_metric("rouge").fn(["the cat sat", "zebra"], [["the cat sat"], ["the cat sat"]])
    assert values["rouge1"] == pytest.approx(50.0)


# ---------------------------------------------------------------- SQuAD exact match
@pytest.mark.parametrize(
    "text, normal",
    [
        ("The Eiffel Tower", "eiffel tower"),  # case and article
        ("an apple a day", "apple day"),  # every article, as whole words
        ("Theatre Royal", "theatre royal"),  # "the" inside a word stays
        ("U.S.A.!", "usa"),  # punctuation goes
        ("  New   York,  NY ", "new york ny"),  # whitespace squeezed
    ],
)
def test_squad_normalisation(text, normal):
    assert squad_normalize(text) == normal


def test_squad_em_accepts_any_alias_after_normalisation():
    references = [["David Seville", "Ross Bagdasarian"], ["Scorpio"], ["1930s"]]
    values = get_metric("squad_em").fn(["ross bagdasarian.", "The Scorpio", "1940s"], references)
    assert values["em"] == pytest.approx(200 / 3)


# ---------------------------------------------------------------- BBH exact match
@pytest.mark.parametrize(
    "generation, answer",
    [
        ("(A)", "(A)"),
        ("(C) 12/14/1937", "(C)"),  # an option with its text -> its letter
        ("B", "(B)"),  # a bare letter -> the letter form
        ("the answer is (B).", "(B)"),
        ("Let's think step by step. (A) is wrong. So the answer is (D).", "(D)"),  # the last "answer is"
        ("So the answer is (D).\n\nQ: next question", "(D)"),  # what follows on later lines is ignored
        ("So the answer is True.", "True"),
        ("True", "True"),
        ("valid.", "valid"),
        ("the answer is -219.", "-219"),
        ("Alice", "Alice"),  # a word starting with a capital letter is not an option letter
    ],
)
def test_bbh_answer_extraction(generation, answer):
    assert bbh_answer(generation) == answer


def test_bbh_em_strict_compares_letters_and_free_form_answers():
    predictions = ["(A)", "the answer is (B).", "True", "(C)", "false", "So the answer is No."]
    references = [["(A)"], ["(B)"], ["True"], ["(D)"], ["False"], ["No"]]
    values = get_metric("bbh_em").fn(predictions, references, normalization="strict")
    assert values["em"] == pytest.approx(100 * 4 / 6)  # "(C)" != "(D)"; case matters: "false" != "False"


# ---------------------------------------------------------------- exact match (classification options)
def test_exact_match_strips_whitespace_only():
    values = get_metric("exact_match").fn([" yes \n", "Yes", "no"], [["yes"], ["yes"], ["no "]])
    assert values["em"] == pytest.approx(200 / 3)


def test_metrics_refuse_empty_or_misaligned_inputs():
    with pytest.raises(ValueError, match="empty"):
        score("exact_match", [], [])
    with pytest.raises(ValueError, match="2 predictions but 1"):
        score("rouge", ["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="not registered"):
        score("accuracy_of_nothing", ["a"], [["a"]])
