"""Expert pools (experts.pool = random | in_domain | family | list, experts.exclude_scored): the packaged
LoRAHub map, LoRAHub's own random protocol, in-domain and family pools, explicit lists, on LoRAHub's ids,
on library manifests and on the tiny library (every pool end to end on the tiny T5), dry runs that print
each member's expert ids without loading a model, and the bad inputs."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from mole_exp.experts.catalogue import DATASET_FAMILY, lorahub_modules, lorahub_modules_for, pool_datasets
from mole_exp.experts.library import packaged_id_list
from mole_exp.experts.loading import load_experts, select_pool
from mole_exp.training.pipeline import run
from tests.conftest import DATA_DIR, ROOT, SMOKE, compose_cfg, needs_data, tiny_experts_cfg

HUB = "lorahub/flan_t5_large-"
NLI9 = {f"{HUB}{m}" for m in ("anli_r1", "anli_r2", "anli_r3", "glue_qnli", "glue_wnli", "super_glue_rte", "super_glue_cb",
                              "glue_mnli", "snli")}


def lorahub(*overrides: str):
    return compose_cfg(["experts=lorahub", *overrides])


def pool_ids(cfg) -> list[str]:
    return [source for _, source in select_pool(cfg.experts, *pool_datasets(cfg))]


# ---------------------------------------------------------------- the packaged map


def test_the_packaged_map_covers_lorahubs_196_modules_in_order():
    modules = lorahub_modules()
    assert [m.hub_id for m in modules.values()] == packaged_id_list("lorahub") and len(modules) == 196
    assert {m.hub_id for m in modules.values() if m.family == "nli"} == NLI9
    assert {m.module for m in modules.values() if m.family == "translation"} == {
        "wmt14_translate_fr-en", "wmt16_translate_ro-en", "wmt16_translate_tr-en", "para_crawl_enes"}
    assert {"gem_dart", "gem_e2e_nlg", "gem_web_nlg_en"} <= {m.module for m in modules.values() if m.family == "struct_to_text"}
    assert lorahub_modules_for("qnli") == ["glue_qnli"] and lorahub_modules_for("web_nlg") == ["gem_web_nlg_en"]
    assert lorahub_modules_for("wmt14_fr_en") == lorahub_modules_for("wmt14_en_fr") == ["wmt14_translate_fr-en"]
    assert lorahub_modules_for("arc_easy") == [] and lorahub_modules_for("boolean_expressions") == []
    assert all(m.family and m.collection and m.source_cluster for m in modules.values())
    for m in modules.values():  # every dataset key a module names is one of our suites'
        assert set(m.our_datasets) <= set(DATASET_FAMILY) and all(DATASET_FAMILY[d] == m.family for d in m.our_datasets)


# ---------------------------------------------------------------- pools over LoRAHub's ids (no model)


def test_random_pool_is_lorahubs_protocol_and_independent_of_the_run_seed():
    expected = random.Random(1).sample(packaged_id_list("lorahub"), 20)  # reproduce_bbh.py: random.seed(s); random.sample(..., 20)
    for seed, task in ((0, "nli"), (1, "nli"), (7, "bbh_paper")):
        assert pool_ids(lorahub(f"seed={seed}", f"task={task}")) == expected
    assert pool_ids(lorahub("experts.pool_seed=2")) == random.Random(2).sample(packaged_id_list("lorahub"), 20) != expected


@pytest.mark.parametrize(
    "task, in_domain",
    [
        ("nli", ["glue_wnli", "anli_r1", "anli_r2", "anli_r3", "glue_qnli"]),
        ("struct2text", ["gem_e2e_nlg", "gem_dart", "gem_web_nlg_en"]),
        ("translation", ["wmt16_translate_ro-en", "wmt14_translate_fr-en"]),
        ("cbqa", []),
    ],
)
def test_in_domain_pool_takes_the_suites_modules_and_fills_up_to_count(task, in_domain):
    ids = pool_ids(lorahub(f"task={task}", "experts.pool=in_domain"))
    assert len(ids) == len(set(ids)) == 20
    assert ids[: len(in_domain)] == [HUB + m for m in in_domain]
    fill = [lorahub_modules()[i.removeprefix(HUB)] for i in ids[len(in_domain):]]
    suite = pool_datasets(lorahub(f"task={task}"))[0]
    assert not any(set(m.our_datasets) & set(suite) for m in fill)
    assert pool_ids(lorahub(f"task={task}", "experts.pool=in_domain", "seed=3")) == ids


def test_exclude_scored_drops_the_module_of_each_scored_dataset():
    ids = pool_ids(lorahub("task=nli", "task.only=[anli_r1,qnli]", "experts.pool=in_domain", "experts.exclude_scored=true"))
    assert HUB + "anli_r1" not in ids and HUB + "glue_qnli" not in ids and len(ids) == 20
    family = pool_ids(lorahub("task=nli", "task.only=[anli_r2]", "experts.pool=family", "experts.family=nli", "experts.count=null",
                              "experts.exclude_scored=true"))
    assert set(family) == NLI9 - {HUB + "anli_r2"}
    # Table 8's composition is scored on BBH: nothing of the NLI family is dropped
    table8 = compose_cfg(["+experiment=paper/table8", "composer=mole", "experts.exclude_scored=true"])
    assert set(pool_ids(table8)) == NLI9


def test_family_and_list_pools():
    assert set(pool_ids(lorahub("experts.pool=family", "experts.family=nli", "experts.count=null"))) == NLI9
    four = pool_ids(lorahub("experts.pool=family", "experts.family=entailment", "experts.count=4"))  # FLAN's name for nli
    assert len(four) == 4 and set(four) <= NLI9
    assert len(pool_ids(lorahub("experts.pool=family", "experts.family=struct2text", "experts.count=null"))) == 8  # + P3 wiki_bio
    nli5 = pool_ids(compose_cfg(["experts=lorahub_nli"]))
    assert nli5 == [HUB + m for m in ("anli_r1", "anli_r2", "anli_r3", "glue_qnli", "glue_wnli")]
    mixed = pool_ids(lorahub("experts.pool=list", "experts.count=null", f"experts.names=[snli,flan_t5_large-glue_mnli,{HUB}trec]"))
    assert mixed == [HUB + "snli", HUB + "glue_mnli", HUB + "trec"]  # by module name, short name or Hub id


def test_presets_pools():
    """Table 8: the nine NLI modules; Tables 4, 7 and the figures: the five; Table 3 sweeps both readings."""
    from tests.test_presets import sweep_members

    for member in sweep_members("table8"):
        assert set(pool_ids(compose_cfg(["+experiment=paper/table8", *member]))) == NLI9
    for preset in ("table4", "table7", "figure5", "figure7", "figure8"):
        cfg = compose_cfg([f"+experiment=paper/{preset}", *sweep_members(preset)[0]])
        assert {i.removeprefix(HUB) for i in pool_ids(cfg)} == {"anli_r1", "anli_r2", "anli_r3", "glue_qnli", "glue_wnli"}
    pools = {}
    for member in (m for m in sweep_members("table3") if "composer=lorahub" in m):  # the pool does not depend on the composer
        cfg = compose_cfg(["+experiment=paper/table3", *member])
        pools.setdefault(cfg.task.name, set()).add((cfg.experts.pool, tuple(pool_ids(cfg))))
    for task, readings in pools.items():
        assert {pool for pool, _ in readings} == {"random", "in_domain"}, task
        # LoRAHub has no module of closed-book QA's or BBH's datasets: there in_domain draws what random draws
        assert len({ids for _, ids in readings}) == (1 if task in ("cbqa", "bbh_paper") else 2), task


# ---------------------------------------------------------------- libraries with a manifest, the tiny library


def write_manifest(folder, adapters):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"adapters": adapters}))
    return folder


def test_pools_read_a_library_manifest(tmp_path):
    folder = write_manifest(tmp_path / "lib", [
        {"name": "anli_r1", "task": "anli_r1"}, {"name": "qnli", "task": "qnli"}, {"name": "dart", "task": "dart"},
        {"name": "joint", "task": None, "tasks": ["anli_r2", "qnli"]}, {"name": "mine", "task": "custom", "family": "nli"},
    ])
    library = OmegaConf.create({"_target_": "mole_exp.experts.sources.library", "library_dir": str(folder), "count": None, "pool": "in_domain", "pool_seed": 1})
    assert [n for n, _ in select_pool(library, ["anli_r1", "anli_r2"], ["anli_r1"])] == ["anli_r1", "joint"]
    library.update(pool="family", family="nli")
    assert [n for n, _ in select_pool(library, [], [])] == ["anli_r1", "qnli", "joint", "mine"]
    library.update(exclude_scored=True)
    assert [n for n, _ in select_pool(library, [], ["qnli"])] == ["anli_r1", "mine"]
    library.update(pool="list", family=None, exclude_scored=False, names=["dart", "joint"])
    assert select_pool(library, [], []) == [("dart", str(folder / "dart")), ("joint", str(folder / "joint"))]


TINY_TASKS = {"tiny_expert_00": "anli_r1", "tiny_expert_01": "qnli", "tiny_expert_02": "dart", "tiny_expert_03": ["wnli", "anli_r2"]}


@pytest.mark.parametrize(
    "pool, extra, names",
    [
        ("random", {"count": 2, "pool_seed": 5}, None),
        ("in_domain", {"count": 3}, ["tiny_expert_00", "tiny_expert_01", "tiny_expert_03"]),
        ("family", {"family": "nli"}, ["tiny_expert_00", "tiny_expert_01", "tiny_expert_03"]),
        ("family", {"family": "struct_to_text"}, ["tiny_expert_02"]),
        ("list", {"names": ["tiny_expert_02", "tiny_expert_00"]}, ["tiny_expert_02", "tiny_expert_00"]),
    ],
)
def test_every_pool_on_the_tiny_library(tiny_base, cache_dir, pool, extra, names):
    cfg = tiny_experts_cfg(cache_dir, num_adapters=4, pool=pool, tasks=TINY_TASKS, **extra)
    suite = ["anli_r1", "anli_r2", "qnli", "wnli"]
    planned = select_pool(cfg, suite, suite)  # without a model
    bank = load_experts(cfg, tiny_base, suite, suite)
    assert bank.names == [n for n, _ in planned]
    if names is not None:
        assert bank.names == names
    else:
        assert bank.names == random.Random(5).sample([f"tiny_expert_{i:02d}" for i in range(4)], 2)
    assert all(source.endswith(name) for name, source in zip(bank.names, bank.sources, strict=True))
    assert [e["tasks"] for e in bank.manifest_entries] == [
        [TINY_TASKS[n]] if isinstance(TINY_TASKS[n], str) else TINY_TASKS[n] for n in bank.names]


@needs_data
def test_a_tiny_run_records_its_pool_and_exact_expert_ids(tmp_path):
    tasks = "{" + ",".join(f"{k}:{v if isinstance(v, str) else '[' + ','.join(v) + ']'}" for k, v in TINY_TASKS.items()) + "}"
    overrides = SMOKE + [f"paths.data_dir={DATA_DIR}", f"paths.outputs_dir={tmp_path}", "task=nli", "task.only=[anli_r2,qnli]",
                         "composer=nla", "experts.pool=in_domain", "experts.count=3", "experts.exclude_scored=true",
                         f"experts.tasks={tasks}"]
    metrics = run(compose_cfg(overrides, output_dir=tmp_path / "run"))
    protocol = metrics["protocol"]["experts"]
    assert protocol["pool"] == "in_domain" and protocol["exclude_scored"] is True and protocol["pool_seed"] == 1
    # the experts of the scored anli_r2 and qnli are dropped, so no in-domain expert is left: three others are drawn
    assert protocol["names"] == metrics["experts"]["names"] and protocol["ids"] == metrics["experts"]["sources"]
    assert "tiny_expert_01" not in protocol["names"] and "tiny_expert_03" not in protocol["names"]
    assert protocol["in_domain"] == [] and len(protocol["names"]) == 3
    assert protocol["trained_on"]["tiny_expert_00"] == ["anli_r1"] and protocol["families"]["tiny_expert_02"] == "struct_to_text"
    assert protocol["suite_datasets"] == protocol["scored_datasets"] == ["anli_r2", "qnli"]


# ---------------------------------------------------------------- dry runs print every member's expert ids


def dry_run(preset: str) -> list[list[str]]:
    result = subprocess.run([sys.executable, "train.py", "-m", f"+experiment=paper/{preset}", "dry_run=true"], cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    members = [line for line in lines if line.startswith("[dry run] model=")]
    experts = [line.split("): ", 1)[1].split() for line in lines if line.startswith("[dry run]   experts (")]
    assert len(members) == len(experts) > 0
    return list(zip(members, experts, strict=True))


def test_table8_dry_run_prints_each_members_nine_nli_modules(capsys):
    """In process, member by member as the sweep composes them (the command-line sweep: the slow test below)."""
    from tests.test_presets import sweep_members

    for member in sweep_members("table8"):
        plan = run(compose_cfg(["+experiment=paper/table8", *member, "dry_run=true"]))
        line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("[dry run]   experts ("))
        ids = line.split("): ", 1)[1].split()
        assert set(ids) == NLI9 and len(ids) == 9 and plan["expert_ids"] == ids


@pytest.mark.slow
def test_table8_dry_run_from_the_command_line():
    printed = dry_run("table8")
    assert len(printed) == 3 and all(set(ids) == NLI9 and len(ids) == 9 for _, ids in printed)


@pytest.mark.slow
def test_table3_dry_run_shows_both_readings():
    printed = dry_run("table3")
    assert len(printed) == 40
    in_domain = {"nli": HUB + "anli_r1", "struct2text": HUB + "gem_dart", "translation": HUB + "wmt14_translate_fr-en"}
    for member, ids in printed:
        task = member.split("task=")[1].split()[0]
        if task in in_domain:
            assert (in_domain[task] in ids) == ("experts.pool=in_domain" in member), member


# ---------------------------------------------------------------- bad inputs, before any model loads


@pytest.mark.parametrize(
    "overrides, message, recorded",
    [  # recorded: found against the library once the run folder exists (a sweep lists it as failed); else from the config alone
        (["experts.pool=best"], r"experts.pool='best' is not one of \['random', 'in_domain', 'family', 'list'\]", False),
        (["experts.pool=family", "experts.family=poetry", "experts.count=null"], r"experts.family='poetry' is not a task family; known: \[.*'nli'", True),
        (["experts.pool=family"], r"experts.pool=family needs experts.family", False),
        (["experts.pool=family", "experts.family=nli"], r"experts.count=20 but the family 'nli' has 9 experts", True),
        (["experts.pool=list", "experts.count=null", "experts.names=[anli_r1,no_such_module]"],
         r"experts.names: \['no_such_module'\] are not in the library at lorahub", True),
        (["experts.pool=random", "experts.names=[anli_r1]"], r"experts.names=\['anli_r1'\] is for experts.pool=list", False),
        (["experts.pool_seed=one"], r"experts.pool_seed='one' must be an integer", False),
    ],
)
def test_bad_pools_fail_before_any_model_loads(tmp_path, overrides, message, recorded):
    # the default model is FLAN-T5-large from the Hub, offline here, and data_dir is empty: loading either would
    # fail with another error
    with pytest.raises(ValueError, match=message):
        run(compose_cfg(["experts=lorahub", f"paths.data_dir={tmp_path}", *overrides], output_dir=tmp_path / "r"))
    if recorded:
        state = json.loads((tmp_path / "r" / "run_state.json").read_text())
        assert state["status"] == "failed" and not (tmp_path / "r" / "metrics.json").exists()
    else:
        assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match=message):  # and a dry run says so too
        run(compose_cfg(["experts=lorahub", f"paths.data_dir={tmp_path}", "dry_run=true", *overrides]))
