"""The mini reproduction's decoder-only family: its small causal base (cache key pinned, a crash leaves no half
base, bad settings refused), its plan (Table 3's study and the two-skill task, PEFT's peers, composers that do
not run on causal bases skipped with a reason, studies chosen and checked), the families table on fixture
metrics, and (slow) the --fast run of both families' Table-3 studies end to end."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
from omegaconf import OmegaConf

from mole_exp.tools.mini.plan import RunSpec, chosen_studies, make_plan
from mole_exp.tools.mini.settings import CAUSAL_FAST, CAUSAL_FULL, FAST, FULL, STUDIES, preset
from mole_exp.tools.mini.tables import families_table
from mole_exp.training.compose import compose_run_config
from tests.conftest import DATA_DIR, ROOT, TOKENIZERS_DIR, needs_tokenizer

CONF = ROOT / "conf"
TINY = {"architecture": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1}
PRETRAIN = {"objective": "shuffled_tags", "kinds": ["copy", "reverse"], "examples_per_kind": 8, "data_seed": 1000, "alphabet_size": 6,
            "min_length": 2, "max_length": 4, "steps": 2, "batch_size": 4, "lr": 1e-3}


def test_the_causal_base_cache_key_is_pinned():
    """conf/model/small_synthetic_causal.yaml's base is cached under this key: a change of any setting (or of what the
    key hashes) makes a new base, and must change this pin on purpose."""
    from mole_exp.tools.mini.small_base import cache_key
    from mole_exp.tools.mini.small_causal_base import causal_spec

    model = OmegaConf.load(CONF / "model" / "small_synthetic_causal.yaml")
    spec, _ = causal_spec(OmegaConf.to_container(model.architecture), OmegaConf.to_container(model.pretrain), model.seed, model.dtype,
                          vocab_size=128256)
    assert spec["family"] == "causal" and spec["tokenizer"] == "llama3" and "noise_density" not in spec["data"]
    assert cache_key(spec) == "7e7d959dc3cc"
    qwen, _ = causal_spec({**OmegaConf.to_container(model.architecture), "architecture": "qwen2"}, OmegaConf.to_container(model.pretrain),
                          model.seed, model.dtype, vocab_size=128256)
    assert cache_key(qwen) != cache_key(spec)  # the tokenizer and shape are in the key


def test_causal_base_settings_are_refused_before_any_work(tmp_path):
    from mole_exp.tools.mini.small_causal_base import build_small_synthetic_causal

    with pytest.raises(ValueError, match=r"objective='span_corruption'.*\['shuffled_tags', 'tasks'\]"):
        build_small_synthetic_causal(str(TOKENIZERS_DIR), str(tmp_path), TINY, {**PRETRAIN, "objective": "span_corruption"})
    with pytest.raises(ValueError, match=r"architecture='gpt2' is not one of \['llama', 'qwen2'\]"):
        build_small_synthetic_causal(str(TOKENIZERS_DIR), str(tmp_path), {**TINY, "architecture": "gpt2"}, PRETRAIN)
    with pytest.raises(ValueError, match=r"model.pretrain lacks \['kinds'\]"):
        build_small_synthetic_causal(str(TOKENIZERS_DIR), str(tmp_path), TINY, {k: v for k, v in PRETRAIN.items() if k != "kinds"})
    assert not list(tmp_path.iterdir())


@needs_tokenizer("llama3")
def test_causal_base_is_pretrained_once_cached_and_a_crash_leaves_no_half_base(tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    from mole_exp.base.models import build_tiny_causal, weights_fingerprint
    from mole_exp.base.text_format import text_format
    from mole_exp.tools.mini.small_causal_base import build_small_synthetic_causal

    original = LlamaForCausalLM.save_pretrained

    def crash(self, folder, *args, **kwargs):  # writes part of the base, then fails
        original(self, folder, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        build_small_synthetic_causal(str(TOKENIZERS_DIR), str(tmp_path), TINY, PRETRAIN, seed=3)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []  # neither the base's folder nor a staging one
    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", original)

    first = build_small_synthetic_causal(str(TOKENIZERS_DIR), str(tmp_path), TINY, PRETRAIN, seed=3)
    assert first.family.causal and text_format(first.tokenizer).causal
    assert "small-synthetic-llama" in first.model_id and "seed3" in first.model_id and "shuffled_tags2" in first.model_id
    untrained = build_tiny_causal("llama", str(TOKENIZERS_DIR), seed=3, **{k: v for k, v in TINY.items() if k != "architecture"})
    assert weights_fingerprint(first.model) != weights_fingerprint(untrained.model)  # it did train
    assert not any(p.requires_grad for p in first.model.parameters())
    cached = [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")]  # files.build_folder's lock stays
    assert len(cached) == 1 and json.loads((cached[0] / "pretraining.json").read_text())["family"] == "causal"
    again = build_small_synthetic_causal(str(TOKENIZERS_DIR), str(tmp_path), TINY, PRETRAIN, seed=3)
    assert again.model_id == first.model_id and weights_fingerprint(again.model) == weights_fingerprint(first.model)


def test_causal_plan_runs_table3_and_the_two_skill_task_with_the_peers(tmp_path):
    plan = make_plan(CAUSAL_FAST, {0: tmp_path / "lib0"}, tmp_path / "out", CONF, extra=(f"paths.data_dir={DATA_DIR}",))
    assert {r.study for r in plan.runs} == {"table3", "compose"}
    assert not plan.skipped  # every composer runs on a causal base, PEFT's peers included
    assert {r.label for r in plan.study("table3")} == {"single", "nla", "lorahub", "pems", "mixer", "mole", "xlora", "arrow", "base",
                                                       "fresh_lora", "mole (random library)"}
    assert {r.label for r in plan.study("compose")} == {r.label for r in plan.study("table3")} - {"single"}
    assert all(r.key.startswith("causal:") and r.family == "causal" for r in plan.runs)
    for run in plan.runs:
        cfg = compose_run_config(list(run.overrides), run.run_dir, conf_dir=CONF)
        assert cfg.model._target_.endswith("small_causal_base.build_small_synthetic_causal")
        assert cfg.model.architecture.hidden_size == 32 and cfg.composer.name == run.composer and cfg.seed == run.seed
    full = make_plan(CAUSAL_FULL, {s: tmp_path / f"lib{s}" for s in CAUSAL_FULL.seeds}, tmp_path / "out", CONF)
    assert {r.seed for r in full.runs} == set(CAUSAL_FULL.seeds) and {r.study for r in full.runs} == {"table3", "compose"}
    assert preset("causal", fast=False) is CAUSAL_FULL and preset("t5", fast=True) is FAST
    with pytest.raises(ValueError, match=r"family 'gpt' is not one of \['t5', 'causal'\]"):
        preset("gpt", fast=False)


def test_studies_are_chosen_and_checked(tmp_path):
    assert chosen_studies(FULL, None) == STUDIES and chosen_studies(CAUSAL_FULL, None) == ("table3", "compose")
    assert chosen_studies(FULL, ("compose", "table3")) == ("table3", "compose")
    assert chosen_studies(CAUSAL_FULL, ("table3", "granularity")) == ("table3",)  # a study the family does not run
    with pytest.raises(ValueError, match=r"studies \['tabel3'\] unknown; known: \['table3'"):
        chosen_studies(FULL, ("tabel3",))
    with pytest.raises(ValueError, match="study 'mask' re-evaluates table3's trained MoLE"):
        chosen_studies(FULL, ("mask",))
    plan = make_plan(FAST, {0: tmp_path / "lib0"}, tmp_path / "out", CONF, studies=("table3", "compose"))
    assert {r.study for r in plan.runs} == {"table3", "compose"}
    whole = make_plan(FAST, {0: tmp_path / "lib0"}, tmp_path / "out", CONF)
    assert [r for r in whole.runs if r.study in ("table3", "compose")] == plan.runs  # the same runs, the same folders


def test_the_script_refuses_bad_families_and_studies_before_any_work(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("reproduce_mini_script", ROOT / "scripts" / "reproduce_mini.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit):
        script.main(["--families", "t5,gpt", "--out", str(tmp_path)])
    assert "--families 't5,gpt': ['gpt']; allowed: t5,causal" in capsys.readouterr().err
    with pytest.raises(ValueError, match="study 'mask'"):
        script.main(["--fast", "--studies", "mask", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def _fixture_run(folder, dataset: str, value: float, seed: int, label: str, study: str, family: str) -> RunSpec:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"metrics": {f"test/{dataset}/em": value}}))
    return RunSpec(study, label, seed, (), folder, label, family=family)


def test_families_table_puts_the_families_side_by_side(tmp_path):
    from mole_exp.tools.mini.plan import Plan

    def plan(family: str, values: dict[str, tuple[float, float]], two_skill: dict[str, tuple[float, float]]) -> Plan:
        runs = []
        for study, table, dataset in (("table3", values, "copy"), ("compose", two_skill, "reverse_shift")):
            for label, per_seed in table.items():
                for seed, value in enumerate(per_seed):
                    runs.append(_fixture_run(tmp_path / family / study / label / f"seed{seed}", dataset, value, seed, label, study, family))
        return Plan(runs, {})

    t5 = plan("t5", {"single": (90.0, 80.0), "mole": (40.0, 60.0)}, {"mole": (10.0, 20.0)})
    causal = plan("causal", {"mole": (30.0, 30.0), "xlora": (20.0, 40.0)}, {"mole": (5.0, 5.0), "xlora": (0.0, 10.0)})
    table = families_table({"t5": t5, "causal": causal}, {"t5": ["copy"], "causal": ["copy"]})
    lines = table.splitlines()
    assert lines[0] == "| composer | T5: mixture average | T5: two-skill | decoder-only: mixture average | decoder-only: two-skill |"
    assert "| single | 85.0 ± 7.1 (n=2) | — | — | — |" in lines
    assert "| mole | 50.0 ± 14.1 (n=2) | 15.0 ± 7.1 (n=2) | 30.0 ± 0.0 (n=2) | 5.0 ± 0.0 (n=2) |" in lines
    assert "| xlora | — | — | 30.0 ± 14.1 (n=2) | 5.0 ± 7.1 (n=2) |" in lines
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| single", "| mole", "| xlora"]


@pytest.mark.slow
@needs_tokenizer("llama3")
def test_fast_families_run_end_to_end(tmp_path):
    """Both families' Table-3 studies, --fast (~5 min on 2 shared cores): the families page, never the T5 report."""
    spec = importlib.util.spec_from_file_location("reproduce_mini_script", ROOT / "scripts" / "reproduce_mini.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out, docs = tmp_path / "out", tmp_path / "docs"
    arguments = ["--fast", "--families", "t5,causal", "--studies", "table3,compose", "--out", str(out), "--docs", str(docs), "--jobs", "2",
                 "--data-dir", str(DATA_DIR)]
    assert script.main(arguments) == 0
    assert not (docs / "reproduce_mini_fast.md").exists()  # a partial run never writes the T5 report
    page = (docs / "reproduce_mini_families_fast.md").read_text()
    assert "| composer | T5: mixture average | T5: two-skill | decoder-only: mixture average | decoder-only: two-skill |" in page
    assert re.search(r"\| nla( \| \d+\.\d \[\d+\.\d, \d+\.\d\]( [↑↓])?){4} \|", page)  # both families, both tasks, intervals
    assert "## decoder-only" in page and "### decoder-only: the expert libraries" in page and "failed" not in page.lower()
    for absolute in (str(tmp_path), str(ROOT)):
        assert absolute not in page
    outcomes = json.loads((out / "outcomes.json").read_text())["runs"]
    assert outcomes and all(r["status"] == "completed" for r in outcomes)
    assert {r["key"].split(":")[0] for r in outcomes if ":" in r["key"]} == {"causal"}
    assert (out / "causal" / "runs" / "table3" / "nla" / "seed0" / "metrics.json").exists()
    assert script.main(arguments) == 0  # a rerun reuses every finished run
    assert all(r["status"] == "reused" for r in json.loads((out / "outcomes.json").read_text())["runs"])
