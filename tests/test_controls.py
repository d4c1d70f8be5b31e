"""The controls: a random library with the recorded (and matched) norms, the fresh LoRA that trains only its
LoRA on MoLE's data and budget, the base alone, and the mixer deterministic for a seed and config."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from mole_exp.experts.loading import load_experts, precheck
from mole_exp.experts.random_library import ensure_random_library, norms
from mole_exp.experts.tiny_library import ensure_tiny_library
from mole_exp.training.pipeline import run
from tests.conftest import compose_cfg, needs_data, tiny_experts_cfg


def random_cfg(library_dir, cache_dir, seed=0, match="factors"):
    return OmegaConf.create({"_target_": "mole_exp.experts.sources.random_library", "library_dir": str(library_dir), "count": None, "selection": "first",
                             "seed": 0, "layer_range": None,
                             "random": {"seed": seed, "match": match, "cache_dir": str(cache_dir / "random_libraries")}})


@pytest.fixture
def tiny_library(tiny_base, cache_dir):
    cfg = tiny_experts_cfg(cache_dir)
    return ensure_tiny_library(tiny_base, cfg.library_dir, **dict(cfg.tiny))


@pytest.mark.parametrize("match", ["factors", "delta"])
def test_random_library_has_the_recorded_norms_matched_to_the_real_one(tiny_base, tiny_bank, tiny_library, cache_dir, match):
    bank = load_experts(random_cfg(tiny_library, cache_dir, match=match), tiny_base)
    folder = ensure_random_library(tiny_library, {"seed": 0, "match": match}, cache_dir / "random_libraries")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "random-matched" and manifest["match"] == match and manifest["seed"] == 0
    assert bank.names == [f"random_{n}" for n in tiny_bank.names] and set(bank.targets) == set(tiny_bank.targets)
    matched = ("A", "B") if match == "factors" else ("delta",)
    for index, entry in enumerate(manifest["adapters"]):
        assert entry["matched_to"] == tiny_bank.names[index]
        for module, experts in bank.targets.items():
            real = tiny_bank.targets[module]
            found = norms(experts.lora_A[index], experts.lora_B[index], float(experts.scaling[index]))
            reference = norms(real.lora_A[index], real.lora_B[index], float(real.scaling[index]))
            assert found == pytest.approx(entry["norms"][module], rel=1e-6)  # the recorded norms are the library's
            assert reference == pytest.approx(entry["reference_norms"][module], rel=1e-6)
            for key in matched:
                assert found[key] == pytest.approx(reference[key], rel=1e-5)
            assert experts.lora_A[index].shape == real.lora_A[index].shape and experts.scaling[index] == real.scaling[index]
            assert not torch.allclose(experts.lora_A[index], real.lora_A[index])  # other directions
    other = load_experts(random_cfg(tiny_library, cache_dir, seed=1, match=match), tiny_base)
    again = ensure_random_library(tiny_library, {"seed": 0, "match": match}, cache_dir / "elsewhere")
    module = next(iter(bank.targets))
    assert not torch.equal(other.targets[module].lora_A, bank.targets[module].lora_A)  # the seed re-draws it
    first = load_file(str(folder / "random_tiny_expert_00" / "adapter_model.safetensors"))
    assert all(torch.equal(t, load_file(str(again / "random_tiny_expert_00" / "adapter_model.safetensors"))[k]) for k, t in first.items())


def test_random_library_bad_options_are_refused_before_loading(tiny_library, cache_dir):
    with pytest.raises(ValueError, match=r"experts.random.match='norms' is not one of \['factors', 'delta'\]"):
        precheck(random_cfg(tiny_library, cache_dir, match="norms"))
    with pytest.raises(ValueError, match=r"experts.random.seed=-1 must be an integer >= 0"):
        precheck(random_cfg(tiny_library, cache_dir, seed=-1))


@needs_data
def test_fresh_lora_trains_only_its_lora_on_moles_data_and_budget(tmp_path, smoke_overrides, monkeypatch):
    from mole_exp.training import pipeline

    seen = {}
    original_fit = pipeline.fit

    def spy_fit(cfg, base, composer, examples, run_dir, *rest):
        seen.setdefault("examples", []).append([e["source"] for e in examples])
        if composer.name == "fresh_lora":
            seen["trainable"] = sorted(n for n, p in base.model.named_parameters() if p.requires_grad)
            seen["frozen_before"] = {k: v.clone() for k, v in base.model.state_dict().items() if "lora_" not in k}
            seen["lora_before"] = {n: p.detach().clone() for n, p in base.model.named_parameters() if p.requires_grad}
        report = original_fit(cfg, base, composer, examples, run_dir, *rest)
        if composer.name == "fresh_lora":
            seen["frozen_after"] = {k: v for k, v in base.model.state_dict().items() if "lora_" not in k}
            seen["lora_after"] = {n: p.detach() for n, p in base.model.named_parameters() if p.requires_grad}
        return report

    monkeypatch.setattr(pipeline, "fit", spy_fit)
    common = smoke_overrides + ["task=nli", "task.only=[wnli]", "optimizer.lr=0.05", "trainer.max_steps=2"]
    mole = run(compose_cfg(common + ["composer=mole"], output_dir=tmp_path / "mole"))
    fresh = run(compose_cfg(common + ["composer=fresh_lora", f"export_dir={tmp_path / 'export'}"], output_dir=tmp_path / "fresh"))

    assert seen["trainable"] and all(".lora_A." in n or ".lora_B." in n for n in seen["trainable"])
    assert len(seen["trainable"]) == 2 * 12  # A and B on the 12 q/v linears of 2+2 blocks (the experts' targets)
    for key, value in seen["frozen_before"].items():
        assert torch.equal(value, seen["frozen_after"][key]), key  # the base did not move
    assert all(not torch.equal(seen["lora_before"][n], seen["lora_after"][n]) for n in seen["trainable"] if ".lora_B." in n)
    assert seen["examples"][0] == seen["examples"][1]  # the same training mixture as MoLE's gates
    for key in ("steps", "num_train_examples"):
        assert fresh["train"][key] == mole["train"][key]
    assert fresh["composer"]["rank"] == 4 and fresh["composer"]["alpha"] == 8.0  # the tiny library's rank, alpha 2r
    checkpoint = load_file(str(tmp_path / "fresh" / "checkpoints" / "composer.safetensors"))
    assert len(checkpoint) == len(seen["trainable"]) and all("lora_" in k for k in checkpoint)

    # the export is the base with the LoRA merged: same logits as the composed model
    from transformers import AutoModelForSeq2SeqLM

    from mole_exp.composers.fresh_lora import FreshLoRAComposer
    from mole_exp.training.checkpoints import load_composer_state
    from tests.conftest import make_tiny

    exported = AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "export")).eval()
    base = make_tiny()
    composer = FreshLoRAComposer(seed=0)
    composer.compose(base, load_experts(OmegaConf.create(OmegaConf.to_container(compose_cfg(common).experts, resolve=True)), base))
    load_composer_state(composer, tmp_path / "fresh" / "checkpoints" / "composer.safetensors")
    batch = base.tokenizer(["premise: a cat. hypothesis: an animal."], return_tensors="pt")
    labels = base.tokenizer(["yes"], return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(exported(**batch, labels=labels).logits, base.model.eval()(**batch, labels=labels).logits)


@needs_data
def test_base_alone_scores_the_unchanged_base(tmp_path, smoke_overrides):
    base_run = run(compose_cfg(smoke_overrides + ["task=nli", "task.only=[wnli]", "composer=base"], output_dir=tmp_path / "base"))
    assert base_run["composer"] == {"name": "base", "experts": [], "mask": [], "fit_per": None} and "train" not in base_run
    rows = [json.loads(line) for line in (tmp_path / "base" / "predictions.jsonl").read_text().splitlines()]
    from tests.conftest import make_tiny

    base = make_tiny()
    from mole_exp.evaluation.evaluator import GenerationSettings, generate

    expected = generate(base.model, base.tokenizer, [r["input"] for r in rows], 4, GenerationSettings(progress=False))  # wnli: 4 tokens
    assert [r["prediction"] for r in rows] == expected  # the plain base's greedy outputs


@needs_data
def test_two_identical_mixer_runs_give_the_same_metrics_and_router_weights(tmp_path, smoke_overrides, monkeypatch):
    from mole_exp.training import pipeline

    overrides = smoke_overrides + ["task=nli", "task.only=[wnli,anli_r1]", "composer=mixer", "trainer.max_steps=6",
                                   "optimizer.lr=0.05", "data.eval_limit=8"]
    first = run(compose_cfg(overrides, output_dir=tmp_path / "first"))

    original = pipeline.load_experts

    def load_and_draw(*args, **kwargs):  # a process that drew random numbers before composing (another loader, another run)
        torch.randn(1000)
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline, "load_experts", load_and_draw)
    second = run(compose_cfg(overrides, output_dir=tmp_path / "second"))
    assert first["metrics"] == second["metrics"] and first["train"]["final"] == second["train"]["final"]
    routers = [load_file(str(tmp_path / name / "checkpoints" / "composer.safetensors")) for name in ("first", "second")]
    assert routers[0].keys() == routers[1].keys() and all(torch.equal(routers[0][k], routers[1][k]) for k in routers[0])
    predictions = [(tmp_path / name / "predictions.jsonl").read_text() for name in ("first", "second")]
    assert predictions[0] == predictions[1]


@pytest.mark.parametrize(
    "options, match",
    [
        ({"rank": 0}, r"composer.rank=0 must be a positive integer or one of \['library'\]"),
        ({"rank": "big"}, r"composer.rank='big'"),
        ({"alpha": -1}, r"composer.alpha=-1 must be a positive number"),
        ({"dropout": 1.0}, r"composer.dropout=1.0 must lie in \[0, 1\)"),
        ({"targets": "q"}, r"composer.targets='q' must be a non-empty list"),
    ],
)
def test_fresh_lora_bad_options_name_the_value(options, match):
    from mole_exp.composers.fresh_lora import FreshLoRAComposer

    with pytest.raises(ValueError, match=match):
        FreshLoRAComposer(**options)


def test_fresh_lora_targets_the_base_lacks_are_refused_at_compose(tiny_base, tiny_bank):
    from mole_exp.composers.fresh_lora import FreshLoRAComposer

    with pytest.raises(ValueError, match=r"composer.targets=\['attention_out'\]"):
        FreshLoRAComposer(targets=["attention_out"]).compose(tiny_base, tiny_bank)
