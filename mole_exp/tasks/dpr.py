"""DPR's open-domain QA topic files (`topics.dpr.{nq,trivia}.{dev,test}.txt`): a tab-separated file with
CSV quoting, no header, columns `question` and `answers`, the latter a Python list literal of every gold
answer (TriviaQA: all its aliases)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from mole_exp.tasks.sources import file_rows


def read_topics(path: str | Path) -> list[dict[str, Any]]:
    """Rows {question, answers} of a DPR topic file; answers without duplicates, in their order."""
    import datasets

    columns = ["question", "answers"]
    rows = file_rows(
        "csv",
        path,
        delimiter="\t",
        column_names=columns,
        features=datasets.Features({c: datasets.Value("string") for c in columns}),
        keep_default_na=False,
    )
    out = []
    for row in rows:
        answers = ast.literal_eval(row["answers"])
        if not isinstance(answers, list):
            raise ValueError(f"{path}: answers of {row['question']!r} are not a list: {row['answers'][:80]}")
        out.append({"question": row["question"].strip(), "answers": list(dict.fromkeys(a.strip() for a in answers if a.strip()))})
    return out
