"""Merging weighted LoRA experts into the frozen base weights, in place, and restoring them exactly.

Two ways to turn per-expert weights w (N,) into one delta per adapted linear:

- `exact` (NLA, paper Eq. 2): dW = sum_i w_i s_i B_i A_i. The sum of the full deltas; equal to PEFT's
  `add_weighted_adapter(combination_type="cat")`, which concatenates the ranks.
- `factors` (LoRAHub, PEMs): A and B are combined separately and multiplied,
  dW = (sum_i b_i B_i)(sum_j a_j A_j) = sum_ij b_i a_j B_i A_j: a rank-r delta with cross terms
  B_i A_j (i != j) that the exact sum does not have, and diagonal terms b_i a_i B_i A_i. Two forms:
    * `lorahub` (LoRAHub's `get_final_weights`, PEMs' addition): a_i = b_i = w_i sqrt(s_i). With equal
      scalings s this is s (sum w_i B_i)(sum w_i A_i), exactly what LoRAHub loads into its PEFT model
      (one adapter config, so one s); the sqrt(s_i) split is our generalisation to experts whose
      alpha/r differ (and makes an expert that does not adapt a module, s_i = 0, contribute nothing).
      Note the diagonal is w_i^2 s_i B_i A_i: uniform w_i = 1/N shrinks every expert by 1/N^2.
    * `peft` (PEFT's `combination_type="linear"`, peft/tuners/lora/model.py
      `_generalized_task_arithmetic_weighted_adapter`): with c_i = w_i s_i, a_i = sign(c_i) sqrt|c_i|
      and b_i = sqrt|c_i|, new adapter scaling 1. Its diagonal is c_i B_i A_i (as the exact sum), its
      cross terms sqrt|c_i c_j| sign(c_j) B_i A_j.
  PEMs' negation of a module flips the sign of its B only (`b_signs`): negating both would cancel.

`InPlaceMerge` keeps a copy of the original weights of the adapted linears only, writes W0 + dW into
the live weights (no model copy per candidate) and restores W0 by `copy_`, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from mole_exp.base.models import BaseModel
from mole_exp.experts.bank import ExpertBank, TargetExperts

MERGES = ("exact", "factors")
FACTOR_FORMS = ("lorahub", "peft")


def check_choice(key: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not one of {list(allowed)}")
    return str(value)


def check_weights(key: str, weights: list[float] | None) -> list[float] | None:
    """A list of finite numbers (or None); the count is checked against the bank at compose time."""
    if weights is None:
        return None
    if isinstance(weights, (str, bytes)) or not hasattr(weights, "__iter__"):
        raise ValueError(f"{key}={weights!r} must be a list of numbers (one per expert) or null")
    values = list(weights)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
            raise ValueError(f"{key}={values!r}: {value!r} is not a finite number")
    if not values:
        raise ValueError(f"{key}=[] must hold one weight per expert (or be null)")
    return [float(v) for v in values]


def check_count(key: str, weights: list[float], bank: ExpertBank) -> None:
    if len(weights) != len(bank):
        raise ValueError(f"{key} has {len(weights)} values but {len(bank)} experts are composed: {bank.names}")


# ---------------------------------------------------------------- the delta of one adapted linear


def exact_delta(experts: TargetExperts, weights: torch.Tensor, b_signs: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i w_i s_i B_i A_i (Eq. 2), as one (d_out, N*r) @ (N*r, d_in) product.  Returns (d_out, d_in)."""
    coefficients = weights * experts.scaling * (b_signs if b_signs is not None else 1.0)  # (N,)
    n, rank, d_in = experts.lora_A.shape
    weighted_A = (experts.lora_A * coefficients[:, None, None]).reshape(n * rank, d_in)  # (N*r, d_in)
    stacked_B = experts.lora_B.permute(1, 0, 2).reshape(-1, n * rank)  # (d_out, N*r)
    return stacked_B @ weighted_A


