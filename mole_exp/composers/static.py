"""StaticComposer: the shared part of composers that merge fixed expert weights into the base.

NLA, LoRAHub, PEMs and the single-expert composer all end with plain weights W0 + dW in the base
model (no extra layers at run time), so they can be exported as an ordinary transformers checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mole_exp.base.models import BaseModel
from mole_exp.composers.base import Composer
from mole_exp.composers.merge import export_merged
from mole_exp.composers.stacked_merge import StackedMerge
from mole_exp.experts.bank import ExpertBank


class StaticComposer(Composer):
    def __init__(self, name: str | None = None, mask: list[str | int] | None = None, fit_per: str | None = None):
        super().__init__(name=name, mask=mask, fit_per=fit_per)
        self.merger: StackedMerge | None = None

    def attach(self, base: BaseModel, bank: ExpertBank) -> None:
        """Remember the model and experts and snapshot the original weights of the adapted linears."""
        if self.merger is not None:
            raise ValueError(f"composer {self.name!r} was already composed; build a new one for another base")
        self.base, self.bank = base, bank
        self.merger = StackedMerge(base.model, bank)

    def compose(self, base: BaseModel, bank: ExpertBank) -> list[nn.Parameter]:
        self.attach(base, bank)
        return []

    def merge_weights(
        self, weights: list[float] | torch.Tensor, merge: str, factors_form: str = "lorahub", b_signs: torch.Tensor | None = None
    ) -> None:
        """Write W0 + dW(weights) into the base (replacing any earlier merge; see composers/merge.py for the forms)."""
        self.merger.apply_weights(weights, merge, factors_form, b_signs)

    def release(self) -> None:
        """W = W0 again in every adapted linear (bit for bit)."""
        if self.merger is not None:
            self.merger.restore()

    def exportable(self) -> bool:
        return self.merger is not None

    def export(self, path: str) -> str:
        if not self.exportable():
            raise ValueError(f"composer {self.name!r} has no fixed merged model to export (compose it first)")
        return export_merged(self.base, path)
