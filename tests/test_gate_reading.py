"""The gate's reading of Eqs. 8-9 (`gate.expert_output`, `gate.normalization`): every implementation against
a float64 reference written here the obvious way (a loop over experts, the concatenation normalised as one
vector), cached generation, gradcheck of the rank-space logits, bad values, and what metrics.json records."""

from __future__ import annotations

import copy
import dataclasses
import itertools

import pytest
import torch

from mole_exp.composers.mole import MoLEComposer
from mole_exp.mole.gates import Gate
from mole_exp.mole.inject import inject_mole
from mole_exp.mole.linear import MoLELinear
from tests.conftest import make_tiny
from tests.test_gates import batch, gate_cfg, randomise_gates

IMPLEMENTATIONS = ("rank_space", "rank_space_saved", "stacked")
LITERAL = {"expert_output": "full", "normalization": "joint"}
READINGS = {
    "literal": LITERAL,
    "full_per_expert": {"expert_output": "full", "normalization": "per_expert"},
    "delta_joint": {"expert_output": "delta", "normalization": "joint"},
    "default": {"expert_output": "delta", "normalization": "per_expert"},
}


class ObviousMoLE:
    """Eqs. 8-13 per adapted linear, written without any of the implementation's algebra:

        E_i = W x + s_i B_i A_i x (full) or s_i B_i A_i x (delta)                        Eq. 8
        E_Omega = Normalization(E_0 (+) ... (+) E_{N-1}): one LayerNorm over N*d (joint) or one per E_i   Eq. 9
        logits = E_Omega^T e per token, pooled as the gate's scope says                     Eq. 10
        g = softmax(logits / tau); h = W x + sum_i g_i s_i B_i A_i x                        Eqs. 11-13

    It replaces MoLELinear.forward; it reads only the layer's weights and experts, which gate it uses (and
    which token stream it is in), and that gate's parameters. A gate is computed at the first linear of its
    scope in the pass and reused by the others."""

    def __init__(self, router, encoder_mask: torch.Tensor, expert_output: str, normalization: str):
        self.router, self.encoder_mask = router, encoder_mask
        self.expert_output, self.normalization = expert_output, normalization
        self.gates: dict[str, torch.Tensor] = {}

    def forward(self, layer: MoLELinear, x: torch.Tensor) -> torch.Tensor:
        y = x @ layer.base_layer.weight.T  # W x (T5's linears have no bias)
        deltas = [layer.scaling[i] * (x @ layer.lora_A[i].T @ layer.lora_B[i].T) for i in range(layer.num_experts)]
        if layer.scope not in self.gates:
            self.gates[layer.scope] = self.gate(layer, y, deltas)
        weights = self.gates[layer.scope]
        return y + sum(weights[..., i : i + 1] * delta for i, delta in enumerate(deltas))

    @staticmethod
    def layer_norm(features: torch.Tensor) -> torch.Tensor:
        mean = features.mean(dim=-1, keepdim=True)
        variance = ((features - mean) ** 2).mean(dim=-1, keepdim=True)
        return (features - mean) / torch.sqrt(variance + 1e-5)

    def gate(self, layer: MoLELinear, y: torch.Tensor, deltas: list[torch.Tensor]) -> torch.Tensor:
        gate = self.router.gate(layer.scope)
        outputs = [y + delta if self.expert_output == "full" else delta for delta in deltas]
        if self.normalization == "joint":
            normalized = self.layer_norm(torch.cat(outputs, dim=-1))  # (B, T, N*d)
        else:
            normalized = torch.cat([self.layer_norm(output) for output in outputs], dim=-1)
        num_experts, width = len(outputs), outputs[0].shape[-1]
        if gate.input_form == "concat":
            logits = normalized @ gate.projection.reshape(num_experts * width, num_experts)  # (B, T, N)
        else:
            chunks = normalized.split(width, dim=-1)
            logits = torch.stack([(chunks[i] * gate.projection[i]).sum(dim=-1) for i in range(num_experts)], dim=-1)
        if gate.scope == "token":
            pooled = logits
        elif layer.stream == "decoder":  # position t averages positions 0..t
            positions = torch.arange(1, logits.shape[1] + 1, dtype=logits.dtype)
            pooled = logits.cumsum(dim=1) / positions[None, :, None]
        else:  # encoder and cross-attention memory: mean over the encoder's valid tokens
            valid = self.encoder_mask.to(logits.dtype)[..., None]
            pooled = (logits * valid).sum(dim=1, keepdim=True) / valid.sum(dim=1, keepdim=True)
        return torch.softmax(pooled / gate.temperature(), dim=-1)


