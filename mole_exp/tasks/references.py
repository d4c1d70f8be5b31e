"""Rows of generation datasets whose inputs have several gold references (struct-to-text, QA aliases).

Evaluation: one row per input, every reference in `answers` (multi-reference scoring), the first as
`target`. Training: one row per (input, reference) pair, as FLAN and GEM train on these datasets.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def group_references(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """(input key, reference) pairs -> (input key, its references), inputs in first-seen order."""
    grouped: dict[str, list[str]] = {}
    for key, reference in pairs:
        grouped.setdefault(key, []).append(reference)
    return list(grouped.items())


def _clean(references: Iterable[str]) -> list[str]:
    return [r.strip() for r in references if r and r.strip()]


def evaluation_rows(entries: Iterable[tuple[dict[str, Any], list[str]]]) -> list[dict[str, Any]]:
    """(template fields, references) -> one row per input with all its references; inputs without any are dropped."""
    rows = []
    for fields, references in entries:
        references = _clean(references)
        if references:
            rows.append({**fields, "target": references[0], "answers": references})
    return rows


def training_rows(entries: Iterable[tuple[dict[str, Any], list[str]]]) -> list[dict[str, Any]]:
    """(template fields, references) -> one row per (input, reference) pair."""
    return [{**fields, "target": ref, "answers": [ref]} for fields, references in entries for ref in _clean(references)]
