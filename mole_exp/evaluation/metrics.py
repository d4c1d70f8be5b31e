"""Metrics, registered once with `higher_is_better`, and the metric-key convention.

Every metric takes (predictions, references) with `references[i]` the list of gold strings of example i,
and returns {metric name: value} on a 0-100 scale. Keys in metrics.json are `split/dataset/metric`
(`metric_key`), and a suite's average is `split/suite/avg`.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

AVERAGE = "avg"


def metric_key(split: str, dataset: str, metric: str) -> str:
    return f"{split}/{dataset}/{metric}"


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[list[str], list[list[str]]], dict[str, float]]
    higher_is_better: dict[str, bool]
    primary: str  # the value a suite average uses
    extras: Callable[[list[str], list[list[str]]], dict[str, Any]] | None = None


METRICS: dict[str, Metric] = {}


def register_metric(name: str, outputs: dict[str, bool], primary: str, extras=None):
    def register(fn):
        if name in METRICS:
            raise ValueError(f"metric {name!r} registered twice")
        METRICS[name] = Metric(name, fn, outputs, primary, extras)
        return fn

    return register


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise ValueError(f"metric {name!r} is not registered; available: {sorted(METRICS)}")
    return METRICS[name]


def _check(predictions: list[str], references: list[list[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("cannot score an empty evaluation set")


@register_metric("exact_match", {"em": True}, "em")
def exact_match(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Exact string match after stripping whitespace (classification: the option string)."""
    _check(predictions, references)
    hits = sum(any(p.strip() == r.strip() for r in refs) for p, refs in zip(predictions, references))
    return {"em": 100.0 * hits / len(predictions)}


def squad_normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, drop punctuation and articles, squeeze whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


@register_metric("squad_em", {"em": True}, "em")
def squad_exact_match(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Exact match after SQuAD normalisation against any gold alias (closed-book QA)."""
    _check(predictions, references)
    hits = sum(any(squad_normalize(p) == squad_normalize(r) for r in refs) for p, refs in zip(predictions, references))
    return {"em": 100.0 * hits / len(predictions)}


def bbh_answer(prediction: str) -> str:
    """The BBH protocol's answer: the text after 'the answer is' when present, stripped of a final period;
    a multiple-choice answer is reduced to its '(X)' letter form."""
    text = prediction.strip()
    match = re.search(r"answer is\s*(.*)", text, flags=re.IGNORECASE | re.DOTALL)
    if match:
        text = match.group(1).strip()
    text = text.rstrip(".").strip()
    letter = re.match(r"^\(([A-R])\)", text)
    if letter:
        return f"({letter.group(1)})"
    return text


@register_metric("bbh_em", {"em": True}, "em")
def bbh_exact_match(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    _check(predictions, references)
    hits = sum(any(bbh_answer(p) == r.strip() for r in refs) for p, refs in zip(predictions, references))
    return {"em": 100.0 * hits / len(predictions)}


def _bleu_signature(predictions: list[str], references: list[list[str]]) -> dict[str, Any]:
    import sacrebleu

    metric = sacrebleu.metrics.BLEU()
    return {"sacrebleu_signature": str(metric.get_signature())}


@register_metric("bleu", {"bleu": True}, "bleu", extras=_bleu_signature)
def bleu(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Corpus sacreBLEU (default tokenizer 13a); several references per example allowed."""
    import sacrebleu

    _check(predictions, references)
    width = max(len(r) for r in references)
    streams = [[refs[k] if k < len(refs) else refs[0] for refs in references] for k in range(width)]
    return {"bleu": float(sacrebleu.corpus_bleu(predictions, streams).score)}


@register_metric("rouge", {"rouge1": True, "rouge2": True, "rougeL": True}, "rougeL")
def rouge(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """ROUGE-1/2/L F-measure (rouge-score, stemming on) x 100; the best reference per example counts."""
    from rouge_score import rouge_scorer

    _check(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals: Counter = Counter()
    for prediction, refs in zip(predictions, references):
        scores = [scorer.score(ref, prediction) for ref in refs]
        for name in ("rouge1", "rouge2", "rougeL"):
            totals[name] += max(s[name].fmeasure for s in scores)
    return {name: 100.0 * totals[name] / len(predictions) for name in ("rouge1", "rouge2", "rougeL")}


def score(metric_name: str, predictions: list[str], references: list[list[str]]) -> tuple[dict[str, float], dict[str, Any]]:
    """(values, extras) of a registered metric."""
    metric = get_metric(metric_name)
    values = metric.fn(predictions, references)
    extras = metric.extras(predictions, references) if metric.extras else {}
    return values, extras
