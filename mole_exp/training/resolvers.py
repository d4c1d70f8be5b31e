"""OmegaConf resolvers used by conf/ (registered on import; train.py and eval.py import this module)."""

from __future__ import annotations

from omegaconf import OmegaConf

from mole_exp.training.eval_run import eval_name
from mole_exp.training.eval_run import run_folder as folder_of
from mole_exp.training.run_folder import folder_name


def run_folder(checkpoint: str) -> str:
    """eval.py: the run folder a `checkpoint=` names (the folder, or its checkpoints/composer.safetensors)."""
    return str(folder_of(checkpoint))


RESOLVERS = {"folder_name": folder_name, "run_folder": run_folder, "eval_name": eval_name}
for _name, _resolver in RESOLVERS.items():
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)
