"""A small decoder-only base that can learn: a Llama- or Qwen2-shaped causal LM with its real tokenizer, pretrained
briefly on the synthetic family, as small_base.py's T5.

    model=small_synthetic_causal   (conf/model/small_synthetic_causal.yaml)

A randomly initialised causal LM (seeded; `mole_exp.base.models.build_tiny_causal`'s shapes, with Llama 3's or
Qwen2.5's fetched tokenizer) is pretrained with the causal LM objective on the synthetic family's `pretraining`
pool (no task's train or test input): each example is the prompt `<tag>: <symbols>` followed by its completion,
the loss on the completion tokens (base/text_format.py's CausalFormat, as every causal task here is trained).
The objectives are small_base.py's readings that a causal LM can take:
- `shuffled_tags` (default): every operation of the family, each example under the tag of a randomly chosen
  operation: the base learns the operations but not which tag asks for which;
- `tasks`: the tasks as they are.
(T5's `span_corruption` needs sentinel tokens and an encoder: refused.) The weights are cached under
`cache_dir/<key>` (key = hash of every setting, the family and the tokenizer), built in a staging folder and
renamed into place (files.build_folder), so reruns and parallel runs share one base and a crash leaves no half base. `model_id`
names the settings and the seed, so library manifests match it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mole_exp.base.family import family_for
from mole_exp.base.models import TINY_CAUSAL, BaseModel, build_tiny_causal, freeze
from mole_exp.base.text_format import bind_format, pad_id
from mole_exp.base.tokenizer_fetch import require_tokenizer
from mole_exp.tools.mini.small_base import DATA_KEYS, _plain, cache_key, cached, pretrain_into_cache, pretraining_spec

log = logging.getLogger(__name__)

CAUSAL_OBJECTIVES = ("shuffled_tags", "tasks")
CAUSAL_DATA_KEYS = tuple(k for k in DATA_KEYS if k != "noise_density")  # span corruption's only setting


def architecture_name(architecture: dict[str, Any]) -> str:
    """model.architecture.architecture (llama | qwen2), checked."""
    name = architecture.get("architecture")
    if name not in TINY_CAUSAL:
        raise ValueError(f"model.architecture.architecture={name!r} is not one of {sorted(TINY_CAUSAL)}")
    return name


def causal_spec(architecture: dict[str, Any], pretrain: dict[str, Any], seed: int, dtype: str, vocab_size: int):
    """small_base.pretraining_spec for a causal base: the objective checked, the family and tokenizer added to the key."""
    architecture, pretrain = _plain(architecture), _plain(pretrain)
    objective = pretrain.get("objective")
    if objective not in CAUSAL_OBJECTIVES:
        raise ValueError(f"model.pretrain.objective={objective!r}: a causal base takes one of {list(CAUSAL_OBJECTIVES)} "
                         "(span_corruption is T5's denoising objective, with sentinel tokens)")
    name = architecture_name(architecture)
    spec, settings = pretraining_spec(architecture, pretrain, seed, dtype, vocab_size, CAUSAL_DATA_KEYS)
    spec["family"], spec["tokenizer"] = "causal", TINY_CAUSAL[name]
    return spec, settings


def _load_cached(folder: Path, tokenizer, model_id: str) -> BaseModel:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder))
    model.generation_config.max_length = None
    model.generation_config.pad_token_id = pad_id(tokenizer)
    model.eval()
    return BaseModel(model=freeze(model), tokenizer=tokenizer, model_id=model_id, family=family_for(model))


def build_small_synthetic_causal(
    tokenizer_dir: str | None,
    cache_dir: str,
    architecture: dict[str, Any],
    pretrain: dict[str, Any],
    seed: int = 0,
    dtype: str = "float32",
) -> BaseModel:
    """The pretrained small causal base: loaded from the cache, or pretrained now (minutes on a CPU) and cached.
    `architecture`: `architecture` (llama | qwen2) and build_tiny_causal's sizes."""
    from transformers import AutoTokenizer

    architecture = _plain(architecture)
    name = architecture_name(architecture)
    tokenizer = bind_format(AutoTokenizer.from_pretrained(str(require_tokenizer(TINY_CAUSAL[name], tokenizer_dir))), causal=True)
    spec, settings = causal_spec(architecture, pretrain, seed, dtype, len(tokenizer))
    key = cache_key(spec)
    a = spec["architecture"]
    model_id = (f"small-synthetic-{name}-h{a.get('hidden_size')}-l{a.get('num_hidden_layers')}"
                f"-{spec['data']['objective']}{settings.steps}-seed{seed}-{key}")
    folder, done = cached(cache_dir, key)
    if done:
        log.info("small causal base %s: cached at %s", model_id, folder)
    sizes = {k: v for k, v in architecture.items() if k != "architecture"}
    pretrain_into_cache(lambda: build_tiny_causal(name, tokenizer_dir, seed=seed, dtype=dtype, **sizes), spec, settings, seed, model_id, folder)
    return _load_cached(folder, tokenizer, model_id)
