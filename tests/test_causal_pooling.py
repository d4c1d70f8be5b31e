"""Prefix pooling over a causal stream's valid tokens (mole/gates.py `pool_causal`): at position t, the mean of the
token logits over the valid positions <= t, a running sum and a running count per row continued across cached steps;
left pads pool to finite values; without a mask the T5 decoder's prefix mean, bit for bit."""

from __future__ import annotations

import torch

from mole_exp.mole.gates import pool_causal


def reference_prefix_mean(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Written out with loops: row b, position t -> mean of logits[b, s] over valid s <= t (0 where none is)."""
    out = torch.zeros_like(logits)
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            kept = [logits[b, s] for s in range(t + 1) if valid[b, s]]
            if kept:
                out[b, t] = torch.stack(kept).mean(dim=0)
    return out


def test_masked_prefix_mean_skips_left_and_right_padding():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 4, generator=generator, dtype=torch.float64)
    valid = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])  # left-padded, right-padded, full
    pooled, total, count = pool_causal(logits, None, 0, valid)
    torch.testing.assert_close(pooled, reference_prefix_mean(logits, valid), rtol=0, atol=1e-12)
    assert torch.isfinite(pooled).all() and (pooled[0, :2] == 0).all()  # left pads: no valid token yet
    assert count.tolist() == [4, 4, 6]
    torch.testing.assert_close(total, (logits * valid[..., None]).sum(dim=1))
    # a left-padded row gives its valid tokens exactly what the row alone gives them
    alone, _, _ = pool_causal(logits[:1, 2:], None, 0, None)
    assert torch.equal(pooled[0, 2:], alone[0])


def test_cached_steps_continue_the_running_sum_and_count():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 7, 3, generator=generator, dtype=torch.float64)
    valid = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    whole, _, _ = pool_causal(logits, None, 0, valid)
    pooled, total, count = pool_causal(logits[:, :4], None, 0, valid[:, :4])  # the prompt, then one token at a time
    steps = [pooled]
    for t in range(4, 7):
        pooled, total, count = pool_causal(logits[:, t : t + 1], total, count, valid[:, t : t + 1])
        steps.append(pooled)
    torch.testing.assert_close(torch.cat(steps, dim=1), whole, rtol=0, atol=1e-12)
    assert count.tolist() == [4, 7]


def test_without_a_mask_it_is_the_unmasked_prefix_mean_bit_for_bit():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 3, generator=generator)
    previous = torch.randn(2, 3, generator=generator)
    pooled, total, count = pool_causal(logits, previous, 4)
    running = logits.cumsum(dim=1) + previous[:, None]  # today's T5 decoder formula
    assert torch.equal(pooled, running / (4 + torch.arange(1, 6, dtype=logits.dtype))[None, :, None])
    assert torch.equal(total, running[:, -1]) and count == 9
    # an all-ones mask gives the same values (up to rounding of the division)
    masked, _, masked_count = pool_causal(logits, previous, torch.tensor([4, 4]), torch.ones(2, 5))
    torch.testing.assert_close(masked, pooled)
    assert masked_count.tolist() == [9, 9]
