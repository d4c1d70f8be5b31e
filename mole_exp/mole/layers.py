"""MoLELinear: a frozen base linear plus N frozen LoRA experts mixed by a gate (Eqs. 12-13).

    h = W x + sum_i g_i(x) * s_i * B_i A_i x

The gate reads the experts' deltas (or, with gate.expert_output=full, W x plus each delta: the base
output is handed to the router, which passes it only to gates that read it).

Like PEFT's LoRA layer it keeps the untouched `base_layer` and adds a delta; unlike PEFT the N experts
are stacked tensors and applied with batched contractions, never a Python loop over experts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from mole_exp.experts.bank import TargetExperts
from mole_exp.mole import rank_space

if TYPE_CHECKING:
    from mole_exp.mole.routing import Router


class MoLELinear(nn.Module):
    def __init__(
        self,
        base_layer: nn.Linear,
        experts: TargetExperts,
        module_name: str,
        gate_key: str,
        stream: str,
        expert_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.base_layer = base_layer
        device, dtype = base_layer.weight.device, expert_dtype or base_layer.weight.dtype
        # frozen experts: buffers, not parameters, and not saved in checkpoints (they come from the library)
        self.register_buffer("lora_A", experts.lora_A.to(device, dtype), persistent=False)  # (N, r, d_in)
        self.register_buffer("lora_B", experts.lora_B.to(device, dtype), persistent=False)  # (N, d_out, r)
        self.register_buffer("scaling", experts.scaling.to(device, dtype), persistent=False)  # (N,)
        self.module_name, self.gate_key, self.stream = module_name, gate_key, stream
        self._router: list[Router] = []  # held in a list so the router is not registered as a child

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

    def bind(self, router: Router) -> None:
        self._router = [router]

    @property
    def router(self) -> Router | None:
        return self._router[0] if self._router else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # hidden: (B, T, d_in)
        base_output = self.base_layer(hidden)  # (B, T, d_out)
        router = self._router[0]
        dtype = rank_space.compute_dtype(hidden)  # experts may be held in another dtype (composer.expert_dtype)
        if router.implementation == "stacked":
            rank_inputs = rank_space.rank_inputs(hidden, self.lora_A.to(dtype))  # (B, T, N, r): u_i = A_i x
            expert_outputs = torch.einsum("btnr,nor->btno", rank_inputs, self.lora_B.to(dtype)) * self.scaling[:, None]  # (B, T, N, d_out)
            gate_probs = router.gate_weights(self, hidden, rank_inputs, expert_outputs, base_output=base_output)  # (B, T or 1, N)
            mixed = torch.einsum("btno,btn->bto", expert_outputs, gate_probs.to(expert_outputs.dtype))  # Eq. 12
        elif router.implementation == "rank_space_saved":
            rank_inputs = rank_space.rank_inputs(hidden, self.lora_A.to(dtype))  # (B, T, N, r), kept for backward
            gate_probs = router.gate_weights(self, hidden, rank_inputs, None, base_output=base_output)  # (B, T or 1, N)
            # B_cat diag(g * s (x) 1_r) A_cat x: one rank-N*r LoRA with per-example weights in r-space
            weighted = rank_inputs * (gate_probs.to(rank_inputs.dtype) * self.scaling)[..., None]  # (B, T, N, r)
            mixed = torch.einsum("btnr,nor->bto", weighted, self.lora_B.to(dtype))
        else:  # rank_space: the same contraction; backward recomputes u from x (mole_exp/mole/rank_space.py)
            gate_probs = router.gate_weights(self, hidden, None, None, base_output=base_output)  # (B, T or 1, N)
            known = router.take_rank_inputs(self)  # u, when this linear's gate computed it just now
            mixed = rank_space.mix(hidden, self.lora_A, self.lora_B, gate_probs * self.scaling, known)  # Eq. 12
        return base_output + mixed.to(base_output.dtype)  # Eq. 13

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, rank={self.lora_A.shape[1]}, gate={self.gate_key!r}, stream={self.stream}"
