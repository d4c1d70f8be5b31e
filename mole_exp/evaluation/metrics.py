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
    fn: Callable[..., dict[str, float]]
    higher_is_better: dict[str, bool]
    primary: str  # the value a suite average uses
    extras: Callable[[list[str], list[list[str]]], dict[str, Any]] | None = None
    normalizations: tuple[str, ...] = ()  # exact-match metrics: the normalisations `fn(..., normalization=)` takes, default first


METRICS: dict[str, Metric] = {}


def register_metric(name: str, outputs: dict[str, bool], primary: str, extras=None, normalizations: tuple[str, ...] = ()):
    def register(fn):
        if name in METRICS:
            raise ValueError(f"metric {name!r} registered twice")
        METRICS[name] = Metric(name, fn, outputs, primary, extras, normalizations)
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


def squad_normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, drop punctuation and articles, squeeze whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def lorahub_normalize(text: str) -> str:
    """LoRAHub's exact-match normalisation (lorahub==0.1.0, `lorahub_inference`'s accuracy_score):
    `text.strip().lower().replace(".", "")`: case-folded, every period dropped, nothing else."""
    return text.strip().lower().replace(".", "")


# the exact-match normalisations, by name (task.em_normalization; recorded in metrics.json's protocol)
EM_NORMALIZATIONS: dict[str, Callable[[str], str]] = {"strict": str.strip, "lorahub": lorahub_normalize, "squad": squad_normalize}


def _matches(predictions: list[str], references: list[list[str]], normalize: Callable[[str], str]) -> float:
    _check(predictions, references)
    hits = sum(any(normalize(p) == normalize(r) for r in refs) for p, refs in zip(predictions, references, strict=True))
    return 100.0 * hits / len(predictions)


@register_metric("exact_match", {"em": True}, "em", normalizations=("strict", "lorahub", "squad"))
def exact_match(predictions: list[str], references: list[list[str]], normalization: str = "strict") -> dict[str, float]:
    """Exact string match, by default after stripping whitespace only (classification: the option string)."""
    return {"em": _matches(predictions, references, EM_NORMALIZATIONS[normalization])}


@register_metric("squad_em", {"em": True}, "em", normalizations=("squad", "strict", "lorahub"))
def squad_exact_match(predictions: list[str], references: list[list[str]], normalization: str = "squad") -> dict[str, float]:
    """Exact match against any gold alias, by default after SQuAD normalisation (closed-book QA)."""
    return {"em": _matches(predictions, references, EM_NORMALIZATIONS[normalization])}


BBH_LETTER = re.compile(r"^\(?([A-R])\)?(?=$|[\s.:,])")  # "(A)", "(A) text", "A", "A." (BBH has options A-R)


def bbh_answer(prediction: str) -> str:
    """The BBH protocol's answer of a generation: the text after the last 'the answer is' when present
    (chain-of-thought), up to the end of that line, without a final period; a multiple-choice answer
    ("(B)", "(B) some option", a bare "B") is reduced to its "(B)" letter form, as BBH's targets are."""
    text = prediction.strip()
    parts = re.split(r"answer is", text, flags=re.IGNORECASE)
    if len(parts) > 1:
        text = parts[-1].strip()
    text = text.split("\n", 1)[0].strip().rstrip(".").strip()
    letter = BBH_LETTER.match(text)
    if letter:
        return f"({letter.group(1)})"
    return text


@register_metric("bbh_em", {"em": True}, "em", normalizations=("lorahub", "strict"))
def bbh_exact_match(predictions: list[str], references: list[list[str]], normalization: str = "lorahub") -> dict[str, float]:
    """BBH exact match. `lorahub` (default): LoRAHub's scorer, the whole generation against the target, both
    stripped, lower-cased and without periods (`(a)` = `(A).`, `yes` = `Yes`). `strict`: the BBH answer
    (`bbh_answer`: after "the answer is", a multiple-choice answer in its "(B)" form) equal to the target as written."""
    if normalization == "strict":
        _check(predictions, references)
        hits = sum(any(bbh_answer(p) == r.strip() for r in refs) for p, refs in zip(predictions, references, strict=True))
        return {"em": 100.0 * hits / len(predictions)}
    return {"em": _matches(predictions, references, EM_NORMALIZATIONS[normalization])}


def normalization_for(metric_name: str, requested: str | None, where: str = "task.em_normalization") -> str | None:
    """The exact-match normalisation a metric uses: `requested`, or the metric's default; None for metrics
    that are not exact match (BLEU, ROUGE). An unknown or unsupported name raises, naming what is allowed."""
    metric = get_metric(metric_name)
    if not metric.normalizations:
        return None
    if requested is None:
        return metric.normalizations[0]
    if requested not in metric.normalizations:
        known = "" if requested in EM_NORMALIZATIONS else f" (known normalisations: {sorted(EM_NORMALIZATIONS)})"
        raise ValueError(f"{where}={requested!r}: metric {metric_name} takes one of {list(metric.normalizations)}{known}")
    return requested


def _reference_streams(references: list[list[str]]) -> list[list[str]]:
    """sacreBLEU's reference streams; an example with fewer references repeats its first one, which
    leaves BLEU unchanged (clipping takes the max count over references, the length the closest one)."""
    width = max(len(r) for r in references)
    return [[refs[k] if k < len(refs) else refs[0] for refs in references] for k in range(width)]


def _bleu_signature(predictions: list[str], references: list[list[str]]) -> dict[str, Any]:
    """The sacreBLEU signature (nrefs, case, tokenizer 13a, smoothing, version) of `bleu`'s scoring."""
    from sacrebleu.metrics import BLEU

    metric = BLEU()
    # the signature needs the number of reference streams, which sacreBLEU learns by scoring: one example does
    metric.corpus_score(predictions[:1], [stream[:1] for stream in _reference_streams(references)])
    return {"sacrebleu_signature": str(metric.get_signature())}


@register_metric("bleu", {"bleu": True}, "bleu", extras=_bleu_signature)
def bleu(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Corpus sacreBLEU (default tokenizer 13a); several references per example allowed."""
    from sacrebleu.metrics import BLEU

    _check(predictions, references)
    return {"bleu": float(BLEU().corpus_score(predictions, _reference_streams(references)).score)}


@register_metric("rouge", {"rouge1": True, "rouge2": True, "rougeL": True}, "rougeL")
def rouge(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """ROUGE-1/2/L F-measure (rouge-score, stemming on) x 100; the best reference per example counts."""
    from rouge_score import rouge_scorer

    _check(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals: Counter = Counter()
    for prediction, refs in zip(predictions, references, strict=True):
        scores = [scorer.score(ref, prediction) for ref in refs]
        for name in ("rouge1", "rouge2", "rougeL"):
            totals[name] += max(s[name].fmeasure for s in scores)
    return {name: 100.0 * totals[name] / len(predictions) for name in ("rouge1", "rouge2", "rougeL")}


def score(
    metric_name: str, predictions: list[str], references: list[list[str]], normalization: str | None = None
) -> tuple[dict[str, float], dict[str, Any]]:
    """(values, extras) of a registered metric; `normalization`: an exact-match metric's (None: its default)."""
    metric = get_metric(metric_name)
    normalization = normalization_for(metric_name, normalization, "normalization")
    values = metric.fn(predictions, references, normalization=normalization) if normalization else metric.fn(predictions, references)
    extras = metric.extras(predictions, references) if metric.extras else {}
    return values, extras
