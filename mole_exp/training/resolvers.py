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


def run_folder(checkpoint: str) -> str:
    """eval.py: the run folder a `checkpoint=` names (the folder, or its checkpoints/composer.safetensors)."""
    from mole_exp.training.eval_run import run_folder as folder_of

    return str(folder_of(checkpoint))


def eval_name(override_dirname: str) -> str:
    from mole_exp.training.eval_run import eval_name as name

    return name(override_dirname)


for _name, _resolver in (("run_folder", run_folder), ("eval_name", eval_name)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)
