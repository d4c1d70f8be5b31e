"""Arrow routing (Ostapenko et al. 2024, arXiv:2405.11157) as a composer: PEFT's own `create_arrow_model`
(peft 0.21.2, peft/tuners/lora/arrow.py) over the experts' adapter folders; training-free.

Per adapted linear and per token x (peft/tuners/lora/arrow.py, ArrowLoraLinearLayer.forward):

    prototype_i = the top right singular vector of s-free B_i A_i (power iteration, 15 steps, seeded by rng_seed)
    sim_i       = |x . prototype_i|                                       (sign-agnostic)
    coeff       = softmax(top_k(sim) / router_temperature)                (the others -inf -> 0)
    y           = W x + sum_i coeff_i s_i B_i A_i x

GenKnowSub (`use_gks: true`, Belofsky et al., ACL 2025 short 54): the experts named in `general` are averaged and
their mean A and B subtracted from every task expert before routing (they are not routed themselves).

Options (conf/composer/arrow.yaml) are ArrowConfig's with PEFT's defaults (peft/tuners/lora/config.py: top_k 3,
router_temperature 1.0, use_gks false) except `rng_seed`: PEFT's default null starts the power iteration unseeded;
ours is 0 so that a run repeats exactly (null keeps PEFT's behaviour). PEFT needs every expert of equal rank and
module set (its check_loaded_lora_compatibility_arrow refuses others).

Families: both. Arrow routes each token of each adapted linear on its own input, so it runs on T5 (both of its
stacks) as on a decoder-only model, with the KV cache (nothing depends on other positions).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from mole_exp.base.models import BaseModel
from mole_exp.composers.base import Composer, register_composer
from mole_exp.composers.peft_peers import adapter_folders, check_same_modules, refuse_mask, unload
from mole_exp.experts.bank import ExpertBank

ROUTER_ADAPTER = "arrow_router"  # the adapter name create_arrow_model gives the router


@register_composer("arrow")
class ArrowComposer(Composer):
    def __init__(
        self,
        top_k: int = 3,
        router_temperature: float = 1.0,
        use_gks: bool = False,
        general: list[str | int] | None = None,
        rng_seed: int | None = 0,
        fit_per: str | None = None,
        mask: list[str | int] | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name, fit_per=fit_per)
        refuse_mask(self.name, mask)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"composer.top_k={top_k!r} must be an integer >= 1 (the experts mixed per token)")
        if isinstance(router_temperature, bool) or not isinstance(router_temperature, (int, float)) or not router_temperature > 0:
            raise ValueError(f"composer.router_temperature={router_temperature!r} must be a number > 0")
        if rng_seed is not None and (isinstance(rng_seed, bool) or not isinstance(rng_seed, int)):
            raise ValueError(f"composer.rng_seed={rng_seed!r} must be an integer or null (PEFT's unseeded power iteration)")
        general = list(general or [])
        if use_gks and not general:
            raise ValueError("composer.use_gks=true needs composer.general: the experts (names or indices) averaged as general knowledge")
        if general and not use_gks:
            raise ValueError(f"composer.general={general} is read only with composer.use_gks=true")
        self.top_k, self.router_temperature, self.use_gks = top_k, float(router_temperature), bool(use_gks)
        self.general, self.rng_seed = general, rng_seed
        self.peft: Any = None
        self.task_experts: list[str] = []

    def compose(self, base: BaseModel, bank: ExpertBank) -> list[nn.Parameter]:
        from peft import ArrowConfig, create_arrow_model

        if self.peft is not None:
            raise ValueError(f"composer {self.name!r} was already composed; build a new one for another base")
        self.base, self.bank = base, bank
        folders = adapter_folders(self.name, bank)
        general = bank.indices(self.general, "composer.general")
        tasks = [i for i in range(len(bank)) if i not in general]
        if not tasks:
            raise ValueError(f"composer.general={self.general} names every composed expert; Arrow needs task experts to route")
        if self.top_k > len(tasks):
            raise ValueError(f"composer.top_k={self.top_k} exceeds the {len(tasks)} task experts routed; allowed 1..{len(tasks)}")
        self.task_experts = [bank.names[i] for i in tasks]
        config = ArrowConfig(top_k=self.top_k, router_temperature=self.router_temperature, use_gks=self.use_gks, rng_seed=self.rng_seed)
        self.peft = create_arrow_model(  # loads the folders into LoRA layers of base.model, in place; router active
            base.model, [folders[i] for i in tasks], config, general_adapter_paths=[folders[i] for i in general] or None,
        )
        try:
            check_same_modules(self.name, base.model, list(config.task_adapter_names) + list(config.gks_adapter_names), bank)
        except BaseException:  # a refused bank leaves the base as it found it
            self.release()
            raise
        return []

    def release(self) -> None:
        if self.peft is not None:
            unload(self.peft)
            self.peft = None

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "top_k": self.top_k, "router_temperature": self.router_temperature, "use_gks": self.use_gks,
                "general": [self.bank.names[i] for i in self.bank.indices(self.general)] if self.bank else self.general,
                "task_experts": self.task_experts, "rng_seed": self.rng_seed, "peft_method": "Arrow (peft.create_arrow_model)"}
