"""PEFT's own X-LoRA and Arrow as composers (composers/xlora.py, composers/arrow.py), checked against PEFT used
directly: X-LoRA's trainable parameters are exactly its classifier's, with one-hot scalings it is the single adapter;
our Arrow's logits are create_arrow_model's; release leaves the base bit for bit; X-LoRA refuses T5 before the
experts load; train.py runs both end to end on the tiny causal models with the NLI datasets."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from mole_exp.composers.arrow import ArrowComposer
from mole_exp.composers.xlora import CLASSIFIER_ATTRIBUTE, XLoRAComposer
from tests.conftest import DATA_DIR, compose_cfg, make_tiny, needs_tokenizer
from tests.test_causal_models import causal_batch, tiny_causal, tiny_causal_bank, with_tokenizers
from tests.test_composers import assert_same_logits, logits, peft_model
from tests.test_inject import assert_back_to_base, no_hooks_anywhere, snapshot

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def peft_xlora(model, sources, **options):
    """X-LoRA built the way PEFT's documentation builds it (get_peft_model with an XLoraConfig), on a copy."""
    from peft import XLoraConfig, get_peft_model

    model = copy.deepcopy(model)
    model.config.use_cache = False
    config = XLoraConfig(task_type="CAUSAL_LM", hidden_size=model.config.hidden_size, adapters={str(i): s for i, s in enumerate(sources)},
                         **options)
    return get_peft_model(model, config)


# ---------------------------------------------------------------- X-LoRA against PEFT


@needs_tokenizer("llama3")
def test_xlora_trains_exactly_the_parameters_of_peft_xlora_classifier(cache_dir):
    base = tiny_causal("llama")
    bank = tiny_causal_bank(base, cache_dir)
    reference = peft_xlora(base.model, bank.sources, xlora_depth=2, xlora_size=16)
    expected = {n.split("internal_xlora_classifier.", 1)[1]: tuple(p.shape) for n, p in reference.named_parameters() if p.requires_grad}
    assert expected and all(n.startswith("base_model.internal_xlora_classifier.") for n, p in reference.named_parameters() if p.requires_grad)
    trainable = XLoRAComposer(xlora_depth=2, xlora_size=16).compose(base, bank)
    ours = {n.split(f"{CLASSIFIER_ATTRIBUTE}.", 1)[1]: tuple(p.shape) for n, p in base.model.named_parameters() if p.requires_grad}
    assert all(n.startswith(f"{CLASSIFIER_ATTRIBUTE}.") for n, p in base.model.named_parameters() if p.requires_grad)
    assert ours == expected
    assert {id(p) for p in trainable} == {id(p) for p in base.model.parameters() if p.requires_grad}


@with_tokenizers
def test_xlora_with_one_hot_scalings_is_that_single_peft_adapter(architecture, cache_dir):
    base = tiny_causal(architecture)
    bank = tiny_causal_bank(base, cache_dir)
    batch = causal_batch(base.tokenizer)
    reference = peft_model(base.model, bank.sources)
    reference.set_adapter("e2")
    expected, unmerged = logits(reference, batch), logits(base.model, batch)
    composer = XLoRAComposer()
    composer.compose(base, bank)
    classifier = getattr(base.model, CLASSIFIER_ATTRIBUTE).layers[-1]  # logits = W h + b: W = 0, b one-hot and large
    with torch.no_grad():
        classifier.weight.zero_()
        classifier.bias.copy_(torch.tensor([0.0, 0.0, 60.0, 0.0]))  # softmax: 1 on expert 2, e^-60 on the others
    assert_same_logits(logits(base.model, batch), expected, unmerged)
    scalings = composer.xlora.get_latest_scalings()  # (batch, seq, n_layers, N): PEFT's own scalings were used
    assert scalings.shape[-1] == 4 and torch.all(scalings[..., 2] == 1.0)


