"""Following beam search's reordering of the KV cache: the one place that relies on how transformers does it.

Causal sequence-scope gates keep a running sum per example (the prefix mean, mole/gates.py `pool_causal`); when
beam search reorders the cache between steps, those sums must be reordered with it. transformers'
`GenerationMixin._beam_search` reorders through the model's `_reorder_cache(cache, beam_idx)` when the model
has one (the door it keeps for models such as RAG and RecurrentGemma), else through `cache.reorder_cache`.
We install that model-level method for the time the mechanism is injected and call the original reordering
from it. tests/test_beam_search.py fails if transformers stops calling it (and the cached-vs-uncached beam
generation tests in tests/test_gates.py would then disagree).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

HOOK = "_reorder_cache"


class BeamReorderHandle:
    """Removes the reordering hook again (like torch's RemovableHandle), restoring what the model had."""

    def __init__(self, model: nn.Module, previous: Callable | None):
        self.model, self.previous = model, previous

    def remove(self) -> None:
        if self.model is None:
            return
        self.model.__dict__.pop(HOOK, None)
        if self.previous is not None:
            self.model.__dict__[HOOK] = self.previous
        self.model = None


class ReorderCache:
    """The model's `_reorder_cache` while the mechanism is injected: the cache's own reordering (or the one the
    model had), then `on_reorder(beam_idx)`. A class, not a closure, so that the model still pickles."""

    def __init__(self, original: Callable | None, on_reorder: Callable[[torch.LongTensor], None]):
        self.original, self.on_reorder = original, on_reorder

    def __call__(self, cache, beam_idx: torch.LongTensor):
        if self.original is not None:
            cache = self.original(cache, beam_idx)
        else:
            cache.reorder_cache(beam_idx)
        self.on_reorder(beam_idx)
        return cache


def follow_beam_reorder(model: nn.Module, on_reorder: Callable[[torch.LongTensor], None]) -> BeamReorderHandle:
    """Call `on_reorder(beam_idx)` (beam_idx (B*beams,) integers: the new row i is old row beam_idx[i]) whenever beam
    search reorders `model`'s cache, after the cache itself is reordered. Returns the handle that undoes it."""
    previous = model.__dict__.get(HOOK)  # an instance-level hook someone else installed (kept, and called)
    model.__dict__[HOOK] = ReorderCache(getattr(model, HOOK, None), on_reorder)
    return BeamReorderHandle(model, previous)
