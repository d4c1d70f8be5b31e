"""Per-dataset fitting (composer.fit_per): fit units planned from the config, metrics combined from the
units, a fresh composer per unit on the restored base (nothing of one unit's fit leaks into the next),
per-unit records, resume, eval, export, dry run and bad input."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from safetensors.torch import load_file

from mole_exp.training.fit_units import plan_units, unit_seeds
from mole_exp.training.pipeline import run
from mole_exp.training.unit_metrics import combine_unit_results
from tests.conftest import DATA_DIR, SMOKE, compose_cfg, needs_data

# ---------------------------------------------------------------- plans and combined metrics (no model)


def test_units_follow_fit_per_and_search_seeds():
    suite = plan_units("suite", ["a", "b"], ["a", "b"], run_seed=3)
    assert [(u.id, u.fit_datasets, u.scored_datasets, u.seed) for u in suite] == [("suite", ("a", "b"), ("a", "b"), 3)]
    per_dataset = plan_units("dataset", ["a", "b"], ["a", "b"], run_seed=3, search_seeds=2)
    assert [(u.id, u.fit_datasets, u.scored_datasets, u.seed, u.search_seed_index) for u in per_dataset] == [
        ("a-seed0", ("a",), ("a",), 6, 0), ("a-seed1", ("a",), ("a",), 7, 1),
        ("b-seed0", ("b",), ("b",), 6, 0), ("b-seed1", ("b",), ("b",), 7, 1),
    ]
    assert [u.id for u in plan_units(None, ["a"], ["x"], 0)] == ["suite"]  # nla: one composition
    assert unit_seeds(run_seed=1, composer_seed=None, search_seeds=5) == [5, 6, 7, 8, 9]  # seeds 0 and 1 never share a search
    assert unit_seeds(run_seed=1, composer_seed=42, search_seeds=1) == [42]


def unit_result(values: dict[str, dict[str, float]], suite: str = "s") -> dict:
    """What evaluate_task returns for one unit scored on the datasets of `values`."""
    metrics = {f"test/{d}/{m}": v for d, per_metric in values.items() for m, v in per_metric.items()}
    flat = [v for per_metric in values.values() for v in per_metric.values()]
    metrics[f"test/{suite}/avg"] = sum(flat) / len(flat)
    return {"metrics": metrics, "higher_is_better": dict.fromkeys(metrics, True), "num_examples": dict.fromkeys(values, 10),
            "extras": {d: {"seen": d} for d in values}}


def test_combined_metrics_average_seeds_then_every_metric_of_every_dataset():
    units = plan_units("dataset", ["a", "b"], ["a", "b"], run_seed=0, search_seeds=2)
    results = {
        "a-seed0": unit_result({"a": {"r1": 10.0, "r2": 20.0}}), "a-seed1": unit_result({"a": {"r1": 30.0, "r2": 40.0}}),
        "b-seed0": unit_result({"b": {"em": 50.0}}), "b-seed1": unit_result({"b": {"em": 70.0}}),
    }
    combined = combine_unit_results("s", units, results)
    assert combined["metrics"] == {"test/a/r1": 20.0, "test/a/r2": 30.0, "test/b/em": 60.0, "test/s/avg": (20 + 30 + 60) / 3}
    spread = combined["per_search_seed"]
    assert spread["count"] == 2 and spread["values"]["test/b/em"] == [50.0, 70.0]
    assert spread["values"]["test/s/avg"] == [(10 + 20 + 50) / 3, (30 + 40 + 70) / 3]
    assert spread["std"]["test/a/r1"] == pytest.approx(statistics.stdev([10.0, 30.0]))
    assert combined["num_examples"] == {"a": 10, "b": 10} and combined["extras"] == {"a": {"seen": "a"}, "b": {"seen": "b"}}
    # one seed per dataset: the suite average of the datasets' own values, no spread
    single = combine_unit_results("s", units[::2], {u.id: results[u.id] for u in units[::2]})
    assert single["metrics"]["test/s/avg"] == (10 + 20 + 50) / 3 and "per_search_seed" not in single
    # one suite fit: evaluate_task's result as it is
    suite = plan_units("suite", ["a", "b"], ["a", "b"], 0)
    whole = unit_result({"a": {"r1": 1.0}, "b": {"em": 2.0}})
    assert combine_unit_results("s", suite, {"suite": whole}) is whole


# release: the base as it was before compose is tests/test_inject.py's


# ---------------------------------------------------------------- MoLE fitted per dataset, through the pipeline

NLI_TWO = ["task=nli", "task.only=[qnli,wnli]"]
MOLE_PER_DATASET = [
    "composer=mole", "composer.fit_per=dataset", "composer.gate.init_std=0.1",  # random gate init: an RNG leak would show
    "trainer.max_steps=4", "checkpoint_every_n_steps=2", "optimizer.lr=0.05",
]


@pytest.fixture(scope="module")
def base_overrides(tmp_path_factory):
    outputs = tmp_path_factory.mktemp("fit_units")
    cache = tmp_path_factory.mktemp("fit_units_cache")
    return outputs, SMOKE + [f"paths.data_dir={DATA_DIR}", f"paths.outputs_dir={outputs}", f"paths.cache_dir={cache}"]


@pytest.fixture(scope="module")
def mole_reference(base_overrides):
    outputs, overrides = base_overrides
    folder = outputs / "mole_reference"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        metrics = run(compose_cfg(overrides + NLI_TWO + MOLE_PER_DATASET, output_dir=folder))
    return folder, metrics


def gates(folder, unit):
    return load_file(str(folder / "checkpoints" / unit / "composer.safetensors"))


def same_gates(left, right):
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


@needs_data
def test_a_mole_run_fitted_per_dataset_records_its_gates_per_dataset(mole_reference):
    folder, metrics = mole_reference
    assert metrics["protocol"]["fit_per"] == "dataset" and metrics["protocol"]["fit_units"] == ["qnli", "wnli"]
    assert set(metrics["units"]) == {"qnli", "wnli"}
    for dataset, unit in metrics["units"].items():
        assert unit["fit_datasets"] == unit["scored_datasets"] == [dataset]
        assert unit["checkpoint"] == str(folder / "checkpoints" / dataset / "composer.safetensors")
        assert unit["train"]["steps"] == 4 and unit["train"]["num_train_examples"] == 16  # that dataset's rows only
        assert unit["composer"]["temperatures"] and set(unit["metrics"]) == {f"test/{dataset}/em", "test/nli/avg"}
        assert metrics["metrics"][f"test/{dataset}/em"] == unit["metrics"][f"test/{dataset}/em"]
    assert not same_gates(gates(folder, "qnli"), gates(folder, "wnli"))  # each dataset its own gates
    assert metrics["metrics"]["test/nli/avg"] == (metrics["metrics"]["test/qnli/em"] + metrics["metrics"]["test/wnli/em"]) / 2
    rows = [json.loads(line) for line in (folder / "gate_stats.jsonl").read_text().splitlines()]
    assert [(r["unit"], r["dataset"], r["step"]) for r in rows] == [(d, d, s) for d in ("qnli", "wnli") for s in range(4)]
    predictions = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    assert {(p["dataset"], p["unit"]) for p in predictions} == {("qnli", "qnli"), ("wnli", "wnli")}
    assert "search" not in metrics and "checkpoint" not in metrics  # the fitted state lives per unit


@needs_data
def test_a_unit_fits_exactly_as_if_it_ran_alone(mole_reference, base_overrides):
    """wnli comes after qnli in the reference run; alone, it must end with the same gates and metrics."""
    folder, metrics = mole_reference
    outputs, overrides = base_overrides
    alone = run(compose_cfg(overrides + ["task=nli", "task.only=[wnli]"] + MOLE_PER_DATASET, output_dir=outputs / "mole_wnli_alone"))
    assert same_gates(gates(outputs / "mole_wnli_alone", "wnli"), gates(folder, "wnli"))
    assert alone["units"]["wnli"]["train"]["final"] == metrics["units"]["wnli"]["train"]["final"]
    assert alone["metrics"]["test/wnli/em"] == metrics["metrics"]["test/wnli/em"]


@needs_data
def test_a_crashed_per_dataset_run_resumes_its_unit_and_keeps_the_finished_ones(mole_reference, base_overrides):
    folder, metrics = mole_reference
    outputs, overrides = base_overrides
    crashed = outputs / "mole_crashed"
    crash = ["callbacks=[{_target_:tests.helpers.RaiseAtStep,step:3,unit:wnli}]"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(compose_cfg(overrides + NLI_TWO + MOLE_PER_DATASET + crash, output_dir=crashed))
    assert (crashed / "units" / "qnli.json").exists() and not (crashed / "units" / "wnli.json").exists()
    assert (crashed / "checkpoints" / "wnli" / "last.ckpt").exists() and not (crashed / "metrics.json").exists()
    finished_qnli = (crashed / "units" / "qnli.json").read_bytes()

    resumed = run(compose_cfg(overrides + NLI_TWO + MOLE_PER_DATASET + ["resume=true"], output_dir=outputs / "mole_resume_cmd"))
    assert (crashed / "metrics.json").exists() and not (outputs / "mole_resume_cmd" / "metrics.json").exists()
    assert (crashed / "units" / "qnli.json").read_bytes() == finished_qnli  # not redone
    assert resumed["units"]["wnli"]["train"]["resumed_from"] == str(crashed / "checkpoints" / "wnli" / "last.ckpt")
    assert resumed["metrics"] == metrics["metrics"]
    for unit in ("qnli", "wnli"):
        assert same_gates(gates(crashed, unit), gates(folder, unit))
    rows = [json.loads(line) for line in (crashed / "gate_stats.jsonl").read_text().splitlines()]
    assert [(r["unit"], r["step"]) for r in rows] == [(d, s) for d in ("qnli", "wnli") for s in range(4)]


@needs_data
def test_eval_mode_reloads_the_gates_of_every_dataset(mole_reference, base_overrides):
    folder, metrics = mole_reference
    outputs, overrides = base_overrides
    evaluated = run(compose_cfg(overrides + NLI_TWO + MOLE_PER_DATASET + ["mode=eval", f"checkpoint={folder}"], output_dir=outputs / "mole_eval"))
    assert evaluated["metrics"] == metrics["metrics"]
    for unit in ("qnli", "wnli"):
        assert evaluated["units"][unit]["checkpoint"] == str(folder / "checkpoints" / unit / "composer.safetensors")
        assert evaluated["units"][unit]["composer"]["temperatures"] == metrics["units"][unit]["composer"]["temperatures"]
    suite_cfg = [o for o in MOLE_PER_DATASET if not o.startswith("composer.fit_per")]
    with pytest.raises(FileNotFoundError, match="it was fitted per dataset; evaluate it with composer.fit_per=dataset"):
        run(compose_cfg(overrides + NLI_TWO + suite_cfg + ["mode=eval", f"checkpoint={folder}"], output_dir=outputs / "mole_eval_suite"))
    with pytest.raises(FileNotFoundError, match="has no checkpoints/anli_r1/composer.safetensors"):
        run(compose_cfg(overrides + ["task=nli", "task.only=[anli_r1,wnli]"] + MOLE_PER_DATASET + ["mode=eval", f"checkpoint={folder}"],
                        output_dir=outputs / "mole_eval_other"))


# ---------------------------------------------------------------- LoRAHub's protocol: per dataset, several search seeds

LORAHUB = ["composer=lorahub", "composer.budget=3", "composer.search_seeds=2", "composer.progress=false"]


def training_sources(overrides, dataset):
    from mole_exp.training.config import build

    cfg = compose_cfg(overrides)
    task = build(cfg.task, _convert_="all").load(train_limit=cfg.data.train_limit, eval_limit=cfg.data.eval_limit)
    return {row["source"] for row in task.train[dataset]}


@needs_data
def test_a_lorahub_run_fitted_per_dataset_records_a_weight_vector_per_dataset_and_seed(base_overrides, monkeypatch):
    from mole_exp.composers.lorahub import LoRAHubComposer

    outputs, overrides = base_overrides
    folder = outputs / "lorahub"
    metrics = run(compose_cfg(overrides + NLI_TWO + LORAHUB + [f"export_dir={outputs / 'lorahub_export'}"], output_dir=folder))
    assert {k: metrics["protocol"][k] for k in ("fit_per", "search_seeds", "fit_units")} == {
        "fit_per": "dataset", "search_seeds": 2, "fit_units": ["qnli-seed0", "qnli-seed1", "wnli-seed0", "wnli-seed1"]
    }
    names = metrics["experts"]["names"]
    for dataset in ("qnli", "wnli"):
        units = [metrics["units"][f"{dataset}-seed{k}"] for k in range(2)]
        assert [u["seed"] for u in units] == [0, 1] and all(u["fit_datasets"] == [dataset] for u in units)
        weights = [u["composer"]["weights"] for u in units]
        assert all(list(w) == names for w in weights) and weights[0] != weights[1]  # one vector per seed
        examples = [u["search"]["examples"] for u in units]
        assert examples[0] != examples[1]  # each search its own few-shot draw ...
        rows = training_sources(overrides + NLI_TWO + LORAHUB, dataset)
        assert all(e["source"] in rows for draw in examples for e in draw)  # ... of that dataset's training rows
        key = f"test/{dataset}/em"
        per_seed = [u["metrics"][key] for u in units]
        assert metrics["per_search_seed"]["values"][key] == per_seed
        assert metrics["metrics"][key] == statistics.fmean(per_seed)
        assert metrics["per_search_seed"]["std"][key] == pytest.approx(statistics.stdev(per_seed))
        for k in range(2):
            assert (outputs / "lorahub_export" / f"{dataset}-seed{k}" / "config.json").exists()

    # nothing of the qnli searches leaks into wnli's: alone, wnli's searches find the same weights
    alone = run(compose_cfg(overrides + ["task=nli", "task.only=[wnli]"] + LORAHUB, output_dir=outputs / "lorahub_wnli"))
    for k in range(2):
        assert alone["units"][f"wnli-seed{k}"]["composer"]["weights"] == metrics["units"][f"wnli-seed{k}"]["composer"]["weights"]

    # resume: a run interrupted after three units redoes only the fourth
    (folder / "metrics.json").unlink()
    (folder / "units" / "wnli-seed1.json").unlink()
    searched = []
    original = LoRAHubComposer.search
    monkeypatch.setattr(LoRAHubComposer, "search", lambda self, data: searched.append(data.seed) or original(self, data))
    resumed = run(compose_cfg(overrides + NLI_TWO + LORAHUB + [f"resume={folder}"], output_dir=outputs / "lorahub_resume"))
    assert searched == [1] and resumed["metrics"] == metrics["metrics"]
    assert resumed["units"]["wnli-seed1"]["composer"]["weights"] == metrics["units"]["wnli-seed1"]["composer"]["weights"]


@needs_data
def test_a_pems_run_fitted_per_dataset_records_its_coefficients_per_dataset(base_overrides):
    outputs, overrides = base_overrides
    pems = ["composer=pems", "composer.fit_per=dataset", "composer.step=0.5", "composer.num_validation=4", "experts.count=3"]
    metrics = run(compose_cfg(overrides + NLI_TWO + pems, output_dir=outputs / "pems"))
    assert metrics["protocol"]["fit_units"] == ["qnli", "wnli"] and metrics["protocol"]["search_seeds"] is None
    for dataset in ("qnli", "wnli"):
        unit = metrics["units"][dataset]
        assert sum(unit["composer"]["weights"].values()) == pytest.approx(1.0) and len(unit["composer"]["lambdas"]) == 2
        assert len(unit["search"]["candidates"]) == 2 * 3 and unit["search"]["num_validation"] == 4


@needs_data
def test_dry_run_shows_the_units(base_overrides, capsys):
    outputs, overrides = base_overrides
    plan = run(compose_cfg(overrides + ["task=nli", "composer=lorahub", "dry_run=true"], output_dir=outputs / "dry"))
    assert plan["fit_per"] == "dataset" and plan["units"] == "25 (per dataset: anli_r1 anli_r2 anli_r3 qnli wnli; x5 search seeds)"
    assert "units=25 (per dataset" in capsys.readouterr().out
    mole = run(compose_cfg(overrides + ["task=nli", "composer=mole", "dry_run=true"], output_dir=outputs / "dry2"))
    assert mole["fit_per"] == "suite" and mole["units"] == "1 (suite)"


# ---------------------------------------------------------------- bad input


@needs_data
def test_bad_fit_per_fails_before_anything_loads(base_overrides, monkeypatch):
    from mole_exp.base import models

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(models, "build_tiny", no_model)
    outputs, overrides = base_overrides
    cases = [
        (["composer=mole", "composer.fit_per=task"], r"composer.fit_per='task' is not one of \['suite', 'dataset'\]"),
        (["composer=nla", "composer.fit_per=dataset"], r"composer 'nla' fits nothing .* fit_per applies to \['fresh_lora', 'lorahub', 'mixer', 'mole', 'pems', 'xlora'\]"),
        (["composer=single", "composer.fit_per=suite"], r"composer 'single' fits nothing"),
        (["composer=pems", "composer.weights=[0.5,0.5,0,0]", "experts.count=4", "composer.fit_per=dataset"],
         r"composer.fit_per=dataset: composer 'pems' fits nothing with these options"),
        (["composer=lorahub", "composer.search_seeds=0"], r"composer.search_seeds=0 must be a positive integer"),
        (["composer=lorahub", "+task@eval_task=bbh_table8"], r"composer.fit_per=dataset .* eval_task='bbh_table8'.* use composer.fit_per=suite"),
        (["task=synthetic", "task.only=[copy,reverse]", "+task.datasets.reverse.args.num_train=0", "composer=mole", "composer.fit_per=dataset"],
         r"composer.fit_per=dataset fits each dataset on its own training rows, but \['reverse'\] of suite 'synthetic' have no training split"),
    ]
    for index, (override, message) in enumerate(cases):
        folder = outputs / f"bad_{index}"
        task = [] if any(o.startswith("task=") for o in override) else ["task=nli", "task.only=[wnli]"]
        with pytest.raises(ValueError, match=message):
            run(compose_cfg(overrides + task + override, output_dir=folder))
        assert not (folder / "metrics.json").exists()
