"""One PEFT LoRA adapter (`adapter_config.json` + `adapter_model.safetensors`, on disk or a Hub id): read it,
and check it against the base it is composed on and against its own config."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mole_exp.base.hub import from_hub, is_local, split_hub_path
from mole_exp.base.models import BaseModel


def _alpha_for(module: str, config: dict[str, Any]) -> float:
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?{pattern}", module):
            return float(alpha)
    return float(config["lora_alpha"])


def read_adapter(source: str) -> tuple[dict[str, Any], dict[str, tuple[torch.Tensor, torch.Tensor, float]]]:
    """Read one PEFT LoRA adapter: (its config, {module name: (A (r, d_in), B (d_out, r), scaling)})."""
    from peft.utils import load_peft_weights

    if not is_local(source) and split_hub_path(source)[1]:  # an adapter in a subfolder of a Hub repo
        return read_adapter(str(hub_subfolder(source)))
    if is_local(source):
        folder = Path(source)
        if not (folder / "adapter_config.json").exists():
            raise ValueError(f"adapter folder {folder} has no adapter_config.json (not a PEFT adapter)")
        if not any((folder / f).exists() for f in ("adapter_model.safetensors", "adapter_model.bin")):
            raise ValueError(f"adapter folder {folder} has no adapter_model.safetensors (or .bin) weights file")
        config = read_json_file(folder / "adapter_config.json", "adapter config")
    else:
        from huggingface_hub import hf_hub_download

        config_path = from_hub("adapter", source, lambda: hf_hub_download(source, "adapter_config.json"))
        config = read_json_file(Path(config_path), "adapter config")
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"adapter {source}: peft_type={config.get('peft_type')!r}; only LORA adapters can be composed")
    for unsupported in ("use_dora",):
        if config.get(unsupported):
            raise ValueError(f"adapter {source}: {unsupported}=true is not supported (plain LoRA only)")
    if config.get("lora_bias"):
        raise ValueError(f"adapter {source}: lora_bias=true is not supported (plain LoRA only)")
    try:
        state = from_hub("adapter", source, lambda: load_peft_weights(source, device="cpu"))
    except Exception as error:  # safetensors raises its own error type on a corrupt file
        if type(error).__name__ in ("SafetensorError", "HeaderTooLarge", "UnpicklingError", "RuntimeError"):
            raise ValueError(f"adapter {source}: its weights file cannot be read ({error})") from error
        raise
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = re.fullmatch(r"(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_A|lora_B)(?:\.[^.]+)?\.weight", key)
        if match is None:
            raise ValueError(f"adapter {source}: unexpected tensor {key!r} (only lora_A / lora_B weights are supported)")
        modules.setdefault(match["module"], {})[match["part"]] = tensor
    result = {}
    use_rslora = bool(config.get("use_rslora"))
    for module, parts in modules.items():
        if set(parts) != {"lora_A", "lora_B"}:
            raise ValueError(f"adapter {source}: module {module} has {sorted(parts)}, needs both lora_A and lora_B")
        lora_A, lora_B = parts["lora_A"], parts["lora_B"]
        rank = lora_A.shape[0]
        if lora_B.shape[1] != rank:
            raise ValueError(f"adapter {source}: module {module} has lora_A rank {rank} but lora_B {tuple(lora_B.shape)}")
        alpha = _alpha_for(module, config)
        scaling = alpha / (rank**0.5) if use_rslora else alpha / rank
        result[module] = (lora_A.float(), lora_B.float(), scaling)
    if not result:
        raise ValueError(f"adapter {source}: holds no LoRA weights")
    return config, result


def hub_subfolder(source: str) -> Path:
    """The local copy of a Hub adapter kept in a repo's subfolder ("user/repo/<subfolder>", as the Phi-3 FLAN experts
    of PEFT's Arrow docs), downloaded or found in the cache (PEFT's load_peft_weights joins the subfolder twice)."""
    from huggingface_hub import snapshot_download

    repo_id, subfolder = split_hub_path(source)
    root = from_hub("adapter", source, lambda: snapshot_download(repo_id, allow_patterns=[f"{subfolder}/*"]))
    folder = Path(root) / subfolder
    if not (folder / "adapter_config.json").exists():
        raise ValueError(f"adapter {source}: the Hub repo {repo_id} has no {subfolder}/adapter_config.json (not a PEFT adapter there)")
    return folder


def read_json_file(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {path} is not valid JSON ({error})") from error


def validate_against_base(source: str, modules: dict[str, tuple], config: dict, base: BaseModel) -> None:
    named = dict(base.model.named_modules())
    for module, (lora_A, lora_B, _) in modules.items():
        if module not in named:
            example = base.family.example_module(base.model)
            raise ValueError(
                f"adapter {source} targets module {module!r}, which the base model {base.model_id} does not have "
                f"(adapter made for {config.get('base_model_name_or_path')!r}?; base modules look like {example!r})"
            )
        layer = named[module]
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"adapter {source} targets {module!r}, a {type(layer).__name__}; only nn.Linear is supported")
        base.family.position(module)  # a block linear of this family, or a clear error
        if lora_A.shape[1] != layer.in_features or lora_B.shape[0] != layer.out_features:
            raise ValueError(
                f"adapter {source}: module {module} has shapes A {tuple(lora_A.shape)}, B {tuple(lora_B.shape)} but the "
                f"base layer is {layer.out_features} x {layer.in_features} (adapter made for "
                f"{config.get('base_model_name_or_path')!r}, base is {base.model_id})"
            )


def check_target_modules(source: str, config: dict[str, Any], modules: dict[str, tuple]) -> None:
    """adapter_config.json's target_modules must describe the weights: each entry adapts some module of the
    weights, and each module of the weights is named by an entry (PEFT's matching: exact name or suffix; a
    string is a regular expression on the full name)."""
    targets = config.get("target_modules")
    if targets is None or targets == "all-linear":
        return
    names = sorted(modules)

    def matches(entry: str, name: str) -> bool:
        return bool(re.fullmatch(entry, name)) if isinstance(targets, str) else name == entry or name.endswith("." + entry)

    entries = [targets] if isinstance(targets, str) else list(targets)
    adapted = sorted({n.rsplit(".", 1)[-1] for n in names})
    unmatched = [e for e in entries if not any(matches(e, n) for n in names)]
    if unmatched:
        raise ValueError(
            f"adapter {source}: adapter_config.json target_modules names {unmatched}, which match no module of its weights "
            f"(the weights adapt {adapted}); the config does not describe these weights"
        )
    uncovered = [n for n in names if not any(matches(e, n) for e in entries)]
    if uncovered:
        raise ValueError(
            f"adapter {source}: its weights adapt {uncovered[:3]}{' ...' if len(uncovered) > 3 else ''}, which "
            f"adapter_config.json target_modules={entries} does not name; the config does not describe these weights"
        )
