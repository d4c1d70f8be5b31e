"""PEMs (Zhang et al., NeurIPS 2023): arithmetic on parameter-efficient modules.

Addition with a coefficient, applied to every module parameter (for LoRA: A and B separately):
    theta = lambda * theta_1 + (1 - lambda) * theta_2,        lambda chosen on validation data.
Negation of a LoRA flips the sign of its B only (negating A too would cancel): `negate: [<expert>, ...]`.

N modules. PEMs defines the binary operator; we generalise it two ways (`strategy`):
- `sequential` (default): fold the operator over the experts in bank order,
      theta <- lambda_k * theta + (1 - lambda_k) * theta_k    for k = 2..N,
  choosing each lambda_k on the grid with the earlier ones fixed (greedy; (N-1) * (1/step + 1) candidates).
  For N = 2 this is exactly PEMs' addition. The result is one weight per expert, w_k = (1 - lambda_k) *
  prod_{j>k} lambda_j (w_1 = prod_j lambda_j), summing to 1; it depends on the experts' order.
- `simplex`: every w on the simplex grid with the given step (sum w = 1, w_i in {0, step, ..., 1}),
  C(1/step + N - 1, N - 1) candidates; refused above `max_candidates`.
Candidates are scored on a seeded validation slice by `criterion`: `loss` (the pipeline's mean token
cross-entropy, lower is better) or `score` (the task metric from generation, higher is better). Ties go to
the first candidate in grid order (lambda ascending). Fixed `weights` skip the search.

`merge: factors` (default, as PEMs' code: A and B combined separately, a_i = b_i = w_i sqrt(s_i)) or
`exact` (sum_i w_i s_i B_i A_i); see composers/merge.py.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import torch
import torch.nn as nn

from mole_exp.base.models import BaseModel
from mole_exp.composers.base import SearchData, register_composer
from mole_exp.composers.merge import FACTOR_FORMS, MERGES, check_choice, check_count, check_weights
from mole_exp.composers.static import StaticComposer
from mole_exp.experts.bank import ExpertBank

STRATEGIES = ("sequential", "simplex")
CRITERIA = ("loss", "score")


def grid_divisions(step: float) -> int:
    """1/step, which must be a whole number (the grid includes 0 and 1)."""
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step <= 1:
        raise ValueError(f"composer.step={step!r} must be a number in (0, 1]")
    divisions = round(1 / step)
    if abs(divisions * step - 1) > 1e-6:
        raise ValueError(f"composer.step={step} must divide 1 into whole steps (e.g. 0.1, 0.25, 0.5)")
    return divisions


def lambda_grid(divisions: int) -> list[float]:
    return [i / divisions for i in range(divisions + 1)]


def simplex_grid(num_experts: int, divisions: int) -> list[list[float]]:
    """Every w with w_i in {0, 1/divisions, ..., 1} and sum 1 (stars and bars)."""
    grid = []
    for bars in itertools.combinations(range(divisions + num_experts - 1), num_experts - 1):
        edges = (-1, *bars, divisions + num_experts - 1)
        grid.append([(edges[i + 1] - edges[i] - 1) / divisions for i in range(num_experts)])
    return grid


def fold(weights: list[float], lam: float, k: int) -> list[float]:
    """lambda * theta + (1 - lambda) * theta_k, in expert weights."""
    folded = [lam * w for w in weights]
    folded[k] += 1 - lam
    return folded


@register_composer("pems")
class PEMsComposer(StaticComposer):
    searches = True

    def __init__(
        self,
        weights: list[float] | None = None,
        negate: list[str | int] | None = None,
        strategy: str = "sequential",
        step: float = 0.1,
        criterion: str = "loss",
        num_validation: int | None = 32,
        max_candidates: int = 2000,
        merge: str = "factors",
        factors_form: str = "lorahub",
        seed: int | None = None,
        fit_per: str = "suite",
        name: str | None = None,
    ):
        super().__init__(name=name, fit_per=fit_per)
        self.given_weights = check_weights("composer.weights", weights)
        self.negate_spec = list(negate or [])
        self.strategy = check_choice("composer.strategy", strategy, STRATEGIES)
        self.divisions = grid_divisions(step)
        self.step = float(step)
        self.criterion = check_choice("composer.criterion", criterion, CRITERIA)
        if num_validation is not None and (isinstance(num_validation, bool) or not isinstance(num_validation, int) or num_validation < 1):
            raise ValueError(f"composer.num_validation={num_validation!r} must be a positive integer or null (all)")
        if isinstance(max_candidates, bool) or not isinstance(max_candidates, int) or max_candidates < 1:
            raise ValueError(f"composer.max_candidates={max_candidates!r} must be a positive integer")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"composer.seed={seed!r} must be an integer or null (the run's seed)")
        self.num_validation = num_validation
        self.max_candidates = max_candidates
        self.merge = check_choice("composer.merge", merge, MERGES)
        self.factors_form = check_choice("composer.factors_form", factors_form, FACTOR_FORMS)
        self.seed = seed
        self.b_signs: torch.Tensor | None = None
        self.weights: list[float] = []
        self.lambdas: list[float] = []
        self.search_log: dict[str, Any] = {}

    @property
    def needs_search(self) -> bool:
        return self.given_weights is None

    @property
    def needs_training_data(self) -> bool:
        return self.needs_search

    def compose(self, base: BaseModel, bank: ExpertBank) -> list[nn.Parameter]:
        negated = bank.indices(self.negate_spec, "composer.negate")
        signs = torch.ones(len(bank))
        signs[torch.as_tensor(negated, dtype=torch.long)] = -1.0
        if self.given_weights is not None:
            check_count("composer.weights", self.given_weights, bank)
        elif self.strategy == "simplex":
            count = math.comb(self.divisions + len(bank) - 1, len(bank) - 1)
            if count > self.max_candidates:
                raise ValueError(
                    f"composer.strategy=simplex with step={self.step} over {len(bank)} experts has {count} candidates "
                    f"> composer.max_candidates={self.max_candidates}; use a coarser step or strategy=sequential"
                )
        self.attach(base, bank)
        self.b_signs = signs
        if self.given_weights is not None:
            self.weights = list(self.given_weights)
            self._merge(self.weights)
        return []

    def _merge(self, weights: list[float]) -> None:
        self.merge_weights(weights, self.merge, self.factors_form, self.b_signs)

    # ------------------------------------------------------------------ the grid search

    def validation_slice(self, data: SearchData) -> list[dict[str, Any]]:
        examples = list(data.validation_examples)
        if not examples:
            raise ValueError("composer pems: no validation examples to choose lambda on")
        if self.num_validation is None or self.num_validation >= len(examples):
            return examples
        seed = data.seed if self.seed is None else self.seed
        return random.Random(seed).sample(examples, self.num_validation)

    def search(self, data: SearchData) -> dict[str, Any]:
        if self.criterion == "score" and data.score is None:
            raise ValueError("composer.criterion=score but the search data has no task score; use criterion=loss")
        examples = self.validation_slice(data)
        candidates: list[dict[str, Any]] = []
        loss_of_merged = data.prepared_loss(examples) if self.criterion == "loss" else None  # tokenised once

        def value_of(weights: list[float]) -> float:
            """Higher is better: the task score, or minus the loss."""
            self._merge(weights)
            measured = data.score(examples) if self.criterion == "score" else loss_of_merged()
            candidates.append({"weights": weights, self.criterion: measured})
            return measured if self.criterion == "score" else -measured

        n = len(self.bank)
        if n == 1:
            self.weights, self.lambdas = [1.0], []
        elif self.strategy == "simplex":
            grid = simplex_grid(n, self.divisions)
            values = [value_of(w) for w in grid]
            self.weights = grid[values.index(max(values))]
        else:
            weights, self.lambdas = [1.0] + [0.0] * (n - 1), []
            for k in range(1, n):
                options = [(lam, fold(weights, lam, k)) for lam in lambda_grid(self.divisions)]
                values = [value_of(w) for _, w in options]
                best_lambda, weights = options[values.index(max(values))]
                self.lambdas.append(best_lambda)
            self.weights = weights
        self.merger.restore()
        self._merge(self.weights)
        self.search_log = {
            "candidates": candidates,
            "weights": dict(zip(self.bank.names, self.weights, strict=True)),
            "lambdas": self.lambdas,
            "criterion": self.criterion,
            "num_validation": len(examples),
        }
        return self.search_log

    def summary(self) -> dict[str, Any]:
        negated = [name for name, sign in zip(self.bank.names, self.b_signs.tolist(), strict=True) if sign < 0] if self.bank else []
        return {
            **super().summary(),
            "weights": dict(zip(self.bank.names, self.weights, strict=True)) if self.bank else {},
            "lambdas": self.lambdas,
            "negated": negated,
            "strategy": self.strategy,
            "step": self.step,
            "criterion": self.criterion,
            "merge": self.merge,
            "factors_form": self.factors_form if self.merge == "factors" else None,
        }
