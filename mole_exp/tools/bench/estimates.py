"""Rough per-step costs of a variant (FLOPs, traffic, saved bytes), used only to skip configurations that would
obviously not fit or take far too long; never reported as measurements."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from mole_exp.base.models import BaseModel
from mole_exp.tools.bench.variants import MOLE_VARIANTS


def linear_inventory(base: BaseModel, batch: int, source_len: int, target_len: int, granularity: str) -> list[dict[str, Any]]:
    """Every block linear: dims, the tokens it reads per batch, and whether it computes its gate."""
    items = []
    for name, module in base.model.named_modules():
        if isinstance(module, nn.Linear) and base.family.module_pattern.match(name):
            position = base.family.position(name)
            if base.family.causal:  # one sequence: prompt and target
                tokens = batch * (source_len + target_len)
            else:
                tokens = batch * (target_len if position.stream == "decoder" else source_len)
            items.append(
                dict(name=name, projection=position.projection, d_in=module.in_features, d_out=module.out_features,
                     tokens=tokens, scope=base.family.scope(name, granularity))
            )
    return items


def estimate_costs(
    variant: str,
    inventory: list[dict[str, Any]],
    projections: tuple[str, ...],
    num_experts: int,
    rank: int,
    input_form: str,
    act_bytes: int,
    weight_bytes: int,
    reading: str = "delta/per_expert",
) -> dict[str, float]:
    """Rough per-step cost of a variant beyond the base: FLOPs, bytes moved by element-wise ops, op count,
    extra bytes held (experts, gates and optimizer state, saved activations). Only used to skip configurations
    that would obviously not fit or take far too long; never reported as a measurement."""
    n_e, r = num_experts, rank
    flops = traffic = ops = saved = static = 0.0
    seen_scopes: set[str] = set()
    for item in inventory:
        if item["projection"] not in projections:
            continue
        n, d_in, d_out = item["tokens"], item["d_in"], item["d_out"]
        computes_gate = item["scope"] not in seen_scopes
        seen_scopes.add(item["scope"])
        static += n_e * r * (d_in + d_out) * weight_bytes
        low_rank = 4.0 * n * n_e * r * (d_in + d_out)  # forward + input-gradient backward
        # saved-activation factors roughly calibrated on the tiny model (CPU, fp32): within ~30%
        if variant == "rank_space":
            flops += low_rank + 2.0 * n * n_e * r * d_in  # u recomputed in backward
            saved += n * d_in * act_bytes
            ops += 14
        elif variant == "rank_space_saved":
            flops += low_rank
            saved += n * n_e * r * (act_bytes + 4)
            ops += 12
        elif variant == "stacked":
            flops += low_rank + 6.0 * n * n_e * d_out
            traffic += 8.0 * n * n_e * d_out * act_bytes
            saved += n * n_e * d_out * act_bytes
            ops += 12
        elif variant == "loop":
            flops += low_rank + 6.0 * n * n_e * d_out
            traffic += 6.0 * n * n_e * d_out * act_bytes
            saved += 1.5 * n * n_e * (d_out + r) * act_bytes
            ops += 14 * n_e
        elif variant == "peft":
            flops += low_rank
            traffic += 4.0 * n * n_e * d_out * act_bytes
            saved += 2.0 * n * n_e * r * act_bytes
            ops += 10 * n_e
        if variant in MOLE_VARIANTS and computes_gate:
            feature = d_in if input_form == "hidden" else d_out
            gate_params = {"concat": n_e * feature * n_e, "per_expert": n_e * feature, "hidden": feature * n_e}[input_form]
            static += 16.0 * gate_params  # fp32 parameter + gradient + two AdamW moments
            ops += 40
            if variant == "stacked" and input_form != "hidden":
                traffic += 10.0 * n * n_e * d_out * 4
                saved += 2.0 * n * n_e * d_out * 4
            elif input_form == "concat":  # rank-space gate: one (B*T, N*r) @ (N*r, N) product
                flops += 6.0 * n * n_e * r * n_e
                traffic += 6.0 * n * n_e * r * 4
                if variant != "rank_space":  # rank_space recomputes the gate's intermediates in backward
                    saved += 3.0 * n * n_e * r * 4
            if input_form != "hidden" and reading.startswith("full/"):  # the gate reads W x: B^T y, y . e
                flops += 6.0 * n * n_e * r * d_out + 6.0 * n * d_out * (n_e * n_e if reading == "full/per_expert" and input_form == "concat" else n_e)
                saved += n * d_out * act_bytes
    return {"flops": flops, "traffic_bytes": traffic, "ops": ops, "saved_bytes": saved, "static_bytes": static}


def base_flops(inventory: list[dict[str, Any]], d_model: int, vocab: int, batch: int, target_len: int) -> float:
    """`target_len`: the tokens the head scores per example."""
    linear = sum(4.0 * item["tokens"] * item["d_in"] * item["d_out"] for item in inventory)
    return linear + 4.0 * batch * target_len * d_model * vocab
