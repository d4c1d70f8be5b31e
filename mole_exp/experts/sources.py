"""Where a run's experts come from: the `_target_` of every `conf/experts/*` option, built by Hydra
(`open_library`). Each function returns the `Library` it names, every adapter in the library's order.

The experts config's other keys (`count`, `pool`, `pool_seed`, `family`, `names`, `exclude_scored`,
`selection`, `seed`, `tasks`, `layer_range`) describe the pool taken out of the library and what each
adapter was trained on; they are read by mole_exp/experts/loading.py, not here (`**pool_options`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mole_exp.base.models import BaseModel
from mole_exp.experts.library import listed_ids, read_library
from mole_exp.experts.random_library import ensure_random_library
from mole_exp.experts.tiny_library import ensure_tiny_library, tiny_expert_name


@dataclass
class Library:
    entries: list[tuple[str, str]]  # [(name, where the adapter is: a folder or a Hub id)], in the library's order
    manifest: dict[str, Any] = field(default_factory=dict)
    where: str = ""
    hub: bool = False  # adapters named by Hub id may need the Hub (mole_exp/training/hub_preflight.py)


def tiny(library_dir: str, tiny: dict[str, Any], base: BaseModel | None = None, **pool_options: Any) -> Library:
    """Real PEFT adapters for the tiny bases (T5, Llama, Qwen2), made by PEFT on first use (seeded) under `library_dir`. Without `base`
    nothing is made: the adapters are named as the library names them, at the placeholder `tiny:<name>`."""
    if base is None:
        names = [tiny_expert_name(i) for i in range(int(tiny["num_adapters"]))]
        return Library([(n, f"tiny:{n}") for n in names], {"adapters": [{"name": n, "task": n} for n in names]}, str(library_dir))
    folder = ensure_tiny_library(base, library_dir, **dict(tiny))
    entries, manifest = read_library(folder)
    return Library(entries, manifest, str(folder))


def library(library_dir: str, base: BaseModel | None = None, **pool_options: Any) -> Library:
    """A folder of PEFT adapters, one sub-folder each, with the manifest.json scripts/train_experts.py writes."""
    entries, manifest = read_library(library_dir)
    return Library(entries, manifest, str(library_dir))


def listed(ids: list[str] | None = None, ids_file: str | None = None, base: BaseModel | None = None, **pool_options: Any) -> Library:
    """Adapters by Hub id or folder: `ids` plus the lines of `ids_file` (a path, or a packaged list such as `lorahub`)."""
    found = listed_ids({"ids": ids, "ids_file": ids_file})
    if not found:
        raise ValueError("experts=paths / lorahub need experts.ids (Hub ids or folders) or experts.ids_file")
    return Library([(i.rstrip("/").split("/")[-1], i) for i in found], {}, str(ids_file or "experts.ids"), hub=True)


def random_library(library_dir: str, random: dict[str, Any], base: BaseModel | None = None, **pool_options: Any) -> Library:
    """Seeded random LoRAs shaped and norm-matched like the library at `library_dir`'s (made once under
    `random.cache_dir`; mole_exp/experts/random_library.py checks `random.seed` and `random.match`)."""
    folder = ensure_random_library(library_dir, random, random["cache_dir"])
    entries, manifest = read_library(folder)
    return Library(entries, manifest, f"{folder} (random, matched to {library_dir})")


SOURCES = {f.__name__: f for f in (tiny, library, listed, random_library)}
LEGACY_SOURCES = {"tiny": "tiny", "library": "library", "list": "listed", "random_library": "random_library"}  # experts.source= of older configs


def source_name(experts: Any) -> str:
    """The short name of the library an experts config names (`tiny`, `library`, `listed`, `random_library`)."""
    return str(experts.get("_target_") or "?").rpartition(".")[2]
