"""X-LoRA (Buehler & Buehler 2024, arXiv:2402.07148) as a composer: PEFT's own `XLoraModel` (peft 0.21.2,
peft/tuners/xlora/) over the experts' adapter folders, on the same base, data and evaluation as every composer.

Per forward, X-LoRA runs the frozen model twice (peft/tuners/xlora/model.py, `_enable_peft_forward_hooks`):

    scaling pass   h = the base's last hidden states with every expert scaled by `scaling_pass_value` (no grad)
    classifier     scalings = softmax(MLP(h) / softmax_temperature)       (B, T, n_layers, N)
    real pass      y = W x + sum_i scalings[..., l, i] * global_scaling_weight * s_i B_i A_i x   at LoRA layer l

Only the classifier (`internal_xlora_classifier`, here attached to the base as `xlora_classifier`) trains, with
the run's trainer and optimizer; its weights are the checkpoint (`checkpoints/composer.safetensors`, resumable like
MoLE's gates). The hooks are entered per top-level call of the model (training step, each generation step), so
they never accumulate; X-LoRA needs `use_cache=False` (PEFT refuses a model with it on and generates without a
cache), set on the model while composed and restored on release, as are the hidden-state recorders transformers
installs on the scaling pass's `output_hidden_states=True` (peft_peers.OutputCaptureLedger).

Families: decoder-only only. PEFT's classifier reads `output.hidden_states` and sizes its scalings by the
input's length, which an encoder-decoder lacks (T5: its two stacks differ in length, its output has no `hidden_states`);
`composer=xlora` on T5 is refused before the experts load.

Options (conf/composer/xlora.yaml) are XLoraConfig's, with PEFT's defaults (peft/tuners/xlora/config.py);
`use_trainable_adapters` is fixed to False (the experts stay frozen, as every composer's).
"""

from __future__ import annotations

import functools
from typing import Any

import torch.nn as nn

from mole_exp.base.models import BaseModel
from mole_exp.composers.base import Composer, register_composer
from mole_exp.composers.peft_peers import (
    OutputCaptureLedger,
    adapter_folders,
    check_same_modules,
    refuse_family,
    refuse_mask,
    unload,
)
from mole_exp.experts.bank import ExpertBank

CLASSIFIER_ATTRIBUTE = "xlora_classifier"


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN
WHY_CAUSAL_ONLY = ("PEFT's X-LoRA classifier reads the model output's `hidden_states` and sizes its scalings by the input length, "
                   "which an encoder-decoder's generating stack does not share")