def balance_loss(probabilities: list[torch.Tensor]) -> torch.Tensor:
    """Eqs. 14-15 in float64 (the Router's own runs in float32)."""
    per_gate = torch.stack([probs.reshape(-1, probs.shape[-1]).mean(dim=0) for probs in probabilities])
    return -torch.log(per_gate.mean(dim=0)).sum()


@pytest.fixture(scope="module")
def float64_base():
    return make_tiny(dtype="float64")


def composed(float64_base, tiny_bank, cfg):
    """A fresh float64 copy of the tiny T5 with random gates (float64 too)."""
    base = dataclasses.replace(float64_base, model=copy.deepcopy(float64_base.model))
    router = inject_mole(base, tiny_bank, cfg).double()
    randomise_gates(router)
    base.model.train()  # dropout is 0 in the tiny model; train mode records gate weights
    return base, router


def run_model(base, router, cfg, implementation: str, monkeypatch=None):
    """Logits and gate-parameter gradients of task loss + L_balance, float64 throughout. `implementation`:
    one of the Router's, or "reference" (ObviousMoLE in place of every MoLELinear's forward)."""
    router.zero_grad(set_to_none=True)
    inputs = batch(base.tokenizer)
    if implementation == "reference":
        obvious = ObviousMoLE(router, inputs["attention_mask"], cfg["expert_output"], cfg["normalization"])
        monkeypatch.setattr(MoLELinear, "forward", lambda layer, x: obvious.forward(layer, x))
        out = base.model(**inputs)
        monkeypatch.undo()
        probabilities = list(obvious.gates.values())
    else:
        for layer in base.model.modules():  # each MoLELinear mixes as its implementation says
            if isinstance(layer, MoLELinear):
                layer.implementation = implementation
        out = base.model(**inputs)
        probabilities = [record.probs for record in router.pop_records()]
    (out.loss + balance_loss(probabilities)).backward()
    grads = torch.cat([p.grad.flatten() for p in router.parameters() if p.grad is not None])
    return out.logits.detach(), grads


def assert_close(value, reference, what):
    error = float((value - reference).norm() / reference.norm().clamp_min(1e-30))
    assert error < 1e-9, f"{what}: relative error {error:.2e}"


GRANULARITIES, FORMS, SCOPES = ("matrix", "layer", "block", "network"), ("concat", "per_expert"), ("sequence", "token")
CASES = [  # the literal reading everywhere; the two half-readings at one granularity; the default (checks the reference)
    *[("literal", g, f, s) for g, f, s in itertools.product(GRANULARITIES, FORMS, SCOPES)],
    *[(r, "layer", f, s) for r, f, s in itertools.product(["full_per_expert", "delta_joint"], FORMS, SCOPES)],
    *[("default", "layer", f, "sequence") for f in FORMS],
]


@pytest.mark.parametrize("reading,granularity,input_form,scope", CASES)
def test_every_implementation_equals_the_obvious_float64_reference(float64_base, tiny_bank, monkeypatch, reading, granularity, input_form, scope):
    cfg = gate_cfg(granularity=granularity, input_form=input_form, scope=scope, **READINGS[reading])
    base, router = composed(float64_base, tiny_bank, cfg)
    logits_ref, grads_ref = run_model(base, router, cfg, "reference", monkeypatch)
    assert grads_ref.abs().max() > 0
    for implementation in IMPLEMENTATIONS:
        logits, grads = run_model(base, router, cfg, implementation)
        assert_close(logits, logits_ref, f"{implementation} logits")
        assert_close(grads, grads_ref, f"{implementation} gate gradients")


