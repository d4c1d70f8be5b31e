"""Expert libraries: a folder of PEFT adapters with its manifest (what made it, on which base), or a packaged
list of Hub ids (LoRAHub's 196 modules)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from mole_exp.base.models import BaseModel, weights_fingerprint
from mole_exp.experts.adapters import read_json_file

MANIFEST = "manifest.json"
PACKAGED_ID_LISTS = {"lorahub": "lorahub_modules.txt"}


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
        manifest = read_json_file(folder / MANIFEST, "library manifest")
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
    """The adapters of a listed library (experts=lorahub, paths): `ids` plus the lines of `ids_file` (a path or a packaged list)."""
    ids = list(cfg.get("ids") or [])
    ids_file = cfg.get("ids_file")
    if ids_file:
        path = Path(str(ids_file))
        if path.exists():
            ids += [l.strip() for l in path.read_text().splitlines() if l.strip() and not l.startswith("#")]
        else:
            ids += packaged_id_list(str(ids_file))
    return ids
