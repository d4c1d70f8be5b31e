"""TopKRouter: per-token hard-soft routing over the frozen experts of MoLELinear modules.

For each token x (the input of the first adapted linear of a router's scope):
    p(x)  = softmax(LayerNorm(x) W_r / tau)                    (B, T, N)  soft router probabilities
    g(x)  = p(x) * 1[i in top-k(p(x))] / sum_{j in top-k} p_j   (B, T, N)  hard top-k selection, soft weights
    h     = W x + sum_i g_i(x) s_i B_i A_i x                    (MoLELinear, rank space)
Gradients reach W_r through the kept soft weights (the selection itself is not differentiated), as in
LoRA-Mixer's and Switch/Mixtral-style hard-soft routing.

It reuses the MoLE `Router` for everything but the weights themselves: the pre-hooks on the family's stream
modules (valid-token masks, per-pass caching, cached decoding), expert masking and checkpoints.
"""

from __future__ import annotations

import math

import torch

from mole_exp.mole.gates import entropy
from mole_exp.mole.interface import GatedLinear, GateInputs, GateRecord, GateWeights
from mole_exp.mole.routing import Router, valid_rows


def top_k_weights(probabilities: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest probabilities per token and renormalise them to sum 1.  (..., N) -> (..., N)."""
    if k >= probabilities.shape[-1]:
        return probabilities
    kept, index = probabilities.topk(k, dim=-1)
    routed = torch.zeros_like(probabilities).scatter(-1, index, kept)
    return routed / routed.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def _flatten_valid(tensor: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    return valid_rows(tensor.float(), valid)  # (M, N): the valid positions' rows


def balance_loss(records: list[GateRecord], top_k: int) -> torch.Tensor:
    """Switch-style load balance, averaged over routers: N * sum_i f_i P_i, with f_i the fraction of the
    top-k slots given to expert i and P_i its mean router probability over valid tokens. 1 when uniform."""
    losses = []
    for record in records:
        soft = _flatten_valid(record.probs, record.valid)  # (M, N)
        dispatched = _flatten_valid((record.routed > 0).to(record.probs.dtype), record.valid)  # (M, N)
        num_experts = soft.shape[-1]
        fraction = dispatched.mean(dim=0) / min(top_k, num_experts)  # (N,), sums to 1
        losses.append(num_experts * (fraction * soft.mean(dim=0)).sum())
    return torch.stack(losses).mean()


def specialization_loss(records: list[GateRecord]) -> torch.Tensor:
    """Mean per-token entropy of the router probabilities, divided by log N (in [0, 1]): low when each
    token commits to few experts (input-aware specialization), the entropy-shaping half of LoRA-Mixer's loss."""
    values = []
    for record in records:
        soft = _flatten_valid(record.probs, record.valid)
        values.append(entropy(soft).mean() / math.log(max(soft.shape[-1], 2)))
    return torch.stack(values).mean()


class TopKRouter(Router):
    def __init__(self, gates, gate_inputs, num_experts: int, top_k: int):
        super().__init__(gates, gate_inputs, num_experts)
        self.top_k = top_k

    def _valid_mask(self, stream: str, soft: torch.Tensor) -> torch.Tensor | None:
        mask = self._stream_masks.get(stream)  # this forward's tokens; None where the stream has no mask
        return mask if mask is not None and mask.shape == soft.shape[:-1] else None

    def gate_weights(self, linear: GatedLinear, inputs: GateInputs) -> GateWeights:
        """(B, T, N) top-k weights per token; computed once per scope and pass, reused by its other linears."""
        scope = linear.scope
        routed = self._pass_probs.get(scope)
        if routed is not None:
            return GateWeights(routed)
        gate = self.gate(scope)
        soft = gate.probabilities(gate.token_logits_hidden(inputs.hidden), self.expert_mask)  # (B, T, N)
        routed = top_k_weights(soft, self.top_k)
        self._pass_probs[scope] = routed
        if self.training or self.collecting:
            keep = (lambda t: t) if self.training else (lambda t: t.detach())
            self.records.append(GateRecord(scope, keep(soft), keep(routed), self._valid_mask(linear.stream, soft)))
        return GateWeights(routed)

    @staticmethod
    def token_statistics(records: list[GateRecord]) -> dict[str, dict[str, object]]:
        """Per router: mean probability and top-k share per expert, mean token entropy (detached)."""
        stats: dict[str, dict[str, object]] = {}
        for record in records:
            soft = _flatten_valid(record.probs.detach(), record.valid)
            dispatched = _flatten_valid((record.routed.detach() > 0).float(), record.valid)
            stats[record.scope] = {
                "weights": soft.mean(dim=0).tolist(),
                "dispatch": (dispatched.mean(dim=0) / dispatched.sum(dim=-1).mean().clamp_min(1e-12)).tolist(),
                "entropy": float(entropy(soft).mean()),
            }
        return stats
