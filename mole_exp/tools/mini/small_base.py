"""A small T5 base that can learn: the tiny architecture, pretrained briefly on the synthetic family.

    model=small_synthetic   (conf/model/small_synthetic.yaml)

A randomly initialised T5 (seeded, real T5 vocabulary) is pretrained on the synthetic string family
(`mole_exp/tools/mini/synthetic_tasks.py`), drawn from its `pretraining` pool (no task's train or test input), so that
LoRA experts trained on it afterwards have something to specialise. Objectives:
- `shuffled_tags` (default): every operation of the family, each example under the tag of a randomly chosen
  operation: the base learns the operations but not which tag asks for which, so on the real tasks it is
  near chance among them, and an expert has to teach it one thing: do *this* operation;
- `tasks`: the tasks as they are (with enough steps the base solves them and experts have little to add);
- `span_corruption`: T5's denoising objective on the family's strings; no operation is taught (with a
  laptop's budget, experts trained on such a base stay weak).
The pretrained weights are cached under `cache_dir/<key>` (key = hash of every setting and the vocabulary),
written atomically, so reruns and parallel runs reuse one base. `model_id` names the settings and the seed,
so library manifests (see `mole_exp.experts.library.check_manifest`) match it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mole_exp.base.family import family_for
from mole_exp.base.models import BaseModel, build_tiny, freeze, load_t5_tokenizer
from mole_exp.files import build_folder
from mole_exp.tools.mini.span_corruption import corrupt_spans
from mole_exp.tools.mini.synthetic_tasks import generate_splits, task_tag
from mole_exp.tools.seq2seq_training import TrainSettings, fit_seq2seq

log = logging.getLogger(__name__)

OBJECTIVES = ("shuffled_tags", "tasks", "span_corruption")
SETTINGS_FILE = "pretraining.json"


def pretraining_examples(
    objective: str,
    kinds: list[str],
    examples_per_kind: int,
    data_seed: int,
    alphabet_size: int,
    min_length: int,
    max_length: int,
    noise_density: float = 0.3,
) -> list[dict[str, str]]:
    """The pretraining mixture, drawn from the synthetic family's `pretraining` pool (never a task's input)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"model.pretrain.objective={objective!r} is not one of {list(OBJECTIVES)}")
    rng = random.Random(data_seed)
    examples = []
    for kind in kinds:
        rows, _ = generate_splits(kind, examples_per_kind, 0, data_seed, alphabet_size, min_length, max_length, pool="pretraining")
        for row in rows:
            if objective == "tasks":
                examples.append({"source": row["source"], "target": row["target"]})
            elif objective == "shuffled_tags":
                examples.append({"source": f"{task_tag(rng.choice(kinds))}: {row['symbols']}", "target": row["target"]})
            else:
                text = row["source"] if rng.random() < 0.5 else f"{row['target']} {row['source']}"
                source, target = corrupt_spans(text, rng, noise_density)
                examples.append({"source": source, "target": target})
    rng.shuffle(examples)
    return examples


def _plain(node: Any) -> dict[str, Any]:
    return dict(OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node)


DATA_KEYS = ("objective", "kinds", "examples_per_kind", "data_seed", "alphabet_size", "min_length", "max_length", "noise_density")


def pretraining_spec(
    architecture: dict[str, Any], pretrain: dict[str, Any], seed: int, dtype: str, vocab_size: int, data_keys: tuple[str, ...] = DATA_KEYS
) -> tuple[dict[str, Any], TrainSettings]:
    """Every setting the pretrained weights depend on (hashed into the cache key), and the training settings."""
    pretrain = _plain(pretrain)
    missing = [k for k in data_keys if k not in pretrain]
    if missing:
        raise ValueError(f"model.pretrain lacks {missing}; it needs {list(data_keys)} and the training settings")
    data = {k: pretrain.pop(k) for k in data_keys}
    settings = TrainSettings(**pretrain)
    settings.validate("model.pretrain")
    spec = {"architecture": dict(_plain(architecture)), "data": data, "train": dict(vars(settings)), "seed": seed, "dtype": dtype,
            "vocab_size": vocab_size}
    spec["train"].pop("log_every", None)
    return spec, settings


def cache_key(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _load_cached(folder: Path, tokenizer, model_id: str) -> BaseModel:
    from transformers import T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(str(folder))
    model.generation_config.max_length = None
    model.eval()
    return BaseModel(model=freeze(model), tokenizer=tokenizer, model_id=model_id, family=family_for(model))


def build_small_synthetic(
    tokenizer_dir: str | None,
    cache_dir: str,
    architecture: dict[str, Any],
    pretrain: dict[str, Any],
    seed: int = 0,
    dtype: str = "float32",
) -> BaseModel:
    """The pretrained small base: loaded from the cache, or pretrained now (minutes on a CPU) and cached."""
    architecture = _plain(architecture)  # Hydra hands DictConfigs
    tokenizer = load_t5_tokenizer(tokenizer_dir)
    spec, settings = pretraining_spec(architecture, pretrain, seed, dtype, len(tokenizer))
    data = spec["data"]
    key = cache_key(spec)
    a = dict(architecture)
    model_id = (
        f"small-synthetic-t5-d{a.get('d_model')}-l{a.get('num_layers')}x{a.get('num_decoder_layers')}"
        f"-{data['objective']}{settings.steps}-seed{seed}-{key}"
    )
    folder, done = cached(cache_dir, key)
    if done:
        log.info("small base %s: cached at %s", model_id, folder)
    pretrain_into_cache(lambda: build_tiny(tokenizer_dir, seed=seed, dtype=dtype, **architecture), spec, settings, seed, model_id, folder)
    return _load_cached(folder, tokenizer, model_id)


def pretrain_into_cache(fresh: Callable[[], BaseModel], spec: dict[str, Any], settings: TrainSettings, seed: int, model_id: str,
                        folder: Path) -> Path:
    """`folder` holding the pretrained base, built once: every weight of a freshly built base (`fresh()`) pretrained on
    `spec`'s examples (its text format's objective: T5's target given the source, a causal LM's completion given the
    prompt), written with its settings in a staging folder renamed into place (files.build_folder): a crash leaves
    no half base, and a parallel builder of the same base waits for this one."""

    def build(staging: Path) -> None:
        log.info("small base %s: pretraining (%s, %d steps); cached afterwards at %s", model_id, spec["data"]["objective"],
                 settings.steps, folder)
        base = fresh()
        model = base.model
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        examples = pretraining_examples(**spec["data"])
        report = fit_seq2seq(model, base.tokenizer, examples, settings, seed, what=f"pretraining {model_id}")
        freeze(model)
        model.save_pretrained(str(staging))
        (staging / SETTINGS_FILE).write_text(json.dumps({"model_id": model_id, **spec, "report": report}, indent=2))

    return build_folder(folder, build, finished=lambda f: (f / SETTINGS_FILE).exists(), what="small base")


def cached(cache_dir: str, key: str) -> tuple[Path, bool]:
    """The cache folder of a base, and whether a finished base is there."""
    folder = Path(os.path.expanduser(str(cache_dir))) / key
    return folder, (folder / SETTINGS_FILE).exists()
