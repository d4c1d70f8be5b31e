"""Before anything downloads: every Hub artifact a run needs, checked at once, offline in seconds.

From the config alone (`needed_artifacts`): the base model (and its tokenizer), every expert adapter the
experts config selects, and every dataset the suites take from the Hub (no local copy). When the Hub is
off (`HF_HUB_OFFLINE=1`) or cannot be reached (one connection attempt, a few seconds at most), the process
switches the Hub libraries to offline mode, so that nothing retries, and `check_hub_artifacts` raises one
`HubUnavailableError` that lists every artifact missing from the local caches, each with its download
command, and the local alternatives. With the Hub reachable nothing is checked: the loaders download.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mole_exp.base.hub import HubUnavailableError, is_local, split_hub_path

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
TRUE = {"1", "true", "yes", "on"}
MODEL_FILES = ("config.json",)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
ADAPTER_FILES = ("adapter_config.json",)
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class Artifact:
    kind: str  # model | tokenizer | adapter | dataset
    repo_id: str
    used_for: str = ""  # e.g. the dataset keys that read it
    optional: bool = False  # a dataset the run records as skipped when it cannot be had

    @property
    def repo_type(self) -> str:
        return "dataset" if self.kind == "dataset" else "model"

    @property
    def download(self) -> str:
        if self.kind == "adapter":  # an adapter may live in a subfolder of its repo (user/repo/<subfolder>)
            repo, subfolder = split_hub_path(self.repo_id)
            return f"hf download {repo}" + (f" --include '{subfolder}/*'" if subfolder else "")
        return f"hf download {self.repo_id}" + (" --repo-type dataset" if self.repo_type == "dataset" else "")


# ---- what a run needs ------------------------------------------------------------------------------------


PATH_PREFIXES = ("/", "./", "../", "~")


def model_artifacts(model_cfg: Any) -> list[Artifact]:
    name = model_cfg.get("name_or_path")
    for value, key in ((name, "name_or_path"), (model_cfg.get("tokenizer"), "tokenizer")):
        if value and str(value).startswith(PATH_PREFIXES) and not is_local(str(value)):
            raise FileNotFoundError(f"model.{key}={str(value)!r} is a path that does not exist (a Hub id looks like 'org/name')")
    found = []
    if name and not is_local(str(name)):
        found.append(Artifact("model", str(name)))
    tokenizer = model_cfg.get("tokenizer")
    if tokenizer and tokenizer != name and not is_local(str(tokenizer)):
        found.append(Artifact("tokenizer", str(tokenizer)))
    return found


def adapter_artifacts(cfg: Any) -> list[Artifact]:
    """The Hub adapters of the run's expert pool (every fit unit's pool, when units differ in it)."""
    from mole_exp.experts.loading import open_library, select_pool, unit_pool_views

    if not open_library(cfg.experts).hub:
        return []
    sources = {source: None for suite, scored in unit_pool_views(cfg) for _, source in select_pool(cfg.experts, suite, scored)}
    return [Artifact("adapter", source) for source in sources if not is_local(source)]


def dataset_artifacts(task: Any) -> list[Artifact]:
    """The Hub datasets a Task (built, not loaded) reads: all of them when its source is the Hub."""
    from mole_exp.tasks.base import LOADERS

    if task.source != "hub":
        return []
    by_repo: dict[str, list[str]] = {}
    optional: dict[str, bool] = {}
    for key, spec in task.specs.items():
        loader = LOADERS[spec.loader]
        args = {**task.args, **dict(spec.args)}
        default = inspect.signature(loader).parameters.get("hub_id")
        repo = args.get("hub_id") or (default.default if default is not None else None)
        if repo:
            by_repo.setdefault(str(repo), []).append(key)
            optional[str(repo)] = optional.get(str(repo), True) and bool(getattr(loader, "hub_optional", False))
    return [Artifact("dataset", repo, ", ".join(keys), optional[repo]) for repo, keys in by_repo.items()]


def needed_artifacts(cfg: Any, tasks: list[Any]) -> list[Artifact]:
    found = model_artifacts(cfg.model) + adapter_artifacts(cfg)
    for task in tasks:
        found += [a for a in dataset_artifacts(task) if a.repo_id not in {f.repo_id for f in found}]
    return found


# ---- is it here? -----------------------------------------------------------------------------------------


def hub_cache_dir() -> Path:
    from mole_exp.base.hub_cache import hf_hub_cache_dir

    return Path(hf_hub_cache_dir())


def datasets_cache_dir() -> Path:
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "datasets"


def snapshot_files(repo_id: str, repo_type: str) -> set[str]:
    """The files of the cached snapshot that refs/main points to (empty when not cached)."""
    repo_dir = hub_cache_dir() / f"{repo_type}s--{repo_id.replace('/', '--')}"
    try:
        commit = (repo_dir / "refs" / "main").read_text().strip()
    except OSError:
        snapshots = sorted((repo_dir / "snapshots").glob("*")) if (repo_dir / "snapshots").is_dir() else []
        if not snapshots:
            return set()
        commit = snapshots[-1].name
    snapshot = repo_dir / "snapshots" / commit
    return {str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file()} if snapshot.is_dir() else set()


def is_cached(artifact: Artifact) -> bool:
    files = snapshot_files(artifact.repo_id, artifact.repo_type)
    if artifact.kind == "model":
        return set(MODEL_FILES) <= files and any(w in files for w in WEIGHT_FILES)
    if artifact.kind == "tokenizer":
        return any(name.startswith(("tokenizer", "spiece")) for name in files)
    if artifact.kind == "adapter":
        repo, subfolder = split_hub_path(artifact.repo_id)
        files = snapshot_files(repo, artifact.repo_type) if subfolder else files
        inside = f"{subfolder}/" if subfolder else ""
        return {inside + f for f in ADAPTER_FILES} <= files and any(inside + w in files for w in ADAPTER_WEIGHTS)
    prepared = datasets_cache_dir() / artifact.repo_id.replace("/", "___")
    return bool(files) or prepared.is_dir()


# ---- is the Hub there? -----------------------------------------------------------------------------------


def offline_reason(timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why the Hub cannot be used here (None: it can): HF_HUB_OFFLINE, or one failed connection attempt."""
    if str(os.environ.get("HF_HUB_OFFLINE", "")).lower() in TRUE or str(os.environ.get("TRANSFORMERS_OFFLINE", "")).lower() in TRUE:
        return "HF_HUB_OFFLINE=1 is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        return f"the Hub ({host}:{port}) cannot be reached ({type(error).__name__}: {error})"


