"""StaticComposer: the shared part of composers that merge fixed expert weights into the base.

NLA, LoRAHub, PEMs and the single-expert composer all end with plain weights W0 + dW in the base
model (no extra layers at run time), so they can be exported as an ordinary transformers checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mole_exp.composers.base import Composer
from mole_exp.composers.merge import InPlaceMerge, export_merged, weighted_deltas
from mole_exp.experts import ExpertBank
from mole_exp.models import BaseModel


def bank_device(bank: ExpertBank) -> torch.device:
    return next(iter(bank.targets.values())).lora_A.device


class StaticComposer(Composer):
    def __init__(self, name: str | None = None, mask: list[str | int] | None = None):
        super().__init__(name=name, mask=mask)
        self.merger: InPlaceMerge | None = None
        self._device_bank: ExpertBank | None = None

    def attach(self, base: BaseModel, bank: ExpertBank) -> None:
        """Remember the model and experts and snapshot the original weights of the adapted linears."""
        if self.merger is not None:
            raise ValueError(f"composer {self.name!r} was already composed; build a new one for another base")
        self.base, self.bank = base, bank
        self.merger = InPlaceMerge(base.model, list(bank.targets))

    def compose(self, base: BaseModel, bank: ExpertBank) -> list[nn.Parameter]:
        self.attach(base, bank)
        return []

    def experts_on_model_device(self) -> ExpertBank:
        """The bank on the device the model now lives on (moved once per device)."""
        device = next(self.base.model.parameters()).device
        if self._device_bank is None or bank_device(self._device_bank) != device:
            self._device_bank = self.bank if bank_device(self.bank) == device else self.bank.to(device)
        return self._device_bank

    def merge_weights(
        self, weights: list[float] | torch.Tensor, merge: str, factors_form: str = "lorahub", b_signs: torch.Tensor | None = None
    ) -> None:
        """Write W0 + dW(weights) into the base (replacing any earlier merge)."""
        self.merger.apply(weighted_deltas(self.experts_on_model_device(), weights, merge, factors_form, b_signs))

    def exportable(self) -> bool:
        return self.merger is not None

    def export(self, path: str) -> str:
        if not self.exportable():
            raise ValueError(f"composer {self.name!r} has no fixed merged model to export (compose it first)")
        return export_merged(self.base, path)
