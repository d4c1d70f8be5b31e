"""OmegaConf resolvers used by conf/ (registered on import; train.py and eval.py import this module)."""

from __future__ import annotations

import re

from omegaconf import OmegaConf


def folder_name(text: str, limit: int = 120) -> str:
    """A safe folder name from a Hydra override string: '/' and other path-unsafe characters become '-'."""
    safe = re.sub(r"[^A-Za-z0-9=,._+\-\[\]]", "-", str(text))
    return safe[:limit] if safe else "run"


if not OmegaConf.has_resolver("folder_name"):
    OmegaConf.register_new_resolver("folder_name", folder_name)