@needs_tokenizer("qwen2.5")
def test_xlora_equals_peft_xlora_with_the_same_classifier(cache_dir):
    base = tiny_causal("qwen2")
    bank = tiny_causal_bank(base, cache_dir)
    batch = causal_batch(base.tokenizer)
    reference = peft_xlora(base.model, bank.sources, softmax_temperature=0.5, top_k_lora=2)
    composer = XLoRAComposer(softmax_temperature=0.5, top_k_lora=2)
    composer.compose(base, bank)
    ours = getattr(base.model, CLASSIFIER_ATTRIBUTE)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.5)
    reference.base_model.internal_xlora_classifier.load_state_dict(ours.state_dict())
    torch.testing.assert_close(logits(base.model, batch), logits(reference, batch), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- Arrow against PEFT


def peft_arrow(model, sources, general=None, **options):
    from peft import ArrowConfig, create_arrow_model

    return create_arrow_model(copy.deepcopy(model), sources, ArrowConfig(**options), general_adapter_paths=general)


@pytest.mark.parametrize("options", [{}, {"top_k": 2, "router_temperature": 0.5, "rng_seed": 3}], ids=["defaults", "top2_t0.5"])
@with_tokenizers
def test_arrow_logits_equal_create_arrow_model(architecture, options, cache_dir):
    base = tiny_causal(architecture)
    bank = tiny_causal_bank(base, cache_dir)
    batch = causal_batch(base.tokenizer)
    reference = peft_arrow(base.model, bank.sources, **{"rng_seed": 0, **options})
    expected, unmerged = logits(reference, batch), logits(base.model, batch)
    ArrowComposer(**options).compose(base, bank)
    assert_same_logits(logits(base.model, batch), expected, unmerged)
    torch.testing.assert_close(logits(base.model, batch), expected, atol=0, rtol=0)  # the same computation, bit for bit


@needs_tokenizer("llama3")
def test_arrow_with_genknowsub_equals_create_arrow_model(cache_dir):
    base = tiny_causal("llama")
    bank = tiny_causal_bank(base, cache_dir)
    batch = causal_batch(base.tokenizer)
    reference = peft_arrow(base.model, bank.sources[:3], general=bank.sources[3:], top_k=2, use_gks=True, rng_seed=0)
    composer = ArrowComposer(top_k=2, use_gks=True, general=["tiny_expert_03"])
    composer.compose(base, bank)
    torch.testing.assert_close(logits(base.model, batch), logits(reference, batch), atol=0, rtol=0)
    assert composer.summary()["task_experts"] == ["tiny_expert_00", "tiny_expert_01", "tiny_expert_02"]


def test_arrow_runs_on_t5_as_create_arrow_model(tiny_bank):
    from tests.test_inject import inputs

    base = make_tiny()
    batch = inputs(base.tokenizer)
    reference = peft_arrow(base.model, tiny_bank.sources, top_k=2, rng_seed=0)
    expected, unmerged = logits(reference, batch), logits(base.model, batch)
    ArrowComposer(top_k=2).compose(base, tiny_bank)
    assert_same_logits(logits(base.model, batch), expected, unmerged)


# ---------------------------------------------------------------- release, refusals, bad options


@pytest.mark.parametrize("name", ["xlora", "arrow"])
@needs_tokenizer("llama3")
def test_release_gives_back_the_causal_base_bit_for_bit(name, cache_dir):
    base = tiny_causal("llama")
    bank = tiny_causal_bank(base, cache_dir)
    model, batch = base.model, causal_batch(base.tokenizer)
    cache = (model.config.use_cache, model.generation_config.use_cache)
    assert no_hooks_anywhere(model)
    before = snapshot(model)
    with torch.no_grad():
        base_logits = model(**batch).logits
    composer = XLoRAComposer() if name == "xlora" else ArrowComposer(top_k=2)
    trainable = composer.compose(base, bank)
    with torch.no_grad():
        assert not torch.equal(model(**batch).logits, base_logits)
    if trainable:  # a training step's forward and backward; no hook of PEFT's per-forward ones is left behind
        model.train()
        model(**batch).loss.backward()
        assert all(p.grad is not None for p in trainable)
        model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=3,
                       pad_token_id=base.tokenizer.pad_token_id)
    composer.release()
    assert_back_to_base(model, before, batch, base_logits)
    assert (model.config.use_cache, model.generation_config.use_cache) == cache


def test_arrow_release_gives_back_t5_bit_for_bit(tiny_bank):
    from tests.test_inject import inputs

    base = make_tiny()
    model, batch = base.model, inputs(base.tokenizer)
    before = snapshot(model)
    with torch.no_grad():
        base_logits = model(**batch).logits
    composer = ArrowComposer(top_k=2)
    composer.compose(base, tiny_bank)
    with torch.no_grad():  # a cached beam search with Arrow's per-token routing
        model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=4, num_beams=2)
    composer.release()
    assert_back_to_base(model, before, batch, base_logits)


