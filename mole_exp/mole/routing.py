"""The Router: all gates of a composed model (its only trainable parameters) and the per-forward state.

It is attached to the model as `model.mole_gate`, so every trainable parameter is named
`mole_gate.gates.<scope>.projection` or `mole_gate.gates.<scope>.temperature.log_tau`.

Which token streams exist, and which mask feeds which gate, the router takes from the model family
(`ModelFamily.streams`, mole_exp/base/family.py). Per forward it knows, through a pre-hook on each stream's module:
- the valid-token mask of each stream that has one (a bidirectional stream's sequence-scope gates average over its
  valid tokens; a causal stream's over its valid tokens <= t, which skips a left-padded batch's pads),
- each causal stream's cache offset, so that its prefix pooling continues a running sum and a running count of
  valid tokens during cached generation (and follows beam search's reordering of the cache, mole/beam_search.py),
- which gates were already evaluated in this pass: a shared gate is computed at the first adapted linear
  of its scope and reused by the others.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
import torch.nn as nn

from mole_exp.base.family import Stream
from mole_exp.mole import rank_space
from mole_exp.mole.beam_search import follow_beam_reorder
from mole_exp.mole.gates import Gate, balance_loss, entropy, pool_bidirectional, pool_causal
from mole_exp.mole.interface import GatedLinear, GateInputs, GateRecord, GateWeights


def module_key(scope: str) -> str:
    """A scope as a ModuleDict key, which cannot hold '.' (a.b.0 -> a_b_0); ':' is written '__' (x:memory ->
    x__memory). Only the spelling of the gates' keys in the module tree (so in gates checkpoints, which must keep
    loading): everywhere else a gate is named by its scope."""
    return scope.replace(":", "__").replace(".", "_")


def valid_rows(tensor: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """(B, T, N) -> (M, N): the rows of the valid positions (every row when `valid` is None or not (B, T))."""
    flat = tensor.reshape(-1, tensor.shape[-1])  # (B*T, N)
    if valid is None or valid.shape != tensor.shape[:-1]:
        return flat
    return flat[valid.reshape(-1).bool()]


def valid_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean over the first two dims (examples, positions), of the valid positions only: (B, T, ...) -> (...). A weighted mean,
    so no host sync (boolean indexing would need one per gate)."""
    if valid is None or valid.shape != values.shape[:2]:
        return values.reshape(-1, *values.shape[2:]).mean(dim=0)
    weights = valid.to(values.dtype).reshape(*valid.shape, *([1] * (values.dim() - 2)))  # (B, T, 1...)
    return (values * weights).sum(dim=(0, 1)) / weights.sum().clamp_min(1.0)


