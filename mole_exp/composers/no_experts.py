"""The base alone: the frozen model with no expert applied (a control; `composer=base`).

The library is loaded as for every run (so the run records which library it was compared with) but not
used; nothing is fitted. `export_dir=` saves the base unchanged.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from mole_exp.base.models import BaseModel
from mole_exp.composers.base import Composer, register_composer
from mole_exp.composers.merge import export_merged
from mole_exp.experts.bank import ExpertBank


@register_composer("base")
class BaseOnlyComposer(Composer):
    def __init__(self, name: str | None = None):
        super().__init__(name=name)

    def compose(self, base: BaseModel, bank: ExpertBank) -> list[nn.Parameter]:
        self.base, self.bank = base, bank
        return []

    def export(self, path: str) -> str:
        return export_merged(self.base, path)

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "experts": [], "mask": [], "fit_per": None}
