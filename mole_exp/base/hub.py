"""The one door to the Hugging Face Hub.

Every model, tokenizer, adapter or dataset that may come from the Hub is resolved through
`from_hub`, which turns the Hub library's many offline/network errors into one message that says
what to download, or which local path or `HF_HUB_OFFLINE` cache to use instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mole_exp.base.hub_cache import hf_hub_cache_dir

T = TypeVar("T")


class HubUnavailableError(RuntimeError):
    """A Hub id could not be resolved from the network or the local cache."""


def is_local(name_or_path: str) -> bool:
    return Path(os.path.expanduser(str(name_or_path))).exists()


def split_hub_path(source: str) -> tuple[str, str | None]:
    """A Hub adapter id, possibly inside a repo's subfolder: "user/repo" -> ("user/repo", None),
    "user/repo/ts_expert_0" -> ("user/repo", "ts_expert_0") (as PEFT's Arrow loader reads them)."""
    parts = str(source).strip("/").split("/")
    if len(parts) <= 2:
        return str(source), None
    return "/".join(parts[:2]), "/".join(parts[2:])


def offline_help(what: str, repo_id: str) -> str:
    cache = hf_hub_cache_dir()
    mode = "HF_HUB_OFFLINE=1 is set" if os.environ.get("HF_HUB_OFFLINE") == "1" else "the Hub is unreachable"
    repo_type = " --repo-type dataset" if what == "dataset" else ""
    local = ("use the local copy of the task data (MOLE_EXP_DATA=<folder> or paths.data_dir=<folder>; default ../shared/data)"
             if what == "dataset" else "pass a local folder path instead of the Hub id")
    return (
        f"could not load {what} {repo_id!r}: {mode} and it is not in the local cache {cache}. "
        f"Either download it on a machine with network access "
        f"(`hf download {repo_id}{repo_type}`; then keep HF_HUB_OFFLINE=1 here) and copy the cache (HF_HOME / HF_HUB_CACHE) here, "
        f"or {local}."
    )


def from_hub(what: str, repo_id: str, load: Callable[[], T]) -> T:
    """Run `load()` (a Hub-aware loader); wrap network/cache failures in one clear error."""
    try:
        return load()
    except (OSError, ValueError) as error:  # the Hub library raises OSError subclasses offline
        if is_local(repo_id):
            raise
        text = str(error)
        network_markers = (
            "offline",
            "Offline",
            "connect",
            "Connection",
            "resolve",
            "huggingface.co",
            "LocalEntryNotFound",
            "couldn't find",
            "Cannot find",
            "outgoing traffic",
            "not a valid model identifier",
            "does not appear to have",
            "Can't find weights",
        )
        if any(marker in text or marker in type(error).__name__ for marker in network_markers):
            raise HubUnavailableError(offline_help(what, repo_id)) from error
        raise
