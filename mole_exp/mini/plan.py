"""Which composition runs the mini reproduction makes, and for which table.

A run is a `python train.py` config: overrides of conf/train.yaml and a fixed run folder
`<out>/runs/<study>/<label>/seed<k>`. Studies:
- table3:      every composer on the held-out mixture of the synthetic tasks (single = each task's own expert)
- compose:     every composer on the held-out two-skill task (reverse, then shift), no expert trained on it
- granularity: MoLE at each gate granularity on the mixture (Table 9 style)
- balance:     MoLE without L_balance (alpha=0), and alpha=0 with fixed raised temperatures (Table 7)
- count:       experts.count below all (a seeded random subset) for NLA, LoRAHub, PEMs, MoLE (Table 6)
- mask:        the trained MoLE of table3 re-evaluated with one expert masked (mode=eval), and NLA over the
               remaining experts (Figure 8)
A composer that is not registered (mole_exp.composers.COMPOSERS) or has no conf/composer/<name>.yaml is not
run; the plan records why, and the tables show it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mole_exp.mini.settings import MiniSettings

MIXTURE_TASK = "synthetic"
COMPOSE_TASK = "synthetic_compose"
TABLE3_COMPOSERS = ("single", "nla", "lorahub", "pems", "mixer", "mole")
COMPOSE_COMPOSERS = ("nla", "lorahub", "pems", "mixer", "mole")  # no expert matches the two-skill task: no single
COUNT_COMPOSERS = ("nla", "lorahub", "pems", "mole")
MASK_COMPOSERS = ("mole", "nla")
COMPOSER_OVERRIDES = {
    "single": ("composer.expert=matched",),  # each evaluated dataset with the expert trained on it
    # one search on the mixture, as every composer here is fitted once on it (the checked-in study's protocol;
    # LoRAHub's own, one search per task x 5 seeds, is the composer's default elsewhere)
    "lorahub": ("composer.progress=false", "composer.fit_per=suite", "composer.search_seeds=1"),
}


@dataclass(frozen=True)
class RunSpec:
    study: str
    label: str  # the column (composer and variant)
    seed: int
    overrides: tuple[str, ...]
    run_dir: Path
    composer: str
    needs: Path | None = None  # a run whose checkpoint this one evaluates (mask study)
    facts: dict = field(default_factory=dict, compare=False, hash=False)  # what the tables group by

    @property
    def key(self) -> str:
        return f"{self.study}/{self.label}/seed{self.seed}"


@dataclass
class Plan:
    runs: list[RunSpec]
    skipped: dict[str, str]  # composer -> why it is not run

    def study(self, name: str) -> list[RunSpec]:
        return [r for r in self.runs if r.study == name]


def available_composers(names: tuple[str, ...], conf_dir: Path) -> tuple[list[str], dict[str, str]]:
    from mole_exp.composers import COMPOSERS

    usable, skipped = [], {}
    for name in names:
        if name not in COMPOSERS:
            skipped[name] = f"composer {name!r} is not registered in mole_exp.composers.COMPOSERS"
        elif not (conf_dir / "composer" / f"{name}.yaml").exists():
            skipped[name] = f"no conf/composer/{name}.yaml"
        else:
            usable.append(name)
    return usable, skipped


def make_plan(settings: MiniSettings, library_dir: Path, out_dir: Path, conf_dir: Path, extra: tuple[str, ...] = ()) -> Plan:
    """Every run of every study, for every seed; `extra` overrides go to all of them (e.g. paths)."""
    all_composers = tuple(dict.fromkeys(TABLE3_COMPOSERS + COMPOSE_COMPOSERS + COUNT_COMPOSERS + MASK_COMPOSERS))
    usable, skipped = available_composers(all_composers, conf_dir)
    common = (
        "model=small_synthetic", *settings.model, "experts=library", f"experts.library_dir={library_dir}", *settings.compose, *extra,
    )
    runs: list[RunSpec] = []

    def add(study: str, label: str, seed: int, composer: str, task: str, extra: tuple[str, ...] = (), needs=None, **facts):
        only = (f"task.only=[{','.join(settings.tasks)}]",) if task == MIXTURE_TASK else ()
        overrides = (*common, f"task={task}", *only, *settings.data, f"composer={composer}", *COMPOSER_OVERRIDES.get(composer, ()),
                     *extra, f"seed={seed}")
        if composer == "mole" and not any(o.startswith("gate=") for o in extra):
            overrides = (*overrides, f"gate={settings.default_granularity}")
        run_dir = out_dir / "runs" / study / label.replace(" ", "_") / f"seed{seed}"
        runs.append(RunSpec(study, label, seed, overrides, run_dir, composer, needs, facts))
        return run_dir

    for seed in settings.seeds:
        table3 = {}
        for composer in (c for c in TABLE3_COMPOSERS if c in usable):
            table3[composer] = add("table3", composer, seed, composer, MIXTURE_TASK)
        for composer in (c for c in COMPOSE_COMPOSERS if c in usable):
            add("compose", composer, seed, composer, COMPOSE_TASK)
        if "mole" in usable:
            for granularity in settings.granularities:
                if granularity != settings.default_granularity:
                    add("granularity", f"mole {granularity}", seed, "mole", MIXTURE_TASK, (f"gate={granularity}",), granularity=granularity)
            add("balance", "mole alpha=0", seed, "mole", MIXTURE_TASK, ("composer.alpha=0",), alpha=0.0)
            for tau in settings.temperatures:
                fixed = ("composer.alpha=0", "gate.temperature.learnable=false", f"gate.temperature.init={tau:g}")
                add("balance", f"mole alpha=0 tau={tau:g}", seed, "mole", MIXTURE_TASK, fixed, alpha=0.0, temperature=tau)
        for count in settings.counts:
            for composer in (c for c in COUNT_COMPOSERS if c in usable):
                add("count", f"{composer} n={count}", seed, composer, MIXTURE_TASK,
                    (f"experts.count={count}", "experts.selection=random"), count=count)
        for task in settings.tasks:
            for composer in (c for c in MASK_COMPOSERS if c in usable):
                if composer == "mole":
                    trained = table3["mole"]
                    add("mask", f"mole mask={task}", seed, "mole", MIXTURE_TASK,
                        ("mode=eval", f"checkpoint={trained}", f"composer.mask=[{task}]"), needs=trained, masked=task)
                else:
                    add("mask", f"{composer} mask={task}", seed, composer, MIXTURE_TASK, (f"composer.mask=[{task}]",), masked=task)
    return Plan(runs, skipped)
