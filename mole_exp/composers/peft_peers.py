"""What PEFT's own routers (X-LoRA, Arrow) share as composers: the expert library's adapter folders loaded by PEFT
itself, the families each runs on (refused before the experts load), a check that PEFT adapts exactly the modules of
our ExpertBank, and the unload that leaves the base as it was (LoraModel.unload puts every original linear back).

PEFT loads the adapter folders whole: `experts.layer_range` (which trims our bank) cannot be honoured and is refused
by the module check; masks do not apply (nothing to mask at inference in PEFT's routers).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from mole_exp.base.models import BaseModel
from mole_exp.experts.bank import ExpertBank


def refuse_family(composer: str, base: BaseModel, causal_only: bool, why: str) -> None:
    """A composer that PEFT runs only on decoder-only models stops on another family, naming what is allowed."""
    if causal_only and not base.family.causal:
        raise ValueError(
            f"composer={composer} does not run on the {base.family.name} family (base {base.model_id}): {why}; "
            f"it runs on decoder-only models (model=tiny_llama, tiny_qwen2, qwen2.5-0.5b, llama-3.2-1b, phi-3-mini ...)"
        )


def refuse_mask(composer: str, mask: list[str | int] | None) -> None:
    """PEFT's routers route over every adapter they loaded; an expert mask would silently do nothing."""
    if mask:
        raise ValueError(f"composer.mask={list(mask)}: composer={composer} (PEFT's router) routes over every loaded adapter and "
                         f"cannot mask experts; compose fewer experts instead (experts.names=[...]) or use composer=mole / nla")


def adapter_folders(composer: str, bank: ExpertBank) -> list[str]:
    if not bank.sources:
        raise ValueError(f"composer={composer} loads the experts' PEFT adapter folders, but the bank names none")
    return list(bank.sources)


def lora_module_names(model: nn.Module, adapter: str) -> set[str]:
    """The modules PEFT injected `adapter` into (names as in the unwrapped base model)."""
    from peft.tuners.lora import LoraLayer

    return {name for name, module in model.named_modules() if isinstance(module, LoraLayer) and adapter in module.lora_A}


def check_same_modules(composer: str, model: nn.Module, adapters: list[str], bank: ExpertBank) -> None:
    """PEFT adapts the modules the adapter folders name; our bank may have been trimmed (experts.layer_range)."""
    adapted = set().union(*(lora_module_names(model, a) for a in adapters))
    expected = set(bank.targets)
    if adapted != expected:
        only_peft, only_bank = sorted(adapted - expected), sorted(expected - adapted)
        raise ValueError(
            f"composer={composer}: PEFT adapts the modules the adapter folders name, which differ from the experts' "
            f"bank (only PEFT: {only_peft[:4]}{'...' if len(only_peft) > 4 else ''}; only the bank: {only_bank[:4]}); "
            f"experts.layer_range cannot be applied to PEFT's router: leave it null"
        )


def unload(peft_model: Any) -> None:
    """Every LoRA layer PEFT injected back to its original module (weights untouched: nothing was merged)."""
    peft_model.base_model.unload()  # LoraModel.unload (XLoraModel forwards it to its LoraModel)


CAPTURING_FLAG = "_output_capturing_hooks_installed"  # transformers/utils/output_capturing.py


class OutputCaptureLedger:
    """X-LoRA's scaling pass asks the base for `output_hidden_states`, on which transformers installs, once per model,
    inert forward hooks that record hidden states (transformers/utils/output_capturing.py) and marks the model. To give
    the base back as it was, this notes each module's forward hooks and the mark at compose and drops what was added."""

    def __init__(self, model: nn.Module):
        self.before = {id(m): (m, set(m._forward_hooks), CAPTURING_FLAG in m.__dict__) for m in model.modules()}

    def restore(self) -> None:
        for module, hooks, flagged in self.before.values():
            for key in set(module._forward_hooks) - hooks:
                del module._forward_hooks[key]
                module._forward_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_always_called.pop(key, None)
            if not flagged and CAPTURING_FLAG in module.__dict__:
                delattr(module, CAPTURING_FLAG)
