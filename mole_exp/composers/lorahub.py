"""LoRAHub (Huang et al. 2023): gradient-free search of one weight per expert on a few examples.

Faithful to the authors' `lorahub==0.1.0` (`lorahub.algorithm.lorahub_learning`):
- `random` and `numpy` are seeded, then nevergrad `NGOpt` is built over
  `ng.p.Array(init=[0]*N, lower=[-1.5]*N, upper=[1.5]*N)` with `budget` (= `max_inference_step`, 40).
- Each candidate w: A and B are combined separately, sum_i w_i A_i and sum_i w_i B_i (`merge: factors`,
  `factors_form: lorahub`; cross terms included, see composers/merge.py), and scored as
      objective(w) = loss(w) + 0.05 * mean_i |w_i|            (`default_l1_regularization`)
  where LoRAHub's `default_get_loss` is the *sum over batches of the batch-mean token cross-entropy,
  divided by the number of examples*. With its default of one batch holding all k examples this is
  mean CE / k (`loss_normalization: lorahub`, default). `loss_normalization: mean` uses the mean CE
  itself; the difference matters: it changes the balance between the loss and the L1 term by a factor k.
- The final weights are nevergrad's recommendation (not necessarily the best candidate seen; both are
  logged), merged into the base for evaluation.

LoRAHub's protocol (the defaults): each evaluated task is fitted on its own (`fit_per: dataset`: the k=5
examples are a seeded sample of that dataset's training rows; `fit_per: suite` samples them from the
suite's training mixture instead), and the search is repeated `search_seeds` (5) times with independent
seeds, each with its own few-shot draw and nevergrad seed; each search is evaluated and metrics.json
reports the mean over them with their std (the pipeline's fit units, mole_exp/training/fit_units.py). The seed of
search k is base * search_seeds + k, base = `seed` or the run's seed (LoRAHub's own default is 42).

Differences from LoRAHub's code, by design: candidates are merged into the base weights in place
(W0 + dW, restored exactly from a copy of the adapted linears' weights) instead of being loaded into a
PEFT model (equal up to float rounding: scripts/bench_lorahub.py checks the objective against the
official package to 1e-6 relative).
The loss per batch is the pipeline's `SearchData.loss` on that batch (token-mean CE of one padded batch,
as `model(**batch).loss`); `batch_size` (null = all k in one batch, LoRAHub's default) should not exceed
`data.eval_batch_size`, or `SearchData.loss` splits the batch again.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mole_exp.composers.base import SearchData, register_composer
from mole_exp.composers.merge import FACTOR_FORMS, MERGES, check_choice
from mole_exp.composers.static import StaticComposer

log = logging.getLogger(__name__)

LOSS_NORMALIZATIONS = ("lorahub", "mean")


def _positive_int(key: str, value: Any, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key}={value!r} must be a positive integer" + (" or null" if allow_none else ""))
    return value


def l1_regularization(weights: np.ndarray, strength: float) -> float:
    """LoRAHub's `default_l1_regularization`: strength * mean |w| (strength 0.05)."""
    return strength * float(np.abs(weights).sum()) / len(weights)


