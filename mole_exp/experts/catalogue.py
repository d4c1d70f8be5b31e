"""What each expert was trained on (datasets, task family), and the expert pools built from it (`experts.pool`).

Every expert of a library is described by an `ExpertInfo`: its name and source, the dataset keys of our
suites (`conf/task/*.yaml`) it was trained on, and its task family. That knowledge comes from, later ones
winning:
1. LoRAHub's packaged map (`resources/lorahub_modules.csv`: the 196 modules, their datasets and families,
   with the taxonomy and its sources in the file's header) for LoRAHub Hub ids;
2. a library's manifest entry (`task`, or `tasks` for an adapter trained on several datasets; `family`);
3. `experts.tasks` ({expert name or source: a dataset key or a list of keys}).
A dataset key's family is `DATASET_FAMILY` (FLAN's clusters, the same names as the packaged map).

Pools (`select`): a pure function of the experts config, the suite's dataset keys and the datasets being
scored; it needs no model, so `dry_run=true` can print every sweep member's experts.
- `random`: `count` experts drawn by `pool_seed` (LoRAHub's protocol: `random.seed(s); random.sample(modules, 20)`,
  the same draw for every composer and suite; pool_seed=1..5 are the five pools of LoRAHub's reproduce_bbh.py);
- `in_domain`: the experts trained on the suite's datasets, filled up to `count` with others drawn by `pool_seed`;
- `family`: every expert of `experts.family` (or `count` of them drawn by `pool_seed`);
- `list`: the experts `experts.names` names, in that order; without names, the library in its order (the first
  `count`, or `count` drawn by `experts.seed` with `experts.selection=random`).
`exclude_scored=true` drops first every expert trained on a dataset the composition is scored on.
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from mole_exp.tasks.bbh import BBH_TASKS

POOLS = ("random", "in_domain", "family", "list")
SELECTIONS = ("first", "random")
LORAHUB_MAP_FILE = "lorahub_modules.csv"
LORAHUB_PREFIX = "flan_t5_large-"

# our dataset keys (conf/task/*.yaml) -> task family, in the packaged map's names (FLAN's clusters)
DATASET_FAMILY: dict[str, str] = {
    **dict.fromkeys(("anli_r1", "anli_r2", "anli_r3", "qnli", "wnli"), "nli"),
    **dict.fromkeys(("common_gen", "dart", "e2e_nlg", "web_nlg"), "struct_to_text"),
    **dict.fromkeys(("wmt14_en_fr", "wmt14_fr_en", "wmt16_en_de", "wmt16_de_en", "wmt16_en_ro", "wmt16_ro_en"), "translation"),
    **dict.fromkeys(("arc_easy", "arc_challenge", "natural_questions", "trivia_qa"), "closed_book_qa"),
    **dict.fromkeys(BBH_TASKS, "bbh"),  # BIG-Bench Hard: held out of FLAN, no FLAN cluster
}
# other names of a family that `experts.family` accepts: FLAN's code name, our suite names
FAMILY_ALIASES = {"entailment": "nli", "structure_to_text": "struct_to_text", "struct2text": "struct_to_text",
                  "open_domain_qa": "closed_book_qa", "cbqa": "closed_book_qa"}


@dataclass(frozen=True)
class ModuleInfo:
    """One row of the packaged LoRAHub map."""

    module: str
    hub_id: str
    dataset: str
    template: str
    collection: str
    source_cluster: str
    family: str
    our_datasets: tuple[str, ...]


@lru_cache(maxsize=1)
def lorahub_modules() -> dict[str, ModuleInfo]:
    """LoRAHub's 196 modules by module name (the Hub id without `lorahub/flan_t5_large-`), in LoRAHub's order."""
    text = resources.files("mole_exp.resources").joinpath(LORAHUB_MAP_FILE).read_text(encoding="utf-8")
    rows = csv.DictReader(io.StringIO("".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))))
    return {
        r["module"]: ModuleInfo(r["module"], r["hub_id"], r["dataset"], r["template"], r["collection"], r["source_cluster"],
                                r["family"], tuple(r["our_datasets"].split()))
        for r in rows
    }


def module_of(source: str) -> ModuleInfo | None:
    """The LoRAHub module a source is (its Hub id, or a folder named `flan_t5_large-<module>`), or None."""
    last = str(source).rstrip("/").split("/")[-1]
    module = last.removeprefix(LORAHUB_PREFIX) if last.startswith(LORAHUB_PREFIX) else None
    return lorahub_modules().get(module) if module else None


def lorahub_modules_for(dataset: str) -> list[str]:
    """The LoRAHub modules trained on one of our dataset keys (e.g. `web_nlg` -> [`gem_web_nlg_en`])."""
    return [m.module for m in lorahub_modules().values() if dataset in m.our_datasets]


def known_families() -> set[str]:
    return {m.family for m in lorahub_modules().values()} | set(DATASET_FAMILY.values())


def canonical_family(family: str) -> str:
    return FAMILY_ALIASES.get(str(family), str(family))


@dataclass(frozen=True)
class ExpertInfo:
    name: str
    source: str
    datasets: tuple[str, ...]  # our dataset keys it was trained on (may be empty)
    family: str | None
    module: str | None = None  # LoRAHub's module name, for LoRAHub modules

    def named(self, wanted: str) -> bool:
        return str(wanted) in (self.name, self.source, self.module)


def _as_keys(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def expert_info(name: str, source: str, manifest_entry: dict[str, Any] | None = None, tasks: dict[str, Any] | None = None) -> ExpertInfo:
    """What is known of one expert (see the module docstring for the order of the sources)."""
    module = module_of(source) or module_of(name)
    datasets, family = (module.our_datasets, module.family) if module else ((), None)
    entry = manifest_entry or {}
    if entry.get("tasks") or entry.get("task"):
        datasets = _as_keys(entry.get("tasks") or entry.get("task"))
        family = None
    for key in (name, source):
        if tasks and key in tasks:
            datasets, family = _as_keys(tasks[key]), None
    if family is None:
        families = {DATASET_FAMILY.get(d) for d in datasets} - {None}
        family = families.pop() if len(families) == 1 else None
    family = entry.get("family") or family
    return ExpertInfo(name, source, datasets, family, module.module if module else None)


# ---------------------------------------------------------------- the pool


@dataclass(frozen=True)
class PoolSpec:
    pool: str = "list"
    count: int | None = None
    pool_seed: int = 1
    family: str | None = None
    names: tuple[str, ...] = ()
    exclude_scored: bool = False
    selection: str = "first"  # list pools without names only (the older experts.selection)
    seed: int = 0  # ditto (experts.seed)

    @classmethod
    def from_cfg(cls, cfg: Any) -> PoolSpec:
        pool = cfg.get("pool") or "list"
        if pool not in POOLS:
            raise ValueError(f"experts.pool={pool!r} is not one of {list(POOLS)}")
        count = cfg.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise ValueError(f"experts.count={count!r} must be a positive integer or null (all)")
        pool_seed = cfg.get("pool_seed", 1)
        if isinstance(pool_seed, bool) or not isinstance(pool_seed, int):
            raise ValueError(f"experts.pool_seed={pool_seed!r} must be an integer")
        exclude = cfg.get("exclude_scored", False)
        if not isinstance(exclude, bool):
            raise ValueError(f"experts.exclude_scored={exclude!r} must be true or false")
        selection = cfg.get("selection") or "first"
        if selection not in SELECTIONS:
            raise ValueError(f"experts.selection={selection!r} is not one of {list(SELECTIONS)}")
        names = cfg.get("names")
        if names is not None and (isinstance(names, str) or not all(isinstance(n, (str, int)) for n in names)):
            raise ValueError(f"experts.names={names!r} must be a list of expert names or ids")
        family = cfg.get("family")
        if pool == "family" and not family:
            raise ValueError(f"experts.pool=family needs experts.family (one of {sorted(known_families())})")
        if pool != "list" and names:
            raise ValueError(f"experts.names={list(names)} is for experts.pool=list; experts.pool={pool!r} chooses by itself")
        return cls(pool, count, int(pool_seed), canonical_family(family) if family else None, tuple(str(n) for n in names or ()),
                   exclude, selection, int(cfg.get("seed", 0) or 0))

    def record(self) -> dict[str, Any]:
        return {"pool": self.pool, "pool_seed": self.pool_seed if self.pool != "list" else None, "family": self.family,
                "count": self.count, "names": list(self.names) or None, "exclude_scored": self.exclude_scored}


def _count_fits(count: int, available: int, where: str, what: str = "") -> None:
    if count > available:
        raise ValueError(f"experts.count={count} but the library at {where} holds {available} adapters{what} (allowed 1..{available})")


def _draw(infos: list[ExpertInfo], count: int, seed: int) -> list[ExpertInfo]:
    """`count` of `infos` drawn as LoRAHub draws its pool (random.seed(seed); random.sample(modules, count))."""
    return random.Random(seed).sample(list(infos), count)


def select(
    infos: list[ExpertInfo], spec: PoolSpec, suite_datasets: list[str], scored: list[str], where: str
) -> list[ExpertInfo]:
    """The experts of the pool `spec` describes, out of a library's `infos` (see the module docstring)."""
    candidates = list(infos)
    if spec.exclude_scored:
        candidates = [i for i in infos if not set(i.datasets) & set(scored)]
    dropped = f" once exclude_scored drops {len(infos) - len(candidates)} trained on scored datasets" if spec.exclude_scored else ""
    if spec.pool == "random":
        if spec.count is None:
            return candidates
        _count_fits(spec.count, len(candidates), where, dropped)
        return _draw(candidates, spec.count, spec.pool_seed)
    if spec.pool == "in_domain":
        inside = [i for i in candidates if set(i.datasets) & set(suite_datasets)]
        if spec.count is None:
            if not inside:
                raise ValueError(f"experts.pool=in_domain: no expert of the library at {where} was trained on the suite's datasets "
                                 f"{list(suite_datasets)}{dropped}; set experts.count to fill the pool with others")
            return inside
        if len(inside) > spec.count:
            raise ValueError(f"experts.pool=in_domain: the library at {where} holds {len(inside)} experts trained on the suite's "
                             f"datasets ({[i.name for i in inside]}), more than experts.count={spec.count}; raise it or set it to null")
        others = [i for i in candidates if i not in inside]
        _count_fits(spec.count, len(candidates), where, dropped)
        return inside + _draw(others, spec.count - len(inside), spec.pool_seed)
    if spec.pool == "family":
        allowed = known_families() | {i.family for i in infos if i.family}
        if spec.family not in allowed:
            raise ValueError(f"experts.family={spec.family!r} is not a task family; known: {sorted(allowed)} "
                             f"(aliases: {FAMILY_ALIASES})")
        members = [i for i in candidates if i.family == spec.family]
        if not members:
            raise ValueError(f"experts.family={spec.family!r}: the library at {where} holds no expert of that family{dropped}")
        if spec.count is None:
            return members
        if spec.count > len(members):
            raise ValueError(f"experts.count={spec.count} but the family {spec.family!r} has {len(members)} experts in the library "
                             f"at {where}{dropped} ({[i.name for i in members]}); lower experts.count or set it to null")
        return members if spec.count == len(members) else _draw(members, spec.count, spec.pool_seed)
    if spec.names:  # list
        chosen, unknown = [], []
        for wanted in spec.names:
            match = next((i for i in infos if i.named(wanted)), None)
            if match is None:
                unknown.append(wanted)
            elif match not in candidates:
                raise ValueError(f"experts.names names {wanted!r}, which exclude_scored drops: it was trained on "
                                 f"{sorted(set(match.datasets) & set(scored))}, a scored dataset")
            else:
                chosen.append(match)
        if unknown:
            shown = [i.module or i.name for i in infos]
            raise ValueError(f"experts.names: {unknown} are not in the library at {where}; it holds {len(infos)} experts: "
                             f"{shown[:12]}{' ...' if len(shown) > 12 else ''}")
        if spec.count is not None and spec.count != len(chosen):
            raise ValueError(f"experts.count={spec.count} but experts.names lists {len(chosen)} experts; set experts.count=null")
        return chosen
    if spec.count is None:
        return candidates
    _count_fits(spec.count, len(candidates), where, dropped)
    if spec.selection == "first":
        return candidates[: spec.count]
    return sorted(random.Random(spec.seed).sample(candidates, spec.count), key=candidates.index)


# ---------------------------------------------------------------- the datasets a run's pool depends on


def suite_datasets(task_cfg: Any) -> list[str]:
    """The dataset keys of a suite config (conf/task/*.yaml), after `only`."""
    if task_cfg is None:
        return []
    keys = list((task_cfg.get("datasets") or {}).keys())
    only = task_cfg.get("only")
    return [k for k in keys if k in set(only)] if only else keys


def pool_datasets(cfg: Any) -> tuple[list[str], list[str]]:
    """(the suite the composition is fitted on, the datasets it is scored on) of a run config."""
    suite = suite_datasets(cfg.get("task"))
    scored = suite_datasets(cfg.get("eval_task")) if cfg.get("eval_task") else suite
    return suite, scored
