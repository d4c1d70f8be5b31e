"""What mole/beam_search.py relies on: transformers' beam search reorders the cache through the model's
`_reorder_cache(cache, beam_idx)` when the model has one. If transformers changes that, these tests fail (and the
gates' running sums would no longer follow the beams: tests/test_gates.py's cached-vs-uncached beam test)."""

from __future__ import annotations

import torch

from mole_exp.mole.beam_search import follow_beam_reorder
from tests.conftest import make_tiny


def test_beam_search_reorders_through_the_models_reorder_cache_hook():
    base = make_tiny()
    model = base.model.eval()
    inputs = base.tokenizer(["translate English to French: the house is blue", "Is this true?"], return_tensors="pt", padding=True)
    settings = {"max_new_tokens": 5, "num_beams": 3, "do_sample": False}
    with torch.no_grad():
        plain = model.generate(**inputs, **settings)
    seen: list[torch.Tensor] = []
    handle = follow_beam_reorder(model, seen.append)
    with torch.no_grad():
        followed = model.generate(**inputs, **settings)
    handle.remove()
    assert torch.equal(followed, plain)  # the cache itself was still reordered
    assert len(seen) >= 4  # once per step after the first (5 new tokens)
    assert all(not idx.dtype.is_floating_point and idx.shape == (2 * 3,) for idx in seen)  # new row i = old row idx[i]
    assert all(((idx >= 0) & (idx < 6)).all() for idx in seen)
    assert "_reorder_cache" not in model.__dict__ and not hasattr(model, "_reorder_cache")


def test_the_hook_calls_a_reordering_the_model_already_had():
    base = make_tiny()
    model = base.model
    calls: list[str] = []

    def own(cache, beam_idx):
        calls.append("own")
        cache.reorder_cache(beam_idx)
        return cache

    model._reorder_cache = own
    handle = follow_beam_reorder(model, lambda idx: calls.append("gates"))

    class Cache:
        def reorder_cache(self, beam_idx):
            calls.append("cache")

    model._reorder_cache(Cache(), torch.tensor([1, 0]))
    assert calls == ["own", "cache", "gates"]
    handle.remove()
    assert model._reorder_cache is own
