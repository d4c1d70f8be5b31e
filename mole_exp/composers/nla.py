"""NLA: normalised linear arithmetic of the experts (paper Eq. 2), and the plain sum of Eq. 1.

    Eq. 2:  W' = W + sum_i w_i s_i B_i A_i,   sum_i w_i = 1   (uniform w_i = 1/N unless weights are given;
                                                               given weights are divided by their sum)
    Eq. 1:  W' = W + sum_i s_i B_i A_i        (`normalize: false`: every weight 1, or the given weights
                                               as they are)

The paper reports that summing four or more LoRAs by Eq. 1 makes FLAN-T5's output disordered.

`merge: exact` (default) merges the full deltas as written above (= PEFT `add_weighted_adapter`
with `combination_type="cat"`). `merge: factors` merges A and B separately, dW = (sum b_i B_i)(sum a_i A_i),
which adds cross terms B_i A_j and, in the LoRAHub/PEMs form (`factors_form: lorahub`, a_i = b_i = w_i sqrt(s_i)),
weights each expert's own delta by w_i^2 instead of w_i; `factors_form: peft` reproduces PEFT's
`combination_type="linear"` (sqrt|w_i s_i| on both factors, the sign on A). See composers/merge.py.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from mole_exp.base.models import BaseModel
from mole_exp.composers.base import register_composer
from mole_exp.composers.merge import FACTOR_FORMS, MERGES, check_choice, check_count, check_weights
from mole_exp.composers.static import StaticComposer
from mole_exp.experts.bank import ExpertBank


def nla_weights(given: list[float] | None, num_experts: int, normalize: bool) -> list[float]:
    """Eq. 2's w (sum 1) or, with normalize=False, Eq. 1's (all 1 unless given)."""
    if given is None:
        return [1.0 / num_experts] * num_experts if normalize else [1.0] * num_experts
    if not normalize:
        return list(given)
    total = sum(given)
    if abs(total) < 1e-12:
        raise ValueError(f"composer.weights={given} sum to 0 and cannot be normalised to sum 1 (Eq. 2); use normalize=false")
    return [w / total for w in given]


@register_composer("nla")
class NLAComposer(StaticComposer):
    def __init__(
        self,
        weights: list[float] | None = None,
        normalize: bool = True,
        merge: str = "exact",
        factors_form: str = "lorahub",
        mask: list[str | int] | None = None,
        fit_per: str | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name, mask=mask, fit_per=fit_per)
        if not isinstance(normalize, bool):
            raise ValueError(f"composer.normalize={normalize!r} must be true (Eq. 2) or false (Eq. 1)")
        self.given_weights = check_weights("composer.weights", weights)
        self.normalize = normalize
        self.merge = check_choice("composer.merge", merge, MERGES)
        self.factors_form = check_choice("composer.factors_form", factors_form, FACTOR_FORMS)
        if self.given_weights is not None:
            nla_weights(self.given_weights, len(self.given_weights), normalize)  # early check: a zero sum under Eq. 2
        self.weights: list[float] = []

    def compose(self, base: BaseModel, bank: ExpertBank) -> list[nn.Parameter]:
        if self.given_weights is not None:
            check_count("composer.weights", self.given_weights, bank)
        self._resolve_mask(bank)
        self.attach(base, bank)
        self.weights = nla_weights(self.given_weights, len(bank), self.normalize)
        if self.keep is not None:  # NLA over the remaining experts only (Fig. 8's comparison)
            kept = [w if i in self.keep else 0.0 for i, w in enumerate(self.weights)]
            self.weights = nla_weights(kept, len(bank), self.normalize) if self.normalize else kept
        self.merge_weights(self.weights, self.merge, self.factors_form)
        return []

    def summary(self) -> dict[str, Any]:
        return {
            **super().summary(),
            "weights": dict(zip(self.bank.names, self.weights, strict=True)) if self.bank else {},
            "normalize": self.normalize,
            "equation": "Eq. 2" if self.normalize else "Eq. 1",
            "merge": self.merge,
            "factors_form": self.factors_form if self.merge == "factors" else None,
        }
