"""The ExpertBank: N LoRA experts stacked per adapted linear, `lora_A (N, r, d_in)`, `lora_B (N, d_out, r)`,
`scaling (N,)`; and stacking read adapters into one.

Experts with a smaller rank are zero-padded to the largest rank (exact: padded rows and columns contribute
nothing); an expert that does not adapt a module holds zeros there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from mole_exp.base.models import BaseModel

log = logging.getLogger(__name__)


@dataclass
class TargetExperts:
    """The N experts of one adapted linear, stacked."""

    lora_A: torch.Tensor  # (N, r, d_in)
    lora_B: torch.Tensor  # (N, d_out, r)
    scaling: torch.Tensor  # (N,)

    def select(self, indices: list[int]) -> TargetExperts:
        index = torch.as_tensor(indices, dtype=torch.long)
        return TargetExperts(self.lora_A[index], self.lora_B[index], self.scaling[index])

    def delta_weights(self) -> torch.Tensor:
        """Each expert's full delta s_i B_i A_i."""
        return torch.einsum("nor,nri,n->noi", self.lora_B, self.lora_A, self.scaling)  # (N, d_out, d_in)


@dataclass
class ExpertBank:
    names: list[str]
    targets: dict[str, TargetExperts]  # module name -> stacked experts
    sources: list[str]
    adapter_configs: list[dict[str, Any]] = field(default_factory=list)
    manifest_entries: list[dict[str, Any]] = field(default_factory=list)
    rank_padding: dict[str, dict[str, int]] = field(default_factory=dict)  # expert -> {rank, padded_to} (zero-padded)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def rank(self) -> int:
        return max(t.lora_A.shape[1] for t in self.targets.values())

    def indices(self, names_or_indices: list[str | int], what: str = "composer.mask") -> list[int]:
        """Resolve expert names or integer indices; unknown ones raise naming what is allowed."""
        resolved = []
        for item in names_or_indices:
            if isinstance(item, int) or (isinstance(item, str) and item.lstrip("-").isdigit()):
                index = int(item)
                if not 0 <= index < len(self):
                    raise ValueError(f"{what}: expert index {index} is out of range; allowed 0..{len(self) - 1}")
                resolved.append(index)
            elif item in self.names:
                resolved.append(self.names.index(item))
            else:
                raise ValueError(f"{what}: unknown expert {item!r}; the composed experts are {self.names}")
        return resolved

    def select(self, indices: list[int]) -> ExpertBank:
        return ExpertBank(
            names=[self.names[i] for i in indices],
            targets={name: t.select(indices) for name, t in self.targets.items()},
            sources=[self.sources[i] for i in indices],
            adapter_configs=[self.adapter_configs[i] for i in indices] if self.adapter_configs else [],
            manifest_entries=[self.manifest_entries[i] for i in indices] if self.manifest_entries else [],
            rank_padding={self.names[i]: self.rank_padding[self.names[i]] for i in indices if self.names[i] in self.rank_padding},
        )

    def restrict_depth(self, layer_range: tuple[float, float], base: BaseModel) -> ExpertBank:
        """Keep only the adapted linears whose block lies inside `layer_range` (fractions of depth).

        See `ModelFamily.depth_fraction`: each stack is counted on its own, from its input end (0.0) to
        its output end (1.0); a block is kept when its centre lies in [start, end].
        """
        start, end = layer_range
        kept = {}
        for name, experts in self.targets.items():
            block_start, block_end = base.family.depth_fraction(base.model, name)
            centre = (block_start + block_end) / 2
            if start <= centre <= end:
                kept[name] = experts
        if not kept:
            raise ValueError(f"experts.layer_range={list(layer_range)} keeps no adapted module of this model")
        return ExpertBank(self.names, kept, self.sources, self.adapter_configs, self.manifest_entries, self.rank_padding)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ExpertBank:
        moved = {
            name: TargetExperts(
                t.lora_A.to(device=device, dtype=dtype),
                t.lora_B.to(device=device, dtype=dtype),
                t.scaling.to(device=device, dtype=dtype),
            )
            for name, t in self.targets.items()
        }
        return ExpertBank(self.names, moved, self.sources, self.adapter_configs, self.manifest_entries, self.rank_padding)


def stack_experts(
    names: list[str], sources: list[str], adapters: list[tuple[dict, dict]], base: BaseModel
) -> ExpertBank:
    """Stack per-adapter weights into per-module tensors (zero-padding ranks and absent modules)."""
    all_modules = sorted({m for _, modules in adapters for m in modules})
    named = dict(base.model.named_modules())
    dtype = next(base.model.parameters()).dtype
    targets: dict[str, TargetExperts] = {}
    for module in all_modules:
        layer = named[module]
        rank = max(modules[module][0].shape[0] for _, modules in adapters if module in modules)
        n = len(adapters)
        lora_A = torch.zeros(n, rank, layer.in_features)
        lora_B = torch.zeros(n, layer.out_features, rank)
        scaling = torch.zeros(n)
        for i, (_, modules) in enumerate(adapters):
            if module in modules:
                a, b, s = modules[module]
                lora_A[i, : a.shape[0]] = a
                lora_B[i, :, : b.shape[1]] = b
                scaling[i] = s
        targets[module] = TargetExperts(lora_A.to(dtype), lora_B.to(dtype), scaling.to(dtype))
    missing = [(names[i], len(all_modules) - len(modules)) for i, (_, modules) in enumerate(adapters) if len(modules) < len(all_modules)]
    if missing:
        log.warning("experts adapt different module sets; zeros stand in where an expert has none: %s", missing)
    padding = rank_padding(names, adapters)
    if padding:
        log.warning("experts of different ranks: zero-padded to rank %d (exact: the padding contributes nothing): %s",
                    max(p["padded_to"] for p in padding.values()), {n: p["rank"] for n, p in padding.items()})
    return ExpertBank(names=names, targets=targets, sources=sources, adapter_configs=[c for c, _ in adapters], rank_padding=padding)


def rank_padding(names: list[str], adapters: list[tuple[dict, dict]]) -> dict[str, dict[str, int]]:
    """Experts whose rank is below the largest rank of a module they adapt: {name: {rank, padded_to}}."""
    largest: dict[str, int] = {}
    for _, modules in adapters:
        for module, (lora_A, _, _) in modules.items():
            largest[module] = max(largest.get(module, 0), lora_A.shape[0])
    padded = {}
    for name, (_, modules) in zip(names, adapters, strict=True):
        short = [(m[0].shape[0], largest[module]) for module, m in modules.items() if m[0].shape[0] < largest[module]]
        if short:
            padded[name] = {"rank": min(r for r, _ in short), "padded_to": max(p for _, p in short)}
    return padded
