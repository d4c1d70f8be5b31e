"""LoRA experts: discover PEFT adapters, validate them against the base, stack them into an ExpertBank.

An adapter is a PEFT folder (`adapter_config.json` + `adapter_model.safetensors`) on disk or a Hub id.
The bank holds, per adapted linear, the N experts stacked: `lora_A (N, r, d_in)`, `lora_B (N, d_out, r)`,
`scaling (N,)`. Experts with a smaller rank are zero-padded to the largest rank (exact: padded rows and
columns contribute nothing); an expert that does not adapt a module holds zeros there.

Which adapters: the library (`experts.source`: the tiny library, a library folder, or a list of ids) and,
out of it, the pool (`experts.pool`: random | in_domain | family | list; `select_pool`, from what
mole_exp/experts/catalogue.py knows of each adapter's datasets and family).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from mole_exp.base.hub import from_hub, is_local
from mole_exp.base.models import BaseModel, weights_fingerprint
from mole_exp.experts.catalogue import ExpertInfo, PoolSpec, expert_info, select
from mole_exp.files import staging_dir

log = logging.getLogger(__name__)

SELECTIONS = ("first", "random")
SOURCES = ("tiny", "library", "list", "random_library")
MANIFEST = "manifest.json"
PACKAGED_ID_LISTS = {"lorahub": "lorahub_modules.txt"}


@dataclass
class TargetExperts:
    """The N experts of one adapted linear, stacked."""

    lora_A: torch.Tensor  # (N, r, d_in)
    lora_B: torch.Tensor  # (N, d_out, r)
    scaling: torch.Tensor  # (N,)

    def select(self, indices: list[int]) -> TargetExperts:
        index = torch.as_tensor(indices, dtype=torch.long)
        return TargetExperts(self.lora_A[index], self.lora_B[index], self.scaling[index])

    def delta_weights(self) -> torch.Tensor:
        """Each expert's full delta s_i B_i A_i."""
        return torch.einsum("nor,nri,n->noi", self.lora_B, self.lora_A, self.scaling)  # (N, d_out, d_in)


@dataclass
class ExpertBank:
    names: list[str]
    targets: dict[str, TargetExperts]  # module name -> stacked experts
    sources: list[str]
    adapter_configs: list[dict[str, Any]] = field(default_factory=list)
    manifest_entries: list[dict[str, Any]] = field(default_factory=list)
    rank_padding: dict[str, dict[str, int]] = field(default_factory=dict)  # expert -> {rank, padded_to} (zero-padded)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def rank(self) -> int:
        return max(t.lora_A.shape[1] for t in self.targets.values())

    def indices(self, names_or_indices: list[str | int], what: str = "composer.mask") -> list[int]:
        """Resolve expert names or integer indices; unknown ones raise naming what is allowed."""
        resolved = []
        for item in names_or_indices:
            if isinstance(item, int) or (isinstance(item, str) and item.lstrip("-").isdigit()):
                index = int(item)
                if not 0 <= index < len(self):
                    raise ValueError(f"{what}: expert index {index} is out of range; allowed 0..{len(self) - 1}")
                resolved.append(index)
            elif item in self.names:
                resolved.append(self.names.index(item))
            else:
                raise ValueError(f"{what}: unknown expert {item!r}; the composed experts are {self.names}")
        return resolved

    def select(self, indices: list[int]) -> ExpertBank:
        return ExpertBank(
            names=[self.names[i] for i in indices],
            targets={name: t.select(indices) for name, t in self.targets.items()},
            sources=[self.sources[i] for i in indices],
            adapter_configs=[self.adapter_configs[i] for i in indices] if self.adapter_configs else [],
            manifest_entries=[self.manifest_entries[i] for i in indices] if self.manifest_entries else [],
            rank_padding={self.names[i]: self.rank_padding[self.names[i]] for i in indices if self.names[i] in self.rank_padding},
        )

    def restrict_depth(self, layer_range: tuple[float, float], base: BaseModel) -> ExpertBank:
        """Keep only the adapted linears whose block lies inside `layer_range` (fractions of depth).

        See `ModelFamily.depth_fraction`: each stack is counted on its own, from its input end (0.0) to
        its output end (1.0); a block is kept when its centre lies in [start, end].
        """
        start, end = layer_range
        kept = {}
        for name, experts in self.targets.items():
            block_start, block_end = base.family.depth_fraction(base.model, name)
            centre = (block_start + block_end) / 2
            if start <= centre <= end:
                kept[name] = experts
        if not kept:
            raise ValueError(f"experts.layer_range={list(layer_range)} keeps no adapted module of this model")
        return ExpertBank(self.names, kept, self.sources, self.adapter_configs, self.manifest_entries, self.rank_padding)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ExpertBank:
        moved = {
            name: TargetExperts(
                t.lora_A.to(device=device, dtype=dtype),
                t.lora_B.to(device=device, dtype=dtype),
                t.scaling.to(device=device, dtype=dtype),
            )
            for name, t in self.targets.items()
        }
        return ExpertBank(self.names, moved, self.sources, self.adapter_configs, self.manifest_entries, self.rank_padding)