@register_composer("lorahub")
class LoRAHubComposer(StaticComposer):
    searches = True

    def __init__(
        self,
        budget: int = 40,
        num_examples: int = 5,
        lower: float = -1.5,
        upper: float = 1.5,
        regularization: float = 0.05,
        loss_normalization: str = "lorahub",
        batch_size: int | None = None,
        seed: int | None = None,
        merge: str = "factors",
        factors_form: str = "lorahub",
        zero_threshold: float = 1e-3,
        progress: bool = True,
        fit_per: str = "dataset",
        search_seeds: int = 5,
        name: str | None = None,
    ):
        super().__init__(name=name, fit_per=fit_per)
        self.budget = _positive_int("composer.budget", budget)
        self.search_seeds = _positive_int("composer.search_seeds", search_seeds)
        self.num_examples = _positive_int("composer.num_examples", num_examples)
        self.batch_size = _positive_int("composer.batch_size", batch_size, allow_none=True)
        if not float(lower) <= 0.0 <= float(upper) or float(lower) == float(upper):
            raise ValueError(f"composer.lower={lower}, composer.upper={upper}: need lower <= 0 <= upper, lower < upper (the search starts at 0)")
        if float(regularization) < 0:
            raise ValueError(f"composer.regularization={regularization} must be >= 0 (LoRAHub: 0.05)")
        if float(zero_threshold) < 0:
            raise ValueError(f"composer.zero_threshold={zero_threshold} must be >= 0")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"composer.seed={seed!r} must be an integer or null (the run's seed)")
        self.lower, self.upper = float(lower), float(upper)
        self.regularization = float(regularization)
        self.loss_normalization = check_choice("composer.loss_normalization", loss_normalization, LOSS_NORMALIZATIONS)
        self.merge = check_choice("composer.merge", merge, MERGES)
        self.factors_form = check_choice("composer.factors_form", factors_form, FACTOR_FORMS)
        self.seed = seed
        self.zero_threshold = float(zero_threshold)
        self.progress = bool(progress)
        self.weights: list[float] = []
        self.search_log: dict[str, Any] = {}

    # ------------------------------------------------------------------ the objective of one candidate

    def few_shot_examples(self, data: SearchData) -> list[dict[str, Any]]:
        if len(data.train_examples) < self.num_examples:
            raise ValueError(f"composer.num_examples={self.num_examples} but only {len(data.train_examples)} training examples exist")
        return random.Random(self.seed_for(data)).sample(list(data.train_examples), self.num_examples)

    def seed_for(self, data: SearchData) -> int:
        return int(data.seed if self.seed is None else self.seed)

    def loss(self, examples: list[dict[str, Any]], data: SearchData) -> float:
        """LoRAHub's `default_get_loss` (sum of batch-mean CE / k) or the mean CE, of the model as it is."""
        return self.prepared_loss(examples, data)()

    def prepared_loss(self, examples: list[dict[str, Any]], data: SearchData) -> Callable[[], float]:
        """`loss(examples, data)` as a callable, with the examples tokenised once (the search calls it per candidate)."""
        if self.loss_normalization == "mean":
            return data.prepared_loss(examples)
        batch_size = self.batch_size or len(examples)
        batch_means = [data.prepared_loss(examples[start : start + batch_size]) for start in range(0, len(examples), batch_size)]
        count = len(examples)
        return lambda: sum(batch_mean() for batch_mean in batch_means) / count

    def prepared_objective(
        self, examples: list[dict[str, Any]], data: SearchData
    ) -> Callable[[np.ndarray | list[float]], tuple[float, float]]:
        """objective(w) -> (loss + regularization, loss), the candidate merged into the base (left merged)."""
        loss_of_merged = self.prepared_loss(examples, data)

        def objective(weights: np.ndarray | list[float]) -> tuple[float, float]:
            weights = np.asarray(weights, dtype=np.float64)
            self.merge_weights(weights.tolist(), self.merge, self.factors_form)
            loss = loss_of_merged()
            return loss + l1_regularization(weights, self.regularization), loss

        return objective

    def objective(self, weights: np.ndarray | list[float], examples: list[dict[str, Any]], data: SearchData) -> tuple[float, float]:
        """(loss + regularization, loss) with the candidate merged into the base (left merged)."""
        return self.prepared_objective(examples, data)(weights)

    # ------------------------------------------------------------------ the search

    def search(self, data: SearchData) -> dict[str, Any]:
        import nevergrad as ng
        from tqdm.auto import tqdm

        examples = self.few_shot_examples(data)
        n = len(self.bank)
        seed = self.seed_for(data)
        random.seed(seed)  # as lorahub_learning, before the optimizer is built
        np.random.seed(seed)
        parametrization = ng.p.Array(init=[0.0] * n, lower=[self.lower] * n, upper=[self.upper] * n)
        optimizer = ng.optimizers.NGOpt(parametrization=parametrization, budget=self.budget)
        steps: list[dict[str, Any]] = []
        bar = tqdm(total=self.budget, desc="lorahub", disable=not self.progress)
        started = time.perf_counter()

        objective = self.prepared_objective(examples, data)

        def score(weights: np.ndarray) -> float:
            value, loss = objective(weights)
            steps.append({"step": len(steps), "weights": [float(w) for w in weights], "loss": loss, "objective": value})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", objective=f"{value:.4f}")
            return value

        try:
            recommendation = optimizer.minimize(score, verbosity=0)
        finally:
            bar.close()
            self.merger.restore()
        seconds = time.perf_counter() - started
        self.weights = [float(w) for w in np.asarray(recommendation.value)]
        self.merge_weights(self.weights, self.merge, self.factors_form)
        best = min(steps, key=lambda s: s["objective"])
        near_zero = [name for name, w in zip(self.bank.names, self.weights, strict=True) if abs(w) < self.zero_threshold]
        log.info("lorahub: %d candidates in %.1fs; %d/%d weights ~0 (|w| < %g)", len(steps), seconds, len(near_zero), n, self.zero_threshold)
        self.search_log = {
            "steps": steps,
            "final_weights": dict(zip(self.bank.names, self.weights, strict=True)),
            "best_candidate": best,
            "num_near_zero": len(near_zero),
            "near_zero": near_zero,
            "zero_threshold": self.zero_threshold,
            "num_candidates": len(steps),
            "seconds": round(seconds, 3),
            "candidates_per_second": len(steps) / seconds if seconds > 0 else None,
            "examples": [{"source": e["source"], "target": e["target"]} for e in examples],
            "seed": seed,
        }
        return self.search_log

    def summary(self) -> dict[str, Any]:
        return {
            **super().summary(),
            "weights": dict(zip(self.bank.names, self.weights, strict=True)) if self.bank else {},
            "num_near_zero": self.search_log.get("num_near_zero"),
            "budget": self.budget,
            "num_examples": self.num_examples,
            "regularization": self.regularization,
            "loss_normalization": self.loss_normalization,
            "merge": self.merge,
            "factors_form": self.factors_form if self.merge == "factors" else None,
            "search_seeds": self.search_seeds,
            "seed": self.search_log.get("seed"),
        }