@register_composer("xlora")
class XLoRAComposer(Composer):
    trains = True

    def __init__(
        self,
        enable_softmax: bool = True,
        enable_softmax_topk: bool = False,
        softmax_temperature: float = 1.0,
        layerwise_scalings: bool = False,
        top_k_lora: int | None = None,
        xlora_depth: int = 1,
        xlora_size: int = 2048,
        xlora_dropout_p: float = 0.2,
        scaling_pass_value: float = 0.0,
        global_scaling_weight: float = 1.0,
        fit_per: str = "suite",
        mask: list[str | int] | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name, fit_per=fit_per)
        refuse_mask(self.name, mask)
        if not is_number(softmax_temperature) or softmax_temperature <= 0:
            raise ValueError(f"composer.softmax_temperature={softmax_temperature!r} must be a number > 0")
        if top_k_lora is not None and (not is_integer(top_k_lora) or top_k_lora < 1):
            raise ValueError(f"composer.top_k_lora={top_k_lora!r} must be null (dense) or an integer >= 1")
        if enable_softmax_topk and top_k_lora is None:
            raise ValueError("composer.enable_softmax_topk=true needs composer.top_k_lora (the k experts renormalised)")
        if not is_integer(xlora_depth) or xlora_depth < 1:
            raise ValueError(f"composer.xlora_depth={xlora_depth!r} must be an integer >= 1 (1: one linear layer)")
        if not is_integer(xlora_size) or xlora_size < 1:
            raise ValueError(f"composer.xlora_size={xlora_size!r} must be an integer >= 1")
        if not is_number(xlora_dropout_p) or not 0.0 <= xlora_dropout_p < 1.0:
            raise ValueError(f"composer.xlora_dropout_p={xlora_dropout_p} must be in [0, 1)")
        for key, value in (("scaling_pass_value", scaling_pass_value), ("global_scaling_weight", global_scaling_weight)):
            if not is_number(value):
                raise ValueError(f"composer.{key}={value!r} must be a number")
        self.options = {
            "enable_softmax": bool(enable_softmax), "enable_softmax_topk": bool(enable_softmax_topk),
            "softmax_temperature": float(softmax_temperature), "layerwise_scalings": bool(layerwise_scalings),
            "top_k_lora": None if top_k_lora is None else int(top_k_lora), "xlora_depth": int(xlora_depth),
            "xlora_size": int(xlora_size), "xlora_dropout_p": float(xlora_dropout_p),
            "scaling_pass_value": float(scaling_pass_value), "global_scaling_weight": float(global_scaling_weight),
        }
        self.peft: Any = None  # the PeftModel around base.model
        self._saved_cache: tuple[Any, Any] | None = None
        self._ledger: OutputCaptureLedger | None = None

    def check_base(self, base: BaseModel) -> None:
        refuse_family(self.name, base, causal_only=True, why=WHY_CAUSAL_ONLY)

    @property
    def xlora(self) -> Any:
        """PEFT's XLoraModel."""
        return self.peft.base_model

    def compose(self, base: BaseModel, bank: ExpertBank) -> list[nn.Parameter]:
        from peft import XLoraConfig, get_peft_model

        self.check_base(base)
        if self.peft is not None:
            raise ValueError(f"composer {self.name!r} was already composed; build a new one for another base")
        self.base, self.bank = base, bank
        model = base.model
        folders = adapter_folders(self.name, bank)
        self._ledger = OutputCaptureLedger(model)  # transformers' hidden-state recorders, installed by the scaling pass
        self._saved_cache = (model.config.use_cache, model.generation_config.use_cache)
        model.config.use_cache = False  # XLoraModel refuses a model with the cache on (its scaling pass would fill it)
        model.generation_config.use_cache = False
        config = XLoraConfig(
            task_type="CAUSAL_LM", hidden_size=model.config.hidden_size, use_trainable_adapters=False,
            # keyed "0".."N-1": XLoraModel loads adapter i as "i" whatever its key, and activates the keys
            adapters={str(i): folder for i, folder in enumerate(folders)}, **self.options,
        )
        device = str(next(model.parameters()).device)
        try:
            self.peft = get_peft_model(model, config)  # loads every adapter folder into LoRA layers of `model`, in place
        except BaseException:
            self._restore_cache()
            raise
        try:
            check_same_modules(self.name, model, [str(i) for i in range(len(bank))], bank)
            classifier = self.xlora.internal_xlora_classifier.to(device)
            model.add_module(CLASSIFIER_ATTRIBUTE, classifier)  # so Lightning, the optimizer and checkpoints see it
            self._wrap_forward(model)
        except BaseException:  # a compose that fails part way leaves the base as it found it
            self.release()
            raise
        return [p for p in classifier.parameters() if p.requires_grad]

    def _wrap_forward(self, model: nn.Module) -> None:
        """Each top-level call runs inside PEFT's X-LoRA hooks (scaling pass, classifier, real pass), entered anew
        per call: the hooks PEFT registers per forward are all removed when the call returns."""
        original = model.forward  # the class's bound forward
        inside = [False]

        @functools.wraps(original)
        def forward(*args, **kwargs):
            if inside[0]:  # PEFT's scaling pass and the real pass
                return original(*args, **kwargs)
            inside[0] = True
            try:
                with self.xlora._enable_peft_forward_hooks(*args, **kwargs):
                    return model(*args, **kwargs)  # __call__ runs PEFT's pre-forward hook, then this forward again
            finally:
                inside[0] = False

        model.forward = forward

    def trainable_module(self) -> nn.Module | None:
        return self.xlora.internal_xlora_classifier if self.peft is not None else None

    def prepare_inference(self) -> None:
        self.xlora.internal_xlora_classifier.log_scalings.clear()

    def _restore_cache(self) -> None:
        if self._saved_cache is not None:
            self.base.model.config.use_cache, self.base.model.generation_config.use_cache = self._saved_cache
            self._saved_cache = None

    def release(self) -> None:
        if self.peft is None:
            return
        model = self.base.model
        if "forward" in model.__dict__:
            del model.forward  # the class's forward again
        if CLASSIFIER_ATTRIBUTE in model._modules:
            delattr(model, CLASSIFIER_ATTRIBUTE)
        unload(self.peft)
        self._ledger.restore()
        self._restore_cache()
        self.peft = None

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), **self.options, "peft_method": "X-LoRA (peft.XLoraConfig)",
                "num_classifier_parameters": sum(p.numel() for p in self.trainable_module().parameters()) if self.peft else 0}
