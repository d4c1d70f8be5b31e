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


# the in-process bases' model types, read from the model config before any weights exist (None: its `architecture`)
BUILT_IN_PROCESS = {
    "mole_exp.base.models.build_tiny": "t5",
    "mole_exp.tools.mini.small_base.build_small_synthetic": "t5",
    "mole_exp.base.models.build_tiny_causal": None,
    "mole_exp.tools.mini.small_causal_base.build_small_synthetic_causal": None,
}


def lora_targets(model_target: str, architecture: str | None = None) -> list[str] | None:
    """conf/experts/tiny.yaml's `targets`: the base's default LoRA targets (base/family.py default_lora_targets_for:
    T5 [q, v], Llama/Qwen2 [q_proj, v_proj]) where the model config says what the base is (the bases built in
    process), else null, which the tiny library resolves from the loaded checkpoint's model type. (A config written
    before targets could be null, with a Hub or local checkpoint and experts=tiny, recorded [q, v]: such a run's
    hash differs from today's composition of its overrides, and `resume=true` starts it afresh.)"""
    if model_target not in BUILT_IN_PROCESS:
        return None
    if hasattr(architecture, "get"):  # small_synthetic_causal nests its shape: model.architecture.architecture
        architecture = architecture.get("architecture")
    model_type = BUILT_IN_PROCESS[model_target] or architecture
    if not model_type:
        raise ValueError(f"model config {model_target} names no `architecture`; the tiny library's default targets need it")
    return default_lora_targets_for(str(model_type))


RESOLVERS = {"folder_name": folder_name, "run_folder": run_folder, "eval_name": eval_name, "lora_targets": lora_targets}
for _name, _resolver in RESOLVERS.items():
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)