def go_offline() -> None:
    """Switch the Hub libraries of this process to their offline mode (no retries, cache only)."""
    import sys

    os.environ["HF_HUB_OFFLINE"] = "1"
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True
    if "datasets.config" in sys.modules:
        sys.modules["datasets.config"].HF_HUB_OFFLINE = True


# ---- the one error ---------------------------------------------------------------------------------------


def missing_message(reason: str, missing: list[Artifact], skipped: list[Artifact], data_dir: str | None) -> str:
    lines = [f"this run needs {len(missing)} artifact(s) from the Hugging Face Hub that are not in the local cache "
             f"{hub_cache_dir()}, and {reason}:"]
    for artifact in missing:
        used = f" ({artifact.used_for})" if artifact.used_for else ""
        lines.append(f"  - {artifact.kind} {artifact.repo_id}{used}: {artifact.download}")
    if skipped:
        lines.append("also unavailable, recorded as skipped if the rest were here: "
                     + "; ".join(f"{a.repo_id} ({a.used_for}): {a.download}" for a in skipped))
    lines += [
        "Either download them where there is network and copy the Hugging Face cache (HF_HOME / HF_HUB_CACHE) here, then "
        "run with HF_HUB_OFFLINE=1; or put local folders into the cache under these ids: "
        "python -m mole_exp.base.hub_cache <repo_id> <folder> [--repo-type dataset]; or use local copies:",
        "  model=local model.name_or_path=<folder>;  experts=library experts.library_dir=<folder> (or experts=paths experts.ids=[<folders>])",
    ]
    if any(a.kind == "dataset" for a in missing + skipped):
        where = f"{data_dir} (which does not exist)" if data_dir and not Path(data_dir).is_dir() else str(data_dir)
        lines.append(f"  task data: the shared data folder, by MOLE_EXP_DATA=<folder> or paths.data_dir=<folder> (now {where}; "
                     "the default is ../shared/data beside the repository), with task.source=auto or local")
    return "\n".join(lines)


def check_hub_artifacts(cfg: Any, tasks: list[Any]) -> list[Artifact]:
    """Raise one HubUnavailableError naming every missing artifact when the Hub cannot be used; returns the
    artifacts checked (none when the run needs nothing from the Hub or the Hub is reachable)."""
    needed = needed_artifacts(cfg, tasks)
    if not needed:
        return []
    reason = offline_reason()
    if reason is None:
        return []
    go_offline()
    absent = [a for a in needed if not is_cached(a)]
    missing, skipped = [a for a in absent if not a.optional], [a for a in absent if a.optional]
    if missing:
        data_dir = cfg.get("paths", {}).get("data_dir") if hasattr(cfg, "get") else None
        raise HubUnavailableError(missing_message(reason, missing, skipped, data_dir))
    log.info("working offline (%s): the %d Hub artifact(s) this run needs are in the local cache", reason, len(needed) - len(skipped))
    return needed
