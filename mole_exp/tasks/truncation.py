"""Inputs longer than `data.max_source_length` tokens are cut where the prompt says least, and recorded.

A FLAN prompt puts the long free text first (a premise, a passage) and the question, hypothesis and
OPTIONS block last. Cutting the tokenised prompt from the right, as the tokenizer would, drops exactly
what the model needs to answer; so the cut is made inside the row's longest free-text slot (measured in
tokens), before the template is filled, until the filled prompt fits. Rows without a template (BBH's own
inputs, few-shot prompts with the question last) keep their end instead. Targets longer than
`data.max_target_length` are cut from the right by the tokenizer when training; they are counted.

`fit_to_length` rewrites the examples' `source` in place, flags each cut example (`truncated`: which slot,
how many tokens it had), warns once per dataset, and returns the counts metrics.json records under
`truncation`.
"""

from __future__ import annotations

import logging
from typing import Any

from mole_exp.tasks.templates import load_templates, slots

log = logging.getLogger(__name__)

KEEP_END = "the start of the input (no template; its end, with the question, is kept)"
MAX_ROUNDS = 8  # re-measurements per example (tokenising the parts apart differs slightly from the whole)


def token_count(tokenizer, text: str) -> int:
    return len(tokenizer(text).input_ids)  # with the end-of-sequence token, as the model reads it


def cut_tokens(tokenizer, text: str, keep: int, from_start: bool = False) -> str:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    kept = ids[len(ids) - keep:] if from_start else ids[:keep]
    return tokenizer.decode(kept, skip_special_tokens=True) if keep > 0 else ""


def free_text_slots(task, spec) -> list[str]:
    """The template's input slots that hold row text and are not part of the target (never the options)."""
    pattern = load_templates(task.template_version)[spec.template][spec.template_index]
    return sorted(slots(pattern["input"]) - slots(pattern["target"]) - {"options_"})


def fit_example(task, spec, example: dict[str, Any], tokenizer, max_length: int) -> dict[str, Any] | None:
    """Cut `example` to `max_length` tokens in place; returns what was cut (None: it fits)."""
    length = token_count(tokenizer, example["source"])
    if length <= max_length:
        return None
    if spec.template is None or "row" not in example:
        example["source"] = cut_tokens(tokenizer, example["source"], max_length - 1, from_start=True)
        return {"cut": KEEP_END, "tokens": length}
    row = dict(example["row"])
    sizes = {s: len(tokenizer(row[s], add_special_tokens=False).input_ids) for s in free_text_slots(task, spec) if isinstance(row.get(s), str)}
    cut: list[str] = []
    current = length
    for slot in sorted(sizes, key=sizes.get, reverse=True):  # the longest first; the next only once it is empty
        for _ in range(MAX_ROUNDS):
            size = len(tokenizer(row[slot], add_special_tokens=False).input_ids)
            if size == 0:
                break
            row[slot] = cut_tokens(tokenizer, row[slot], max(0, size - (current - max_length) - 1))
            cut.append(slot)
            example["source"] = task.render(spec, row)["source"]
            current = token_count(tokenizer, example["source"])
            if current <= max_length:
                break
        if current <= max_length:
            break
    what = ", ".join(dict.fromkeys(cut)) or "nothing"
    if current > max_length:  # the template's own text is longer than the limit: the tokenizer cuts its end
        what += f"; still {current} tokens: the tokenizer cuts the rest from the right"
    return {"cut": f"slot {what}", "tokens": length}


def fit_to_length(tasks: list[Any], tokenizer, max_source_length: int, max_target_length: int) -> dict[str, Any]:
    """Fit every loaded example of the tasks to the lengths; the counts per dataset and split."""
    report: dict[str, Any] = {"max_source_length": max_source_length, "max_target_length": max_target_length, "datasets": {}}
    for task in dict.fromkeys(tasks):
        for dataset, spec in task.specs.items():
            cuts: list[str] = []
            for split, sets in (("train", task.train), ("test", task.test)):
                if dataset not in sets:
                    continue
                examples = sets[dataset]
                counts = {"examples": len(examples), "inputs_cut": 0}
                for example in examples:
                    cut = fit_example(task, spec, example, tokenizer, max_source_length)
                    if cut is not None:
                        example["truncated"] = cut
                        counts["inputs_cut"] += 1
                        cuts.append(cut["cut"])
                if split == "train" and examples:
                    lengths = tokenizer(text_target=[e["target"] for e in examples]).input_ids
                    counts["targets_cut"] = sum(len(ids) > max_target_length for ids in lengths)
                report["datasets"].setdefault(dataset, {})[split] = counts
            warn(dataset, report["datasets"].get(dataset, {}), cuts, max_source_length, max_target_length)
    return report


def warn(dataset: str, counts: dict[str, dict[str, int]], cuts: list[str], max_source: int, max_target: int) -> None:
    """One warning per dataset, for both splits."""
    inputs = ", ".join(f"{c['inputs_cut']} of {c['examples']} {split}" for split, c in counts.items() if c["inputs_cut"])
    targets = counts.get("train", {}).get("targets_cut", 0)
    if not inputs and not targets:
        return
    parts = []
    if inputs:
        parts.append(f"inputs longer than data.max_source_length={max_source} tokens: {inputs}; cut: "
                     + "; ".join(dict.fromkeys(cuts)))
    if targets:
        parts.append(f"{targets} training targets longer than data.max_target_length={max_target} tokens, cut from the right")
    log.warning("%s: %s (counted in metrics.json under truncation, flagged in predictions.jsonl)", dataset, "; ".join(parts))
