"""The datasets of the local lm-eval tasks (conf/lm_eval_tasks/), read from the shared data copy, offline.

lm-eval's own `bbh_zeroshot` and `anli_r*` read the Hub (SaylorTwift/bbh, facebook/anli). The local tasks
are the same task configs (prompt, filters, metrics, copied from lm-eval 0.4.13) with `custom_dataset`
pointing here, so they run where the Hub cannot be reached:

    custom_dataset: !function mole_exp.harness.local_tasks.bbh      # dataset_kwargs: {bbh_task: boolean_expressions}
    custom_dataset: !function mole_exp.harness.local_tasks.anli     # dataset_kwargs: {anli_round: 1}

The data folder: `--metadata data_dir=<folder>`, else $MOLE_EXP_DATA, else ../shared/data beside the
repository (the config's `paths.data_dir` default). lm-eval calls these with its task metadata and model
arguments as well (ignored).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import datasets

REPOSITORY = Path(__file__).resolve().parents[2]
ANLI_LABELS = {"e": 0, "n": 1, "c": 2}  # lm-eval's anli: 0 entailment (True), 1 neutral (Neither), 2 contradiction (False)


def data_folder(given: str | None = None) -> Path:
    return Path(given or os.environ.get("MOLE_EXP_DATA") or REPOSITORY.parent / "shared" / "data")


def data_file(folder: Path, relative: str) -> Path:
    path = folder / relative
    if not path.exists():
        raise FileNotFoundError(
            f"local lm-eval task data {path} does not exist; point to the shared data folder with --metadata data_dir=<folder> "
            f"or MOLE_EXP_DATA (lm-eval's own tasks read the Hub instead)"
        )
    return path


def bbh(bbh_task: str, data_dir: str | None = None, **_: Any) -> datasets.DatasetDict:
    """One BIG-Bench Hard task, all its rows as the `test` split (as lm-eval's bbh tasks): input, target."""
    rows = json.loads(data_file(data_folder(data_dir), f"bbh/data/{bbh_task}.json").read_text(encoding="utf-8"))["examples"]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([{"input": r["input"], "target": r["target"]} for r in rows])})


def anli(anli_round: int, data_dir: str | None = None, **_: Any) -> datasets.DatasetDict:
    """One ANLI round in lm-eval's fields (uid, premise, hypothesis, label 0/1/2): its dev and test sets."""
    folder = data_folder(data_dir)
    splits = {}
    for split, name in (("validation", "dev"), ("test", "test")):
        lines = data_file(folder, f"anli/R{int(anli_round)}/{name}.jsonl").read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
        splits[split] = datasets.Dataset.from_list(
            [{"uid": r["uid"], "premise": r["context"], "hypothesis": r["hypothesis"], "label": ANLI_LABELS[r["label"]]} for r in rows]
        )
    return datasets.DatasetDict(splits)
