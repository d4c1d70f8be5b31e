"""Per-example statistics of a registered metric, so that a bootstrap can re-score any resample of examples.

A metric's value over n examples is a function of the sum of per-example statistics (n, k):
- exact match (exact_match, squad_em, bbh_em) and ROUGE are means of per-example scores: the statistic of
  an example is the metric on that example alone (0 or 100 for EM; ROUGE-1/2/L F x 100, best reference),
  and the value of a resample is the mean of its rows;
- BLEU is a corpus metric: the statistics are sacreBLEU's sufficient statistics per sentence (hypothesis and
  reference lengths, matching and total n-grams per order), and the value of a resample is sacreBLEU's
  corpus score of their sum: what sacreBLEU's own bootstrap (`sacrebleu --paired-bs`) computes.

`dataset_stats` checks that the statistics give back the metric's value on the full set, so a metric that
is neither a mean over examples nor BLEU is refused instead of being resampled wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mole_exp.evaluation.metrics import _reference_streams, get_metric

CORPUS_METRICS = ("bleu",)  # scored from summed sufficient statistics; every other metric is a mean over examples
TOLERANCE = 1e-6  # |value from statistics - metric on the full set| allowed (float summation order)


@dataclass(frozen=True)
class DatasetStats:
    """One run's per-example statistics on one dataset, in a fixed example order."""

    dataset: str
    metric: str  # the registered metric (exact_match, rouge, bleu, ...)
    outputs: tuple[str, ...]  # the metric's value names (em | rouge1, rouge2, rougeL | bleu)
    stats: np.ndarray  # (n, k) float64

    @property
    def size(self) -> int:
        return self.stats.shape[0]

    def values(self, sums: np.ndarray, count: int) -> np.ndarray:
        """Metric values from summed statistics: sums (..., k) over `count` examples -> (..., len(outputs))."""
        return values_from_sums(self.metric, sums, count)

    def full_values(self) -> np.ndarray:
        """(len(outputs),) the metric on every example."""
        return self.values(self.stats.sum(axis=0), self.size)


def values_from_sums(metric: str, sums: np.ndarray, count: int) -> np.ndarray:
    sums = np.asarray(sums, dtype=np.float64)
    if metric in CORPUS_METRICS:
        from sacrebleu.metrics import BLEU

        scorer = BLEU()
        flat = sums.reshape(-1, sums.shape[-1])
        scores = np.array([scorer._compute_score_from_stats(list(row)).score for row in flat])  # sacreBLEU's own formula
        return scores.reshape(*sums.shape[:-1], 1)
    return sums / count


def example_stats(metric: str, predictions: list[str], references: list[list[str]]) -> np.ndarray:
    """(n, k) per-example statistics of `metric` for these examples."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("cannot resample an empty set of examples")
    if metric in CORPUS_METRICS:
        from sacrebleu.metrics import BLEU

        rows = BLEU()._extract_corpus_statistics(predictions, _reference_streams(references))
        return np.asarray(rows, dtype=np.float64)  # (n, 2 + 2 * max_ngram_order)
    scorer = get_metric(metric)
    names = list(scorer.higher_is_better)
    rows = [scorer.fn([p], [r]) for p, r in zip(predictions, references, strict=True)]
    return np.asarray([[row[name] for name in names] for row in rows], dtype=np.float64)


def dataset_stats(dataset: str, metric: str, predictions: list[str], references: list[list[str]]) -> DatasetStats:
    """The statistics of one dataset, checked against the metric on the full set."""
    registered = get_metric(metric)
    outputs = tuple(registered.higher_is_better)
    stats = DatasetStats(dataset, metric, outputs, example_stats(metric, predictions, references))
    expected = registered.fn(predictions, references)
    found = stats.full_values()
    for index, name in enumerate(outputs):
        if abs(found[index] - expected[name]) > TOLERANCE * max(1.0, abs(expected[name])):
            raise ValueError(
                f"dataset {dataset}: metric {metric!r} ({name}) is {expected[name]} on the full set but {found[index]} from "
                f"per-example statistics; only means over examples and {list(CORPUS_METRICS)} can be resampled"
            )
    return stats