# ---------------------------------------------------------------- reading one PEFT adapter


def _alpha_for(module: str, config: dict[str, Any]) -> float:
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?{pattern}", module):
            return float(alpha)
    return float(config["lora_alpha"])


def read_adapter(source: str) -> tuple[dict[str, Any], dict[str, tuple[torch.Tensor, torch.Tensor, float]]]:
    """Read one PEFT LoRA adapter: (its config, {module name: (A (r, d_in), B (d_out, r), scaling)})."""
    from peft.utils import load_peft_weights

    if is_local(source):
        folder = Path(source)
        if not (folder / "adapter_config.json").exists():
            raise ValueError(f"adapter folder {folder} has no adapter_config.json (not a PEFT adapter)")
        if not any((folder / f).exists() for f in ("adapter_model.safetensors", "adapter_model.bin")):
            raise ValueError(f"adapter folder {folder} has no adapter_model.safetensors (or .bin) weights file")
        config = _read_json(folder / "adapter_config.json", "adapter config")
    else:
        from huggingface_hub import hf_hub_download

        config_path = from_hub("adapter", source, lambda: hf_hub_download(source, "adapter_config.json"))
        config = _read_json(Path(config_path), "adapter config")
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"adapter {source}: peft_type={config.get('peft_type')!r}; only LORA adapters can be composed")
    for unsupported in ("use_dora",):
        if config.get(unsupported):
            raise ValueError(f"adapter {source}: {unsupported}=true is not supported (plain LoRA only)")
    if config.get("lora_bias"):
        raise ValueError(f"adapter {source}: lora_bias=true is not supported (plain LoRA only)")
    try:
        state = from_hub("adapter", source, lambda: load_peft_weights(source, device="cpu"))
    except Exception as error:  # safetensors raises its own error type on a corrupt file
        if type(error).__name__ in ("SafetensorError", "HeaderTooLarge", "UnpicklingError", "RuntimeError"):
            raise ValueError(f"adapter {source}: its weights file cannot be read ({error})") from error
        raise
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = re.fullmatch(r"(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_A|lora_B)(?:\.[^.]+)?\.weight", key)
        if match is None:
            raise ValueError(f"adapter {source}: unexpected tensor {key!r} (only lora_A / lora_B weights are supported)")
        modules.setdefault(match["module"], {})[match["part"]] = tensor
    result = {}
    use_rslora = bool(config.get("use_rslora"))
    for module, parts in modules.items():
        if set(parts) != {"lora_A", "lora_B"}:
            raise ValueError(f"adapter {source}: module {module} has {sorted(parts)}, needs both lora_A and lora_B")
        lora_A, lora_B = parts["lora_A"], parts["lora_B"]
        rank = lora_A.shape[0]
        if lora_B.shape[1] != rank:
            raise ValueError(f"adapter {source}: module {module} has lora_A rank {rank} but lora_B {tuple(lora_B.shape)}")
        alpha = _alpha_for(module, config)
        scaling = alpha / (rank**0.5) if use_rslora else alpha / rank
        result[module] = (lora_A.float(), lora_B.float(), scaling)
    if not result:
        raise ValueError(f"adapter {source}: holds no LoRA weights")
    return config, result


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {path} is not valid JSON ({error})") from error


def validate_against_base(source: str, modules: dict[str, tuple], config: dict, base: BaseModel) -> None:
    named = dict(base.model.named_modules())
    for module, (lora_A, lora_B, _) in modules.items():
        if module not in named:
            example = next(iter(n for n, m in named.items() if isinstance(m, nn.Linear) and "block" in n), "")
            raise ValueError(
                f"adapter {source} targets module {module!r}, which the base model {base.model_id} does not have "
                f"(adapter made for {config.get('base_model_name_or_path')!r}?; base modules look like {example!r})"
            )
        layer = named[module]
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"adapter {source} targets {module!r}, a {type(layer).__name__}; only nn.Linear is supported")
        base.family.position(module)  # a block linear of this family, or a clear error
        if lora_A.shape[1] != layer.in_features or lora_B.shape[0] != layer.out_features:
            raise ValueError(
                f"adapter {source}: module {module} has shapes A {tuple(lora_A.shape)}, B {tuple(lora_B.shape)} but the "
                f"base layer is {layer.out_features} x {layer.in_features} (adapter made for "
                f"{config.get('base_model_name_or_path')!r}, base is {base.model_id})"
            )