def factor_coefficients(weights: torch.Tensor, scaling: torch.Tensor, form: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b): the coefficients of the A's and of the B's for a factor merge (see the module docstring)."""
    if form == "lorahub":
        root = scaling.clamp_min(0).sqrt()
        return weights * root, weights * root
    if form == "peft":
        combined = weights * scaling
        root = combined.abs().sqrt()
        return torch.where(combined >= 0, root, -root), root
    raise ValueError(f"factors_form={form!r} is not one of {list(FACTOR_FORMS)}")


def factor_delta(
    experts: TargetExperts, weights: torch.Tensor, form: str = "lorahub", b_signs: torch.Tensor | None = None
) -> torch.Tensor:
    """(sum_i b_i B_i)(sum_j a_j A_j), cross terms included.  Returns (d_out, d_in)."""
    coef_A, coef_B = factor_coefficients(weights, experts.scaling, form)
    if b_signs is not None:
        coef_B = coef_B * b_signs
    merged_A = torch.einsum("n,nri->ri", coef_A, experts.lora_A)  # (r, d_in)
    merged_B = torch.einsum("n,nor->or", coef_B, experts.lora_B)  # (d_out, r)
    return merged_B @ merged_A


def weighted_deltas(
    bank: ExpertBank,
    weights: torch.Tensor | list[float],
    merge: str = "exact",
    factors_form: str = "lorahub",
    b_signs: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The delta of every adapted linear for expert weights (N,), computed in float32 on the bank's device."""
    check_choice("merge", merge, MERGES)
    first = next(iter(bank.targets.values()))
    weights = torch.as_tensor(weights, dtype=torch.float32, device=first.lora_A.device)
    if b_signs is not None:
        b_signs = b_signs.to(device=weights.device, dtype=torch.float32)
    deltas = {}
    for name, experts in bank.targets.items():
        experts = TargetExperts(experts.lora_A.float(), experts.lora_B.float(), experts.scaling.float())
        if merge == "exact":
            deltas[name] = exact_delta(experts, weights, b_signs)
        else:
            deltas[name] = factor_delta(experts, weights, factors_form, b_signs)
    return deltas


# ---------------------------------------------------------------- writing deltas into the live weights


class InPlaceMerge:
    """Writes W0 + dW into the adapted linears of a model and restores W0 exactly.

    Only the adapted linears' original weights are copied (once). Linears are looked up by name at
    every call, so the model may move between devices (`.to()` replaces parameter storage) between
    calls; the originals follow it.
    """

    def __init__(self, model: nn.Module, module_names: list[str]):
        self.model = model
        self.module_names = list(module_names)
        for name in self.module_names:
            layer = model.get_submodule(name)
            if not isinstance(layer, nn.Linear):
                raise ValueError(f"cannot merge into {name!r}: it is a {type(layer).__name__}, not an nn.Linear")
        self.originals = {name: model.get_submodule(name).weight.detach().clone() for name in self.module_names}
        self.merged = False

    def _original(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        original = self.originals[name]
        if original.device != weight.device:
            original = self.originals[name] = original.to(weight.device)
        return original

    @torch.no_grad()
    def apply(self, deltas: dict[str, torch.Tensor]) -> None:
        """W = W0 + dW for every adapted linear (a linear without a delta is reset to W0)."""
        unknown = set(deltas) - set(self.originals)
        if unknown:
            raise ValueError(f"deltas for modules that were not snapshotted: {sorted(unknown)[:5]}")
        for name in self.module_names:
            weight = self.model.get_submodule(name).weight
            original = self._original(name, weight)
            if name in deltas:
                merged = original.float() + deltas[name].to(device=weight.device, dtype=torch.float32)
                weight.copy_(merged.to(weight.dtype))
            else:
                weight.copy_(original)
        self.merged = True

    @torch.no_grad()
    def restore(self) -> None:
        """W = W0, bit-identical to the weights seen at construction."""
        for name in self.module_names:
            weight = self.model.get_submodule(name).weight
            weight.copy_(self._original(name, weight))
        self.merged = False


def export_merged(base: BaseModel, path: str) -> str:
    """Save the (merged) base as a plain transformers checkpoint with its tokenizer."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    base.model.save_pretrained(str(folder))
    base.tokenizer.save_pretrained(str(folder))
    return str(folder)