def test_the_readings_differ_and_only_the_full_reading_sees_the_base_output(float64_base, tiny_bank):
    """The options change the function (else the reference test could not tell them apart), and the gate of
    the delta reading does not depend on W, while the full reading's does."""

    def encoder_gate_weights(cfg, scale_base: float):
        base, router = composed(float64_base, tiny_bank, cfg)
        with torch.no_grad():
            base.model.get_submodule("encoder.block.0.layer.0.SelfAttention.q").base_layer.weight.mul_(scale_base)
        base.model.eval()
        with torch.no_grad(), router.collect():
            base.model.get_encoder()(**batch(base.tokenizer, targets=False))
            return {record.scope: record.probs for record in router.pop_records()}["encoder.block.0.layer.0"]

    weights = {name: encoder_gate_weights(gate_cfg(**reading), 1.0) for name, reading in READINGS.items()}
    for first, second in itertools.combinations(weights, 2):
        assert (weights[first] - weights[second]).abs().max() > 1e-3, (first, second)
    for name in ("default", "delta_joint"):
        assert torch.equal(encoder_gate_weights(gate_cfg(**READINGS[name]), 3.0), weights[name]), name
    for name in ("literal", "full_per_expert"):
        assert (encoder_gate_weights(gate_cfg(**READINGS[name]), 3.0) - weights[name]).abs().max() > 1e-3, name


@pytest.mark.parametrize("reading", ["literal", "full_per_expert", "delta_joint"])
@pytest.mark.parametrize("input_form", ["concat", "per_expert"])
def test_rank_space_logits_gradcheck(reading, input_form):
    """The rank-space logits (autograd through the r-space algebra, no hand-written backward) equal the
    stacked gate's and have the exact gradient in u = A x and the base output W x; the projection's
    gradient equals the stacked gate's."""
    generator = torch.Generator().manual_seed(0)
    num_experts, rank, width = 3, 2, 5
    gate = Gate(num_experts, width, input_form, **READINGS[reading]).double()
    with torch.no_grad():
        gate.projection.copy_(torch.randn(gate.projection.shape, generator=generator, dtype=torch.float64))
    rank_inputs = torch.randn(2, 3, num_experts, rank, generator=generator, dtype=torch.float64, requires_grad=True)
    base_output = torch.randn(2, 3, width, generator=generator, dtype=torch.float64, requires_grad=True)
    lora_B = torch.randn(num_experts, width, rank, generator=generator, dtype=torch.float64)
    scaling = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)

    def rank_space(u, y=None):
        return gate.token_logits_rank_space(u, lora_B, scaling, y)

    def stacked(u, y=None):
        return gate.token_logits_stacked(torch.einsum("btnr,ndr->btnd", u * scaling[:, None], lora_B), y)

    inputs = (rank_inputs, base_output) if gate.reads_base_output else (rank_inputs,)  # delta: W x is not read
    assert torch.allclose(rank_space(*inputs), stacked(*inputs))
    assert torch.autograd.gradcheck(rank_space, inputs)
    cotangent = torch.randn(2, 3, num_experts, generator=generator, dtype=torch.float64)
    wrt = (*inputs, gate.projection)
    grads = torch.autograd.grad((rank_space(*inputs) * cotangent).sum(), wrt)
    grads_stacked = torch.autograd.grad((stacked(*inputs) * cotangent).sum(), wrt)
    for grad, grad_stacked in zip(grads, grads_stacked, strict=True):
        assert torch.allclose(grad, grad_stacked)


@pytest.mark.parametrize(
    "implementation,scope,num_beams",
    [("rank_space", "sequence", 1), ("rank_space", "sequence", 4), ("rank_space", "token", 1), ("stacked", "sequence", 4)],
)
def test_generation_with_and_without_cache_is_identical_with_the_literal_reading(tiny_bank, implementation, scope, num_beams):
    base = make_tiny()
    with torch.no_grad():  # a head that prefers varied tokens (and makes beams swap), not all padding
        base.model.lm_head.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    router = inject_mole(base, tiny_bank, gate_cfg(granularity="layer", scope=scope, **LITERAL), implementation=implementation)
    randomise_gates(router, std=2.0)
    base.model.eval()
    inputs = batch(base.tokenizer, targets=False)
    results = {}
    for use_cache in (True, False):
        results[use_cache] = base.model.generate(
            **inputs, max_new_tokens=10, num_beams=num_beams, do_sample=False, use_cache=use_cache,
            output_scores=True, return_dict_in_generate=True,
        )
    assert torch.equal(results[True].sequences, results[False].sequences)
    assert len(set(results[True].sequences.flatten().tolist())) > 2  # the test decodes real tokens
    for with_cache, without_cache in zip(results[True].scores, results[False].scores, strict=True):
        torch.testing.assert_close(with_cache, without_cache, rtol=1e-4, atol=1e-4)  # float32 op order differs


