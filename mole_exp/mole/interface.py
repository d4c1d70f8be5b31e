"""The one small interface between the mixing linear (mole/linear.py) and the router (mole/routing.py, and the
mixer's mole/token_router.py): neither imports the other.

    linear -> router   router.gate_weights(linear, GateInputs(...))  -> GateWeights     once per forward of a linear
    router -> records  GateRecord per gate evaluation (training, or inside `router.collect()`)

The linear hands over what it computed anyway (x, W x, and, depending on its implementation, u = A x or the
stacked expert outputs); the router answers with the weights and, when its gate computed u = A x from x, that u
for the linear's mix to reuse (so it is not computed twice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch


class GatedLinear(Protocol):
    """What the router reads of an adapted linear (a MoLELinear)."""

    module_name: str  # its name in the model
    scope: str  # its gate's scope: the gate it belongs to (ModelFamily.scope), shared by the linears of one scope
    stream: str  # the name of the token stream it reads (ModelFamily.streams)
    lora_A: torch.Tensor  # (N, r, d_in)
    lora_B: torch.Tensor  # (N, d_out, r)
    scaling: torch.Tensor  # (N,)


@dataclass
class GateInputs:
    """What an adapted linear computed before it needs its weights."""

    hidden: torch.Tensor  # x (B, T, d_in)
    base_output: torch.Tensor  # W x (B, T, d_out), read by gates with expert_output=full (Eq. 8)
    rank_inputs: torch.Tensor | None = None  # u = A x (B, T, N, r), when the linear keeps it (rank_space_saved, stacked)
    expert_outputs: torch.Tensor | None = None  # s_i B_i u_i (B, T, N, d_out) (stacked, the reference)


class GateWeights(NamedTuple):
    weights: torch.Tensor  # (B, T or 1, N) the weights g of Eq. 12
    rank_inputs: torch.Tensor | None = None  # u = A x (detached) if the gate just computed it from x, for the mix


class WeightSource(Protocol):
    """A router, as a mixing linear sees it."""

    def gate_weights(self, linear: GatedLinear, inputs: GateInputs) -> GateWeights: ...


class GateRecord(NamedTuple):
    """One gate evaluation of a forward pass, the one record type every router writes and reads."""

    scope: str
    probs: torch.Tensor  # (B, T or 1, N) the gate's softmax probabilities (MoLE: the weights applied; top-k: p)
    routed: torch.Tensor | None = None  # (B, T, N) the weights applied where they differ (top-k), else None
    valid: torch.Tensor | None = None  # (B, T) valid-token mask where it applies, None when every position counts
