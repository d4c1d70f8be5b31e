"""Which code made a result: the git commit (if any) and a hash of the package's sources and configs.

Recorded in every run's metrics.json (`code_version`), so results made by different code are told apart
even when their configs are the same (the mini reproduction reuses a finished run only when both match).
"""

from __future__ import annotations

import hashlib
import subprocess
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE_PATHS = ("mole_exp", "conf", "scripts", "train.py", "eval.py", "pyproject.toml")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def sources_hash(root: Path = ROOT) -> str:
    """sha256 (12 hex digits) of every mole_exp/*.py and conf/*.yaml file, by relative path and content."""
    digest = hashlib.sha256()
    files = sorted([*(root / "mole_exp").rglob("*.py"), *(root / "conf").rglob("*.yaml")])
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@lru_cache(maxsize=1)
def code_version() -> dict[str, object]:
    commit = _git("rev-parse", "HEAD")
    # dirty = uncommitted changes to what makes results (the package, configs, entry points), not to docs/
    # or figures a report writes before it reads this.
    status = _git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS) if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status), "sources": sources_hash()}
