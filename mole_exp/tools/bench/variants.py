"""The variants compared: the frozen base with one trainable input scale (the floor), MoLE in its three
implementations and a per-expert Python loop, and PEFT with every adapter active; their fp32 agreement check."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mole_exp.base.models import BaseModel
from mole_exp.experts.bank import ExpertBank, TargetExperts
from mole_exp.mole import rank_space
from mole_exp.mole.inject import inject_mole, remove
from mole_exp.mole.interface import GateInputs
from mole_exp.mole.linear import MoLELinear

VARIANTS = ("rank_space", "rank_space_saved", "stacked", "loop", "peft")
MOLE_VARIANTS = ("rank_space", "rank_space_saved", "stacked", "loop")
GENERATION_VARIANTS = ("rank_space", "peft")


class ScaledEmbedding(nn.Module):
    """The input embedding (an encoder-decoder's encoder's) times one trainable scalar (the floor's only trainable parameter)."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.embedding = embedding
        self.scale = nn.Parameter(torch.ones((), device=embedding.weight.device, dtype=torch.float32))

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.embedding(input_ids)
        return embeds * self.scale.to(embeds.dtype)


def embedding_owner(model: nn.Module) -> nn.Module:
    """The module holding the input embedding the floor scales: an encoder-decoder's encoder (so the decoder's
    embeddings are untouched), a causal LM's decoder stack."""
    return model.get_encoder() if model.config.is_encoder_decoder else model.get_decoder()


def input_embeddings(model: nn.Module) -> nn.Module:
    return embedding_owner(model).embed_tokens


def attach_input_scale(model: nn.Module) -> nn.Parameter:
    owner = embedding_owner(model)
    scaled = ScaledEmbedding(owner.embed_tokens)
    owner.embed_tokens = scaled
    return scaled.scale


def detach_input_scale(model: nn.Module) -> None:
    owner = embedding_owner(model)
    if isinstance(owner.embed_tokens, ScaledEmbedding):
        owner.embed_tokens = owner.embed_tokens.embedding


class LoopMoLELinear(MoLELinear):
    """Benchmark-only MoLELinear: each expert's delta s_i B_i A_i x is computed in a Python loop and weighted
    by its gate in output space (the naive implementation). Gates are the rank-space ones, so outputs equal
    MoLELinear's."""

    @classmethod
    def from_linear(cls, linear: MoLELinear) -> LoopMoLELinear:
        experts = TargetExperts(linear.lora_A, linear.lora_B, linear.scaling)
        loop = cls(linear.base_layer, experts, linear.module_name, linear.scope, linear.stream, linear.lora_A.dtype)
        loop.bind(linear.router)
        return loop

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        base_output = self.base_layer(hidden)
        dtype = rank_space.compute_dtype(hidden)  # the experts may be held in another dtype (--expert-dtype)
        lora_A, lora_B = self.lora_A.to(dtype), self.lora_B.to(dtype)
        rank_parts = [F.linear(hidden, lora_A[i]) for i in range(self.num_experts)]  # u_i = A_i x, (B, T, r)
        gate_probs = self.router.gate_weights(self, GateInputs(hidden, base_output, torch.stack(rank_parts, dim=2))).weights  # (B, T or 1, N)
        mixed = None
        for i, rank_input in enumerate(rank_parts):
            delta = F.linear(rank_input, lora_B[i]) * self.scaling[i]  # s_i B_i A_i x, (B, T, d_out)
            term = delta * gate_probs[..., i : i + 1].to(delta.dtype)
            mixed = term if mixed is None else mixed + term
        return base_output + mixed.to(base_output.dtype)


def reading_cfg(reading: str) -> dict[str, str]:
    """"full/joint" -> {"expert_output": "full", "normalization": "joint"} (the gate config keys)."""
    expert_output, _, normalization = reading.partition("/")
    return {"expert_output": expert_output, "normalization": normalization}


def variant_runs(variants: list[str], readings: list[str]) -> list[tuple[str, str, str]]:
    """(record name, variant, gate reading) in run order: each MoLE variant once per reading, side by side;
    the first reading keeps the plain variant name, the others are named `<variant> [<reading>]`."""
    runs = []
    for variant in variants:
        for index, reading in enumerate(readings if variant in MOLE_VARIANTS else readings[:1]):
            runs.append((variant if index == 0 else f"{variant} [{reading}]", variant, reading))
    return runs


def inject_variant(base: BaseModel, bank: ExpertBank, gate_cfg: dict[str, Any], variant: str, seed: int):
    torch.manual_seed(seed)  # same gate initialisation for every variant
    implementation = variant if variant in ("stacked", "rank_space_saved") else "rank_space"
    expert_dtype = next(iter(bank.targets.values())).lora_A.dtype  # as the bank holds them (--expert-dtype)
    router = inject_mole(base, bank, gate_cfg, implementation=implementation, expert_dtype=expert_dtype)
    if variant == "loop":
        for name in bank.targets:
            parent_name, _, leaf = name.rpartition(".")
            parent = base.model.get_submodule(parent_name)
            setattr(parent, leaf, LoopMoLELinear.from_linear(getattr(parent, leaf)))
    return router


def remove_mole(base: BaseModel) -> None:
    """Take MoLE out of the base again (the mechanism's own inverse of its injection), if it went in."""
    router = getattr(base.model, "mole_gate", None)
    if router is not None:
        remove(base, router)


def inject_peft(base: BaseModel, bank: ExpertBank, rank: int):
    """PEFT LoraModel with the bank's N experts as N adapters, all active, all frozen.

    Adapters are created on the meta device and then given the bank's tensors (views: no copy); adapter i's
    scaling is s_i / N, so the sum of the active adapters equals MoLE with uniform gates.
    """
    from peft import LoraConfig, get_peft_model

    names = list(bank.names)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(bank.targets), lora_dropout=0.0, bias="none")
    peft_model = get_peft_model(base.model, config, adapter_name=names[0], low_cpu_mem_usage=True)
    for name in names[1:]:
        peft_model.add_adapter(name, config, low_cpu_mem_usage=True)
    inner = peft_model.base_model.model
    n = len(names)
    for module_name, experts in bank.targets.items():
        layer = inner.get_submodule(module_name)
        scalings = experts.scaling.float().tolist()
        for i, adapter in enumerate(names):
            layer.lora_A[adapter].weight = nn.Parameter(experts.lora_A[i], requires_grad=False)
            layer.lora_B[adapter].weight = nn.Parameter(experts.lora_B[i], requires_grad=False)
            layer.scaling[adapter] = scalings[i] / n
    peft_model.base_model.set_adapter(names, inference_mode=True)  # all N adapters active at once
    meta = [k for k, p in peft_model.named_parameters() if p.is_meta]
    if meta:
        raise RuntimeError(f"PEFT adapters left on the meta device: {meta[:3]}")
    trainable = [k for k, p in peft_model.named_parameters() if p.requires_grad]
    if trainable:
        raise RuntimeError(f"PEFT adapters should be frozen, found trainable {trainable[:3]}")
    return peft_model


