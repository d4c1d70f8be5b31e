"""The tiny library: seeded random PEFT LoRA adapters for a tiny base, made by PEFT itself on first use and
cached under a hash of their settings (for smoke runs, tests and CI)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import torch

from mole_exp.base.family import default_lora_targets
from mole_exp.base.models import BaseModel, weights_fingerprint
from mole_exp.experts.library import MANIFEST
from mole_exp.files import build_folder


def tiny_expert_name(index: int) -> str:
    return f"tiny_expert_{index:02d}"


def ensure_tiny_library(
    base: BaseModel,
    library_dir: str,
    *,
    targets: list[str] | tuple[str, ...] | None = None,
    num_adapters: int = 8,
    rank: int = 4,
    alpha: int = 8,
    seed: int = 0,
) -> Path:
    """A library of seeded random PEFT LoRA adapters for a tiny base, generated on first use and cached.
    `targets`: the adapted linears' short names, as the experts config writes them (conf/experts/tiny.yaml); None: the
    family's default (`family.default_lora_targets`: T5 [q, v], Llama/Qwen2/Mistral [q_proj, v_proj]), resolved before
    the cache key is taken, so `targets: null` and the names it resolves to share one library."""
    from peft import LoraConfig, get_peft_model

    if targets is not None and not list(targets):
        raise ValueError("experts.tiny.targets is empty; name the projections to adapt (e.g. [q, v]) or null for the family's default")
    targets = list(targets) if targets is not None else default_lora_targets(base.model)

    spec = {"base_model_id": base.model_id, "n": num_adapters, "r": rank, "alpha": alpha, "targets": list(targets), "seed": seed}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(os.path.expanduser(str(library_dir))) / key

    def build(staging: Path) -> None:
        adapters = []
        with torch.random.fork_rng(devices=[]):  # seeded per adapter; the caller's generator is left as it was
            for i in range(num_adapters):
                name = tiny_expert_name(i)
                torch.manual_seed(seed * 10_000 + i)
                peft_model = get_peft_model(
                    copy.deepcopy(base.model),
                    LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, init_lora_weights=False),
                )
                peft_model.peft_config["default"].base_model_name_or_path = base.model_id
                peft_model.save_pretrained(str(staging / name), save_embedding_layers=False)
                adapters.append({"name": name, "path": name, "task": name, "rank": rank, "targets": list(targets)})
        manifest = {
            "kind": "tiny-random",
            "base_model_id": base.model_id,
            "base_fingerprint": weights_fingerprint(base.model),
            "adapters": adapters,
            **{k: v for k, v in spec.items() if k != "base_model_id"},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))

    return build_folder(folder, build, finished=lambda f: (f / MANIFEST).exists(), what="tiny library")
