"""MoLE gates and layers on the tiny T5: gate counts, rank-space == stacked, balance loss, masking,
one-hot equivalence with PEFT, and cached vs uncached generation."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from mole_exp.experts.loading import load_experts
from mole_exp.mole.gates import Gate, balance_loss
from mole_exp.mole.inject import inject_mole
from mole_exp.mole.linear import MoLELinear
from tests.conftest import make_tiny, tiny_experts_cfg

GATE = {"granularity": "layer", "input_form": "concat", "scope": "sequence", "temperature": {"init": 1.0}}


def gate_cfg(**changes):
    return {**GATE, **changes}


def randomise_gates(router, seed=0, std=0.5):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in router.gates.values():
            gate.projection.copy_(torch.randn(gate.projection.shape, generator=generator, dtype=gate.projection.dtype) * std)


def scope_probs(records):
    """scope -> the gate's probabilities, from the router's GateRecords."""
    return {record.scope: record.probs for record in records}


def batch(tokenizer, targets=True):
    sources = ["premise: a cat sat on the mat. hypothesis: a cat sat.", "Is this true?", "translate English to French: the house is blue and big"]
    encoded = tokenizer(sources, return_tensors="pt", padding=True)
    if targets:
        labels = tokenizer(["Yes", "It's impossible to say", "la maison est bleue"], return_tensors="pt", padding=True).input_ids
        labels[labels == tokenizer.pad_token_id] = -100
        encoded["labels"] = labels
    return encoded


# T5 with 2 encoder + 2 decoder blocks, LoRA on q and v:
#   matrix : enc 2x(q,v)=4 + dec 2x(self q,v + cross q,v)=8                      = 12
#   layer  : enc 2 self-attn + dec 2x(self-attn, cross-attn q, cross-attn memory v) = 8
#   block  : enc 2 + dec 2x(decoder stream, memory stream)                         = 6
#   network: encoder, decoder, memory                                              = 3
EXPECTED_GATES = {"matrix": 12, "layer": 8, "block": 6, "network": 3}


@pytest.mark.parametrize("granularity", sorted(EXPECTED_GATES))
def test_each_granularity_builds_the_expected_number_of_gates(tiny_bank, granularity):
    base = make_tiny()
    router = inject_mole(base, tiny_bank, gate_cfg(granularity=granularity))
    assert len(router.gates) == EXPECTED_GATES[granularity]
    adapted = [m for m in base.model.modules() if isinstance(m, MoLELinear)]
    assert len(adapted) == 12
    assert {m.scope for m in adapted} == set(router.scopes)


def test_all_linear_targets_gate_counts(cache_dir):
    base = make_tiny()
    bank = load_experts(tiny_experts_cfg(cache_dir, targets=("q", "k", "v", "o", "wi_0", "wi_1", "wo")), base)
    # per block: encoder 2 sub-layers; decoder self-attn, cross-attn (q,o | k,v memory), FFN
    counts = {g: len(inject_mole(make_tiny(), bank, gate_cfg(granularity=g)).gates) for g in EXPECTED_GATES}
    assert counts == {"matrix": 2 * 7 + 2 * 11, "layer": 2 * 2 + 2 * 4, "block": 2 + 2 * 2, "network": 3}


@pytest.mark.parametrize(
    "granularity,input_form,scope",
    list(itertools.product(["matrix", "layer", "block", "network"], ["concat", "per_expert", "hidden"], ["sequence", "token"])),
)
def test_rank_space_equals_stacked_reference_float64(tiny_bank, granularity, input_form, scope):
    cfg = gate_cfg(granularity=granularity, input_form=input_form, scope=scope)
    outputs = {}
    for implementation in ("rank_space", "rank_space_saved", "stacked"):
        base = make_tiny(dtype="float64")
        router = inject_mole(base, tiny_bank, cfg, implementation=implementation)
        randomise_gates(router)
        base.model.train()  # dropout is 0 in the tiny model; train mode records gate weights
        out = base.model(**batch(base.tokenizer))
        loss = out.loss + balance_loss(router.mean_probabilities(router.pop_records()))
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in router.parameters() if p.grad is not None])
        outputs[implementation] = (out.logits.detach(), grads)
    logits_ref, grads_ref = outputs["stacked"]
    for implementation in ("rank_space", "rank_space_saved"):
        logits_rank, grads_rank = outputs[implementation]
        assert (logits_rank - logits_ref).norm() / logits_ref.norm() < 1e-6, implementation
        assert (grads_rank - grads_ref).norm() / grads_ref.norm().clamp_min(1e-30) < 1e-6, implementation


def test_balance_loss_has_gradient_and_is_minimal_at_uniform():
    n = 5
    uniform = torch.full((n,), 1.0 / n)
    assert torch.isclose(balance_loss(uniform), n * torch.log(torch.tensor(float(n))))
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        q = torch.softmax(torch.randn(n, generator=generator) * 2, dim=0)
        assert balance_loss(q) >= balance_loss(uniform) - 1e-6
    logits = torch.randn(3, n, requires_grad=True)
    gate = Gate(n, 4, "per_expert")
    probs = gate.probabilities(logits)
    loss = balance_loss(probs.mean(dim=0))
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert gate.temperature.log_tau.grad is not None


def test_balance_loss_through_the_model_reaches_every_gate(tiny_bank):
    base = make_tiny()
    router = inject_mole(base, tiny_bank, gate_cfg(granularity="matrix"))
    randomise_gates(router)
    base.model.train()
    base.model(**batch(base.tokenizer))
    records = router.pop_records()
    assert {record.scope for record in records} == set(router.scopes)
    router.balance_loss(records).backward()
    for name, parameter in router.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_mask_zeroes_experts_and_renormalises_the_rest_proportionally():
    gate = Gate(4, 8, "per_expert")
    logits = torch.tensor([[[0.3, -1.0, 2.0, 0.5]]])
    full = gate.probabilities(logits)
    keep = torch.tensor([True, False, True, True])
    masked = gate.probabilities(logits, keep)
    expected = full * keep / (full * keep).sum(-1, keepdim=True)
    assert torch.allclose(masked, expected)
    assert masked[..., 1].item() == 0.0
    assert torch.isclose(masked.sum(), torch.tensor(1.0))
    # proportional: ratios between kept experts are unchanged
    assert torch.isclose(masked[..., 0] / masked[..., 2], full[..., 0] / full[..., 2])


def test_router_refuses_a_mask_that_removes_every_expert(tiny_bank):
    router = inject_mole(make_tiny(), tiny_bank, GATE)
    with pytest.raises(ValueError, match="removes every expert"):
        router.set_expert_mask([])


@pytest.mark.parametrize("expert", [0, 2])
def test_one_hot_gate_equals_peft_with_only_that_lora(tiny_bank, expert):
    from peft import PeftModel

    base = make_tiny()
    reference_base = copy.deepcopy(base.model)
    router = inject_mole(base, tiny_bank, gate_cfg(granularity="block"))
    randomise_gates(router)
    router.set_expert_mask([expert])  # one-hot gate on `expert`
    base.model.eval()
    inputs = batch(base.tokenizer)
    with torch.no_grad():
        ours = base.model(**inputs).logits
        peft_model = PeftModel.from_pretrained(reference_base, tiny_bank.sources[expert]).eval()
        theirs = peft_model(**inputs).logits
        with peft_model.disable_adapter():
            plain = peft_model(**inputs).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-3)  # logits ~40: float32 summation order
    assert (ours - plain).abs().max() > 0.1  # the expert really changes the output


@pytest.mark.parametrize("scope,num_beams", [("sequence", 1), ("sequence", 4), ("token", 1)])
def test_generation_with_and_without_cache_is_identical(tiny_bank, scope, num_beams):
    base = make_tiny()
    with torch.no_grad():  # a head that prefers varied tokens (and makes beams swap), not all padding
        base.model.lm_head.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    router = inject_mole(base, tiny_bank, gate_cfg(granularity="layer", scope=scope))
    randomise_gates(router, std=2.0)
    base.model.eval()
    inputs = batch(base.tokenizer, targets=False)
    results = {}
    for use_cache in (True, False):
        out = base.model.generate(
            **inputs, max_new_tokens=10, num_beams=num_beams, do_sample=False, use_cache=use_cache,
            output_scores=True, return_dict_in_generate=True,
        )
        results[use_cache] = out
    assert torch.equal(results[True].sequences, results[False].sequences)
    assert len(set(results[True].sequences.flatten().tolist())) > 2  # the test decodes real tokens
    for with_cache, without_cache in zip(results[True].scores, results[False].scores, strict=True):
        torch.testing.assert_close(with_cache, without_cache, rtol=1e-4, atol=1e-4)  # float32 op order differs


def test_decoder_weights_are_causal_prefix_means(tiny_bank):
    """Teacher-forced decoder gate weights at position t depend only on tokens <= t."""
    base = make_tiny()
    router = inject_mole(base, tiny_bank, gate_cfg(granularity="network"))
    randomise_gates(router, std=2.0)
    base.model.eval()
    inputs = batch(base.tokenizer)
    decoder_input_ids = base.model._shift_right(inputs["labels"].clamp_min(0))
    with torch.no_grad(), router.collect():
        base.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], decoder_input_ids=decoder_input_ids)
        full = scope_probs(router.pop_records())["network.decoder"]
    with torch.no_grad(), router.collect():
        base.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], decoder_input_ids=decoder_input_ids[:, :2])
        prefix = scope_probs(router.pop_records())["network.decoder"]
    assert full.shape[1] == decoder_input_ids.shape[1]
    assert torch.allclose(full[:, :2], prefix, atol=1e-6)


def test_encoder_weights_ignore_padding(tiny_bank):
    base = make_tiny()
    router = inject_mole(base, tiny_bank, gate_cfg(granularity="network"))
    randomise_gates(router, std=2.0)
    base.model.eval()
    tok = base.tokenizer
    alone = tok(["a short input"], return_tensors="pt")
    padded = tok(["a short input", "a much longer input that forces padding of the first one"], return_tensors="pt", padding=True)
    with torch.no_grad(), router.collect():
        base.model.get_encoder()(**alone)
        weights_alone = scope_probs(router.pop_records())["network.encoder"]
    with torch.no_grad(), router.collect():
        base.model.get_encoder()(**padded)
        weights_padded = scope_probs(router.pop_records())["network.encoder"]
    assert torch.allclose(weights_alone[0], weights_padded[0], atol=1e-5)
