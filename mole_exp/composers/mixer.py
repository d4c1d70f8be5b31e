"""Mixer: token-level top-k routing over the frozen experts in the attention projections (beyond the paper).

In the spirit of LoRA-Mixer (arXiv 2507.00029; frozen LoRAs routed per token in the attention's
projections, hard-soft top-k routing, a specialization + balance loss) and X-LoRA (token-level mixing of
frozen LoRAs). Only the routers train, like MoLE's gates; the base and the experts stay frozen.

    every adapted attention linear -> MoLELinear (h = W x + sum_i g_i(x) s_i B_i A_i x)
    a router per scope (`granularity`, default one per attention sub-layer): g = top-k(softmax(LN(x) W_r / tau))
    loss = L_task + balance_weight * L_balance + specialization_weight * L_specialization

L_balance is the Switch-Transformer load-balance term N sum_i f_i P_i and L_specialization the mean
per-token routing entropy / log N (see composers/token_router.py). LoRA-Mixer's exact "Routing
Specialization Loss" is not reproduced; this is its described shape (global balance + entropy shaping).
Defaults: balance weight 0.01 (Switch Transformer's), specialization weight 0.01, router init N(0, 0.02^2)
(random, so that top-k ties break; drawn from `seed`, the run's, whatever the process drew before), fixed
tau = 1. Every position of a stream without a mask counts in the losses; the pads of a stream with one (a decoder-only
model's attention_mask, a bidirectional stream's) do not (mole/routing.py).

Hard top-k routing makes the mixer the composer most sensitive to floating-point rounding: a change of
order 1e-7 in a router logit can flip which experts a token gets, and the training then diverges. The same
code, config and seed give bit-identical routers and metrics on CPU (tested); a change of code that only
reorders floating-point sums (e.g. a new backward of the rank-space mix) can change the mixer's scores
where MoLE's soft gates absorb it.

Trainable parameters: `mixer_router.gates.<scope>.projection` (d_in x N per router).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn

from mole_exp.base.family import GRANULARITIES
from mole_exp.base.models import BaseModel
from mole_exp.composers.base import Composer, register_composer
from mole_exp.experts.bank import ExpertBank
from mole_exp.mole.gates import Gate
from mole_exp.mole.inject import attach_router, remove
from mole_exp.mole.token_router import TopKRouter, balance_loss, specialization_loss

log = logging.getLogger(__name__)

ROUTER_ATTRIBUTE = "mixer_router"
MODULE_SETS = ("attention", "all")


def inject_mixer(
    base: BaseModel, bank: ExpertBank, modules: str, granularity: str, top_k: int, init_std: float, temperature: dict[str, Any]
) -> TopKRouter:
    """Replace the routed linears by MoLELinear layers bound to one TopKRouter attached as `mixer_router`."""
    model, family = base.model, base.family
    if hasattr(model, ROUTER_ATTRIBUTE) or hasattr(model, "mole_gate"):
        raise ValueError("this model already has routers or gates; compose a fresh base")
    routed = [n for n in bank.targets if modules == "all" or family.position(n).projection in family.attention_projections]
    if not routed:
        raise ValueError(f"composer.modules={modules!r}: the experts adapt no attention projection (they adapt {sorted(bank.targets)[:4]} ...)")
    skipped = sorted(set(bank.targets) - set(routed))
    if skipped:
        log.warning("mixer routes only attention projections; %d adapted linears keep no expert: %s", len(skipped), skipped[:4])
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    routed.sort(key=order.__getitem__)  # execution order for T5
    gates: dict[str, Gate] = {}
    gate_inputs: dict[str, str] = {}
    for name in routed:
        scope = family.scope(name, granularity)
        if scope not in gates:
            in_features = model.get_submodule(name).in_features
            gates[scope] = Gate(len(bank), in_features, input_form="hidden", scope="token", temperature=temperature, init_std=init_std)
            gate_inputs[scope] = name
    router = TopKRouter(gates, gate_inputs, num_experts=len(bank), top_k=top_k)
    return attach_router(base, bank, routed, granularity, router, ROUTER_ATTRIBUTE)


@register_composer("mixer")
class MixerComposer(Composer):
    trains = True

    def __init__(
        self,
        top_k: int = 2,
        granularity: str = "layer",
        modules: str = "attention",
        balance_weight: float = 0.01,
        specialization_weight: float = 0.01,
        init_std: float = 0.02,
        temperature: dict[str, Any] | None = None,
        mask: list[str | int] | None = None,
        seed: int = 0,
        fit_per: str = "suite",
        name: str | None = None,
    ):
        super().__init__(name=name, mask=mask, fit_per=fit_per)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"composer.seed={seed!r} must be an integer (the routers' initialisation)")
        self.seed = seed
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"composer.top_k={top_k!r} must be a positive integer (experts per token)")
        if granularity not in GRANULARITIES:
            raise ValueError(f"composer.granularity={granularity!r} is not one of {list(GRANULARITIES)}")
        if modules not in MODULE_SETS:
            raise ValueError(f"composer.modules={modules!r} is not one of {list(MODULE_SETS)}")
        for key, value in (("balance_weight", balance_weight), ("specialization_weight", specialization_weight), ("init_std", init_std)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"composer.{key}={value!r} must be a number >= 0")
        self.top_k, self.granularity, self.modules = top_k, granularity, modules
        self.balance_weight = float(balance_weight)
        self.specialization_weight = float(specialization_weight)
        self.init_std = float(init_std)
        self.temperature = dict(temperature or {"init": 1.0, "learnable": False})
        self.router: TopKRouter | None = None
        self._last_records: list = []

    def compose(self, base: BaseModel, bank: ExpertBank) -> list[nn.Parameter]:
        if self.top_k > len(bank):
            raise ValueError(f"composer.top_k={self.top_k} but only {len(bank)} experts are composed (allowed 1..{len(bank)})")
        self.base, self.bank = base, bank
        self._resolve_mask(bank)
        with torch.random.fork_rng(devices=[]):  # the routers' initialisation depends on the seed alone
            torch.manual_seed(self.seed)
            self.router = inject_mixer(base, bank, self.modules, self.granularity, self.top_k, self.init_std, self.temperature)
        return [p for p in self.router.parameters() if p.requires_grad]

    def trainable_module(self) -> nn.Module:
        return self.router

    def release(self) -> None:
        if self.router is not None:
            remove(self.base, self.router)
            self.router = None

    def auxiliary_losses(self) -> dict[str, tuple[float, torch.Tensor]]:
        if not self.router.records:
            return {}
        self._last_records = self.router.pop_records()
        return {
            "balance_loss": (self.balance_weight, balance_loss(self._last_records, self.top_k)),
            "specialization_loss": (self.specialization_weight, specialization_loss(self._last_records)),
        }

    def training_statistics(self) -> dict[str, Any]:
        if not self._last_records:
            return {}
        stats = TopKRouter.token_statistics(self._last_records)
        return {"gate_entropy": sum(s["entropy"] for s in stats.values()) / len(stats), "gates": stats}

    def prepare_inference(self) -> None:
        self.router.set_expert_mask(self.keep)
        self.router.pop_records()

    def summary(self) -> dict[str, Any]:
        return {
            **super().summary(),
            "top_k": self.top_k,
            "granularity": self.granularity,
            "modules": self.modules,
            "balance_weight": self.balance_weight,
            "specialization_weight": self.specialization_weight,
            "init_std": self.init_std,
            "seed": self.seed,
            "temperature": self.temperature,
            "num_routers": len(self.router.gates) if self.router else 0,
        }
