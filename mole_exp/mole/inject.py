"""Injecting the mechanism into a frozen base and taking it out again.

`inject_mole` wraps every adapted linear of the base in a MoLELinear (its stacked experts, its gate scope, its
token stream) and attaches a Router holding one Gate per scope of the granularity (`ModelFamily.scope`) as
`model.mole_gate`; `attach_router` does the wrapping for any router (the mixer's token router too) and
registers the router's hooks. `remove` is their inverse: every base linear back in place, the router's hooks
removed, its attribute deleted and its per-forward state dropped, so that the model equals the base bit for bit
(state dict, module tree, hooks, outputs; tests/test_inject.py).
"""

from __future__ import annotations

from typing import Any

import torch

from mole_exp.base.family import check_granularity
from mole_exp.base.models import BaseModel
from mole_exp.experts.bank import ExpertBank
from mole_exp.mole.gates import DEFAULT_READING, IMPLEMENTATIONS, INPUT_FORMS, SCOPES, Gate, check_reading
from mole_exp.mole.linear import MoLELinear
from mole_exp.mole.routing import Router


def inject_mole(
    base: BaseModel,
    bank: ExpertBank,
    gate_cfg: dict[str, Any],
    implementation: str = "rank_space",
    expert_dtype: torch.dtype | None = None,
) -> Router:
    """Replace every adapted linear of `base.model` by a MoLELinear and attach the gates as `mole_gate`.

    `expert_dtype`: the dtype the frozen experts are held in (None: the model's). bfloat16 halves their
    memory (N=128 on FLAN-T5-large, q/v: 2.4 GB in float32) and loses nothing under bf16 autocast, whose
    matmuls round them to bf16 anyway."""
    check_implementation(implementation)
    gate = gate_settings(gate_cfg)
    granularity, input_form = gate["granularity"], gate["input_form"]
    model, family = base.model, base.family
    if hasattr(model, "mole_gate"):
        raise ValueError("this model already has MoLE gates; compose a fresh base")
    # order the adapted linears as the model runs them (named_modules order is execution order for T5)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    module_names = sorted(bank.targets, key=order.__getitem__)
    gates: dict[str, Gate] = {}
    gate_inputs: dict[str, str] = {}
    for name in module_names:
        scope = family.scope(name, granularity)
        if scope in gates:
            continue
        linear = model.get_submodule(name)
        feature_dim = linear.in_features if input_form == "hidden" else linear.out_features
        gates[scope] = Gate(
            num_experts=len(bank),
            feature_dim=feature_dim,
            input_form=input_form,
            scope=gate["scope"],
            temperature=gate["temperature"],
            init_std=gate["init_std"],
            expert_output=gate["expert_output"],
            normalization=gate["normalization"],
        )
        gate_inputs[scope] = name
    router = Router(gates, gate_inputs, num_experts=len(bank))
    return attach_router(base, bank, module_names, granularity, router, "mole_gate", expert_dtype, implementation)


def check_implementation(implementation: str) -> str:
    """`composer.implementation`: how a MoLELinear mixes its experts (the same math; mole/gates.py)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"composer.implementation={implementation!r} is not one of {list(IMPLEMENTATIONS)}")
    return implementation


def gate_settings(gate_cfg: dict[str, Any]) -> dict[str, Any]:
    """The gate config (`composer.gate`) with its defaults filled in, every value checked: the one check of
    each, made where the config enters the mechanism (the composer's constructor, before any model loads, or
    `inject_mole` called directly); the Gates and MoLELinears built from it take the values as given.
    granularity (ModelFamily.scope), input_form, scope, and what the gate reads (expert_output and
    normalization, Eqs. 8-9, checked against input_form)."""
    gate = {
        "granularity": gate_cfg.get("granularity", "layer"),
        "input_form": gate_cfg.get("input_form", "concat"),
        "scope": gate_cfg.get("scope", "sequence"),
        "temperature": dict(gate_cfg.get("temperature") or {}),
        "init_std": float(gate_cfg.get("init_std", 0.0)),
        **{key: gate_cfg.get(key) or default for key, default in DEFAULT_READING.items()},
    }
    check_granularity(gate["granularity"], "composer.gate.granularity")
    if gate["input_form"] not in INPUT_FORMS:
        raise ValueError(f"composer.gate.input_form={gate['input_form']!r} is not one of {list(INPUT_FORMS)}")
    if gate["scope"] not in SCOPES:
        raise ValueError(f"composer.gate.scope={gate['scope']!r} is not one of {list(SCOPES)}")
    check_reading(gate["input_form"], gate["expert_output"], gate["normalization"])
    return gate


def attach_router(
    base: BaseModel,
    bank: ExpertBank,
    module_names: list[str],
    granularity: str,
    router: Router,
    attribute: str,
    expert_dtype: torch.dtype | None = None,
    implementation: str = "rank_space",
) -> Router:
    """Wrap each named linear in a MoLELinear (its experts, its gate scope, its token stream) and attach
    `router` as `model.<attribute>`, the prefix of every trainable parameter."""
    model, family = base.model, base.family
    linears = []
    for name in module_names:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        stream = family.position(name).stream
        linears.append(
            MoLELinear(getattr(parent, leaf), bank.targets[name], name, family.scope(name, granularity), stream, expert_dtype, implementation)
        )
        setattr(parent, leaf, linears[-1])
    router = router.to(next(model.parameters()).device)
    model.add_module(attribute, router)
    for linear in linears:
        linear.bind(router)
    router.attach(model, family.streams)
    return router


def remove(base: BaseModel, router: Router) -> None:
    """The inverse of `inject_mole` / `attach_router`: every MoLELinear bound to `router` back to its base
    linear, the router's hooks removed, its attribute deleted, its per-forward state and records dropped."""
    model = base.model
    attribute = next((name for name, child in model.named_children() if child is router), None)
    if attribute is None:
        raise ValueError(f"{type(router).__name__} is not attached to this model (removed already, or injected into another)")
    router.detach()
    for name, module in list(model.named_modules()):
        if isinstance(module, MoLELinear) and module.router is router:
            parent_name, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent_name), leaf, module.base_layer)
    delattr(model, attribute)
