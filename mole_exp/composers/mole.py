"""MoLE: learned gates over frozen LoRA experts (Wu, Huang & Wei, ICLR 2024).

Each adapted linear becomes a MoLELinear; gates are created per scope of the chosen granularity
(`matrix` / `layer` / `block` / `network`, see `ModelFamily.scope`) and only they train.
Loss: task loss + alpha * L_balance (Eq. 16), with L_balance from the gate weights of the pass (Eq. 14-15).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from mole_exp.base.family import GRANULARITIES
from mole_exp.base.models import DTYPES, BaseModel
from mole_exp.composers.base import Composer, register_composer
from mole_exp.experts.bank import ExpertBank
from mole_exp.mole.gates import DEFAULT_READING, IMPLEMENTATIONS, Gate, check_reading
from mole_exp.mole.layers import MoLELinear
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
    granularity = gate_cfg.get("granularity", "layer")
    if granularity not in GRANULARITIES:
        raise ValueError(f"gate.granularity={granularity!r} is not one of {list(GRANULARITIES)}")
    model, family = base.model, base.family
    if hasattr(model, "mole_gate"):
        raise ValueError("this model already has MoLE gates; compose a fresh base")
    input_form = gate_cfg.get("input_form", "concat")
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
            scope=gate_cfg.get("scope", "sequence"),
            temperature=dict(gate_cfg.get("temperature") or {}),
            init_std=float(gate_cfg.get("init_std", 0.0)),
            **gate_reading(gate_cfg),
        )
        gate_inputs[scope] = name
    router = Router(gates, gate_inputs, num_experts=len(bank), implementation=implementation)
    return attach_router(base, bank, module_names, granularity, router, "mole_gate", expert_dtype)


def gate_reading(gate_cfg: dict[str, Any]) -> dict[str, str]:
    """gate.expert_output and gate.normalization (what the gate reads, Eqs. 8-9), defaults filled in, checked
    against gate.input_form."""
    reading = {key: gate_cfg.get(key) or default for key, default in DEFAULT_READING.items()}
    check_reading(gate_cfg.get("input_form", "concat"), **reading)
    return reading


def attach_router(
    base: BaseModel,
    bank: ExpertBank,
    module_names: list[str],
    granularity: str,
    router: Router,
    attribute: str,
    expert_dtype: torch.dtype | None = None,
) -> Router:
    """Wrap each named linear in a MoLELinear (its experts, its gate scope, its token stream) and attach
    `router` as `model.<attribute>`, the prefix of every trainable parameter."""
    model, family = base.model, base.family
    for name in module_names:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        stream = family.position(name).stream
        layer = MoLELinear(getattr(parent, leaf), bank.targets[name], name, family.scope(name, granularity), stream, expert_dtype)
        setattr(parent, leaf, layer)
    router = router.to(next(model.parameters()).device)
    model.add_module(attribute, router)
    router.attach(model, family.stack_modules(model))
    return router


def detach_router(base: BaseModel, attribute: str) -> None:
    """Undo `attach_router`: every MoLELinear back to its base linear, the router's hooks and attribute removed."""
    model = base.model
    router = getattr(model, attribute)
    router.detach()
    for name, layer in list(model.named_modules()):
        if isinstance(layer, MoLELinear):
            parent_name, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent_name), leaf, layer.base_layer)
    delattr(model, attribute)


@register_composer("mole")
class MoLEComposer(Composer):
    trains = True
    def __init__(
        self,
        gate: dict[str, Any],
        alpha: float = 0.5,
        mask: list[str | int] | None = None,
        implementation: str = "rank_space",
        expert_dtype: str | None = None,
        fit_per: str = "suite",
        name: str | None = None,
    ):
        super().__init__(name=name, mask=mask, fit_per=fit_per)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"composer.implementation={implementation!r} is not one of {list(IMPLEMENTATIONS)}")
        if expert_dtype is not None and expert_dtype not in DTYPES:
            raise ValueError(f"composer.expert_dtype={expert_dtype!r} is not one of {[None, *sorted(DTYPES)]} (null: the model's dtype)")
        self.expert_dtype = expert_dtype
        if float(alpha) < 0:
            raise ValueError(f"composer.alpha={alpha} must be >= 0 (the weight of L_balance)")
        self.gate_cfg = dict(gate)
        self.reading = gate_reading(self.gate_cfg)  # checked here, before any model loads
        self.alpha = float(alpha)
        self.implementation = implementation
        self.router: Router | None = None

    def compose(self, base: BaseModel, bank: ExpertBank) -> list[nn.Parameter]:
        self.base, self.bank = base, bank
        self._resolve_mask(bank)
        expert_dtype = DTYPES[self.expert_dtype] if self.expert_dtype else None
        self.router = inject_mole(base, bank, self.gate_cfg, self.implementation, expert_dtype)
        return [p for p in self.router.parameters() if p.requires_grad]

    def trainable_module(self) -> nn.Module:
        return self.router

    def release(self) -> None:
        if self.router is not None:
            detach_router(self.base, "mole_gate")

    def auxiliary_losses(self) -> dict[str, tuple[float, torch.Tensor]]:
        records = self.router.records
        if not records:
            return {}
        self._last_records = self.router.pop_records()
        return {"balance_loss": (self.alpha, self.router.balance_loss(self._last_records))}

    def training_statistics(self) -> dict[str, Any]:
        records = getattr(self, "_last_records", None)
        if not records:
            return {}
        stats = Router.statistics(records)
        temperatures = torch.stack([self.router.gate(s).temperature().detach() for s in stats])
        return {
            "gate_entropy": sum(s["entropy"] for s in stats.values()) / len(stats),
            "temperature": float(temperatures.mean()),
            "gates": stats,
        }

    def prepare_inference(self) -> None:
        self.router.set_expert_mask(self.keep)
        self.router.pop_records()

    def summary(self) -> dict[str, Any]:
        return {
            **super().summary(),
            "granularity": self.gate_cfg.get("granularity"),
            "input_form": self.gate_cfg.get("input_form"),
            "scope": self.gate_cfg.get("scope"),
            **self.reading,  # expert_output, normalization
            "gate": self.gate_cfg,
            "num_gates": len(self.router.gates) if self.router else 0,
            "alpha": self.alpha,
            "implementation": self.implementation,
            "expert_dtype": self.expert_dtype,
            "temperatures": {s: float(self.router.gate(s).temperature().detach()) for s in self.router.scopes} if self.router else {},
        }