def test_rank_space_keeps_no_rank_space_activations_for_backward_with_the_literal_reading(tiny_bank):
    """The literal reading keeps the gate linear's base output W x (B, T, d) for backward, never u = A x."""
    num_experts, rank = len(tiny_bank), tiny_bank.rank
    base = make_tiny()
    router = inject_mole(base, tiny_bank, gate_cfg(granularity="layer", **LITERAL), implementation="rank_space")
    randomise_gates(router)
    base.model.train()
    shapes: list[tuple[int, ...]] = []

    def pack(tensor):
        shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = base.model(**batch(base.tokenizer))
    (out.loss + router.balance_loss(router.pop_records())).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in router.parameters() if p.requires_grad)
    assert not [s for s in shapes if s[-2:] == (num_experts, rank) or (len(s) == 3 and s[-1] == num_experts * rank)]


def test_literal_reading_under_bf16_autocast_on_the_cpu(tiny_bank):
    """bf16 autocast (the GPU setting): the literal reading's statistics run in float32; finite and close."""
    results = {}
    for autocast in (False, True):
        torch.manual_seed(0)
        base = make_tiny()
        router = inject_mole(base, tiny_bank, gate_cfg(**LITERAL))
        randomise_gates(router)
        base.model.train()
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=autocast):
            out = base.model(**batch(base.tokenizer))
            loss = out.loss + router.balance_loss(router.pop_records())
        loss.backward()
        grads = torch.cat([p.grad.float().flatten() for p in router.parameters() if p.grad is not None])
        results[autocast] = (out.logits.detach().float(), grads)
    (logits, grads), (logits_bf16, grads_bf16) = results[False], results[True]
    assert torch.isfinite(grads_bf16).all()
    assert (logits_bf16 - logits).norm() / logits.norm() < 0.05
    assert (grads_bf16 - grads).norm() / grads.norm() < 0.1


@pytest.mark.parametrize(
    "gate,message",
    [
        ({"expert_output": "output"}, r"gate.expert_output='output' is not one of \['delta', 'full'\]"),
        ({"normalization": "global"}, r"gate.normalization='global' is not one of \['per_expert', 'joint'\]"),
        ({"input_form": "hidden", "expert_output": "full"}, r"gate.expert_output='full' does not apply to composer.gate.input_form='hidden'"),
        ({"input_form": "hidden", "normalization": "joint"}, r"gate.normalization='joint' does not apply to composer.gate.input_form='hidden'"),
    ],
)
def test_bad_readings_fail_before_any_model_loads(gate, message):
    with pytest.raises(ValueError, match=message):
        MoLEComposer(gate={"granularity": "layer", **gate})


def test_hidden_input_form_keeps_the_default_reading():
    MoLEComposer(gate={"granularity": "layer", "input_form": "hidden", "expert_output": "delta", "normalization": "per_expert"})


def test_metrics_record_the_reading(tmp_path, smoke_overrides):
    from mole_exp.files import read_json
    from mole_exp.training.pipeline import run
    from tests.conftest import compose_cfg

    cfg = compose_cfg([*smoke_overrides, "composer=mole", "composer.gate.expert_output=full", "composer.gate.normalization=joint",
                       "trainer.max_steps=1", "data.eval_limit=2", "task=nli", "task.only=[wnli]"], tmp_path / "run")
    run(cfg)
    composer = read_json(tmp_path / "run" / "metrics.json")["composer"]
    assert (composer["expert_output"], composer["normalization"]) == ("full", "joint")
    assert composer["gate"]["expert_output"] == "full"
    default = MoLEComposer(gate={"granularity": "layer"}).summary()
    assert (default["expert_output"], default["normalization"]) == ("delta", "per_expert")
