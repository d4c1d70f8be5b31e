"""Evaluation splits come from data.split_seed, not the run's seed, and data.eval_limit takes a seeded random
subset by default (data.eval_subset=first: the first N), both recorded in metrics.json."""

from __future__ import annotations

import json

import pytest

from mole_exp.tasks.base import eval_subset
from mole_exp.training.config import build
from mole_exp.training.pipeline import run
from tests.conftest import DATA_DIR, SMOKE, compose_cfg, needs_data

pytestmark = needs_data


def nli(*overrides: str):
    cfg = compose_cfg(SMOKE + [f"paths.data_dir={DATA_DIR}", "task=nli", "task.only=[anli_r3,qnli]", *overrides])
    return build(cfg.task, _convert_="all").load(need_train=False, eval_limit=cfg.data.eval_limit)


def sources(task, dataset: str) -> list[str]:
    return [row["source"] for row in task.test[dataset]]


def test_the_run_seed_does_not_move_the_evaluation_examples():
    seed0, seed1 = nli("seed=0", "data.eval_limit=16"), nli("seed=1", "data.eval_limit=16")
    for dataset in ("anli_r3", "qnli"):  # qnli's eval split is carved out of GLUE dev locally
        assert sources(seed0, dataset) == sources(seed1, dataset)
    assert seed0.notes["qnli"] == seed1.notes["qnli"]
    other_split = nli("seed=0", "data.eval_limit=16", "data.split_seed=1")
    assert sources(other_split, "qnli") != sources(seed0, "qnli")  # the split seed does move them
    assert "seed=1" in other_split.notes["qnli"]


def test_eval_limit_takes_a_seeded_random_subset_not_the_first_n():
    full = nli("data.eval_limit=null")
    subset = nli("data.eval_limit=16")
    first = nli("data.eval_limit=16", "data.eval_subset=first")
    everything = sources(full, "anli_r3")
    assert sources(first, "anli_r3") == everything[:16]
    chosen = sources(subset, "anli_r3")
    assert len(chosen) == 16 and chosen != everything[:16] and set(chosen) <= set(everything)
    assert chosen == sorted(chosen, key=everything.index)  # kept in the split's order
    assert len({row["target"] for row in first.test["anli_r3"]}) == 1  # the first 16 of anli_r3 all answer "Yes"
    assert len({row["target"] for row in subset.test["anli_r3"]}) > 1
    assert sources(nli("data.eval_limit=16", "data.split_seed=3"), "anli_r3") != chosen


def test_eval_subset_checks():
    rows = [{"i": i} for i in range(10)]
    assert eval_subset(rows, None, "random", 0, "d") == rows and eval_subset(rows, 20, "random", 0, "d") == rows
    assert eval_subset(rows, 3, "random", 0, "d") == eval_subset(rows, 3, "random", 0, "d")
    with pytest.raises(ValueError, match=r"data.eval_subset='last' is not one of \['random', 'first'\]"):
        nli("data.eval_subset=last")
    with pytest.raises(ValueError, match=r"data.split_seed='x' must be an integer"):
        nli("data.split_seed=x")
    with pytest.raises(ValueError, match=r"data.eval_subset='last' is not one of"):  # before any model or data loads
        run(compose_cfg(SMOKE + ["data.eval_subset=last", "dry_run=true"]))


def test_runs_of_two_seeds_score_the_same_examples_and_record_the_protocol(tmp_path):
    inputs, protocols = [], []
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        metrics = run(compose_cfg(SMOKE + [f"paths.data_dir={DATA_DIR}", f"paths.outputs_dir={tmp_path}", "task=nli", "task.only=[qnli]",
                                           "composer=nla", f"seed={seed}"], output_dir=out))
        protocols.append(metrics["protocol"])
        inputs.append([json.loads(line)["input"] for line in (out / "predictions.jsonl").read_text().splitlines()])
    assert inputs[0] == inputs[1] and len(inputs[0]) == 4
    assert protocols[0]["data"] == {"split_seed": 0, "eval_subset": "random", "eval_limit": 4}
    assert protocols[0]["scorers"] == {"qnli": {"metric": "exact_match", "normalization": "strict"}}
