"""Confidence intervals: paired bootstrap over test examples, and over seeds when there are several.

A comparison is of two composers B and A on the same examples. With one run each (one seed), the
difference B - A of a dataset's metric is resampled over examples: each resample draws n of the n examples
with replacement, the same draw for both runs (paired), and re-scores both from per-example statistics
(`example_stats`). With runs for several seeds (replicates: each seed may re-draw the library, the test
examples and the composer's initialisation), the bootstrap is two-level: each resample draws the seeds
with replacement (the same seeds for both composers), then the examples within each drawn seed, and
averages the differences over the drawn seeds. So the interval covers both where the number could move
with other test examples and with another seed.

    interval = paired_difference([(scores_a_seed0, scores_b_seed0), ...], target)   # Interval of B - A
    interval = mean_interval([scores_seed0, ...], target)                          # one composer's value

A target is what is compared: one (dataset, metric value) pair, or several whose mean is compared (a suite
average: every metric of every dataset, as `test/<suite>/avg` is). The interval is the 2.5% / 97.5% order
statistics of the resampled values (the rule of sacreBLEU's `estimate_ci`), `resamples` = 1000 and
`seed` = 12345 (sacreBLEU's default `SACREBLEU_SEED`) unless given. Identical predictions give a
difference of exactly 0 with a zero-width interval. `significant` means the interval excludes 0.

BLEU of one pair of runs goes through sacreBLEU's own paired bootstrap (`sacrebleu_paired`): its
`PairedTest` gives each system's mean and CI and the p-value, and the difference is computed on the same
resamples (sacreBLEU draws them with numpy's default_rng(seed).choice).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from mole_exp.evaluation.metrics import _reference_streams
from mole_exp.reporting.example_stats import DatasetStats, dataset_stats
from mole_exp.reporting.predictions import align, read_predictions

RESAMPLES = 1000
SEED = 12345  # sacreBLEU's default SACREBLEU_SEED
RunScores = dict[str, DatasetStats]  # dataset -> one run's per-example statistics
Target = tuple[tuple[str, str], ...]  # (dataset, metric value name) pairs whose mean is compared


@dataclass(frozen=True)
class Interval:
    estimate: float  # on the full samples: the mean over seeds of the target (or of the difference)
    low: float
    high: float
    p_value: float | None  # two-sided bootstrap p of "no difference" (sacreBLEU's own for its BLEU path)
    resamples: int
    replicates: int  # seeds (run pairs) the interval resamples
    examples: int  # examples per seed (summed over the target's datasets)
    method: str  # "paired bootstrap" | "two-level paired bootstrap" | "sacreBLEU paired bootstrap" | ...

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def as_dict(self) -> dict[str, object]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "p_value": self.p_value,
                "significant": self.significant, "resamples": self.resamples, "replicates": self.replicates,
                "examples": self.examples, "method": self.method}


def order_statistics_ci(draws: np.ndarray) -> tuple[float, float]:
    """95% interval: the (B//40)-th smallest and largest of B draws, as sacreBLEU's estimate_ci takes them."""
    ordered = np.sort(np.asarray(draws, dtype=np.float64))
    lower = len(ordered) // 40
    return float(ordered[lower]), float(ordered[len(ordered) - lower - 1])


def two_sided_p(draws: np.ndarray) -> float:
    """Share of resampled differences on the other side of 0 than most, doubled (with +1 smoothing)."""
    count = len(draws)
    below, above = int(np.sum(draws <= 0)), int(np.sum(draws >= 0))
    return float(min(1.0, 2 * min(below + 1, above + 1) / (count + 1)))


# ---- reading runs --------------------------------------------------------------------------------------


def run_scores(run_dir: str | Path, datasets: Sequence[str] | None = None) -> RunScores:
    """One run's per-example statistics, from its predictions.jsonl."""
    found = read_predictions(run_dir)
    chosen = list(found) if datasets is None else list(datasets)
    missing = [d for d in chosen if d not in found]
    if missing:
        raise ValueError(f"{run_dir}: predictions.jsonl has no examples of {missing}; it has {sorted(found)}")
    return {d: dataset_stats(d, found[d].metric, found[d].predictions, found[d].references) for d in chosen}


def paired_run_scores(run_a: str | Path, run_b: str | Path, datasets: Sequence[str] | None = None) -> tuple[RunScores, RunScores]:
    """Both runs' statistics on the same examples in the same order; refuses runs that evaluated other examples."""
    found_a, found_b = read_predictions(run_a), read_predictions(run_b)
    common = [d for d in found_a if d in found_b]
    chosen = common if datasets is None else list(datasets)
    missing = [d for d in chosen if d not in found_a or d not in found_b]
    if missing or not chosen:
        raise ValueError(
            f"the runs did not both evaluate {missing or 'any common dataset'}: {run_a} has {sorted(found_a)}, {run_b} has {sorted(found_b)}"
        )
    scores_a, scores_b = {}, {}
    for dataset in chosen:
        a, b = align(found_a[dataset], found_b[dataset], (str(run_a), str(run_b)))
        scores_a[dataset] = dataset_stats(dataset, a.metric, a.predictions, a.references)
        scores_b[dataset] = dataset_stats(dataset, b.metric, b.predictions, b.references)
    return scores_a, scores_b


def target_of(scores: RunScores, datasets: Sequence[str] | None = None, output: str | None = None) -> Target:
    """Every metric value of the datasets (a suite average), or one named value of each."""
    chosen = list(scores) if datasets is None else list(datasets)
    return tuple((d, name) for d in chosen for name in scores[d].outputs if output is None or name == output)


# ---- the bootstrap -------------------------------------------------------------------------------------


def _counts(rng: np.random.Generator, size: int, resamples: int) -> np.ndarray:
    """(B, n) how often each example is drawn in each resample (n draws with replacement)."""
    draws = rng.choice(size, size=(resamples, size), replace=True)
    offsets = (np.arange(resamples) * size)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=resamples * size).reshape(resamples, size).astype(np.float64)


