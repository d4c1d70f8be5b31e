"""From an `experts` config to a validated ExpertBank: the library its source names, the pool out of it, the
adapters read, checked against the base and stacked.

Which adapters: the library (`experts.source`: the tiny library, a library folder, a list of ids, or a random
library matched to a folder) and, out of it, the pool (`experts.pool`: random | in_domain | family | list;
`select_pool`, from what mole_exp/experts/catalogue.py knows of each adapter's datasets and family).
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mole_exp.base.models import BaseModel
from mole_exp.experts.adapters import check_target_modules, read_adapter, validate_against_base
from mole_exp.experts.bank import ExpertBank, stack_experts
from mole_exp.experts.catalogue import ExpertInfo, PoolSpec, expert_info, pool_datasets, select
from mole_exp.experts.library import check_manifest, listed_ids, read_library
from mole_exp.experts.random_library import check_options, ensure_random_library
from mole_exp.experts.tiny_library import ensure_tiny_library, tiny_expert_name

log = logging.getLogger(__name__)


SELECTIONS = ("first", "random")
SOURCES = ("tiny", "library", "list", "random_library")


def precheck(cfg: Any) -> None:
    """The experts config's own errors, found before any model is loaded (source, selection, count, pool)."""
    source = cfg.get("source")
    if source not in SOURCES:
        raise ValueError(f"experts.source={source!r} is not one of {list(SOURCES)}")
    if cfg.get("selection", "first") not in SELECTIONS:
        raise ValueError(f"experts.selection={cfg.get('selection')!r} is not one of {list(SELECTIONS)}")
    count = cfg.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"experts.count={count!r} must be a positive integer or null (all)")
    if source == "random_library":
        check_options(cfg.get("random"))
    PoolSpec.from_cfg(cfg)  # pool, pool_seed, family, names, exclude_scored
    if source == "list" and count is not None:
        ids = listed_ids(cfg)
        if count > len(ids):
            where = cfg.get("ids_file") or "experts.ids"
            raise ValueError(f"experts.count={count} but the library at {where} holds {len(ids)} adapters (allowed 1..{len(ids)})")


def library_entries(cfg: Any, base: BaseModel | None = None) -> tuple[list[tuple[str, str]], dict[str, Any], str]:
    """Every adapter of the experts config's library, in its order: [(name, source)], its manifest, where it is.

    Without `base` nothing is loaded or generated: the tiny library's adapters are then named as it names them,
    with the placeholder source `tiny:<name>` (their folder depends on the base)."""
    source = cfg.get("source")
    if source not in SOURCES:
        raise ValueError(f"experts.source={source!r} is not one of {list(SOURCES)}")
    manifest: dict[str, Any] = {}
    if source == "tiny":
        if base is None:
            names = [tiny_expert_name(i) for i in range(int(cfg.tiny.num_adapters))]
            return [(n, f"tiny:{n}") for n in names], {"adapters": [{"name": n, "task": n} for n in names]}, str(cfg.library_dir)
        folder = ensure_tiny_library(base, cfg.library_dir, **dict(cfg.tiny))
        entries, manifest = read_library(folder)
        where = str(folder)
    elif source == "library":
        if isinstance(cfg, DictConfig) and OmegaConf.is_missing(cfg, "library_dir"):
            raise ValueError("experts=library needs experts.library_dir=<a folder of PEFT adapters, e.g. made by scripts/train_experts.py>")
        entries, manifest = read_library(cfg.library_dir)
        where = str(cfg.library_dir)
    elif source == "random_library":  # seeded LoRAs shaped and norm-matched like the library's (mole_exp/experts/random_library.py)
        folder = ensure_random_library(cfg.library_dir, cfg.get("random"), cfg.random.cache_dir)
        entries, manifest = read_library(folder)
        where = f"{folder} (random, matched to {cfg.library_dir})"
    else:
        ids = listed_ids(cfg)
        ids_file = cfg.get("ids_file")
        if not ids:
            raise ValueError("experts.source=list needs experts.ids (Hub ids or folders) or experts.ids_file")
        entries = [(_short_name(i), i) for i in ids]
        where = str(ids_file or "experts.ids")
    return entries, manifest, where


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
    entries, manifest, where = library_entries(cfg)
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
    entries, manifest, where = library_entries(cfg, base)
    if manifest:
        check_manifest(manifest, base, where)
    chosen = select(expert_infos(cfg, entries, manifest), PoolSpec.from_cfg(cfg), list(suite_datasets), list(scored), where)
    return chosen, manifest, where


def _short_name(source: str) -> str:
    return source.rstrip("/").split("/")[-1]


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
