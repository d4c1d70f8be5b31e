"""The memory-lean rank-space autograd (mole_exp/mole/rank_space.py): exact gradients, and what it keeps for
backward compared with rank_space_saved (device-independent: the tensors autograd saves)."""

from __future__ import annotations

import pytest
import torch

from mole_exp.mole import rank_space
from mole_exp.mole.inject import inject_mole
from tests.conftest import make_tiny, needs_gpu
from tests.test_gates import batch, gate_cfg, randomise_gates

N, R, D_IN, D_OUT = 5, 3, 7, 6


def random_mix_inputs(weight_positions: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 4, D_IN, generator=generator, dtype=torch.float64, requires_grad=True)
    lora_A = torch.randn(N, R, D_IN, generator=generator, dtype=torch.float64)
    lora_B = torch.randn(N, D_OUT, R, generator=generator, dtype=torch.float64)
    weights = torch.rand(2, weight_positions, N, generator=generator, dtype=torch.float64, requires_grad=True)
    return hidden, lora_A, lora_B, weights


@pytest.mark.parametrize("weight_positions", [1, 4], ids=["per-sequence", "per-token"])
def test_mix_backward_is_the_exact_gradient(weight_positions):
    hidden, lora_A, lora_B, weights = random_mix_inputs(weight_positions)
    assert torch.autograd.gradcheck(lambda x, w: rank_space.mix(x, lora_A, lora_B, w), (hidden, weights))
    direct = torch.einsum("bti,nri,nor,btn->bto", hidden, lora_A, lora_B, weights.expand(2, 4, N))
    assert torch.allclose(rank_space.mix(hidden, lora_A, lora_B, weights), direct)


def test_mix_refuses_trainable_experts():
    hidden, lora_A, lora_B, weights = random_mix_inputs(1)
    with pytest.raises(ValueError, match="rank_space_saved"):
        rank_space.mix(hidden, lora_A.requires_grad_(), lora_B, weights)


def saved_tensor_shapes(implementation: str, tiny_bank) -> list[tuple[int, ...]]:
    """Shapes of every tensor autograd keeps for backward during one training forward."""
    base = make_tiny()
    router = inject_mole(base, tiny_bank, gate_cfg(granularity="layer", input_form="concat"), implementation=implementation)
    randomise_gates(router)
    base.model.train()
    shapes: list[tuple[int, ...]] = []

    def pack(tensor):
        shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = base.model(**batch(base.tokenizer))
    out.loss.backward()  # and backward still works
    assert all(p.grad is not None for p in router.parameters() if p.requires_grad)
    return shapes


def test_rank_space_keeps_no_rank_space_activations_for_backward(tiny_bank):
    num_experts, rank = len(tiny_bank), tiny_bank.rank

    def is_rank_space(shape):  # (B, T, N, r) and (B, T, N*r) tensors
        return shape[-2:] == (num_experts, rank) or (len(shape) == 3 and shape[-1] == num_experts * rank)

    lean = [s for s in saved_tensor_shapes("rank_space", tiny_bank) if is_rank_space(s)]
    saved = [s for s in saved_tensor_shapes("rank_space_saved", tiny_bank) if is_rank_space(s)]
    assert saved, "rank_space_saved keeps u = A x for backward (otherwise this test checks nothing)"
    assert lean == []


@pytest.mark.parametrize("implementation", ["rank_space", "rank_space_saved", "stacked"])
def test_experts_held_in_bfloat16_on_a_float32_model(tiny_bank, implementation):
    """composer.expert_dtype: the experts' buffers take that dtype, the forward computes in the model's."""
    logits = {}
    for expert_dtype in (None, torch.bfloat16):
        base = make_tiny()
        router = inject_mole(base, tiny_bank, gate_cfg(), implementation=implementation, expert_dtype=expert_dtype)
        randomise_gates(router)
        base.model.train()
        layers = [m for m in base.model.modules() if hasattr(m, "lora_A")]
        assert {m.lora_A.dtype for m in layers} == {expert_dtype or torch.float32}
        out = base.model(**batch(base.tokenizer))
        out.loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in router.parameters() if p.requires_grad)
        logits[expert_dtype] = out.logits.detach()
    assert logits[torch.bfloat16].dtype == torch.float32
    relative = (logits[torch.bfloat16] - logits[None]).norm() / logits[None].norm()
    assert 0 < relative < 1e-2  # bf16 rounding of the experts, nothing more


def _autocast_run(tiny_bank, implementation, device, autocast):
    torch.manual_seed(0)
    base = make_tiny()
    router = inject_mole(base, tiny_bank, gate_cfg(), implementation=implementation)
    randomise_gates(router)
    base.model.to(device).train()
    inputs = {k: v.to(device) for k, v in batch(base.tokenizer).items()}
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
        out = base.model(**inputs)
        loss = out.loss + router.balance_loss(router.pop_records())
    loss.backward()
    grads = torch.cat([p.grad.float().flatten() for p in router.parameters() if p.grad is not None])
    return out.logits.detach().float().cpu(), grads.cpu()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_gpu)])
@pytest.mark.parametrize("implementation", ["rank_space", "rank_space_saved"])
def test_bf16_autocast_agrees_with_the_float32_reference(tiny_bank, implementation, device):
    """Under bf16 autocast (GPU training) the rank-space forms are as close to the float32 stacked reference
    as the stacked form itself is under bf16 autocast (the whole model runs in bf16: a few % on this model)."""
    logits_ref, grads_ref = _autocast_run(tiny_bank, "stacked", device, autocast=False)
    logits_bf16, grads_bf16 = _autocast_run(tiny_bank, "stacked", device, autocast=True)
    logits, grads = _autocast_run(tiny_bank, implementation, device, autocast=True)

    def error(value, reference):
        return float((value - reference).norm() / reference.norm())

    assert error(logits, logits_ref) <= 1.5 * error(logits_bf16, logits_ref) + 1e-3
    assert error(grads, grads_ref) <= 1.5 * error(grads_bf16, grads_ref) + 1e-3
    assert error(logits, logits_ref) < 0.05 and error(grads, grads_ref) < 0.1


@pytest.mark.parametrize("grad", [True, False], ids=["training", "inference"])
def test_forward_computes_u_once_per_linear(tiny_bank, monkeypatch, grad):
    """The gate hands its u = A x to the mix of the same linear: one A x per adapted linear in forward."""
    base = make_tiny()
    inject_mole(base, tiny_bank, gate_cfg(granularity="layer"))
    calls = []
    original = rank_space.rank_inputs
    monkeypatch.setattr(rank_space, "rank_inputs", lambda hidden, lora_A: calls.append(1) or original(hidden, lora_A))
    with torch.set_grad_enabled(grad):
        base.model(**batch(base.tokenizer))
    assert len(calls) == len(tiny_bank.targets) == 12