def test_xlora_refuses_t5_naming_the_composer_family_and_what_runs(tiny_bank):
    base = make_tiny()
    with pytest.raises(ValueError, match=r"composer=xlora does not run on the t5 family .*it runs on decoder-only models \(model=tiny_llama"):
        XLoRAComposer().check_base(base)
    with pytest.raises(ValueError, match=r"composer=xlora does not run on the t5 family"):
        XLoRAComposer().compose(base, tiny_bank)
    assert not any("lora" in n.lower() for n, _ in base.model.named_modules())


def test_train_py_xlora_on_t5_is_refused_before_the_experts_load(tmp_path, monkeypatch, smoke_overrides):
    from mole_exp.training import pipeline

    def no_experts(*args, **kwargs):
        raise AssertionError("the experts were loaded before the family was checked")

    monkeypatch.setattr(pipeline, "load_experts", no_experts)
    cfg = compose_cfg([*smoke_overrides, "task=nli", "composer=xlora"], output_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=r"composer=xlora does not run on the t5 family"):
        pipeline.run(cfg)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"top_k": 0}, r"composer.top_k=0 must be an integer >= 1"),
        ({"router_temperature": 0.0}, r"composer.router_temperature=0.0 must be a number > 0"),
        ({"router_temperature": "hot"}, r"composer.router_temperature='hot' must be a number > 0"),
        ({"use_gks": True}, r"composer.use_gks=true needs composer.general"),
        ({"general": [1]}, r"composer.general=\[1\] is read only with composer.use_gks=true"),
        ({"rng_seed": "x"}, r"composer.rng_seed='x' must be an integer or null"),
        ({"fit_per": "sentence"}, r"composer.fit_per='sentence' is not one of"),
        ({"mask": [0]}, r"composer.mask=\[0\]: composer=arrow \(PEFT's router\) routes over every loaded adapter and cannot mask"),
    ],
)
def test_bad_arrow_options(options, message):
    with pytest.raises(ValueError, match=message):
        ArrowComposer(**options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"softmax_temperature": 0}, r"composer.softmax_temperature=0 must be a number > 0"),
        ({"top_k_lora": 0}, r"composer.top_k_lora=0 must be null \(dense\) or an integer >= 1"),
        ({"enable_softmax_topk": True}, r"composer.enable_softmax_topk=true needs composer.top_k_lora"),
        ({"xlora_depth": 0}, r"composer.xlora_depth=0 must be an integer >= 1"),
        ({"xlora_dropout_p": 1.0}, r"composer.xlora_dropout_p=1.0 must be in \[0, 1\)"),
        ({"xlora_size": "big"}, r"composer.xlora_size='big' must be an integer >= 1"),
        ({"top_k_lora": 1.5}, r"composer.top_k_lora=1.5 must be null \(dense\) or an integer >= 1"),
        ({"global_scaling_weight": None}, r"composer.global_scaling_weight=None must be a number"),
        ({"mask": ["tiny_expert_00"]}, r"composer.mask=\['tiny_expert_00'\]: composer=xlora \(PEFT's router\) routes over every"),
    ],
)
def test_bad_xlora_options(options, message):
    with pytest.raises(ValueError, match=message):
        XLoRAComposer(**options)


def test_arrow_top_k_beyond_the_task_experts_is_refused(tiny_bank):
    base = make_tiny()
    with pytest.raises(ValueError, match=r"composer.top_k=4 exceeds the 3 task experts routed; allowed 1..3"):
        ArrowComposer(top_k=4, use_gks=True, general=[0]).compose(base, tiny_bank)


def test_a_layer_range_trimmed_bank_is_refused(tiny_base, cache_dir):
    from mole_exp.experts.loading import load_experts
    from tests.conftest import tiny_experts_cfg

    bank = load_experts(tiny_experts_cfg(cache_dir, layer_range=[0.0, 0.4]), tiny_base)
    state = {k: v.clone() for k, v in tiny_base.model.state_dict().items()}
    modules = [name for name, _ in tiny_base.model.named_modules()]
    with pytest.raises(ValueError, match=r"composer=arrow: PEFT adapts the modules the adapter folders name.*experts.layer_range"):
        ArrowComposer(top_k=2).compose(tiny_base, bank)
    # the refusal comes after PEFT loaded the folders: the failed compose unloads them again
    assert [name for name, _ in tiny_base.model.named_modules()] == modules
    assert tiny_base.model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in tiny_base.model.state_dict().items())


# ---------------------------------------------------------------- train.py end to end


