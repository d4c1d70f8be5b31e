"""MoLE and the mixer on decoder-only models (tiny Llama and Qwen2 with their real tokenizers): a one-hot gate is
PEFT's single adapter; the rank-space forms equal the stacked reference in float64; greedy outputs do not depend on
left vs right padding, batching or the KV cache (sequence-scope gates pool over the valid prefix, mole/gates.py
`pool_causal`); every granularity runs through train.py."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from mole_exp.base.text_format import text_format
from mole_exp.evaluation.evaluator import GenerationSettings, generate
from mole_exp.mole.gates import balance_loss
from mole_exp.mole.inject import inject_mole
from mole_exp.training.data import collator
from tests.conftest import DATA_DIR, compose_cfg, needs_tokenizer
from tests.test_causal_models import CAUSAL_SMOKE, causal_batch, tiny_causal, tiny_causal_bank, with_tokenizers
from tests.test_composers import EXAMPLES, logits
from tests.test_gates import randomise_gates

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

GATE = {"granularity": "layer", "input_form": "concat", "scope": "sequence", "temperature": {"init": 1.0}}
SOURCES = [e["source"] for e in EXAMPLES]


def composed(architecture, cache_dir, std=2.0, **gate):
    base = tiny_causal(architecture)
    bank = tiny_causal_bank(base, cache_dir)  # q_proj, v_proj, down_proj: both sub-layers of every block
    router = inject_mole(base, bank, {**GATE, **gate})
    randomise_gates(router, std=std)
    base.model.eval()
    return base, bank, router


@with_tokenizers
@pytest.mark.parametrize("expert", [0, 3])
def test_one_hot_gate_equals_peft_with_only_that_lora_on_a_causal_base(architecture, expert, cache_dir):
    from peft import PeftModel

    base = tiny_causal(architecture)
    reference_base = copy.deepcopy(base.model)
    bank = tiny_causal_bank(base, cache_dir)
    router = inject_mole(base, bank, {**GATE, "granularity": "block"})
    randomise_gates(router)
    router.set_expert_mask([expert])  # every expert masked but one: a one-hot gate
    base.model.eval()
    batch = causal_batch(base.tokenizer)  # right-padded, as in training
    ours = logits(base.model, batch)
    peft_model = PeftModel.from_pretrained(reference_base, bank.sources[expert]).eval()
    theirs = logits(peft_model, batch)
    with peft_model.disable_adapter():
        plain = logits(peft_model, batch)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert (ours - plain).abs().max() > 1e-2  # the expert really changes the output


def rank_space_params():
    for architecture, tokenizer in (("llama", "llama3"), ("qwen2", "qwen2.5")):
        combos = itertools.product(["matrix", "layer", "block", "network"], ["concat", "per_expert", "hidden"], ["sequence", "token"])
        for granularity, input_form, scope in combos:
            if architecture == "qwen2" and (input_form, scope) != ("concat", "sequence"):
                continue  # the second architecture: every granularity at the paper's form
            yield pytest.param(architecture, granularity, input_form, scope, marks=needs_tokenizer(tokenizer),
                               id=f"{architecture}-{granularity}-{input_form}-{scope}")


@pytest.mark.parametrize(("architecture", "granularity", "input_form", "scope"), list(rank_space_params()))
def test_rank_space_equals_stacked_reference_float64_on_a_causal_base(architecture, granularity, input_form, scope, cache_dir):
    """Hidden states and gate gradients of the three implementations agree (float64) on a right-padded batch."""
    template = tiny_causal(architecture)
    bank = tiny_causal_bank(template, cache_dir)
    batch = causal_batch(template.tokenizer)
    assert (batch["attention_mask"] == 0).any()  # padded rows: the masked prefix pooling is exercised
    results = {}
    for implementation in ("rank_space", "rank_space_saved", "stacked"):
        base = copy.copy(template)
        base.model = copy.deepcopy(template.model).to(torch.float64)
        router = inject_mole(base, bank, {**GATE, "granularity": granularity, "input_form": input_form, "scope": scope},
                             implementation=implementation)
        randomise_gates(router)
        base.model.train()
        hidden = base.model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        valid = batch["attention_mask"][..., None].to(hidden.dtype)
        loss = (hidden.square() * valid).mean() + balance_loss(router.mean_probabilities(router.pop_records()))
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in router.parameters() if p.grad is not None])
        results[implementation] = ((hidden * valid).detach(), grads)
    hidden_ref, grads_ref = results["stacked"]
    assert grads_ref.abs().sum() > 0
    for implementation in ("rank_space", "rank_space_saved"):
        hidden_rank, grads_rank = results[implementation]
        assert (hidden_rank - hidden_ref).norm() / hidden_ref.norm() < 1e-10, implementation
        assert (grads_rank - grads_ref).norm() / grads_ref.norm() < 1e-8, implementation


@with_tokenizers
def test_mole_greedy_outputs_do_not_depend_on_padding_or_batching(architecture, cache_dir):
    base, _, router = composed(architecture, cache_dir)
    tokenizer, form = base.tokenizer, text_format(base.tokenizer)
    settings = GenerationSettings(batch_size=len(SOURCES), max_source_length=128, progress=False)
    batched = generate(base.model, tokenizer, SOURCES, 6, settings)
    one_at_a_time = generate(base.model, tokenizer, SOURCES, 6, GenerationSettings(batch_size=1, max_source_length=128, progress=False))
    assert batched == one_at_a_time and len(set(batched)) > 1
    # the gates: a left-padded row's valid positions get the weights the prompt alone gets
    prompts = form.encode_prompts(tokenizer, SOURCES, 128)  # left-padded
    assert (prompts["attention_mask"][:, 0] == 0).any()
    with torch.no_grad(), router.collect():
        base.model(**prompts)
        padded = {record.scope: record.probs for record in router.pop_records()}
    for row, source in enumerate(SOURCES):
        alone = form.encode_prompts(tokenizer, [source], 128)
        with torch.no_grad(), router.collect():
            base.model(**alone)
            single = {record.scope: record.probs for record in router.pop_records()}
        length = alone["input_ids"].shape[1]
        for scope, probs in single.items():
            torch.testing.assert_close(padded[scope][row, -length:], probs[0], rtol=1e-5, atol=1e-6)
    # left (generation) vs right (training) padding: the same next token after each prompt
    with torch.no_grad():
        first = base.model.generate(**prompts, max_new_tokens=1, do_sample=False)[:, -1]
    right = collator(tokenizer)([{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids}
                                 for ids in (form.prompt_ids(tokenizer, s, 128) for s in SOURCES)])
    lengths = right["attention_mask"].sum(1)
    right_logits = logits(base.model, {"input_ids": right["input_ids"], "attention_mask": right["attention_mask"]})
    assert torch.equal(right_logits[torch.arange(len(SOURCES)), lengths - 1].argmax(-1), first)


@needs_tokenizer("qwen2.5")
def test_pads_do_not_count_in_the_balance_loss_or_the_statistics(cache_dir):
    """q of Eq. 15 averages the gate weights of the valid positions of a right-padded batch only."""
    base, _, router = composed("qwen2", cache_dir)
    batch = causal_batch(base.tokenizer)
    base.model.train()
    base.model(**batch)
    records = router.pop_records()
    assert records and all(torch.equal(record.valid, batch["attention_mask"]) for record in records)
    valid = batch["attention_mask"].bool()
    expected = torch.stack([record.probs.detach()[valid].mean(dim=0) for record in records]).mean(dim=0)
    torch.testing.assert_close(router.mean_probabilities(records).detach(), expected)
    everything = torch.stack([record.probs.detach().reshape(-1, record.probs.shape[-1]).mean(dim=0) for record in records]).mean(dim=0)
    assert (everything - expected).abs().max() > 1e-4  # the pads would have moved q
    stats = router.statistics(records)
    torch.testing.assert_close(torch.tensor(stats[records[0].scope]["weights"]), records[0].probs.detach()[valid].mean(dim=0))


@with_tokenizers
@pytest.mark.parametrize(("scope", "num_beams"), [("sequence", 1), ("sequence", 3), ("token", 1)])
def test_mole_generation_with_and_without_kv_cache_is_identical(architecture, scope, num_beams, cache_dir):
    base, _, _ = composed(architecture, cache_dir, scope=scope)
    prompts = text_format(base.tokenizer).encode_prompts(base.tokenizer, SOURCES[:4], 128)  # left-padded
    results = {}
    for use_cache in (True, False):
        with torch.no_grad():
            results[use_cache] = base.model.generate(**prompts, max_new_tokens=6, num_beams=num_beams, do_sample=False,
                                                     use_cache=use_cache, output_scores=True, return_dict_in_generate=True)
    assert torch.equal(results[True].sequences, results[False].sequences)
    for with_cache, without_cache in zip(results[True].scores, results[False].scores, strict=True):
        torch.testing.assert_close(with_cache, without_cache, rtol=1e-4, atol=1e-4)


@with_tokenizers
def test_mixer_routes_a_causal_base_and_its_losses_skip_padding(architecture, cache_dir):
    from mole_exp.composers.mixer import MixerComposer

    base = tiny_causal(architecture)
    bank = tiny_causal_bank(base, cache_dir)
    composer = MixerComposer(init_std=0.5)
    trainable = composer.compose(base, bank)
    batch = causal_batch(base.tokenizer)
    base.model.train()
    loss = base.model(**batch).loss + sum(weight * value for weight, value in composer.auxiliary_losses().values())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    records = composer._last_records  # the router's records of this step, popped by auxiliary_losses
    assert records and all(r.valid is not None and torch.equal(r.valid, batch["attention_mask"]) for r in records)
    composer.release()


# ---------------------------------------------------------------- train.py end to end

# one granularity per model in the default suite (each run takes seconds), the others slow
FAST = {("tiny_llama", "layer"), ("tiny_qwen2", "network")}


def pipeline_params():
    for model, tokenizer in (("tiny_llama", "llama3"), ("tiny_qwen2", "qwen2.5")):
        for granularity in ("matrix", "layer", "block", "network"):
            marks = [needs_tokenizer(tokenizer)] + ([] if (model, granularity) in FAST else [pytest.mark.slow])
            yield pytest.param(model, granularity, marks=marks, id=f"{model}-{granularity}")


@pytest.mark.parametrize(("model", "granularity"), list(pipeline_params()))
def test_mole_runs_through_train_py_on_causal_models(tmp_path, model, granularity):
    from mole_exp.training.pipeline import run

    if not DATA_DIR.is_dir():
        pytest.skip(f"shared task data not found at {DATA_DIR}")
    # experts=tiny as the done-when writes it: its targets (null) resolve to the family's (q_proj, v_proj)
    smoke = ["experts=tiny" if override == "experts=tiny_causal" else override for override in CAUSAL_SMOKE]
    overrides = [f"model={model}", *smoke, "task=nli", "composer=mole", f"composer/gate={granularity}", "trainer.max_steps=5",
                 "data.eval_limit=8", f"paths.data_dir={DATA_DIR}", f"paths.outputs_dir={tmp_path / 'outputs'}"]
    metrics = run(compose_cfg(overrides, output_dir=tmp_path / "run"))
    assert sorted(metrics["num_examples"]) == ["anli_r1", "anli_r2", "anli_r3", "qnli", "wnli"]
    assert all(n == 8 for n in metrics["num_examples"].values())
    assert (tmp_path / "run" / "metrics.json").exists() and (tmp_path / "run" / "checkpoints" / "composer.safetensors").exists()
    stats = [line for line in (tmp_path / "run" / "gate_stats.jsonl").read_text().splitlines() if line]
    assert len(stats) == 5


@needs_tokenizer("qwen2.5")
def test_mixer_runs_through_train_py_on_a_causal_model(tmp_path):
    from mole_exp.training.pipeline import run

    if not DATA_DIR.is_dir():
        pytest.skip(f"shared task data not found at {DATA_DIR}")
    overrides = ["model=tiny_qwen2", *CAUSAL_SMOKE, "task=nli", "composer=mixer", f"paths.data_dir={DATA_DIR}",
                 f"paths.outputs_dir={tmp_path / 'outputs'}"]
    metrics = run(compose_cfg(overrides, output_dir=tmp_path / "run"))
    assert metrics["composer"]["name"] == "mixer" and sorted(metrics["num_examples"]) == ["anli_r1", "anli_r2", "anli_r3", "qnli", "wnli"]
