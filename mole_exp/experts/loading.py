"""From an `experts` config to a validated ExpertBank: the library its source names, the pool out of it, the
adapters read, checked against the base and stacked.

Which adapters: the library (the experts config's `_target_`, a function of mole_exp/experts/sources.py: the tiny
library, a library folder, a list of ids, or a random library matched to a folder) and, out of it, the pool (`experts.pool`: random | in_domain | family | list;
`select_pool`, from what mole_exp/experts/catalogue.py knows of each adapter's datasets and family).
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mole_exp.base.models import BaseModel
from mole_exp.experts import sources
from mole_exp.experts.adapters import check_target_modules, read_adapter, validate_against_base
from mole_exp.experts.bank import ExpertBank, stack_experts
from mole_exp.experts.catalogue import ExpertInfo, PoolSpec, expert_info, pool_datasets, select
from mole_exp.experts.library import check_manifest
from mole_exp.experts.sources import Library

log = logging.getLogger(__name__)


def open_library(cfg: Any, base: BaseModel | None = None) -> Library:
    """The library the experts config names, built from its `_target_` (a function of mole_exp/experts/sources.py).
    Without `base` nothing is loaded or generated (the tiny library is only named)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    target = cfg.get("_target_") if hasattr(cfg, "get") else None
    if not target:
        allowed = [f"{sources.__name__}.{name}" for name in sources.SOURCES]
        raise ValueError(f"the experts config names no library: experts._target_ is missing (one of {allowed}; conf/experts/*)")
    for key in cfg:
        if isinstance(cfg, DictConfig) and OmegaConf.is_missing(cfg, key):
            what = LIBRARY_DIR_HELP if key == "library_dir" else "<a value>"
            raise ValueError(f"experts={str(target).rpartition('.')[2]} needs experts.{key}={what}")
    try:
        source = instantiate(cfg, _partial_=True, _convert_="all")  # the base goes in as an object, not a config
    except InstantiationException as error:  # the source's own error, not Hydra's wrapper
        if isinstance(error.__cause__, (ValueError, TypeError, OSError)):
            raise error.__cause__.with_traceback(error.__cause__.__traceback__) from None
        raise
    library = source(base=base)
    if not isinstance(library, Library):
        raise ValueError(f"experts._target_={target!r} gave a {type(library).__name__}, not a {Library.__name__} (mole_exp/experts/sources.py)")
    return library


LIBRARY_DIR_HELP = "<a folder of PEFT adapters, e.g. made by scripts/train_experts.py>"


def precheck(cfg: Any) -> None:
    """The experts config's own errors, found before any model is loaded: the pool's options (count, selection,
    pool, ...: PoolSpec) and the library's (its `_target_` and what that source reads, e.g. a random library's
    options). The pool against the library (enough adapters, the names it lists) is checked where the pool is
    selected (`select_pool`), also before any model loads."""
    PoolSpec.from_cfg(cfg)
    open_library(cfg)


def expert_infos(cfg: Any, entries: list[tuple[str, str]], manifest: dict[str, Any]) -> list[ExpertInfo]:
    """What is known of each adapter: the datasets it was trained on and its family (mole_exp/experts/catalogue.py)."""
    by_name = {a["name"]: a for a in manifest.get("adapters", [])}
    tasks = dict(cfg.get("tasks") or {})
    unknown = sorted(set(tasks) - {n for n, _ in entries} - {s for _, s in entries})
    if unknown:
        raise ValueError(f"experts.tasks names experts that are not in the library: {unknown} (keys: the experts' names or ids)")
    return [expert_info(name, source, by_name.get(name), tasks) for name, source in entries]


def select_pool(cfg: Any, suite_datasets: list[str] = (), scored: list[str] = ()) -> list[tuple[str, str]]:
    """The (name, source) of every expert the config's pool composes, for a suite of `suite_datasets` scored on
    `scored`, without loading any model (experts.pool: random | in_domain | family | list)."""
    library = open_library(cfg)
    entries, manifest, where = library.entries, library.manifest, library.where
    chosen = select(expert_infos(cfg, entries, manifest), PoolSpec.from_cfg(cfg), list(suite_datasets), list(scored), where)
    return [(i.name, i.source) for i in chosen]


def unit_pool_views(cfg: Any) -> list[tuple[list[str], list[str]]]:
    """The (suite datasets, scored datasets) each distinct expert pool of a run is selected for: one for the
    run, or, with `experts.exclude_scored` and one fit per dataset (`composer.fit_per=dataset`), one per
    scored dataset (each unit's pool drops only its own dataset's module)."""
    suite, scored = pool_datasets(cfg)
    composer = cfg.get("composer") or {}
    if cfg.experts.get("exclude_scored") and composer.get("fit_per") == "dataset":
        return [(suite, [dataset]) for dataset in scored]
    return [(suite, scored)]


def resolve_entries(
    cfg: Any, base: BaseModel, suite_datasets: list[str] = (), scored: list[str] = ()
) -> tuple[list[ExpertInfo], dict[str, Any], str]:
    """The adapters the experts config's pool names, before reading any weights: their infos, the manifest, where."""
    library = open_library(cfg, base)
    entries, manifest, where = library.entries, library.manifest, library.where
    if manifest:
        check_manifest(manifest, base, where)
    chosen = select(expert_infos(cfg, entries, manifest), PoolSpec.from_cfg(cfg), list(suite_datasets), list(scored), where)
    return chosen, manifest, where


def load_experts(cfg: Any, base: BaseModel, suite_datasets: list[str] = (), scored: list[str] = ()) -> ExpertBank:
    """Build the ExpertBank an `experts` config describes, validated against `base`.

    `suite_datasets` / `scored`: the dataset keys of the suite composed for and of the datasets scored, which
    `experts.pool=in_domain` and `experts.exclude_scored` need (mole_exp.experts.catalogue.pool_datasets)."""
    chosen, manifest, _ = resolve_entries(cfg, base, suite_datasets, scored)
    entries = [(i.name, i.source) for i in chosen]
    adapters = []
    for name, source in entries:
        config, modules = read_adapter(source)
        validate_against_base(source, modules, config, base)
        check_target_modules(source, config, modules)
        declared = config.get("base_model_name_or_path")
        if declared and declared != base.model_id and not manifest:
            log.info("adapter %s declares base %r; composing on %r", name, declared, base.model_id)
        adapters.append((config, modules))
    bank = stack_experts([n for n, _ in entries], [s for _, s in entries], adapters, base)
    by_name = {a["name"]: a for a in manifest.get("adapters", [])}
    bank.manifest_entries = [
        {**by_name.get(i.name, {}), "name": i.name, "task": i.datasets[0] if len(i.datasets) == 1 else None,
         "tasks": list(i.datasets), "family": i.family}
        for i in chosen
    ]
    layer_range = cfg.get("layer_range")
    if layer_range is not None:
        layer_range = tuple(float(x) for x in layer_range)
        if len(layer_range) != 2 or not 0.0 <= layer_range[0] < layer_range[1] <= 1.0:
            raise ValueError(f"experts.layer_range={list(layer_range)} must be [start, end] with 0 <= start < end <= 1")
        bank = bank.restrict_depth(layer_range, base)
    return bank
