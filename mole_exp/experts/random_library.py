"""A random library: seeded LoRAs of the same shapes as a real library, with per-module norms matched to it.

    python train.py experts=random_library experts.library_dir=<a real library> experts.random.seed=0

Composing it asks whether routing over noise does as well as routing over trained experts. For every expert
i of the real library and every module it adapts (A_i (r, d_in), B_i (d_out, r), scaling s_i = alpha / r),
the random expert holds Gaussian matrices G_A, G_B (seeded by `seed` and the expert's name) rescaled so that
- `match: factors` (default): ||A'||_F = ||A_i||_F and ||B'||_F = ||B_i||_F, per module;
- `match: delta`: ||s_i B' A'||_F = ||s_i B_i A_i||_F, per module, A' and B' scaled by the same factor.
Rank, alpha (so the scaling), targets and the PEFT file layout are the real expert's; the name is
`random_<name>` and the manifest entry keeps the real one's `task`, so `composer=single
composer.expert=matched` picks the random expert in the matched slot.

The library is written once (atomically, like every library) under `cache_dir/<key>`, key = hash of the
real adapters' weight files, the seed and the match; its manifest records, per expert and module, the
Frobenius norms of A, B and the delta of the random expert (`norms`) and of the real one (`reference_norms`).
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Any

import torch

from mole_exp.experts.adapters import read_adapter
from mole_exp.experts.library import MANIFEST, read_library
from mole_exp.files import build_folder

MATCHES = ("factors", "delta")
KIND = "random-matched"
PREFIX = "random_"
WEIGHTS = "adapter_model.safetensors"


def check_options(options: Any) -> tuple[int, str]:
    """(seed, match) of `experts.random`, or an error naming the bad value."""
    options = dict(options or {})
    seed, match = options.get("seed", 0), options.get("match", "factors")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"experts.random.seed={seed!r} must be an integer >= 0")
    if match not in MATCHES:
        raise ValueError(f"experts.random.match={match!r} is not one of {list(MATCHES)} (which norms the random LoRAs share with the real ones)")
    return seed, match


def norms(lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> dict[str, float]:
    """Frobenius norms of A, B and the delta s B A (in float64)."""
    a, b = lora_A.double(), lora_B.double()
    return {"A": float(a.norm()), "B": float(b.norm()), "delta": float((scaling * b @ a).norm())}


def _weights_hash(folders: list[Path]) -> str:
    digest = hashlib.sha256()
    for folder in folders:
        for name in ("adapter_config.json", WEIGHTS, "adapter_model.bin"):
            if (folder / name).exists():
                digest.update(name.encode())
                digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:16]


def _generator(seed: int, expert: str, module: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(f"{expert}/{module}".encode()))


def random_factors(lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float, match: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian A' (r, d_in), B' (d_out, r) rescaled to the real factors' norms (factors) or delta norm (delta)."""
    random_A = torch.randn(lora_A.shape, generator=generator, dtype=torch.float64)
    random_B = torch.randn(lora_B.shape, generator=generator, dtype=torch.float64)
    real = norms(lora_A, lora_B, scaling)
    if match == "factors":
        random_A *= real["A"] / random_A.norm()
        random_B *= real["B"] / random_B.norm()
    else:
        current = (scaling * random_B @ random_A).norm()
        factor = (real["delta"] / current).sqrt() if current > 0 else torch.tensor(0.0, dtype=torch.float64)
        random_A *= factor
        random_B *= factor
    return random_A.to(lora_A.dtype), random_B.to(lora_B.dtype)


def ensure_random_library(library_dir: str | Path, options: Any, cache_dir: str | Path) -> Path:
    """The random library matched to `library_dir` (made on first use, then reused)."""
    from peft.utils import load_peft_weights
    from safetensors.torch import save_file

    seed, match = check_options(options)
    entries, real_manifest = read_library(library_dir)
    key = hashlib.sha256(json.dumps({"weights": _weights_hash([Path(p) for _, p in entries]), "seed": seed, "match": match,
                                     "kind": KIND}).encode()).hexdigest()[:12]
    folder = Path(os.path.expanduser(str(cache_dir))) / key
    by_name = {a["name"]: a for a in real_manifest.get("adapters", [])}

    def build(staging: Path) -> None:
        adapters = []
        for name, source in entries:
            config, modules = read_adapter(source)
            state = load_peft_weights(source, device="cpu")
            random_state, recorded, reference = {}, {}, {}
            for module, (lora_A, lora_B, scaling) in modules.items():
                random_A, random_B = random_factors(lora_A, lora_B, scaling, match, _generator(seed, name, module))
                for key_name, tensor in state.items():
                    if key_name.startswith(f"base_model.model.{module}.lora_A") or key_name.startswith(f"{module}.lora_A"):
                        random_state[key_name] = random_A.to(tensor.dtype).contiguous()
                    elif key_name.startswith(f"base_model.model.{module}.lora_B") or key_name.startswith(f"{module}.lora_B"):
                        random_state[key_name] = random_B.to(tensor.dtype).contiguous()
                recorded[module] = norms(random_state_of(random_state, module, "lora_A"), random_state_of(random_state, module, "lora_B"), scaling)
                reference[module] = norms(lora_A, lora_B, scaling)
            missing = sorted(set(state) - set(random_state))
            if missing:
                raise ValueError(f"adapter {source}: tensors {missing[:3]} were not matched to a module")
            target = staging / f"{PREFIX}{name}"
            target.mkdir()
            (target / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
            save_file(random_state, str(target / WEIGHTS))
            real = by_name.get(name, {})
            adapters.append({
                "name": f"{PREFIX}{name}", "path": f"{PREFIX}{name}", "matched_to": name,
                **{k: real[k] for k in ("task", "suite", "rank", "alpha", "targets") if k in real},
                "norms": recorded, "reference_norms": reference,
            })
        manifest = {
            "kind": KIND, "matched_to": str(library_dir), "matched_settings_key": real_manifest.get("settings_key"),
            "seed": seed, "match": match,
            **{k: real_manifest[k] for k in ("base_model_id", "base_fingerprint") if k in real_manifest},
            "adapters": adapters,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    return build_folder(folder, build, finished=lambda f: (f / MANIFEST).exists(), what="random library")


def random_state_of(state: dict[str, torch.Tensor], module: str, part: str) -> torch.Tensor:
    return next(t for k, t in state.items() if k.startswith((f"base_model.model.{module}.{part}", f"{module}.{part}")))