class Router(nn.Module):
    def __init__(self, gates: dict[str, Gate], gate_inputs: dict[str, str], num_experts: int):
        super().__init__()
        self.scopes = list(gates)  # ordered as the model runs them
        self.gates = nn.ModuleDict({module_key(s): g for s, g in gates.items()})
        self.gate_inputs = dict(gate_inputs)  # scope -> the module that computes it
        self.num_experts = num_experts
        self.register_buffer("expert_mask", None, persistent=False)
        self.collecting = False
        self.streams: dict[str, Stream] = {}  # name -> the family's stream, set by `attach`
        self._stream_masks: dict[str, torch.Tensor | None] = {}  # stream -> (B, T) valid tokens of this forward's T tokens
        self._offsets: dict[str, int] = {}  # causal stream -> tokens already in its KV cache
        # causal scope -> (valid-logit sum (B, N), valid count: int or (B,), tokens consumed, stream)
        self._running: dict[str, tuple[torch.Tensor, int | torch.Tensor, int, str]] = {}
        self._pass_probs: dict[str, torch.Tensor] = {}
        self.records: list[GateRecord] = []
        self._hooks: list = []

    def gate(self, scope: str) -> Gate:
        return self.gates[module_key(scope)]

    # ------------------------------------------------------------------ wiring

    def attach(self, model: nn.Module, streams: tuple[Stream, ...]) -> None:
        """Follow the forwards of the streams' modules (valid-token masks, cache offsets) through a pre-hook on
        each, and beam search's reordering of the cache (mole/beam_search.py). `detach` removes all of them."""
        self.streams = {stream.name: stream for stream in streams}
        by_module: dict[str, list[Stream]] = {}
        for stream in streams:
            by_module.setdefault(stream.module, []).append(stream)
        self._hooks = [
            model.get_submodule(module).register_forward_pre_hook(partial(self._before_stream_module, tuple(group)), with_kwargs=True)
            for module, group in by_module.items()
        ]
        self._hooks.append(follow_beam_reorder(model, self._reorder_running_sums))
        self._reset_state()

    def detach(self) -> None:
        """Remove the hooks `attach` put on the model and drop every per-forward state and record (the adapted
        linears are unwrapped by `inject.remove`)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._reset_state()
        self.records = []

    def _reset_state(self) -> None:
        self._pass_probs.clear()
        self._stream_masks = {name: None for name in self.streams}
        self._offsets = {name: 0 for name, stream in self.streams.items() if stream.causal}
        self._running.clear()

    def _before_stream_module(self, streams: tuple[Stream, ...], module, args, kwargs):
        """A forward of a stream module starts a new pass of its gates: read its streams' masks and cache offset."""
        for stream in streams:
            if stream.causal:
                cache = kwargs.get("past_key_values", kwargs.get("cache"))
                self._offsets[stream.name] = cache.get_seq_length() if cache is not None else 0
                if self._offsets[stream.name] == 0:  # a new sequence: the running sums of its gates start again
                    for scope in [s for s, (*_, name) in self._running.items() if name == stream.name]:
                        del self._running[scope]
                self._stream_masks[stream.name] = self._causal_mask(stream, kwargs, self._offsets[stream.name])
            else:
                self._stream_masks[stream.name] = kwargs.get(stream.mask_argument) if stream.mask_argument else None
        self._pass_probs.clear()

    @staticmethod
    def _causal_mask(stream: Stream, kwargs: dict, offset: int) -> torch.Tensor | None:
        """The valid-token mask of a causal stream's new tokens: its mask argument covers the cached tokens and the new
        ones, (B, offset + T) (transformers' `attention_mask` during cached generation), and the new ones are its last T."""
        mask = kwargs.get(stream.mask_argument) if stream.mask_argument else None
        if mask is None:
            return None
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[1] <= offset:
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(
                f"stream {stream.name!r}: its {stream.mask_argument!r} must be a (batch, cached + new tokens) 0/1 mask with more than "
                f"the {offset} cached tokens, got {shape}"
            )
        return mask[:, offset:]

    def _reorder_running_sums(self, beam_idx: torch.LongTensor) -> None:
        """Beam search reordered the KV cache between steps; the running gate sums (and per-row counts) follow it."""
        for scope, (running_sum, count, consumed, stream) in self._running.items():
            index = beam_idx.to(running_sum.device)
            count = count.index_select(0, index) if isinstance(count, torch.Tensor) else count
            self._running[scope] = (running_sum.index_select(0, index), count, consumed, stream)

    # ------------------------------------------------------------------ the gate weights of one linear

    def gate_weights(self, linear: GatedLinear, inputs: GateInputs) -> GateWeights:
        """(B, 1, N) for sequence-scope gates of a bidirectional stream, (B, T, N) for a causal stream or token scope.

        The logits come from `inputs.expert_outputs` (stacked reference), else from `inputs.rank_inputs` u = A x,
        else (implementation rank_space) from x with u recomputed in backward, and that u is handed back for the
        linear's mix. `inputs.base_output` (B, T, d_out) = W x is read only by gates with expert_output=full (Eq. 8)."""
        scope = linear.scope
        probs = self._pass_probs.get(scope)
        if probs is not None:
            return GateWeights(probs)
        if self.gate_inputs[scope] != linear.module_name:
            raise RuntimeError(
                f"gate {scope!r} is computed at {self.gate_inputs[scope]!r}, but {linear.module_name!r} ran first"
            )
        gate = self.gate(scope)
        hidden, rank_inputs, expert_outputs = inputs.hidden, inputs.rank_inputs, inputs.expert_outputs
        base_output = inputs.base_output if gate.reads_base_output else None
        computed = None  # u = A x, when computed here for the linear's mix
        if gate.input_form != "hidden" and expert_outputs is None and rank_inputs is None:
            token_logits, computed = rank_space.token_logits(
                gate, hidden, linear.lora_A, linear.lora_B, linear.scaling, base_output=base_output
            )
        else:
            # gate statistics (means, variances) in float32 even under bf16 autocast: they cancel badly in bf16
            with torch.autocast(device_type=hidden.device.type, enabled=False):
                if gate.input_form == "hidden":
                    token_logits = gate.token_logits_hidden(hidden)
                elif expert_outputs is not None:
                    token_logits = gate.token_logits_stacked(expert_outputs, base_output)
                else:
                    token_logits = gate.token_logits_rank_space(rank_inputs, linear.lora_B, linear.scaling, base_output)
        if gate.scope == "token":
            pooled = token_logits
        elif self.streams[linear.stream].causal:  # prefix mean over the valid tokens <= t, continued across cached steps
            offset, valid = self._offsets[linear.stream], self._stream_masks[linear.stream]
            previous = self._running.get(scope) if offset > 0 else None
            if offset > 0 and (previous is None or previous[2] != offset):
                raise RuntimeError(f"gate {scope!r}: cached decoding at offset {offset} without its running state")
            if valid is not None and valid.shape != token_logits.shape[:2]:
                raise ValueError(
                    f"gate {scope!r}: the stream's valid-token mask covers {tuple(valid.shape)} new tokens but the linear reads "
                    f"{tuple(token_logits.shape[:2])} (mask argument {self.streams[linear.stream].mask_argument!r})"
                )
            pooled, running_sum, count = pool_causal(token_logits, previous[0] if previous else None, previous[1] if previous else 0, valid)
            count = count.detach() if isinstance(count, torch.Tensor) else count
            self._running[scope] = (running_sum.detach(), count, offset + token_logits.shape[1], linear.stream)
        else:
            pooled = pool_bidirectional(token_logits, self._stream_masks[linear.stream])
        probs = gate.probabilities(pooled, self.expert_mask)
        self._pass_probs[scope] = probs
        if self.training or self.collecting:
            # a causal stream's pads (left or right) do not count in q (Eq. 15) or the statistics (a stream without a mask: every position)
            valid = self._stream_masks[linear.stream] if self.streams[linear.stream].causal else None
            self.records.append(GateRecord(scope, probs if self.training else probs.detach(), valid=valid))
        return GateWeights(probs, computed)

    # ------------------------------------------------------------------ masking, statistics, loss

    def set_expert_mask(self, keep: list[int] | None) -> None:
        """Keep only experts `keep` (indices) at inference; None restores all."""
        if keep is None:
            self.expert_mask = None
            return
        if not keep:
            raise ValueError("the expert mask removes every expert; keep at least one")
        mask = torch.zeros(self.num_experts, dtype=torch.bool, device=self._device())
        mask[torch.as_tensor(keep, dtype=torch.long)] = True
        self.expert_mask = mask

    def _device(self) -> torch.device:
        return next(self.parameters(), torch.zeros(())).device

    def pop_records(self) -> list[GateRecord]:
        records, self.records = self.records, []
        return records

    @staticmethod
    def mean_probabilities(records: list[GateRecord]) -> torch.Tensor:
        """q of Eq. 15: each expert's probability averaged over gating functions, examples and positions."""
        per_gate = [valid_mean(record.probs.float(), record.valid) for record in records]
        return torch.stack(per_gate).mean(dim=0)  # (N,)

    def balance_loss(self, records: list[GateRecord]) -> torch.Tensor:
        return balance_loss(self.mean_probabilities(records))

    @staticmethod
    def statistics(records: list[GateRecord]) -> dict[str, dict[str, object]]:
        """Per gate: mean weight per expert and mean entropy of its weight vectors (detached).

        Computed on the device and copied to the host once (one sync per call, not one per gate)."""
        if not records:
            return {}
        probs = [(record.probs.detach().float(), record.valid) for record in records]
        means = torch.stack([valid_mean(p, valid) for p, valid in probs])  # (G, N)
        entropies = torch.stack([valid_mean(entropy(p), valid) for p, valid in probs])  # (G,)
        table = torch.cat([means, entropies[:, None]], dim=1).cpu().tolist()  # the one host copy
        return {scope: {"weights": row[:-1], "entropy": row[-1]} for record, row in zip(records, table, strict=True) for scope in [record.scope]}

    @contextmanager
    def collect(self):
        """Record gate weights (detached) during evaluation, e.g. for the per-gate heatmap."""
        self.collecting, self.records = True, []
        try:
            yield self
        finally:
            self.collecting = False
