"""One evaluation path for every composer: generate -> post-process -> score, per dataset.

The evaluator sees only a model that can `generate`, its tokenizer, and a task's examples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from mole_exp.base.text_format import pad_id, text_format
from mole_exp.evaluation.metrics import AVERAGE, get_metric, metric_key, score

log = logging.getLogger(__name__)


@dataclass
class GenerationSettings:
    batch_size: int = 32
    num_beams: int = 1
    max_source_length: int = 512
    max_new_tokens: int | None = None  # None: each dataset's own setting
    progress: bool = True


def postprocess(texts: list[str]) -> list[str]:
    """The single post-processing step of generated text (as transformers' run_translation does)."""
    return [text.strip() for text in texts]


@torch.no_grad()
def generate(model, tokenizer, sources: list[str], max_new_tokens: int, settings: GenerationSettings, desc: str = "") -> list[str]:
    model.eval()
    device = next(model.parameters()).device
    form = text_format(tokenizer)  # seq2seq: the source as model input; causal LM: left-padded prompts, only the completion decoded
    # longest first, so batches pad little; the original order is restored at the end
    order = sorted(range(len(sources)), key=lambda i: -len(sources[i]))
    predictions: list[str] = [""] * len(sources)
    batches = range(0, len(order), settings.batch_size)
    for start in tqdm(batches, desc=f"generate {desc}", disable=not settings.progress, leave=False):
        index = order[start : start + settings.batch_size]
        encoded = {k: v.to(device) for k, v in form.encode_prompts(tokenizer, [sources[i] for i in index], settings.max_source_length).items()}
        output = model.generate(**encoded, max_new_tokens=max_new_tokens, num_beams=settings.num_beams, do_sample=False,
                                **({"pad_token_id": pad_id(tokenizer)} if form.causal else {}))
        for i, text in zip(index, postprocess(form.completions(tokenizer, output, encoded)), strict=True):
            predictions[i] = text
    return predictions


def score_examples(model, tokenizer, task, examples: list[dict[str, Any]], settings: GenerationSettings) -> float:
    """Generate for examples of (possibly several of) a task's datasets; the mean of each dataset's primary metric."""
    by_dataset: dict[str, list[dict[str, Any]]] = {}
    for example in examples:
        by_dataset.setdefault(example["dataset"], []).append(example)
    values = []
    for dataset, rows in by_dataset.items():
        spec = task.specs[dataset]
        predictions = generate(model, tokenizer, [e["source"] for e in rows], settings.max_new_tokens or spec.max_new_tokens, settings, desc=dataset)
        references = [e["references"] for e in rows]
        values.append(score(spec.metric, predictions, references, spec.normalization)[0][get_metric(spec.metric).primary])
    return sum(values) / len(values)


def evaluate_task(
    model, tokenizer, task, settings: GenerationSettings, split: str = "test", before_dataset=None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics (keys `split/dataset/metric`, suite average `split/suite/avg`) and prediction rows.

    The suite average is the mean of every metric value of every evaluated dataset, as the paper's
    Table 3 averages are (struct-to-text: all ROUGE-1/2/L numbers).

    `before_dataset(name)` runs before each dataset (a composer hook, e.g. per-dataset expert choice)."""
    metrics: dict[str, float] = {}
    higher_is_better: dict[str, bool] = {}
    extras: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    suite_values: list[float] = []
    for dataset, examples in task.eval_sets().items():
        if not examples:
            raise ValueError(f"dataset {dataset}: the evaluation split is empty")
        spec = task.specs[dataset]
        if before_dataset is not None:
            before_dataset(dataset)
        max_new_tokens = settings.max_new_tokens or spec.max_new_tokens
        predictions = generate(model, tokenizer, [e["source"] for e in examples], max_new_tokens, settings, desc=dataset)
        references = [e["references"] for e in examples]
        values, extra = score(spec.metric, predictions, references, spec.normalization)
        metric = get_metric(spec.metric)
        for name, value in values.items():
            key = metric_key(split, dataset, name)
            metrics[key] = value
            higher_is_better[key] = metric.higher_is_better[name]
        suite_values.extend(values.values())  # the paper's suite averages: every metric of every dataset
        if extra:
            extras[dataset] = extra
        counts[dataset] = len(examples)
        rows.extend(
            {"dataset": dataset, "input": e["source"], "prediction": p, "references": e["references"], "metric": spec.metric,
             **({"truncated": e["truncated"]} if e.get("truncated") else {})}  # the input was cut (tasks/truncation.py)
            for e, p in zip(examples, predictions, strict=True)
        )
        log.info("%s: %s", dataset, {k: round(v, 2) for k, v in values.items()})
    average_key = metric_key(split, task.name, AVERAGE)
    metrics[average_key] = sum(suite_values) / len(suite_values)
    higher_is_better[average_key] = True
    return {"metrics": metrics, "higher_is_better": higher_is_better, "num_examples": counts, "extras": extras}, rows
