"""Place local folders into a Hugging Face cache under Hub ids (the standard HF_HUB_CACHE layout).

With such a cache and HF_HUB_OFFLINE=1, the default configs (`google/flan-t5-large`,
`lorahub/flan_t5_large-*`) resolve exactly as they would after a download. Used by the tests of the Hub
path, and handy on an air-gapped cluster: copy folders you have, seed them, run the default configs.

    python -m mole_exp.base.hub_cache <repo_id> <folder> [--cache DIR] [--repo-type dataset]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
from pathlib import Path


def hf_hub_cache_dir() -> Path:
    """The Hugging Face Hub cache: $HF_HUB_CACHE, else $HF_HOME/hub (~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def seed_repo(repo_id: str, folder: str | Path, cache_dir: str | Path | None = None, repo_type: str = "model") -> Path:
    """Copy `folder`'s files into `<cache>/<type>s--<org>--<name>/snapshots/<commit>/` and point refs/main at it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    if repo_id.count("/") != 1:
        raise ValueError(f"repo id {repo_id!r} must look like 'org/name'")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha1()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    commit = digest.hexdigest()
    repo_dir = Path(cache_dir or hf_hub_cache_dir()) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    for path in files:
        target = snapshot / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo_id")
    parser.add_argument("folder")
    parser.add_argument("--cache", default=None, help="cache folder (default: $HF_HUB_CACHE or $HF_HOME/hub)")
    parser.add_argument("--repo-type", default="model", choices=["model", "dataset"], help="a model (default) or a dataset repo")
    args = parser.parse_args()
    print(seed_repo(args.repo_id, args.folder, args.cache, args.repo_type))


if __name__ == "__main__":
    main()
