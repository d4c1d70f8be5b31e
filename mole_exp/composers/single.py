"""Single expert: W' = W + s_k B_k A_k for one chosen expert k (paper Table 4's per-dataset LoRA).

`expert: <name or index>` merges that expert once. `expert: matched` merges, before each evaluated
dataset, the expert trained on it (its library manifest entry's `task`, or `tasks`; LoRAHub modules: the
packaged map, mole_exp/experts/catalogue.py), restoring the base first, in place, so each dataset is
evaluated with its own LoRA.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from mole_exp.base.models import BaseModel
from mole_exp.composers.base import register_composer
from mole_exp.composers.static import StaticComposer
from mole_exp.experts.bank import ExpertBank

MATCHED = "matched"


def one_hot(index: int, num_experts: int) -> list[float]:
    return [1.0 if i == index else 0.0 for i in range(num_experts)]


@register_composer("single")
class SingleComposer(StaticComposer):
    def __init__(self, expert: str | int | None = None, fit_per: str | None = None, name: str | None = None):
        super().__init__(name=name, fit_per=fit_per)
        if expert is None or isinstance(expert, bool) or not isinstance(expert, (str, int)) or expert == "":
            raise ValueError(f"composer.expert={expert!r} must be an expert name, an index, or {MATCHED!r}")
        self.expert = expert
        self.task_to_index: dict[str, int] = {}
        self.current: int | None = None
        self.applied: dict[str, str] = {}  # dataset -> expert name (matched mode)

    @property
    def matched(self) -> bool:
        return self.expert == MATCHED

    def compose(self, base: BaseModel, bank: ExpertBank) -> list[nn.Parameter]:
        if self.matched:
            for index, entry in enumerate(bank.manifest_entries or []):
                for task in entry.get("tasks") or ([entry["task"]] if entry.get("task") else []):
                    if task in self.task_to_index:
                        other = bank.names[self.task_to_index[task]]
                        raise ValueError(f"composer.expert=matched: experts {other!r} and {bank.names[index]!r} both have task {task!r}")
                    self.task_to_index[task] = index
            if not self.task_to_index:
                raise ValueError(
                    "composer.expert=matched needs a library manifest whose entries name their `task`; "
                    f"none of the composed experts {bank.names} has one"
                )
            self.attach(base, bank)
            return []
        index = bank.indices([self.expert], "composer.expert")[0]
        self.attach(base, bank)
        self._apply(index)
        return []

    def _apply(self, index: int) -> None:
        if self.current == index:
            return
        self.merge_weights(one_hot(index, len(self.bank)), "exact")  # replaces the previous expert in place
        self.current = index

    def before_dataset(self, dataset: str) -> None:
        if not self.matched:
            return
        if dataset not in self.task_to_index:
            raise ValueError(
                f"composer.expert=matched: no composed expert was trained on dataset {dataset!r}; "
                f"the experts' tasks are {sorted(self.task_to_index)}"
            )
        self._apply(self.task_to_index[dataset])
        self.applied[dataset] = self.bank.names[self.current]

    def exportable(self) -> bool:
        return super().exportable() and not self.matched

    def export(self, path: str) -> str:
        if self.matched:
            raise ValueError("composer.expert=matched changes the expert per dataset; export needs a fixed composer.expert=<name>")
        return super().export(path)

    def summary(self) -> dict[str, Any]:
        chosen = self.applied if self.matched else (self.bank.names[self.current] if self.bank and self.current is not None else None)
        return {**super().summary(), "expert": self.expert, "applied": chosen}
