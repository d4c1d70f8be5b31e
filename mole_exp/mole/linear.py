"""MoLELinear: a frozen base linear plus N frozen LoRA experts mixed by a gate (Eqs. 12-13).

    h = W x + sum_i g_i(x) * s_i * B_i A_i x

The gate reads the experts' deltas (or, with gate.expert_output=full, W x plus each delta: the base
output is handed to the router, which passes it only to gates that read it).

Like PEFT's LoRA layer it keeps the untouched `base_layer` and adds a delta; unlike PEFT the N experts
are stacked tensors and applied with batched contractions, never a Python loop over experts.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mole_exp.experts.bank import TargetExperts
from mole_exp.mole import rank_space
from mole_exp.mole.interface import GateInputs, WeightSource


class MoLELinear(nn.Module):
    def __init__(
        self,
        base_layer: nn.Linear,
        experts: TargetExperts,
        module_name: str,
        scope: str,
        stream: str,
        expert_dtype: torch.dtype | None = None,
        implementation: str = "rank_space",
    ):
        super().__init__()
        self.implementation = implementation  # checked by inject.check_implementation; how this linear mixes (the same math, see mole/gates.py)
        self.base_layer = base_layer
        device, dtype = base_layer.weight.device, expert_dtype or base_layer.weight.dtype
        # frozen experts: buffers, not parameters, and not saved in checkpoints (they come from the library)
        self.register_buffer("lora_A", experts.lora_A.to(device, dtype), persistent=False)  # (N, r, d_in)
        self.register_buffer("lora_B", experts.lora_B.to(device, dtype), persistent=False)  # (N, d_out, r)
        self.register_buffer("scaling", experts.scaling.to(device, dtype), persistent=False)  # (N,)
        self.module_name, self.scope, self.stream = module_name, scope, stream
        self._router: list[WeightSource] = []  # held in a list so the router is not registered as a child

    @property
    def num_experts(self) -> int:
        return self.lora_A.shape[0]

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:  # some HF code reads `.weight.dtype` of projections
        return self.base_layer.weight

    def bind(self, router: WeightSource) -> None:
        self._router = [router]

    @property
    def router(self) -> WeightSource | None:
        return self._router[0] if self._router else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # hidden: (B, T, d_in)
        base_output = self.base_layer(hidden)  # (B, T, d_out)
        mixed = MIXES[self.implementation](self, hidden, base_output)  # (B, T, d_out): sum_i g_i s_i B_i A_i x (Eq. 12)
        return base_output + mixed.to(base_output.dtype)  # Eq. 13

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, rank={self.lora_A.shape[1]}, gate={self.scope!r}, stream={self.stream}, implementation={self.implementation}"


def _mix_stacked(linear: MoLELinear, hidden: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
    """The reference: the expert outputs E (B, T, N, d_out) materialised, the gate reads them."""
    dtype = rank_space.compute_dtype(hidden)  # experts may be held in another dtype (composer.expert_dtype)
    rank_inputs = rank_space.rank_inputs(hidden, linear.lora_A.to(dtype))  # (B, T, N, r): u_i = A_i x
    expert_outputs = torch.einsum("btnr,nor->btno", rank_inputs, linear.lora_B.to(dtype)) * linear.scaling[:, None]  # (B, T, N, d_out)
    weights = linear.router.gate_weights(linear, GateInputs(hidden, base_output, rank_inputs, expert_outputs)).weights  # (B, T or 1, N)
    return torch.einsum("btno,btn->bto", expert_outputs, weights.to(expert_outputs.dtype))


def _mix_rank_space_saved(linear: MoLELinear, hidden: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
    """B_cat diag(g * s (x) 1_r) A_cat x: one rank-N*r LoRA with per-example weights in r-space, u kept for backward."""
    dtype = rank_space.compute_dtype(hidden)
    rank_inputs = rank_space.rank_inputs(hidden, linear.lora_A.to(dtype))  # (B, T, N, r)
    weights = linear.router.gate_weights(linear, GateInputs(hidden, base_output, rank_inputs)).weights  # (B, T or 1, N)
    weighted = rank_inputs * (weights.to(rank_inputs.dtype) * linear.scaling)[..., None]  # (B, T, N, r)
    return torch.einsum("btnr,nor->bto", weighted, linear.lora_B.to(dtype))


def _mix_rank_space(linear: MoLELinear, hidden: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
    """The same contraction; backward recomputes u from x (mole/rank_space.py), and u from the gate is reused."""
    weights, known = linear.router.gate_weights(linear, GateInputs(hidden, base_output))  # (B, T or 1, N), u or None
    return rank_space.mix(hidden, linear.lora_A, linear.lora_B, weights * linear.scaling, known)


MIXES = {"stacked": _mix_stacked, "rank_space_saved": _mix_rank_space_saved, "rank_space": _mix_rank_space}
