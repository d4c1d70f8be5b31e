"""Fresh LoRA: a new LoRA on the same frozen base, trained on exactly the data the gates see (a control).

What a practitioner would do instead of composing a library: train one new LoRA. It goes through the same
pipeline as MoLE (`train.py composer=fresh_lora`): the same training mixture and data order (seeded by the
run's seed), the same `trainer.max_steps`, `data.batch_size` and `optimizer`, so its budget is MoLE's by
construction; only the LoRA trains (base and experts stay frozen; the experts are not used).

Rank (a documented choice, `composer.rank`): `library` (default) gives it the rank of one library expert (the
largest rank in the bank), i.e. one more expert of the kind the library holds; an integer sets it.
`alpha: null` keeps the library's ratio alpha / r = 2 (LoRAHub's r=16, alpha=32), `targets: null` adapts the
modules the experts adapt; PEFT's LoRA initialisation (A Kaiming-uniform, B zero), seeded by `seed` (the
run's). Injected with PEFT (`inject_adapter_in_model`), so the LoRA layers are PEFT's own; `export_dir=`
saves the base with the LoRA merged as a plain transformers checkpoint.

Trainable parameters: `...<module>.lora_A.default.weight` and `...lora_B.default.weight` of the adapted linears.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from mole_exp.base.models import BaseModel
from mole_exp.composers.base import Composer, register_composer
from mole_exp.composers.merge import export_merged
from mole_exp.experts.bank import ExpertBank

LIBRARY_RANK = "library"


class LoRAParameters(nn.Module):
    """The fresh LoRA's parameters under one module (what the checkpoint holds): `<module path>` with '.' -> '__'."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.weights = nn.ParameterDict({name.replace(".", "__"): p for name, p in model.named_parameters() if p.requires_grad})


def _check_int(key: str, value: Any, allow: tuple = ()) -> None:
    if value in allow:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"composer.{key}={value!r} must be a positive integer" + (f" or one of {list(allow)}" if allow else ""))


@register_composer("fresh_lora")
class FreshLoRAComposer(Composer):
    trains = True

    def __init__(
        self,
        rank: int | str = LIBRARY_RANK,
        alpha: float | None = None,
        dropout: float = 0.0,
        targets: list[str] | None = None,
        seed: int = 0,
        fit_per: str = "suite",
        name: str | None = None,
    ):
        super().__init__(name=name, fit_per=fit_per)
        _check_int("rank", rank, (LIBRARY_RANK,))
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0):
            raise ValueError(f"composer.alpha={alpha!r} must be a positive number or null (2 x rank)")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"composer.dropout={dropout!r} must lie in [0, 1)")
        if targets is not None and (not isinstance(targets, (list, tuple)) or not targets or not all(isinstance(t, str) for t in targets)):
            raise ValueError(f"composer.targets={targets!r} must be a non-empty list of module names (e.g. [q, v]) or null (the experts')")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"composer.seed={seed!r} must be an integer")
        self.rank_option, self.alpha_option, self.dropout = rank, alpha, float(dropout)
        self.targets_option, self.seed = (list(targets) if targets else None), seed
        self.rank: int | None = None
        self.alpha: float | None = None
        self.targets: list[str] = []
        self.parameters_module: LoRAParameters | None = None

    def compose(self, base: BaseModel, bank: ExpertBank) -> list[nn.Parameter]:
        from peft import LoraConfig, inject_adapter_in_model

        self.base, self.bank = base, bank
        self.rank = bank.rank if self.rank_option == LIBRARY_RANK else int(self.rank_option)
        self.alpha = float(self.alpha_option) if self.alpha_option is not None else 2.0 * self.rank
        if self.targets_option is None:
            self.targets = sorted(bank.targets)  # the experts' adapted linears, by full name
        else:
            self.targets = self.targets_option
        if any(p.requires_grad for p in base.model.parameters()):
            raise ValueError("the base model has trainable parameters; fresh_lora needs a frozen base (compose a fresh one)")
        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=self.targets)
        with torch.random.fork_rng(devices=[]):  # the LoRA's initialisation depends on its seed only
            torch.manual_seed(self.seed)
            try:
                inject_adapter_in_model(config, base.model)
            except ValueError as error:
                raise ValueError(f"composer.targets={self.targets_option!r}: {error}") from error
        self.parameters_module = LoRAParameters(base.model)
        trainable = list(self.parameters_module.weights.values())
        if not trainable or not all(".lora_" in name.replace("__", ".") for name in self.parameters_module.weights):
            raise RuntimeError(f"fresh_lora: expected only LoRA parameters to train, found {list(self.parameters_module.weights)[:4]}")
        return trainable

    def trainable_module(self) -> nn.Module:
        return self.parameters_module

    def release(self) -> None:
        """Undo `compose`: every LoRA-wrapped linear back to its own (never merged) base layer, and the
        adapter config PEFT's injection records on the model (`peft_config`) dropped."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        if self.base is None:
            return
        model = self.base.model
        for name, module in list(model.named_modules()):
            if isinstance(module, BaseTunerLayer):
                parent_name, _, leaf = name.rpartition(".")
                setattr(model.get_submodule(parent_name), leaf, module.get_base_layer())
        for attribute in ("peft_config", "_hf_peft_config_loaded"):  # set by inject_adapter_in_model
            model.__dict__.pop(attribute, None)
        self.parameters_module = None

    def export(self, path: str) -> str:
        """The base with the trained LoRA merged in (W + alpha/r B A), saved as a plain transformers checkpoint."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        merged = copy.deepcopy(self.base.model)
        for name, module in list(merged.named_modules()):
            if isinstance(module, BaseTunerLayer):
                module.merge()
                parent_name, _, leaf = name.rpartition(".")
                setattr(merged.get_submodule(parent_name), leaf, module.get_base_layer())
        return export_merged(BaseModel(merged, self.base.tokenizer, self.base.model_id, self.base.family), path)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "experts": [],  # the library is loaded (for shapes) but not used
            "mask": [],
            "rank": self.rank,
            "rank_option": self.rank_option,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "targets": self.targets if self.targets_option else f"the experts' {len(self.targets)} adapted linears",
            "seed": self.seed,
            "fit_per": self.fit_per,
            "num_parameters": sum(p.numel() for p in self.parameters_module.weights.values()) if self.parameters_module else 0,
        }