@lru_cache(maxsize=128)
def _stream_counts(seed: int, slot: int, index: int, dataset: str, size: int, resamples: int) -> np.ndarray:
    """The counts of one (seed slot, run pair, dataset) stream: the same for every comparison that uses it, so
    a table's cells are resampled alike (and each stream is drawn once: cached when small, <= 2 MB)."""
    counts = _counts(np.random.default_rng([seed, 1 + slot, index, zlib.crc32(dataset.encode())]), size, resamples)
    counts.flags.writeable = False
    return counts


def _stream(seed: int, slot: int, index: int, dataset: str, size: int, resamples: int) -> np.ndarray:
    if size * resamples <= 250_000:
        return _stream_counts(seed, slot, index, dataset, size, resamples)
    return _stream_counts.__wrapped__(seed, slot, index, dataset, size, resamples)


def _target_value(scores: RunScores, target: Target, counts: dict[str, np.ndarray] | None) -> np.ndarray:
    """The mean of the target's values, (B,) on resamples given by counts, or (1,) on the full set."""
    per_dataset = {}
    for dataset in dict.fromkeys(d for d, _ in target):
        stats = scores[dataset]
        sums = stats.stats.sum(axis=0, keepdims=True) if counts is None else counts[dataset] @ stats.stats  # (B, k)
        per_dataset[dataset] = stats.values(sums, stats.size)  # (B, outputs)
    columns = [per_dataset[d][:, scores[d].outputs.index(name)] for d, name in target]
    return np.mean(columns, axis=0)


def point_estimate(runs: Sequence[RunScores], target: Target) -> float:
    """The target's value on the full samples, averaged over the runs (seeds)."""
    return float(np.mean([_target_value(run, target, None)[0] for run in runs]))


def _check(replicates: list[tuple[RunScores, RunScores | None]], target: Target) -> None:
    if not replicates:
        raise ValueError("no runs to resample")
    if not target:
        raise ValueError("nothing to compare: the target names no (dataset, metric) pair")
    for index, (a, b) in enumerate(replicates):
        for dataset, name in target:
            for side, scores in (("A", a), ("B", b)):
                if scores is None:
                    continue
                if dataset not in scores or name not in scores[dataset].outputs:
                    raise ValueError(f"seed pair {index}: run {side} has no {dataset}/{name} (has {sorted(scores)})")
            if b is not None and a[dataset].size != b[dataset].size:
                raise ValueError(f"seed pair {index}, dataset {dataset}: {a[dataset].size} vs {b[dataset].size} examples (not paired)")


def _distribution(replicates: list[tuple[RunScores, RunScores | None]], target: Target, resamples: int, seed: int) -> tuple[float, np.ndarray]:
    """(estimate, B resampled values) of mean over seeds of [target(B) - target(A)] (or target(A) when B is None)."""
    _check(replicates, target)

    def value(pair: tuple[RunScores, RunScores | None], counts) -> np.ndarray:
        a, b = pair
        return _target_value(a, target, counts) if b is None else _target_value(b, target, counts) - _target_value(a, target, counts)

    count = len(replicates)
    estimate = float(np.mean([value(pair, None)[0] for pair in replicates]))
    chosen = np.random.default_rng([seed, 0]).integers(0, count, size=(resamples, count)) if count > 1 else np.zeros((resamples, 1), int)
    total = np.zeros(resamples)
    for slot in range(count):
        for index in np.unique(chosen[:, slot]):
            a = replicates[index][0]
            counts = {d: _stream(seed, slot, int(index), d, a[d].size, resamples) for d in dict.fromkeys(d for d, _ in target)}
            rows = chosen[:, slot] == index
            total[rows] += value(replicates[index], counts)[rows]
    return estimate, total / count


