"""Memory-lean autograd for the rank-space MoLE forward (implementation `rank_space`).

Plain autograd through the rank-space forward keeps, for every adapted linear, the r-space tensors
u = A x (B, T, N, r) and the gate's float32 intermediates of the same shape until backward: at N=128 on
FLAN-T5-large (q/v, batch 32 x (256+32)) that is several GiB per copy. Here backward recomputes them
from the linear's input x, which the model holds anyway, so each adapted linear keeps only x and its
(B, T or 1, N) weights:

- `mix`: sum_i w_i B_i A_i x  (Eq. 12, w_i = g_i s_i) as an autograd.Function with a hand-written
  backward: grad_x = A_cat^T diag(w) B_cat^T grad, grad_w_i = <A_i x, B_i^T grad> (u recomputed).
- `token_logits`: the gate's per-token logits (Eqs. 9-10), rank_inputs recomputed in backward with
  `torch.utils.checkpoint` (non-reentrant; autocast state is replayed).

`rank_space_saved` keeps those tensors instead: no recomputation (about one A x per linear less in
backward), more memory. Both are tested equal to the stacked reference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from mole_exp.mole.gates import Gate


def compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The dtype autocast would give the matmuls (bf16 under CUDA autocast), else the input's."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return hidden.dtype


def rank_inputs(hidden: torch.Tensor, lora_A: torch.Tensor) -> torch.Tensor:
    """u_i = A_i x for all experts at once. hidden (B, T, d_in), lora_A (N, r, d_in) -> (B, T, N, r)."""
    return torch.einsum("bti,nri->btnr", hidden, lora_A)


class _RankSpaceMix(torch.autograd.Function):
    """mixed = sum_i w_i B_i A_i x, saving only x and w for backward (the experts are frozen buffers,
    cast to the compute dtype again in backward rather than keeping a cast copy alive)."""

    @staticmethod
    def forward(ctx, hidden, lora_A, lora_B, weights, dtype, known_rank_inputs):
        # (B, T, d_in), (N, r, d_in), (N, d_out, r), (B, T|1, N); known_rank_inputs: u if the gate computed it
        u = known_rank_inputs if known_rank_inputs is not None else rank_inputs(hidden.to(dtype), lora_A.to(dtype))  # (B, T, N, r)
        mixed = torch.einsum("btnr,nor->bto", u * weights.to(dtype)[..., None], lora_B.to(dtype))  # (B, T, d_out)
        ctx.save_for_backward(hidden, lora_A, lora_B, weights)  # the caller's tensors: shared, not copies
        ctx.dtype = dtype
        return mixed

    @staticmethod
    def backward(ctx, grad_mixed):  # (B, T, d_out)
        hidden, lora_A, lora_B, weights = ctx.saved_tensors
        dtype = ctx.dtype
        lora_A, lora_B = lora_A.to(dtype), lora_B.to(dtype)
        grad_rank = torch.einsum("bto,nor->btnr", grad_mixed.to(dtype), lora_B)  # (B, T, N, r): B_i^T grad
        grad_hidden = grad_weights = None
        if ctx.needs_input_grad[0]:
            weighted = grad_rank * weights.to(dtype)[..., None]  # (B, T, N, r)
            grad_hidden = torch.einsum("btnr,nri->bti", weighted, lora_A).to(hidden.dtype)  # (B, T, d_in)
        if ctx.needs_input_grad[3]:
            u = rank_inputs(hidden.to(dtype), lora_A)  # recomputed, (B, T, N, r)
            if weights.shape[1] == 1:  # one weight vector per sequence: sum over its tokens
                grad_weights = torch.einsum("btnr,btnr->bn", u, grad_rank)[:, None]  # (B, 1, N)
            else:
                grad_weights = torch.einsum("btnr,btnr->btn", u, grad_rank)  # (B, T, N)
            grad_weights = grad_weights.to(weights.dtype)
        return grad_hidden, None, None, grad_weights, None, None


def mix(
    hidden: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    weights: torch.Tensor,
    known_rank_inputs: torch.Tensor | None = None,
) -> torch.Tensor:
    """sum_i w_i B_i A_i x (Eq. 12 with w = g * s), recomputing u = A x in backward.

    hidden (B, T, d_in); lora_A (N, r, d_in); lora_B (N, d_out, r); weights (B, T or 1, N).  -> (B, T, d_out)
    in the dtype autocast gives matmuls (else hidden's). `known_rank_inputs`: u = A x (B, T, N, r) already
    computed in this forward (by the gate at this linear, detached), used instead of computing it again.
    """
    if lora_A.requires_grad or lora_B.requires_grad:
        raise ValueError(
            "implementation=rank_space recomputes with frozen experts only; the experts require grad here: "
            "use composer.implementation=rank_space_saved (or stacked) to train them"
        )
    dtype = compute_dtype(hidden)
    with torch.autocast(device_type=hidden.device.type, enabled=False):  # dtypes made explicit, so backward matches
        known = known_rank_inputs.detach() if known_rank_inputs is not None else None
        return _RankSpaceMix.apply(hidden, lora_A, lora_B, weights, dtype, known)


def _token_logits(gate: Gate, hidden, lora_A, lora_B, scaling, base_output=None) -> tuple[torch.Tensor, torch.Tensor]:
    u = rank_inputs(hidden, lora_A.to(compute_dtype(hidden)))  # (B, T, N, r), in the ambient (autocast) dtype like the mix
    with torch.autocast(device_type=hidden.device.type, enabled=False):  # gate statistics in float32
        return gate.token_logits_rank_space(u, lora_B, scaling, base_output), u.detach()  # (B, T, N), (B, T, N, r)


def token_logits(
    gate: Gate, hidden, lora_A, lora_B, scaling, recompute: bool = True, base_output: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gate's per-token logits from x in r-space (Eqs. 9-10), and u = A x (detached) for the mix of
    the same linear. With `recompute`, backward recomputes u and the gate's intermediates from x instead
    of keeping them. `base_output` (B, T, d_out) = W x, for gates with expert_output=full: kept (not
    recomputed) until backward, like x.  -> (B, T, N), (B, T, N, r)"""
    if not recompute or not torch.is_grad_enabled():
        return _token_logits(gate, hidden, lora_A, lora_B, scaling, base_output)
    return checkpoint(_token_logits, gate, hidden, lora_A, lora_B, scaling, base_output, use_reentrant=False)