def check_target_modules(source: str, config: dict[str, Any], modules: dict[str, tuple]) -> None:
    """adapter_config.json's target_modules must describe the weights: each entry adapts some module of the
    weights, and each module of the weights is named by an entry (PEFT's matching: exact name or suffix; a
    string is a regular expression on the full name)."""
    targets = config.get("target_modules")
    if targets is None or targets == "all-linear":
        return
    names = sorted(modules)

    def matches(entry: str, name: str) -> bool:
        return bool(re.fullmatch(entry, name)) if isinstance(targets, str) else name == entry or name.endswith("." + entry)

    entries = [targets] if isinstance(targets, str) else list(targets)
    adapted = sorted({n.rsplit(".", 1)[-1] for n in names})
    unmatched = [e for e in entries if not any(matches(e, n) for n in names)]
    if unmatched:
        raise ValueError(
            f"adapter {source}: adapter_config.json target_modules names {unmatched}, which match no module of its weights "
            f"(the weights adapt {adapted}); the config does not describe these weights"
        )
    uncovered = [n for n in names if not any(matches(e, n) for e in entries)]
    if uncovered:
        raise ValueError(
            f"adapter {source}: its weights adapt {uncovered[:3]}{' ...' if len(uncovered) > 3 else ''}, which "
            f"adapter_config.json target_modules={entries} does not name; the config does not describe these weights"
        )


def stack_experts(
    names: list[str], sources: list[str], adapters: list[tuple[dict, dict]], base: BaseModel
) -> ExpertBank:
    """Stack per-adapter weights into per-module tensors (zero-padding ranks and absent modules)."""
    all_modules = sorted({m for _, modules in adapters for m in modules})
    named = dict(base.model.named_modules())
    dtype = next(base.model.parameters()).dtype
    targets: dict[str, TargetExperts] = {}
    for module in all_modules:
        layer = named[module]
        rank = max(modules[module][0].shape[0] for _, modules in adapters if module in modules)
        n = len(adapters)
        lora_A = torch.zeros(n, rank, layer.in_features)
        lora_B = torch.zeros(n, layer.out_features, rank)
        scaling = torch.zeros(n)
        for i, (_, modules) in enumerate(adapters):
            if module in modules:
                a, b, s = modules[module]
                lora_A[i, : a.shape[0]] = a
                lora_B[i, :, : b.shape[1]] = b
                scaling[i] = s
        targets[module] = TargetExperts(lora_A.to(dtype), lora_B.to(dtype), scaling.to(dtype))
    missing = [(names[i], len(all_modules) - len(modules)) for i, (_, modules) in enumerate(adapters) if len(modules) < len(all_modules)]
    if missing:
        log.warning("experts adapt different module sets; zeros stand in where an expert has none: %s", missing)
    padding = rank_padding(names, adapters)
    if padding:
        log.warning("experts of different ranks: zero-padded to rank %d (exact: the padding contributes nothing): %s",
                    max(p["padded_to"] for p in padding.values()), {n: p["rank"] for n, p in padding.items()})
    return ExpertBank(names=names, targets=targets, sources=sources, adapter_configs=[c for c, _ in adapters], rank_padding=padding)


def rank_padding(names: list[str], adapters: list[tuple[dict, dict]]) -> dict[str, dict[str, int]]:
    """Experts whose rank is below the largest rank of a module they adapt: {name: {rank, padded_to}}."""
    largest: dict[str, int] = {}
    for _, modules in adapters:
        for module, (lora_A, _, _) in modules.items():
            largest[module] = max(largest.get(module, 0), lora_A.shape[0])
    padded = {}
    for name, (_, modules) in zip(names, adapters, strict=True):
        short = [(m[0].shape[0], largest[module]) for module, m in modules.items() if m[0].shape[0] < largest[module]]
        if short:
            padded[name] = {"rank": min(r for r, _ in short), "padded_to": max(p for _, p in short)}
    return padded


# ---------------------------------------------------------------- libraries and selection


