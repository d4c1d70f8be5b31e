"""Closed-book QA: ARC-Easy, ARC-Challenge (FLAN template `arc`, options), Natural Questions open, TriviaQA
(FLAN templates `natural_questions`, `trivia_qa`; every gold alias is an answer).

Splits (local copy / Hub):
- ARC: local has no official test split: ARC train (`*_dev.csv` here) trains, ARC validation
  (`*_test.csv` here) evaluates; Hub (`allenai/ai2_arc`): train / test. As FLAN does, only questions
  with exactly four options are kept (in the local csv the questions labelled 1-4 lost their options
  and five-option questions lost their fifth; those are dropped, and the note counts them).
- NQ open: local: DPR's NQ dev (held out of NQ train) trains, NQ-open dev (the usual test set)
  evaluates; Hub (`google-research-datasets/nq_open`): train / validation.
- TriviaQA: local: DPR's TriviaQA dev (held out of train) trains, DPR's test (= unfiltered
  validation) evaluates; Hub (`mandarjoshi/trivia_qa`, unfiltered.nocontext): train / validation.
Questions are kept as written (NQ's have no "?"; FLAN's NQ templates add one).
"""

from __future__ import annotations

from typing import Any

from mole_exp.tasks.base import LoadedSplits, local_file, register_loader
from mole_exp.tasks.dpr import read_topics
from mole_exp.tasks.sources import file_rows, hub_rows

ARC_LETTERS = "ABCD"
ARC_COLUMNS = ["question", "A", "B", "C", "D", "answer"]
ARC_LOCAL_FILES = {
    "ARC-Challenge": ("arc/ARC-C_train_as_dev/arc_challenge_dev.csv", "arc/ARC-C_validation_as_test/arc_challenge_test.csv"),
    "ARC-Easy": ("arc/ARC-E_train_as_dev/arc_easy_dev.csv", "arc/ARC-E_validation_as_test/arc_easy_test.csv"),
}


def arc_row(question: str, options: list[str], answer_index: int) -> dict[str, Any]:
    answer = options[answer_index]
    return {"question": question.strip(), "options": options, "answer": answer, "answers": [answer]}


def _arc_local(path) -> tuple[list[dict[str, Any]], int]:
    """(rows with four options and an answer among them, how many were dropped) of a local ARC csv."""
    import datasets

    rows = file_rows(
        "csv", path, column_names=ARC_COLUMNS, features=datasets.Features({c: datasets.Value("string") for c in ARC_COLUMNS}), keep_default_na=False
    )
    kept = []
    for row in rows:
        options = [row[letter].strip() for letter in ARC_LETTERS]
        label = row["answer"].strip()
        if all(options) and len(label) == 1 and label in ARC_LETTERS:
            kept.append(arc_row(row["question"], options, ARC_LETTERS.index(label)))
    return kept, len(rows) - len(kept)


def _arc_hub(hub_id: str, config: str, split: str) -> list[dict[str, Any]]:
    rows = []
    for row in hub_rows(hub_id, config, split):
        texts, labels = list(row["choices"]["text"]), list(row["choices"]["label"])
        if len(texts) == 4 and row["answerKey"] in labels:
            rows.append(arc_row(row["question"], [t.strip() for t in texts], labels.index(row["answerKey"])))
    return rows


@register_loader("arc")
def load_arc(name: str, source: str, data_dir: str | None, seed: int, config: str = "ARC-Challenge", hub_id: str = "allenai/ai2_arc") -> LoadedSplits:
    if config not in ARC_LOCAL_FILES:
        raise ValueError(f"ARC config {config!r} is not one of {sorted(ARC_LOCAL_FILES)}")
    if source == "hub":
        return LoadedSplits(_arc_hub(hub_id, config, "train"), _arc_hub(hub_id, config, "test"), f"hub {hub_id} ({config}): train / test, four-option questions")
    train_file, test_file = (local_file(data_dir, f, f"{hub_id} ({config})") for f in ARC_LOCAL_FILES[config])
    (train, train_dropped), (test, test_dropped) = _arc_local(train_file), _arc_local(test_file)
    return LoadedSplits(
        train,
        test,
        f"local: {config} has no official test split here; ARC train trains, ARC validation evaluates; "
        f"questions without exactly four options dropped ({train_dropped} train, {test_dropped} eval)",
    )


def qa_row(question: str, answers: list[str]) -> dict[str, Any]:
    answers = list(dict.fromkeys(a.strip() for a in answers if a and a.strip()))
    return {"question": question.strip(), "answer": answers[0], "answers": answers}


@register_loader("nq_open")
def load_nq_open(name: str, source: str, data_dir: str | None, seed: int, hub_id: str = "google-research-datasets/nq_open") -> LoadedSplits:
    def convert(rows):
        return [qa_row(r["question"], list(r["answer"])) for r in rows if r["answer"]]

    if source == "hub":
        return LoadedSplits(convert(hub_rows(hub_id, None, "train")), convert(hub_rows(hub_id, None, "validation")), f"hub {hub_id}: train / validation")
    train = read_topics(local_file(data_dir, "dpr_qa/topics.dpr.nq.dev.txt", hub_id))
    test = file_rows("json", local_file(data_dir, "nq_open/NQ-open.dev.jsonl", hub_id))
    return LoadedSplits(
        [qa_row(r["question"], r["answers"]) for r in train if r["answers"]],
        convert(test),
        "local: NQ open has no train split here; DPR's NQ dev (held out of NQ train) trains, NQ-open dev (the usual test set) evaluates",
    )


@register_loader("trivia_qa")
def load_trivia_qa(
    name: str, source: str, data_dir: str | None, seed: int, hub_id: str = "mandarjoshi/trivia_qa", hub_config: str = "unfiltered.nocontext"
) -> LoadedSplits:
    if source == "hub":
        def hub(split):
            return [qa_row(r["question"], [r["answer"]["value"], *r["answer"]["aliases"]]) for r in hub_rows(hub_id, hub_config, split)]

        return LoadedSplits(hub("train"), hub("validation"), f"hub {hub_id} ({hub_config}): train / validation")
    train = read_topics(local_file(data_dir, "dpr_qa/topics.dpr.trivia.dev.txt", hub_id))
    test = read_topics(local_file(data_dir, "dpr_qa/topics.dpr.trivia.test.txt", hub_id))
    return LoadedSplits(
        [qa_row(r["question"], r["answers"]) for r in train if r["answers"]],
        [qa_row(r["question"], r["answers"]) for r in test if r["answers"]],
        "local: TriviaQA has no train split here; DPR's TriviaQA dev (held out of train) trains, DPR's test (unfiltered validation) evaluates",
    )
