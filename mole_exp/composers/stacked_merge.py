"""StackedMerge: W0 + dW(w) written into every adapted linear with a few batched products per candidate.

The same arithmetic as `weighted_deltas` + `InPlaceMerge.apply` (composers/merge.py), but a search asks
for tens to thousands of candidates, so the per-candidate work is batched: the adapted linears are
grouped by shape, and each group's experts are held as one stack of G linears,

    lora_A (G, N, r, d_in), lora_B (G, N, d_out, r), scaling (G, N), W0 (G, d_out, d_in),

built once on the model's device. A candidate w (N,) then costs, per group, two contractions and one
batched matmul (factors: (sum_i b_i B_i)(sum_j a_j A_j); exact: B_cat diag(c) A_cat), one add of W0 and
one copy into the live weights, instead of a handful of small ops per linear. W0 is restored bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from mole_exp.composers.merge import MERGES, check_choice, factor_coefficients
from mole_exp.experts.bank import ExpertBank


@dataclass
class LinearGroup:
    """Adapted linears of one shape and dtype, stacked."""

    names: list[str]
    weights: list[nn.Parameter]  # the live weights, in `names` order
    lora_A: torch.Tensor  # (G, N, r, d_in) float32
    lora_B: torch.Tensor  # (G, N, d_out, r) float32
    scaling: torch.Tensor  # (G, N) float32
    originals: torch.Tensor  # (G, d_out, d_in) W0 in the weights' dtype

    def to(self, device: torch.device) -> LinearGroup:
        return LinearGroup(
            self.names, self.weights, self.lora_A.to(device), self.lora_B.to(device), self.scaling.to(device), self.originals.to(device)
        )


class StackedMerge:
    """Writes W0 + dW(weights) into the adapted linears of `model` and restores W0 exactly."""

    def __init__(self, model: nn.Module, bank: ExpertBank):
        self.model = model
        self.module_names = list(bank.targets)
        by_shape: dict[tuple, list[str]] = {}
        for name, experts in bank.targets.items():
            layer = model.get_submodule(name)
            if not isinstance(layer, nn.Linear):
                raise ValueError(f"cannot merge into {name!r}: it is a {type(layer).__name__}, not an nn.Linear")
            key = (tuple(experts.lora_A.shape), tuple(experts.lora_B.shape), layer.weight.dtype)
            by_shape.setdefault(key, []).append(name)
        self.groups: list[LinearGroup] = []
        with torch.no_grad():
            for names in by_shape.values():
                weights = [model.get_submodule(name).weight for name in names]
                device = weights[0].device
                self.groups.append(
                    LinearGroup(
                        names=names,
                        weights=weights,
                        lora_A=torch.stack([bank.targets[n].lora_A.float() for n in names]).to(device),
                        lora_B=torch.stack([bank.targets[n].lora_B.float() for n in names]).to(device),
                        scaling=torch.stack([bank.targets[n].scaling.float() for n in names]).to(device),
                        originals=torch.stack([w.detach() for w in weights]).clone(),
                    )
                )
        self.merged = False

    def _on_model_device(self) -> list[LinearGroup]:
        """The stacks follow the model when it moves (`.to()` keeps the Parameter objects, moves their data)."""
        for index, group in enumerate(self.groups):
            if group.originals.device != group.weights[0].device:
                self.groups[index] = group.to(group.weights[0].device)
        return self.groups

    @staticmethod
    def group_delta(
        group: LinearGroup, weights: torch.Tensor, merge: str, factors_form: str, b_signs: torch.Tensor | None
    ) -> torch.Tensor:
        """dW of every linear of the group for expert weights (N,).  Returns (G, d_out, d_in), float32."""
        if merge == "exact":  # sum_i w_i s_i B_i A_i (Eq. 2) as (G, d_out, N*r) @ (G, N*r, d_in)
            coefficients = weights * group.scaling * (b_signs if b_signs is not None else 1.0)  # (G, N)
            g, n, rank, d_in = group.lora_A.shape
            weighted_A = (group.lora_A * coefficients[..., None, None]).reshape(g, n * rank, d_in)  # (G, N*r, d_in)
            stacked_B = group.lora_B.permute(0, 2, 1, 3).reshape(g, -1, n * rank)  # (G, d_out, N*r)
            return torch.bmm(stacked_B, weighted_A)
        coef_A, coef_B = factor_coefficients(weights, group.scaling, factors_form)  # (G, N) each
        if b_signs is not None:
            coef_B = coef_B * b_signs
        merged_A = torch.einsum("gn,gnri->gri", coef_A, group.lora_A)  # (G, r, d_in)
        merged_B = torch.einsum("gn,gnor->gor", coef_B, group.lora_B)  # (G, d_out, r)
        return torch.bmm(merged_B, merged_A)  # (G, d_out, d_in), cross terms included

    @torch.no_grad()
    def apply_weights(
        self,
        weights: torch.Tensor | list[float],
        merge: str = "exact",
        factors_form: str = "lorahub",
        b_signs: torch.Tensor | None = None,
    ) -> None:
        """W = W0 + dW(weights) for every adapted linear (replacing any earlier merge)."""
        check_choice("merge", merge, MERGES)
        for group in self._on_model_device():
            device = group.originals.device
            expert_weights = torch.as_tensor(weights, dtype=torch.float32, device=device)  # (N,)
            signs = b_signs.to(device=device, dtype=torch.float32) if b_signs is not None else None
            merged = group.originals.float() + self.group_delta(group, expert_weights, merge, factors_form, signs)  # (G, d_out, d_in)
            merged = merged.to(group.originals.dtype)
            for weight, value in zip(group.weights, merged.unbind(0), strict=True):
                weight.copy_(value)
        self.merged = True

    @torch.no_grad()
    def restore(self) -> None:
        """W = W0, bit-identical to the weights seen at construction."""
        for group in self._on_model_device():
            for weight, original in zip(group.weights, group.originals.unbind(0), strict=True):
                weight.copy_(original)
        self.merged = False
