"""The paper's claims, one by one, with the differences that test them and their 95% intervals.

Each claim is a set of comparisons "X above Y" on some datasets (the mean EM over them), each a paired
bootstrap of the difference X - Y over seeds and test examples (`mini.tables.Scores.difference`). A
comparison holds when its interval lies above 0, is reversed when it lies below 0, and is within noise
otherwise. A claim holds when all its comparisons hold, does not hold when one is reversed, and is not
shown otherwise. Masking is the one claim of "no loss": it holds when no comparison is significantly below 0
(the remaining tasks keep their scores), and the interval says how large a loss it would still allow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mole_exp.reporting.intervals import Interval
from mole_exp.tools.mini.plan import Plan, RunSpec
from mole_exp.tools.mini.settings import MiniSettings
from mole_exp.tools.mini.tables import Scores, by_label, granularity_columns

HOLDS, REVERSED, NOISE, MISSING = "holds", "reversed", "within noise", "no runs"
POSITIVE, NO_LOSS = "above", "no loss"


@dataclass
class Comparison:
    text: str  # e.g. "mole - nla, mixture average"
    better: list[RunSpec]
    worse: list[RunSpec]
    datasets: list[str]
    kind: str = POSITIVE
    interval: Interval | None = None

    @property
    def verdict(self) -> str:
        if self.interval is None:
            return MISSING
        if self.kind == NO_LOSS:
            return REVERSED if self.interval.high < 0 else HOLDS
        if self.interval.low > 0:
            return HOLDS
        return REVERSED if self.interval.high < 0 else NOISE


@dataclass
class Claim:
    name: str
    paper: str  # what the paper says
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        verdicts = [c.verdict for c in self.comparisons]
        if not verdicts or all(v == MISSING for v in verdicts):
            return "not tested (no runs)"
        if any(v == REVERSED for v in verdicts):
            return "does not hold"
        if all(v == HOLDS for v in verdicts):
            return "holds"
        return "not shown (within noise)"


def make_claims(plan: Plan, settings: MiniSettings) -> list[Claim]:
    datasets = list(settings.tasks)
    table3, compose, balance = by_label(plan.study("table3")), by_label(plan.study("compose")), by_label(plan.study("balance"))
    mixture, two_skill = "mixture average", "two-skill task"

    def versus(better: str, worse: str, found: dict[str, list[RunSpec]], where: str, on: list[str], kind: str = POSITIVE) -> Comparison | None:
        if better not in found or worse not in found:
            return None
        return Comparison(f"{better} − {worse}, {where}", found[better], found[worse], on, kind)

    def keep(*comparisons: Comparison | None) -> list[Comparison]:
        return [c for c in comparisons if c is not None]

    static = [c for c in ("nla", "lorahub", "pems") if c in table3]
    claims = [
        Claim("MoLE above the static composers", "MoLE beats NLA, LoRAHub and PEMs on every suite average (Tables 3, 4)",
              keep(*(versus("mole", c, table3, mixture, datasets) for c in static),
                   *(versus("mole", c, compose, two_skill, ["reverse_shift"]) for c in static))),
    ]
    merged = {**table3, **balance}
    claims.append(Claim("L_balance helps", "MoLE with L_balance beats MoLE without it (Table 7)",
                        keep(versus("mole", "mole alpha=0", merged, mixture, datasets))))
    raised = [label for label in balance if "tau=" in label]
    claims.append(Claim("Raised temperatures hurt", "fixed raised temperatures instead of L_balance score below MoLE without L_balance (Table 7)",
                        keep(*(versus("mole alpha=0", label, merged, mixture, datasets) for label in raised))))
    columns = granularity_columns(plan, settings.granularities, settings.default_granularity)
    middle = [f"mole {g}" for g in ("layer", "block") if f"mole {g}" in columns]
    ends = [f"mole {g}" for g in ("matrix", "network") if f"mole {g}" in columns]
    claims.append(Claim("Intermediate granularity best", "the layer- and block-wise gates beat the matrix- and network-wise ones (image domain)",
                        keep(*(versus(m, e, columns, mixture, datasets) for m in middle for e in ends))))
    masked = plan.study("mask")
    mask_comparisons = []
    for task in datasets:
        mine = [s for s in masked if s.composer == "mole" and s.facts.get("masked") == task]
        if mine and "mole" in table3:
            rest = [d for d in datasets if d != task]
            mask_comparisons.append(Comparison(f"mole masked {task} − mole, the other tasks", mine, table3["mole"], rest, NO_LOSS))
    claims.append(Claim("Masking keeps the rest", "masking an expert at inference keeps the other tasks' scores, without retraining (Figure 8)",
                        mask_comparisons))
    claims.append(Claim("MoLE above MoLE over a random library", "(not in the paper) routing over trained experts beats routing over "
                        "norm-matched random LoRAs: the gain is composition, not regularisation",
                        keep(versus("mole", "mole (random library)", table3, mixture, datasets),
                             versus("mole", "mole (random library)", compose, two_skill, ["reverse_shift"]))))
    claims.append(Claim("MoLE above a fresh LoRA", "(not in the paper) MoLE beats one new LoRA trained on the same data with the same "
                        "budget: what a practitioner would do instead",
                        keep(versus("mole", "fresh_lora", table3, mixture, datasets),
                             versus("mole", "fresh_lora", compose, two_skill, ["reverse_shift"]))))
    return claims


def evaluate(claims: list[Claim], scores: Scores) -> list[Claim]:
    for claim in claims:
        for comparison in claim.comparisons:
            try:
                comparison.interval = scores.difference(comparison.better, comparison.worse, comparison.datasets)
            except (ValueError, FileNotFoundError):
                comparison.interval = None
    return claims


def claims_section(claims: list[Claim]) -> str:
    lines = ["| claim | verdict | comparison | difference [95% CI] | seeds | verdict of the comparison |", "|---|---|---|---|---|---|"]
    for claim in claims:
        if not claim.comparisons:
            lines.append(f"| {claim.name} | {claim.verdict} | — | — | — | — |")
        for index, comparison in enumerate(claim.comparisons):
            first = index == 0
            interval = comparison.interval
            shown = "—" if interval is None else f"{interval.estimate:+.1f} [{interval.low:+.1f}, {interval.high:+.1f}]"
            seeds = "—" if interval is None else str(interval.replicates)
            lines.append(f"| {claim.name if first else ''} | {('**' + claim.verdict + '**') if first else ''} | {comparison.text} | "
                         f"{shown} | {seeds} | {comparison.verdict} |")
    lines += ["", "What each claim says in the paper:", *(f"- {c.name}: {c.paper}." for c in claims)]
    return "\n".join(lines)
