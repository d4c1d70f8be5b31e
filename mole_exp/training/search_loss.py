"""The loss that gradient-free composers (LoRAHub, PEMs) minimise: mean token cross-entropy on examples.

    loss(examples) = sum_b |b| * CE_b / sum_b |b|      batches b of `batch_size` examples, CE_b the
                                                       token-mean cross-entropy of batch b (`model(**b).loss`)

`ExampleLoss(examples)` tokenises and scores in one call. A search scores the same few examples under
many candidate weights, so `ExampleLoss.prepare(examples)` tokenises and collates them once, keeps the
batches on the model's device and returns a callable giving the same value, bit for bit, for whatever
weights the model holds when it is called. The forward runs without a KV cache (`use_cache=False`: a
training-style forward builds one for nothing), which leaves the loss unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from transformers import PreTrainedTokenizerBase

from mole_exp.training.data import collator, tokenize


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class ExampleLoss:
    """Mean token cross-entropy of `model` (as it is when called) on (source, target) examples."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, max_source_length: int, max_target_length: int, batch_size: int):
        self.model, self.tokenizer = model, tokenizer
        self.max_source_length, self.max_target_length, self.batch_size = max_source_length, max_target_length, batch_size
        self.collate = collator(tokenizer)

    def batches(self, examples: list[dict[str, Any]]) -> list[dict[str, torch.Tensor]]:
        """The examples tokenised and collated into padded batches of `batch_size`, on the CPU."""
        features = tokenize(self.tokenizer, examples, self.max_source_length, self.max_target_length)
        return [dict(self.collate(features[start : start + self.batch_size])) for start in range(0, len(features), self.batch_size)]

    @torch.inference_mode()
    def score_batches(self, batches: list[dict[str, torch.Tensor]]) -> float:
        if self.model.training:  # (eval() walks every module: done once, not per candidate)
            self.model.eval()
        total, count = 0.0, 0
        for batch in batches:
            size = len(batch["input_ids"])
            total += float(self.model(**batch, use_cache=False).loss) * size
            count += size
        return total / count

    def __call__(self, examples: list[dict[str, Any]]) -> float:
        self.model.eval()
        device = model_device(self.model)
        return self.score_batches([{k: v.to(device) for k, v in batch.items()} for batch in self.batches(examples)])

    def prepare(self, examples: list[dict[str, Any]]) -> Callable[[], float]:
        """The same value as `self(examples)`, with the examples tokenised once and kept on the device."""
        cpu_batches = self.batches(examples)
        self.model.eval()
        held: dict[torch.device, list[dict[str, torch.Tensor]]] = {}

        def loss() -> float:
            device = model_device(self.model)  # the model may move between calls; the batches follow it once
            if device not in held:
                held.clear()
                held[device] = [{k: v.to(device) for k, v in batch.items()} for batch in cpu_batches]
            return self.score_batches(held[device])

        return loss
