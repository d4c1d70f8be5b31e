"""Which lm-eval backend evaluates each model family: the bridge's one family-specific table.

lm-eval's HFLM scores encoder-decoders ("seq2seq": the prompt to the encoder, the continuation to the
decoder) and decoder-only models ("causal": prompt and continuation in one sequence). Our families
(mole_exp/base/family.py) map onto those: T5 to "seq2seq", the decoder-only family (Llama, Qwen2, Mistral, Phi-3) to
"causal" (HFLM's causal backend batches, scores and generates for it: prompt and continuation in one sequence, prompts
padded on the left for generation with their attention mask, which the gates' prefix pooling reads; scoring batches
padded on the right, after every valid token, so the causal prefix pooling never sees those pads).
"""

from __future__ import annotations

from mole_exp.base.family import ModelFamily

BACKENDS = {"t5": "seq2seq", "causal-lm": "causal"}  # ModelFamily.name -> HFLM backend


def backend_for(family: ModelFamily) -> str:
    """The HFLM backend of a model family, or one error naming the family and the supported ones."""
    if family.name not in BACKENDS:
        supported = ", ".join(f"{name} ({backend})" for name, backend in BACKENDS.items())
        raise ValueError(
            f"the lm-eval bridge does not support model family {family.name!r} (model types {list(family.model_types)}); "
            f"supported families: {supported}"
        )
    return BACKENDS[family.name]
