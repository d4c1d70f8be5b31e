"""The lm-eval model class of a composed model, registered with lm-eval's registry as `mole`.

    simple_evaluate(model="mole", model_args={"run": "<run folder>"}, tasks=[...])           # a finished run
    simple_evaluate(model="mole", model_args={"compose": "composer=nla model=tiny experts=tiny"}, tasks=[...])
    ComposedLM(composed=load_run(folder), batch_size=8)                                      # already built

It is lm-eval's own HFLM around the composed model (`base.model`, the model our evaluator runs): lm-eval
batches, tokenises, scores `loglikelihood` / `loglikelihood_rolling` and runs `generate_until`. The MoLE
gates therefore see what they see in our evaluator: the router's pre-hooks on the family's stream modules
read the attention mask of every forward (`mole_exp/mole/routing.py`, `ModelFamily.streams`), so sequence-scope
gates pool over the prompt's valid tokens whatever the batch's padding (lm-eval pads prompts on the left for
generation, on the right for scoring), a causal stream's gates pool over its prefix, and the run's expert mask is
applied (`composer.prepare_inference`). Prompts are cut (from the left, lm-eval's way) at the run's input length,
`data.max_source_length`, unless `max_length=` is given.

Two deliberate differences from HFLM. Its constructor calls `model.tie_weights()`, which in transformers 5
ties T5's output head to its input embeddings whatever the checkpoint holds (T5Config forces
tie_word_embeddings=True; from_pretrained keeps FLAN-T5's separate head, tie_weights() then replaces it): the
bridge keeps the model's weights exactly as composed. And, for encoder-decoders only (`_model_generate`): HFLM passes
`max_length = prompt length + max_gen_toks` to `generate`, which for an encoder-decoder bounds the decoder
alone, so T5 could write a prompt's length more tokens than the task's `max_gen_toks`; and its stop-sequence
check skips the first prompt-length decoder tokens. Here at most `max_gen_toks` new tokens are generated
(`max_new_tokens`, as our evaluator does) and stop sequences are watched from the first generated token
(the text is cut at the first stop sequence either way).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils_hf import stop_sequences_criteria

from mole_exp.harness.backends import backend_for
from mole_exp.harness.composed import Composed, load_run, load_spec

MODEL_NAME = "mole"


def spec_words(compose: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """A spec given as one string (lm-eval's `key=value` model_args) or as a list of overrides."""
    if compose is None:
        return []
    return shlex.split(compose) if isinstance(compose, str) else [str(word) for word in compose]


@contextmanager
def weights_as_built(model: torch.nn.Module) -> Iterator[None]:
    """`model.tie_weights()` does nothing inside (HFLM's constructor calls it; see the module docstring)."""
    model.tie_weights = lambda *args, **kwargs: None  # an instance attribute shadows the method
    try:
        yield
    finally:
        del model.tie_weights


@register_model(MODEL_NAME, "mole-exp")
class ComposedLM(HFLM):
    """lm-eval's HFLM on a composed model: a run folder (`run`, `unit`), a spec (`compose`), or `composed`."""

    def __init__(
        self,
        run: str | None = None,
        unit: str | None = None,
        compose: str | list[str] | None = None,
        composed: Composed | None = None,
        device: str | None = None,
        batch_size: int | str | None = 1,
        max_batch_size: int | None = 64,
        **hflm_kwargs: Any,
    ) -> None:
        given = [name for name, value in (("run", run), ("compose", compose), ("composed", composed)) if value]
        if len(given) != 1:
            raise ValueError(f"the {MODEL_NAME!r} model takes exactly one of run=<run folder>, compose=<overrides>, composed=<Composed>; got {given or 'none'}")
        if composed is None:
            composed = load_run(run, unit, device) if run else load_spec(spec_words(compose), device)
        self.composed = composed
        if composed.max_length is not None:  # inputs as long as the run's (data.max_source_length), unless max_length= says otherwise
            hflm_kwargs.setdefault("max_length", composed.max_length)
        with weights_as_built(composed.base.model):
            super().__init__(
                pretrained=composed.base.model,
                tokenizer=composed.base.tokenizer,
                backend=backend_for(composed.base.family),
                batch_size=1 if batch_size is None else batch_size,
                max_batch_size=64 if max_batch_size is None else max_batch_size,
                **hflm_kwargs,
            )

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs: Any) -> torch.Tensor:
        if self.backend != "seq2seq":
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        max_new_tokens = max_length - context.shape[1]  # HFLM.generate_until: max_length = prompt length + max_gen_toks
        if max_new_tokens < 1:
            raise ValueError(f"max_length={max_length} leaves no room to generate after a {context.shape[1]}-token prompt")
        # HFLM's sampling settings as it makes them: temperature 0 (the default) means greedy
        generation_kwargs["temperature"] = generation_kwargs.get("temperature", 0.0)
        do_sample = generation_kwargs.get("do_sample")
        if generation_kwargs["temperature"] == 0.0 and do_sample is None:
            generation_kwargs["do_sample"] = do_sample = False
        if do_sample is False and generation_kwargs["temperature"] == 0.0:
            generation_kwargs.pop("temperature")
        # the decoder starts from one token (decoder_start_token_id): stop sequences are looked for after it
        stopping_criteria = stop_sequences_criteria(self.tokenizer, stop, 1, context.shape[0])
        with torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype, enabled=self.mixed_precision_dtype is not None):
            return self.model.generate(
                input_ids=context,
                max_new_tokens=max_new_tokens,
                stopping_criteria=stopping_criteria,
                pad_token_id=self.tokenizer.pad_token_id,
                use_cache=True,
                **generation_kwargs,
            )

    def get_model_info(self) -> dict[str, Any]:
        """What the results file's `config` records about the model: the composition (no Hub lookup)."""
        parameters = sum(p.numel() for p in self.model.parameters())
        return {"model_num_parameters": parameters, "model_dtype": str(next(self.model.parameters()).dtype), "composed": self.composed.source}
