"""A run's config: building objects from it, the cheap checks made before anything loads, its hash, the
settings read from it."""

from __future__ import annotations

import copy
import hashlib
import re
from typing import Any

import hydra
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from mole_exp.composers.base import check_gate_option
from mole_exp.evaluation.evaluator import GenerationSettings
from mole_exp.experts.loading import precheck as precheck_experts
from mole_exp.experts.sources import LEGACY_SOURCES
from mole_exp.tasks.base import EVAL_SUBSETS
from mole_exp.training.fit_units import check_fit_config
from mole_exp.training.gate_guard import check_settings as check_gate_guard

MODES = ("train", "eval")


def build(node: DictConfig, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, but a bad value surfaces as the object's own error, not Hydra's wrapper."""
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, (ValueError, TypeError, OSError, RuntimeError)):
            raise cause.with_traceback(cause.__traceback__) from None
        raise


MODULE_PATH = re.compile(r"mole_exp(\.[A-Za-z_]\w*)+")  # where an object of this package lives, e.g. a `_target_`


def without_module_paths(node: Any) -> Any:
    """The config without this package's module paths (`_target_: mole_exp.base.models.build_tiny`, and any other value
    that is a dotted `mole_exp.` path): dropped from mappings, blanked in lists. Moving a module keeps the hash."""
    if isinstance(node, dict):
        return {k: without_module_paths(v) for k, v in node.items() if not (isinstance(v, str) and MODULE_PATH.fullmatch(v))}
    if isinstance(node, list):
        return ["<module path>" if isinstance(v, str) and MODULE_PATH.fullmatch(v) else without_module_paths(v) for v in node]
    return node


# the default gate (conf/gate/layer.yaml) as the root `gate` group wrote it into the config of every composer
HASHED_DEFAULT_GATE = {"granularity": "layer", "input_form": "concat", "scope": "sequence", "expert_output": "delta",
                       "normalization": "per_expert", "init_std": 0.0,
                       "temperature": {"init": 1.0, "learnable": True, "min": 0.05, "max": 100.0}}


def hashed_layout(data: dict[str, Any]) -> dict[str, Any]:
    """The resolved config in the layout its hash was first defined on, so that a run keeps its hash when the
    config groups change shape: the experts' library written `source: <name>` where the config now names its
    `_target_` (mole_exp/experts/sources.py); the gate as a root `gate` group after `experts` (MoLE's
    `composer.gate`, for a composer without a gate the default gate the root group gave every config).
    tests/test_config_hashes.py checks every preset member and mini run against the hashes recorded before."""
    if "gate" not in data and "experts" in data:  # the gate was a root group every composer's config carried
        gate = copy.deepcopy((data.get("composer") or {}).get("gate") or HASHED_DEFAULT_GATE)
        data = {k: v for key, value in data.items() for k, v in ([(key, value), ("gate", gate)] if key == "experts" else [(key, value)])}
    experts = data.get("experts")
    if isinstance(experts, dict) and "source" not in experts and "_target_" in experts:
        legacy = {new: old for old, new in LEGACY_SOURCES.items()}.get(str(experts["_target_"]).rpartition(".")[2])
        if legacy:
            data["experts"] = {("source" if k == "_target_" else k): (legacy if k == "_target_" else v) for k, v in experts.items()}
    return data


def config_hash(cfg: DictConfig) -> str:
    """12 hex digits of the resolved config, less what does not change the result (paths, logging, resume
    settings, this package's module paths), in the layout it was first defined on (`hashed_layout`). Runs
    recorded with the hash of older code are matched through
    their config.yaml (`matches_config`)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for volatile in ("paths", "hydra", "logger", "resume", "callbacks", "overrides", "checkpoint_every_n_steps"):
        data.pop(volatile, None)
    data.get("trainer", {}).pop("default_root_dir", None)
    data = without_module_paths(hashed_layout(data))
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(data)).encode()).hexdigest()[:12]


MOVED_GROUPS = {"gate": "composer/gate"}  # a root group of older configs -> the group nested where it is used


def check_moved_groups(arguments: list[str]) -> None:
    """Command-line overrides of a group that moved are refused with where it lives now (Hydra would only say that
    nothing in the defaults list matches): `gate=block` -> `composer/gate=block`, `gate.scope=token` ->
    `composer.gate.scope=token`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides([a for a in arguments if not a.startswith("-")]):
        key = override.key_or_group
        group, _, rest = key.partition(".")
        if group in MOVED_GROUPS and override.package is None:
            value = override.input_line.partition("=")[2]
            hint = f"{MOVED_GROUPS[group].replace('/', '.')}.{rest}={value}" if rest else f"{MOVED_GROUPS[group]}={value}"
            raise ValueError(f"{override.input_line}: the {group} group is nested in the composers that use it now: {hint} "
                             f"(composer=mole; conf/{MOVED_GROUPS[group]}/)")


def validate(cfg: DictConfig) -> None:
    """Cheap checks of the config, before any model or data is loaded."""
    if cfg.mode not in MODES:
        raise ValueError(f"mode={cfg.mode!r} is not one of {list(MODES)}")
    if cfg.mode == "eval" and not cfg.get("checkpoint"):
        raise ValueError("mode=eval needs checkpoint=<a run folder or its checkpoints/composer.safetensors>")
    for key in ("batch_size", "eval_batch_size", "max_source_length", "max_target_length"):
        value = cfg.data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"data.{key}={value!r} must be a positive integer")
    for key in ("train_limit", "eval_limit"):
        value = cfg.data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"data.{key}={value!r} must be a positive integer or null")
    if cfg.data.get("eval_subset", "random") not in EVAL_SUBSETS:
        raise ValueError(f"data.eval_subset={cfg.data.eval_subset!r} is not one of {list(EVAL_SUBSETS)}")
    precheck_experts(cfg.experts)
    check_gate_option(get_class(cfg.composer._target_), cfg.composer.get("gate"))  # before the composer reads its options
    build(cfg.composer, _convert_="all").check_fit_per()  # the composer's options, fit_per included
    check_fit_config(cfg)
    check_gate_guard(cfg.get("gate_guard"))
    max_steps = cfg.trainer.get("max_steps", -1)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps == 0 or max_steps < -1:
        raise ValueError(f"trainer.max_steps={max_steps!r} must be a positive integer (or -1 with max_epochs)")


def generation_settings(cfg: DictConfig) -> GenerationSettings:
    return GenerationSettings(
        batch_size=cfg.data.eval_batch_size,
        num_beams=cfg.generation.num_beams,
        max_source_length=cfg.data.max_source_length,
        max_new_tokens=cfg.generation.get("max_new_tokens"),
        progress=cfg.generation.get("progress", True),
    )