def packaged_id_list(name: str) -> list[str]:
    if name not in PACKAGED_ID_LISTS:
        raise ValueError(f"experts.ids_file={name!r}: not a file and not a packaged list {sorted(PACKAGED_ID_LISTS)}")
    text = resources.files("mole_exp.resources").joinpath(PACKAGED_ID_LISTS[name]).read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def read_library(folder: str | Path) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """(name, path) of every adapter in a library folder, and its manifest ({} when it has none)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"experts.library_dir={str(folder)!r} is not a folder")
    manifest: dict[str, Any] = {}
    if (folder / MANIFEST).exists():
        manifest = _read_json(folder / MANIFEST, "library manifest")
        entries = [(a["name"], str(folder / a.get("path", a["name"]))) for a in manifest.get("adapters", [])]
    else:
        entries = sorted((p.name, str(p)) for p in folder.iterdir() if (p / "adapter_config.json").exists())
    if not entries:
        raise ValueError(f"experts.library_dir={str(folder)!r} holds no PEFT adapters (no */adapter_config.json)")
    return entries, manifest


def check_manifest(manifest: dict[str, Any], base: BaseModel, where: str) -> None:
    expected = manifest.get("base_model_id")
    if expected is not None and expected != base.model_id:
        raise ValueError(
            f"the library at {where} was trained on base {expected!r} but the base model is {base.model_id!r}; "
            f"choose the matching model= option or another library"
        )
    fingerprint = manifest.get("base_fingerprint")
    if fingerprint is not None and fingerprint != weights_fingerprint(base.model):
        raise ValueError(
            f"the library at {where} was trained on a base with weights fingerprint {fingerprint} but the loaded "
            f"base {base.model_id!r} has {weights_fingerprint(base.model)} (same name, different weights)"
        )


def listed_ids(cfg: Any) -> list[str]:
    """The adapters of an `experts.source=list` config: `ids` plus the lines of `ids_file` (a path or a packaged list)."""
    ids = list(cfg.get("ids") or [])
    ids_file = cfg.get("ids_file")
    if ids_file:
        path = Path(str(ids_file))
        if path.exists():
            ids += [l.strip() for l in path.read_text().splitlines() if l.strip() and not l.startswith("#")]
        else:
            ids += packaged_id_list(str(ids_file))
    return ids


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
        from mole_exp.experts.random_library import check_options

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
        from mole_exp.experts.random_library import ensure_random_library

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
    from mole_exp.experts.catalogue import pool_datasets

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


# ---------------------------------------------------------------- the tiny library (made by PEFT itself)


def tiny_expert_name(index: int) -> str:
    return f"tiny_expert_{index:02d}"


def ensure_tiny_library(
    base: BaseModel,
    library_dir: str,
    num_adapters: int = 8,
    rank: int = 4,
    alpha: int = 8,
    targets: list[str] | tuple[str, ...] = ("q", "v"),
    seed: int = 0,
) -> Path:
    """A library of seeded random PEFT LoRA adapters for a tiny base, generated on first use and cached."""
    from peft import LoraConfig, get_peft_model

    spec = {"base_model_id": base.model_id, "n": num_adapters, "r": rank, "alpha": alpha, "targets": list(targets), "seed": seed}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(os.path.expanduser(str(library_dir))) / key
    if (folder / MANIFEST).exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(folder.parent, f".{key}-")
    adapters = []
    rng_state = torch.random.get_rng_state()
    try:
        for i in range(num_adapters):
            name = tiny_expert_name(i)
            torch.manual_seed(seed * 10_000 + i)
            peft_model = get_peft_model(
                copy.deepcopy(base.model),
                LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, init_lora_weights=False),
            )
            peft_model.peft_config["default"].base_model_name_or_path = base.model_id
            peft_model.save_pretrained(str(staging / name), save_embedding_layers=False)
            adapters.append({"name": name, "path": name, "task": name, "rank": rank, "targets": list(targets)})
        manifest = {
            "kind": "tiny-random",
            "base_model_id": base.model_id,
            "base_fingerprint": weights_fingerprint(base.model),
            "adapters": adapters,
            **{k: v for k, v in spec.items() if k != "base_model_id"},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        try:
            os.rename(staging, folder)
        except OSError:  # another process made it first: theirs is equivalent (same seed)
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        torch.random.set_rng_state(rng_state)
        if staging.exists() and staging != folder:
            shutil.rmtree(staging, ignore_errors=True)
    if not (folder / MANIFEST).exists():
        warnings.warn(f"tiny library at {folder} could not be created", stacklevel=2)
    return folder
