"""The Composer interface: turn (frozen base, ExpertBank) into a composed model.

Every composition method is one module here, built from `conf/composer/<name>.yaml` and registered by
name. The pipeline treats them all alike:

    composer.check_base(base)                    # a family it cannot run on: refused before the experts load
    trainable = composer.compose(base, bank)     # inject gates or merge weights; return what trains
    composer.search(search_data)                 # gradient-free fitting (LoRAHub, PEMs); no-op otherwise
    ... Lightning fits `trainable` when it is not empty, adding composer.auxiliary_losses() ...
    composer.prepare_inference()                 # e.g. apply an expert mask
    ... the one evaluator generates with base.model ...
    composer.summary()                           # what to record in metrics.json
    composer.release()                           # undo compose (the next fit unit composes a fresh composer)

With `fit_per: dataset` the pipeline repeats this once per evaluated dataset (mole_exp/training/fit_units.py).

A composer never reads task configuration; the pipeline hands it only what it needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn

from mole_exp.base.models import BaseModel
from mole_exp.experts.bank import ExpertBank

COMPOSERS: dict[str, type[Composer]] = {}
FIT_PER = ("suite", "dataset")


def register_composer(name: str) -> Callable[[type[Composer]], type[Composer]]:
    def register(cls: type[Composer]) -> type[Composer]:
        if name in COMPOSERS:
            raise ValueError(f"composer {name!r} registered twice")
        cls.name = name
        COMPOSERS[name] = cls
        return cls

    return register


def check_gate_option(composer: type[Composer], gate: Any) -> None:
    """A gate option given to a composer that has no gate would silently do nothing: refused, naming the composers
    that take one."""
    if gate is not None and not composer.takes_gate:
        takers = sorted(name for name, cls in COMPOSERS.items() if cls.takes_gate)
        granularity = gate.get("granularity") if hasattr(gate, "get") else gate
        raise ValueError(f"composer={composer.name} has no gate, but a gate option was given (composer/gate={granularity}): "
                         f"only {takers} take a gate (composer=mole composer/gate=...)")


@dataclass
class SearchData:
    """What a gradient-free composer may use: the training mixture's examples and a loss to score them.

    `loss(examples)` is the mean token cross-entropy of the current model on (source, target) pairs
    (mole_exp/training/search_loss.py).
    """

    train_examples: list[dict[str, Any]]
    validation_examples: list[dict[str, Any]]
    loss: Callable[[list[dict[str, Any]]], float]
    score: Callable[[list[dict[str, Any]]], float] | None = None  # task metric (higher is better), if given
    seed: int = 0
    # prepare_loss(examples)() == loss(examples), with the examples tokenised once (for many candidates)
    prepare_loss: Callable[[list[dict[str, Any]]], Callable[[], float]] | None = None

    def prepared_loss(self, examples: list[dict[str, Any]]) -> Callable[[], float]:
        """A callable returning `loss(examples)` for the weights the model holds when it is called."""
        if self.prepare_loss is not None:
            return self.prepare_loss(list(examples))
        examples = list(examples)
        return lambda: self.loss(examples)


class Composer(ABC):
    name: ClassVar[str] = "?"
    trains: ClassVar[bool] = False  # fits parameters by gradient (the pipeline runs Lightning)
    searches: ClassVar[bool] = False  # fits by gradient-free search (the pipeline calls `search`)
    takes_gate: ClassVar[bool] = False  # reads a gate option (conf/composer/gate/, composer/gate=...)

    @property
    def needs_training_data(self) -> bool:
        return self.trains or self.searches

    @property
    def needs_search(self) -> bool:
        return self.searches

    def __init__(self, name: str | None = None, mask: list[str | int] | None = None, fit_per: str | None = None):
        if name is not None and name != self.name:
            raise ValueError(f"composer.name={name!r} but this is the {self.name!r} composer ({type(self).__name__})")
        if fit_per is not None and fit_per not in FIT_PER:
            raise ValueError(f"composer.fit_per={fit_per!r} is not one of {list(FIT_PER)} (or null for a composer that fits nothing)")
        self.fit_per = fit_per  # one composition per suite or per evaluated dataset (mole_exp/training/fit_units.py)
        self.mask_spec = list(mask) if mask else []
        self.base: BaseModel | None = None
        self.bank: ExpertBank | None = None
        self.keep: list[int] | None = None

    def check_base(self, base: BaseModel) -> None:
        """Refuse a base model this composer cannot run on (e.g. a family), before the experts load. Default: any."""

    @abstractmethod
    def compose(self, base: BaseModel, bank: ExpertBank) -> list[nn.Parameter]:
        """Modify `base.model` in place; return the parameters that gradient training should fit."""

    def check_fit_per(self) -> None:
        """fit_per means something only for a composer that fits weights or gates (raises otherwise)."""
        fitting = sorted(name for name, cls in COMPOSERS.items() if cls.trains or cls.searches)
        if self.fit_per is not None and not (self.trains or self.searches):
            raise ValueError(
                f"composer.fit_per={self.fit_per!r}: composer {self.name!r} fits nothing (its weights are fixed), so there is no "
                f"fit to make per suite or per dataset; fit_per applies to {fitting}; leave it null for {self.name!r}"
            )
        if self.fit_per == "dataset" and not self.needs_training_data:
            raise ValueError(
                f"composer.fit_per=dataset: composer {self.name!r} fits nothing with these options (its weights are given), "
                f"so there is nothing to fit per dataset; use fit_per=suite or let it search"
            )

    def release(self) -> None:
        """Undo `compose`: leave `base.model` exactly as it was before (the next fit unit composes afresh)."""

    def _resolve_mask(self, bank: ExpertBank) -> None:
        if self.mask_spec:
            masked = set(bank.indices(self.mask_spec, "composer.mask"))
            self.keep = [i for i in range(len(bank)) if i not in masked]
            if not self.keep:
                raise ValueError(f"composer.mask={self.mask_spec} masks all {len(bank)} experts; keep at least one")

    def search(self, data: SearchData) -> dict[str, Any]:
        """Gradient-free fitting; returns a log to record. Default: nothing to search."""
        return {}

    def auxiliary_losses(self) -> dict[str, tuple[float, torch.Tensor]]:
        """Extra training losses after a forward pass: name -> (weight, value)."""
        return {}

    def training_statistics(self) -> dict[str, Any]:
        """Per-step statistics to log (e.g. gate entropy); called after auxiliary_losses."""
        return {}

    def trainable_module(self) -> nn.Module | None:
        """The module whose parameters train (saved as the checkpoint)."""
        return None

    def prepare_inference(self) -> None:
        """Called once after fitting, before evaluation."""

    def before_dataset(self, dataset: str) -> None:
        """Called by the evaluator before each evaluated dataset (e.g. to apply the LoRA trained on it)."""

    def export(self, path: str) -> str:
        """Save the composed model as a plain transformers checkpoint (static composers only)."""
        raise NotImplementedError(f"composer {self.name!r} cannot be exported as a merged checkpoint (it routes at run time)")

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "experts": list(self.bank.names) if self.bank else [], "mask": self.mask_spec, "fit_per": self.fit_per}
