"""OmegaConf resolvers used by conf/ (registered on import; train.py and eval.py import this module)."""

from __future__ import annotations

from omegaconf import OmegaConf

from mole_exp.base.family import default_lora_targets_for
from mole_exp.training.eval_run import eval_name
from mole_exp.training.eval_run import run_folder as folder_of
from mole_exp.training.run_folder import folder_name


def run_folder(checkpoint: str) -> str:
    """eval.py: the run folder a `checkpoint=` names (the folder, or its checkpoints/composer.safetensors)."""
    return str(folder_of(checkpoint))


# the in-process tiny bases' model types, read from the model config before any weights exist
TINY_BUILDERS = {"mole_exp.base.models.build_tiny": "t5", "mole_exp.base.models.build_tiny_causal": None}  # None: `architecture`


def lora_targets(model_target: str, architecture: str | None = None) -> list[str] | None:
    """conf/experts/tiny.yaml's `targets`: the base's default LoRA targets (base/family.py default_lora_targets_for:
    T5 [q, v], Llama/Qwen2 [q_proj, v_proj]) where the model config says what the base is (the tiny builders),
    else null, which the tiny library resolves from the loaded model's type."""
    if model_target not in TINY_BUILDERS:
        return None
    return default_lora_targets_for(TINY_BUILDERS[model_target] or str(architecture))


RESOLVERS = {"folder_name": folder_name, "run_folder": run_folder, "eval_name": eval_name, "lora_targets": lora_targets}
for _name, _resolver in RESOLVERS.items():
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)