def _interval(replicates, target, resamples: int, seed: int, paired: bool) -> Interval:
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 40:
        raise ValueError(f"resamples={resamples!r} must be an integer >= 40 (the 95% interval drops B//40 draws each side)")
    estimate, draws = _distribution(replicates, target, resamples, seed)
    low, high = order_statistics_ci(draws)
    examples = sum(replicates[0][0][d].size for d in dict.fromkeys(d for d, _ in target))
    method = ("two-level " if len(replicates) > 1 else "") + ("paired bootstrap" if paired else "bootstrap")
    return Interval(estimate, low, high, two_sided_p(draws) if paired else None, resamples, len(replicates), examples, method)


def paired_difference(pairs: Sequence[tuple[RunScores, RunScores]], target: Target, resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """The difference B - A of the target's mean, with its interval; one (A, B) pair of runs per seed."""
    return _interval([(a, b) for a, b in pairs], target, resamples, seed, paired=True)


def mean_interval(runs: Sequence[RunScores], target: Target, resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """One composer's target value (mean over its seeds) with its interval."""
    return _interval([(run, None) for run in runs], target, resamples, seed, paired=False)


# ---- sacreBLEU's own paired bootstrap for BLEU ---------------------------------------------------------


@contextmanager
def _sacrebleu_seed(seed: int):
    previous = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(seed)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("SACREBLEU_SEED", None)
        else:
            os.environ["SACREBLEU_SEED"] = previous


@dataclass(frozen=True)
class SacreBleuPaired:
    """What `sacrebleu REF -i A B --paired-bs` prints (score, bootstrap mean, CI half-width per system, the
    p-value of B against A) and the interval of the difference B - A on the same resamples."""

    score_a: float
    mean_a: float
    ci_a: float
    score_b: float
    mean_b: float
    ci_b: float
    p_value: float
    difference: Interval


def sacrebleu_paired(predictions_a: list[str], predictions_b: list[str], references: list[list[str]],
                     resamples: int = RESAMPLES, seed: int = SEED) -> SacreBleuPaired:
    """sacreBLEU's paired bootstrap of B against A (A the baseline), and the interval of BLEU(B) - BLEU(A)."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 1:
        raise ValueError(f"seed={seed!r}: sacreBLEU's paired bootstrap needs a positive integer seed (0 means unseeded there)")
    if not len(predictions_a) == len(predictions_b) == len(references):
        raise ValueError(f"{len(predictions_a)} and {len(predictions_b)} predictions for {len(references)} examples (not paired)")
    streams = _reference_streams(references)
    with _sacrebleu_seed(seed):
        _, results = PairedTest([("A", predictions_a), ("B", predictions_b)], {"BLEU": BLEU()}, streams, test_type="bs",
                                n_samples=resamples)()
    base, system = results["BLEU"][0], results["BLEU"][1]
    # the same resamples as sacreBLEU's _paired_bs_test: default_rng(seed).choice(n, (B, n)), statistics in float32
    scorer = BLEU()
    stats_a = np.asarray(scorer._extract_corpus_statistics(predictions_a, streams), dtype="float32")
    stats_b = np.asarray(scorer._extract_corpus_statistics(predictions_b, streams), dtype="float32")
    indices = np.random.default_rng(seed).choice(len(references), size=(resamples, len(references)), replace=True)
    scores_a = np.array([scorer._compute_score_from_stats(s.sum(0)).score for s in stats_a[indices]])
    scores_b = np.array([scorer._compute_score_from_stats(s.sum(0)).score for s in stats_b[indices]])
    if not np.isclose(scores_b.mean(), system.mean, rtol=0, atol=1e-9):
        raise RuntimeError("the resamples drawn here are not sacreBLEU's (its resampling changed?); the difference interval would not be paired with its test")
    draws = scores_b - scores_a
    low, high = order_statistics_ci(draws)
    difference = Interval(float(system.score - base.score), low, high, float(system.p_value), resamples, 1, len(references),
                          "sacreBLEU paired bootstrap")
    return SacreBleuPaired(float(base.score), float(base.mean), float(base.ci), float(system.score), float(system.mean),
                           float(system.ci), float(system.p_value), difference)
