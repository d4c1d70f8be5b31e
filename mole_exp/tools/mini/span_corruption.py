"""T5's span-corruption objective on whitespace-separated symbols (Raffel et al. 2020, Section 3.1.4).

`"reverse: C A D E"` with the span `A D` dropped -> source `"reverse: C <extra_id_0> E"`, target
`"<extra_id_0> A D <extra_id_1>"`. Noise spans and the kept runs between them have random lengths, as in
T5's `random_spans_noise_mask`.
"""

from __future__ import annotations

import random


def _random_partition(total: int, parts: int, rng: random.Random) -> list[int]:
    """`total` split into `parts` positive integers, uniformly over the compositions."""
    cuts = sorted(rng.sample(range(1, total), parts - 1)) if parts > 1 else []
    bounds = [0, *cuts, total]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def corrupt_spans(text: str, rng: random.Random, noise_density: float = 0.3, mean_span_length: float = 2.0) -> tuple[str, str]:
    """(source, target) of one span-corruption example; at least one symbol is masked and one kept."""
    if not 0 < noise_density < 1:
        raise ValueError(f"noise_density={noise_density} must lie strictly between 0 and 1")
    symbols = text.split()
    n = len(symbols)
    if n < 2:
        raise ValueError(f"span corruption needs at least two symbols, got {text!r}")
    num_noise = min(n - 1, max(1, round(n * noise_density)))
    num_spans = max(1, min(num_noise, n - num_noise, round(num_noise / mean_span_length)))
    noise_lengths = _random_partition(num_noise, num_spans, rng)
    kept_lengths = _random_partition(n - num_noise, num_spans, rng)
    source, target, position = [], [], 0
    lead_with_noise = rng.random() < 0.5  # a text may start with a kept run or with a noise span
    for span, (kept, noise) in enumerate(zip(kept_lengths, noise_lengths, strict=True)):
        sentinel = f"<extra_id_{span}>"
        runs = [("noise", noise), ("kept", kept)] if lead_with_noise else [("kept", kept), ("noise", noise)]
        for what, length in runs:
            piece = symbols[position : position + length]
            position += length
            if what == "kept":
                source.extend(piece)
            else:
                source.append(sentinel)
                target.extend([sentinel, *piece])
    target.append(f"<extra_id_{num_spans}>")
    return " ".join(source), " ".join(target)
