"""MoLE: learned gates over frozen LoRA experts (Wu, Huang & Wei, ICLR 2024).

Each adapted linear becomes a MoLELinear; gates are created per scope of the chosen granularity
(`matrix` / `layer` / `block` / `network`, see `ModelFamily.scope`) and only they train (mole_exp/mole/inject.py).
Loss: task loss + alpha * L_balance (Eq. 16), with L_balance from the gate weights of the pass (Eq. 14-15).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from mole_exp.base.models import DTYPES, BaseModel
from mole_exp.composers.base import Composer, register_composer
from mole_exp.experts.bank import ExpertBank
from mole_exp.mole.inject import check_implementation, gate_settings, inject_mole, remove
from mole_exp.mole.routing import Router


@register_composer("mole")
class MoLEComposer(Composer):
    trains = True
    takes_gate = True
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
        if expert_dtype is not None and expert_dtype not in DTYPES:
            raise ValueError(f"composer.expert_dtype={expert_dtype!r} is not one of {[None, *sorted(DTYPES)]} (null: the model's dtype)")
        self.expert_dtype = expert_dtype
        if float(alpha) < 0:
            raise ValueError(f"composer.alpha={alpha} must be >= 0 (the weight of L_balance)")
        self.gate_cfg = dict(gate)  # as configured (metrics.json's summary)
        self.gate = gate_settings(self.gate_cfg)  # checked here, before any model loads; defaults filled in
        self.reading = {key: self.gate[key] for key in ("expert_output", "normalization")}
        self.alpha = float(alpha)
        self.implementation = check_implementation(implementation)
        self.router: Router | None = None

    def compose(self, base: BaseModel, bank: ExpertBank) -> list[nn.Parameter]:
        self.base, self.bank = base, bank
        self._resolve_mask(bank)
        expert_dtype = DTYPES[self.expert_dtype] if self.expert_dtype else None
        self.router = inject_mole(base, bank, self.gate, self.implementation, expert_dtype)
        return [p for p in self.router.parameters() if p.requires_grad]

    def trainable_module(self) -> nn.Module:
        return self.router

    def release(self) -> None:
        if self.router is not None:
            remove(self.base, self.router)
            self.router = None

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