def remove_peft(base: BaseModel, peft_model) -> None:
    model = peft_model.base_model.unload()
    if model is not base.model:  # pragma: no cover - unload returns the wrapped model itself
        raise RuntimeError("PEFT unload returned a different model")
    for attribute in ("peft_config", "_hf_peft_config_loaded"):
        if attribute in model.__dict__:
            delattr(model, attribute)


def reference_outputs(model, batch, router=None) -> dict[str, torch.Tensor]:
    """fp32 logits (and gate weights) on the check slice, eval mode, no grad."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if router is not None:
                with router.collect():
                    logits = model(**batch).logits.float()
                    records = router.pop_records()
                gates = torch.cat([record.probs.float().reshape(-1) for record in records])
                return {"logits": logits, "gates": gates}
            return {"logits": model(**batch).logits.float()}
    finally:
        model.train(was_training)


def compare(a: dict[str, torch.Tensor] | None, b: dict[str, torch.Tensor] | None) -> dict[str, float] | None:
    if a is None or b is None:
        return None
    result = {}
    for key in ("logits", "gates"):
        if key in a and key in b:
            diff = (a[key] - b[key]).abs().max().item()
            scale = b[key].abs().max().item()
            result[f"{key}_max_abs_diff"] = diff
            result[f"{key}_max_rel_diff"] = diff / scale if scale > 0 else diff
    return result


def zero_gates(router) -> None:
    with torch.no_grad():
        for gate in router.gates.values():
            gate.projection.zero_()
