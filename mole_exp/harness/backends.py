"""Which lm-eval backend evaluates each model family: the bridge's one family-specific table.

lm-eval's HFLM scores encoder-decoders ("seq2seq": the prompt to the encoder, the continuation to the
decoder) and decoder-only models ("causal": prompt and continuation in one sequence). Our families
(mole_exp/base/family.py) map onto those; a causal family, once mole_exp/base/family.py has one, is one entry here
(HFLM's causal backend then batches, scores and generates for it).
"""

from __future__ import annotations

from mole_exp.base.family import ModelFamily

BACKENDS = {"t5": "seq2seq"}  # ModelFamily.name -> HFLM backend


def backend_for(family: ModelFamily) -> str:
    """The HFLM backend of a model family, or one error naming the family and the supported ones."""
    if family.name not in BACKENDS:
        supported = ", ".join(f"{name} ({backend})" for name, backend in BACKENDS.items())
        raise ValueError(
            f"the lm-eval bridge does not support model family {family.name!r} (model types {list(family.model_types)}); "
            f"supported families: {supported}"
        )
    return BACKENDS[family.name]
