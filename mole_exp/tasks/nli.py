"""NLI datasets: ANLI R1-R3, QNLI, WNLI (FLAN templates `anli`, `qnli`, `wnli`).

Local copies (see the shared data README) lack most training splits:
- ANLI: the round's dev set trains the gates, its test set evaluates (disjoint by construction).
- QNLI: only GLUE dev is labelled here: a seeded, disjoint split carves train/eval out of it.
- WNLI: GLUE train (train.tsv + dev.tsv here) trains, GLUE dev (test.tsv here) evaluates.
On the Hub the official train split trains and the labelled test/validation split evaluates.
"""

from __future__ import annotations

import csv
from typing import Any

from mole_exp.tasks.base import LoadedSplits, carve, local_file, register_loader
from mole_exp.tasks.sources import file_rows, hub_rows

ANLI_OPTIONS = ["Yes", "It's impossible to say", "No"]  # entailment, neutral, contradiction (FLAN)
ANLI_LOCAL_LABELS = {"e": 0, "n": 1, "c": 2}
QNLI_OPTIONS = ["yes", "no"]  # entailment, not_entailment (FLAN)
QNLI_LOCAL_LABELS = {"entailment": 0, "not_entailment": 1}
WNLI_OPTIONS = ["no", "yes"]  # label 0 = not entailment, 1 = entailment (FLAN)


def _labelled(row: dict[str, Any], options: list[str], label: int, **fields: str) -> dict[str, Any]:
    answer = options[label]
    return {**fields, "options": options, "answer": answer, "answers": [answer]}


@register_loader("anli")
def load_anli(name: str, source: str, data_dir: str | None, seed: int, round: int = 1, hub_id: str = "facebook/anli") -> LoadedSplits:
    def convert(rows, local):
        out = []
        for row in rows:
            label = ANLI_LOCAL_LABELS[row["label"]] if local else int(row["label"])
            if label < 0:
                continue
            out.append(_labelled(row, ANLI_OPTIONS, label, context=row["premise" if not local else "context"], hypothesis=row["hypothesis"]))
        return out

    if source == "hub":
        train = convert(hub_rows(hub_id, None, f"train_r{round}"), False)
        test = convert(hub_rows(hub_id, None, f"test_r{round}"), False)
        return LoadedSplits(train, test, f"hub {hub_id}: train_r{round} / test_r{round}")
    dev = local_file(data_dir, f"anli/R{round}/dev.jsonl", hub_id)
    test = local_file(data_dir, f"anli/R{round}/test.jsonl", hub_id)
    return LoadedSplits(
        convert(file_rows("json", dev), True),
        convert(file_rows("json", test), True),
        f"local: ANLI R{round} has no train split here; gates train on dev.jsonl, evaluation on test.jsonl",
    )


def _read_tsv(path) -> list[dict[str, str]]:
    # GLUE tsv files contain unescaped quotes: plain csv with QUOTE_NONE, as GLUE's own readers do
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


@register_loader("qnli")
def load_qnli(name: str, source: str, data_dir: str | None, seed: int, eval_fraction: float = 0.5, hub_id: str = "nyu-mll/glue") -> LoadedSplits:
    def convert(rows, local):
        return [
            _labelled(r, QNLI_OPTIONS, QNLI_LOCAL_LABELS[r["label"]] if local else int(r["label"]), question=r["question"], sentence=r["sentence"])
            for r in rows
            if (r["label"] in QNLI_LOCAL_LABELS if local else int(r["label"]) >= 0)
        ]

    if source == "hub":
        return LoadedSplits(convert(hub_rows(hub_id, "qnli", "train"), False), convert(hub_rows(hub_id, "qnli", "validation"), False), f"hub {hub_id}/qnli: train / validation")
    rows = convert(_read_tsv(local_file(data_dir, "glue/QNLI/dev.tsv", f"{hub_id} (qnli)")), True)
    train, test = carve(rows, eval_fraction, seed)
    return LoadedSplits(train, test, f"local: only GLUE QNLI dev is labelled here; seeded (seed={seed}) disjoint split, {len(train)} train / {len(test)} eval")


@register_loader("wnli")
def load_wnli(name: str, source: str, data_dir: str | None, seed: int, hub_id: str = "nyu-mll/glue") -> LoadedSplits:
    def convert(rows):
        return [_labelled(r, WNLI_OPTIONS, int(r["label"]), sentence1=r["sentence1"], sentence2=r["sentence2"]) for r in rows if str(r["label"]).lstrip("-").isdigit() and int(r["label"]) >= 0]

    if source == "hub":
        return LoadedSplits(convert(hub_rows(hub_id, "wnli", "train")), convert(hub_rows(hub_id, "wnli", "validation")), f"hub {hub_id}/wnli: train / validation")
    train = _read_tsv(local_file(data_dir, "glue/WNLI/train.tsv", f"{hub_id} (wnli)")) + _read_tsv(local_file(data_dir, "glue/WNLI/dev.tsv", f"{hub_id} (wnli)"))
    test = _read_tsv(local_file(data_dir, "glue/WNLI/test.tsv", f"{hub_id} (wnli)"))
    return LoadedSplits(convert(train), convert(test), "local: GLUE WNLI train (train.tsv + dev.tsv here) trains, GLUE dev (test.tsv here) evaluates")
