"""Synthetic string tasks: seeded, offline, small enough for a laptop-sized T5 to learn.

Every example is `"<tag>: <symbols>"` -> `"<symbols>"`, symbols separated by spaces. Letters are the
capitals A, B, C, ... (each one token of the T5 vocabulary, with its leading space); numbers are written
digit by digit. The letter tasks read the same kind of input, so a short tag (the task's name) says which
one is asked; the gates of a composer can see it, as FLAN's instructions are visible on real tasks.

Operations (`kind`):
    copy     C A D    -> C A D
    reverse  C A D    -> D A C
    sort     C A D    -> A C D
    shift    C A J    -> D B A      (Caesar by one inside the alphabet, wrapping)
    dedupe   C A C D  -> C A D      (first occurrence of each letter; inputs always repeat one)
    add      4 7 + 3 5 -> 8 2       (two 2-digit numbers)
A composite kind chains letter operations left to right: `reverse+shift` reverses, then shifts (tag
"reverse shift"): a held-out task that needs two skills.

The test split is drawn first and the training split never repeats a test input. The data depend only
on `data_seed` (not on the run's seed), so experts, composers and every seed of a sweep share one
held-out test set. Symbol strings fall in one of two pools by a hash of the string: the tasks draw from
the `tasks` pool, the small base's pretraining (mole_exp/tools/mini/small_base.py) from the `pretraining` pool, so no
test input is ever seen in pretraining.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from typing import Any

from mole_exp.tasks.base import LoadedSplits, Task, register_loader

MAX_ALPHABET = 23  # A..W: each a single T5 token ("▁A"); X and Y are not


def alphabet(size: int) -> list[str]:
    if not 2 <= size <= MAX_ALPHABET:
        raise ValueError(f"alphabet_size={size} must be in 2..{MAX_ALPHABET} (capitals A.. that are one T5 token each)")
    return [chr(ord("A") + i) for i in range(size)]


def _shift(letters: list[str], symbols: list[str]) -> list[str]:
    index = {s: i for i, s in enumerate(symbols)}
    return [symbols[(index[c] + 1) % len(symbols)] for c in letters]


def _dedupe(letters: list[str], symbols: list[str]) -> list[str]:
    return list(dict.fromkeys(letters))


LETTER_OPERATIONS: dict[str, Callable[[list[str], list[str]], list[str]]] = {
    "copy": lambda letters, symbols: list(letters),
    "reverse": lambda letters, symbols: letters[::-1],
    "sort": lambda letters, symbols: sorted(letters, key=symbols.index),
    "shift": _shift,
    "dedupe": _dedupe,
}
NUMBER_KINDS = ("add",)
POOLS = ("tasks", "pretraining")
KINDS = (*LETTER_OPERATIONS, *NUMBER_KINDS)


def operations(kind: str) -> list[str]:
    """The steps of a kind: `reverse+shift` -> [reverse, shift]; checked against the known operations."""
    steps = kind.split("+")
    if kind in NUMBER_KINDS:
        return steps
    unknown = [s for s in steps if s not in LETTER_OPERATIONS]
    if unknown:
        raise ValueError(
            f"synthetic kind={kind!r}: unknown operation(s) {unknown}; known: {list(KINDS)} "
            f"(letter operations chain with '+', e.g. reverse+shift)"
        )
    return steps


def task_tag(kind: str) -> str:
    return " ".join(kind.split("+"))


def in_pool(text: str, pool: str) -> bool:
    """Which pool a symbol string belongs to (a fixed hash: half the strings each)."""
    if pool not in POOLS:
        raise ValueError(f"synthetic pool={pool!r} is not one of {list(POOLS)}")
    return zlib.crc32(text.encode()) % 2 == POOLS.index(pool)


def letter_example(kind: str, rng: random.Random, symbols: list[str], min_length: int, max_length: int) -> tuple[str, str]:
    """(the symbols, the output) of a letter task."""
    steps = operations(kind)
    length = rng.randint(min_length, max_length)
    letters = [rng.choice(symbols) for _ in range(length)]
    if "dedupe" in steps and len(set(letters)) == len(letters):  # make sure there is something to remove
        i, j = rng.sample(range(length), 2)
        letters[j] = letters[i]
    output = letters
    for step in steps:
        output = LETTER_OPERATIONS[step](output, symbols)
    return " ".join(letters), " ".join(output)


def addition_example(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"{' '.join(str(a))} + {' '.join(str(b))}", " ".join(str(a + b))


def make_example(kind: str, rng: random.Random, symbols: list[str], min_length: int, max_length: int) -> tuple[str, str]:
    if kind == "add":
        return addition_example(rng)
    return letter_example(kind, rng, symbols, min_length, max_length)


def generate_splits(
    kind: str,
    num_train: int,
    num_test: int,
    data_seed: int,
    alphabet_size: int = 8,
    min_length: int = 2,
    max_length: int = 5,
    pool: str = "tasks",
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, test) rows {source, target, answers, symbols}; test inputs never occur in train."""
    operations(kind)
    in_pool("", pool)
    if not 2 <= min_length <= max_length:
        raise ValueError(f"synthetic lengths must satisfy 2 <= min_length <= max_length (got {min_length}, {max_length})")
    symbols = alphabet(alphabet_size)
    rng = random.Random(data_seed * 1_000_003 + zlib.crc32(kind.encode()))  # each kind its own stream
    seen: set[str] = set()

    def draw(count: int) -> list[dict[str, str]]:
        rows, attempts = [], 0
        while len(rows) < count:
            attempts += 1
            if attempts > 100 * count + 2000:
                raise ValueError(
                    f"synthetic {kind}: cannot draw {count} distinct inputs (only {len(rows)} found); "
                    f"raise max_length or alphabet_size, or ask for fewer examples"
                )
            text, target = make_example(kind, rng, symbols, min_length, max_length)
            if text in seen or not in_pool(text, pool):
                continue
            seen.add(text)
            rows.append({"source": f"{task_tag(kind)}: {text}", "target": target, "answers": [target], "symbols": text})
        return rows

    test = draw(num_test)
    train = draw(num_train)
    return train, test


@register_loader("synthetic")
def load_synthetic(
    name: str,
    source: str,
    data_dir: str | None,
    seed: int,
    kind: str | None = None,
    num_train: int = 1000,
    num_test: int = 100,
    data_seed: int = 0,
    alphabet_size: int = 8,
    min_length: int = 2,
    max_length: int = 5,
) -> LoadedSplits:
    """Rows already carry `source` and `target` (the task config sets no template)."""
    kind = kind or name
    train, test = generate_splits(kind, num_train, num_test, data_seed, alphabet_size, min_length, max_length)
    note = (
        f"synthetic {kind}: generated (data_seed={data_seed}, alphabet={alphabet_size}, lengths {min_length}-{max_length}); "
        f"{len(train)} train / {len(test)} test, disjoint inputs"
    )
    return LoadedSplits(train, test, note)


def synthetic_suite(**options: Any) -> Task:
    """conf/task/synthetic*.yaml's `_target_`: a core Task over this module's loader, which importing this module
    registers (the core never imports the mini reproduction's tools)."""
    return Task(**options)