PEERS = {"xlora": ["composer=xlora"], "arrow": ["composer=arrow", "composer.top_k=2"]}


@pytest.mark.parametrize(
    ("model", "composer"),
    [pytest.param("tiny_llama", "xlora", marks=needs_tokenizer("llama3")), pytest.param("tiny_qwen2", "arrow", marks=needs_tokenizer("qwen2.5"))],
)
def test_train_py_runs_the_peers_end_to_end_on_causal_models(tmp_path, model, composer):
    from mole_exp.training.pipeline import run
    from tests.test_causal_models import CAUSAL_SMOKE

    if not DATA_DIR.is_dir():
        pytest.skip(f"shared task data not found at {DATA_DIR}")
    overrides = [f"model={model}", *CAUSAL_SMOKE, "data.eval_limit=8", "task=nli", f"paths.data_dir={DATA_DIR}",
                 f"paths.outputs_dir={tmp_path / 'outputs'}", *PEERS[composer]]
    run_dir = tmp_path / "run"
    metrics = run(compose_cfg(overrides, output_dir=run_dir))
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["composer"]["name"] == metrics["composer"]["name"] == composer
    assert sorted(written["num_examples"]) == ["anli_r1", "anli_r2", "anli_r3", "qnli", "wnli"]
    assert all(n == 8 for n in written["num_examples"].values()) and "test/nli/avg" in written["metrics"]
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines() if line]
    assert len(rows) == 40
    if composer == "xlora":  # the classifier trained and is the checkpoint; eval.py's path restores it
        from safetensors.torch import load_file

        assert written["train"]["steps"] == 2
        state = load_file(str(run_dir / "checkpoints" / "composer.safetensors"))
        assert sorted(state) == ["layers.0.bias", "layers.0.weight"]
        again = run(compose_cfg([*overrides, "mode=eval", f"checkpoint={run_dir}"], output_dir=tmp_path / "again"))
        assert again["metrics"] == written["metrics"]
        replayed = [json.loads(line) for line in (tmp_path / "again" / "predictions.jsonl").read_text().splitlines() if line]
        assert [r["prediction"] for r in replayed] == [r["prediction"] for r in rows]
    else:
        assert not (run_dir / "checkpoints" / "composer.safetensors").exists()


@needs_tokenizer("qwen2.5")
def test_a_crashed_xlora_run_resumes_from_its_classifier_checkpoint_and_ends_like_an_uninterrupted_one(tmp_path):
    from safetensors.torch import load_file

    from mole_exp.training.pipeline import run
    from tests.test_causal_models import CAUSAL_SMOKE

    if not DATA_DIR.is_dir():
        pytest.skip(f"shared task data not found at {DATA_DIR}")
    outputs = tmp_path / "outputs"  # resume=true looks for the unfinished run under paths.outputs_dir
    # 8 rows in batches of 4: the step-2 checkpoint is the first epoch's last step, which Lightning resumes in the
    # next epoch (mid-epoch checkpoints: tests/test_fault_tolerance.py; both: tests/test_resume_epoch_edges.py)
    overrides = ["model=tiny_qwen2", *CAUSAL_SMOKE, "task=nli", "task.only=[wnli]", "data.train_limit=8", "trainer.max_steps=4", "checkpoint_every_n_steps=2",
                 "optimizer.lr=0.05", f"paths.data_dir={DATA_DIR}", f"paths.outputs_dir={outputs}", "composer=xlora"]
    reference = run(compose_cfg(overrides, output_dir=outputs / "reference"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(compose_cfg([*overrides, "callbacks=[{_target_:tests.helpers.RaiseAtStep,step:3}]"], output_dir=outputs / "crashed"))
    assert (outputs / "crashed" / "checkpoints" / "last.ckpt").exists() and not (outputs / "crashed" / "metrics.json").exists()
    resumed = run(compose_cfg([*overrides, "resume=true"], output_dir=outputs / "resume_cmd"))
    assert resumed["train"]["resumed_from"] == str(outputs / "crashed" / "checkpoints" / "last.ckpt")
    classifier = [load_file(str(outputs / name / "checkpoints" / "composer.safetensors")) for name in ("reference", "crashed")]
    assert classifier[0].keys() == classifier[1].keys() and all(torch.equal(classifier[0][k], classifier[1][k]) for k in classifier[0])
    assert resumed["metrics"] == reference["metrics"] and resumed["train"]["final"] == reference["train"]["final"]
