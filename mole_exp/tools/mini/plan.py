"""Which composition runs the mini reproduction makes, and for which table.

A run is a `python train.py` config: overrides of conf/train.yaml and a fixed run folder
`<out>/runs/<study>/<label>/seed<k>`. Seed k is one replicate: its own expert library (trained with seed k
on the data of `data_seed` k), its own task data and its own composer seed (see settings.py); every run
records the three axes in `facts` and in its config. Studies:
- table3:      every composer on the held-out mixture of the synthetic tasks (single = each task's own expert),
               and the controls: the base alone, a fresh LoRA (MoLE's data and budget), MoLE over a random library
- compose:     every composer and control on the held-out two-skill task (reverse, then shift), no expert trained on it
- granularity: MoLE at each gate granularity on the mixture (Table 9 style)
- balance:     MoLE without L_balance (alpha=0), and alpha=0 with fixed raised temperatures (Table 7)
- count:       experts.count below all (a seeded random subset) for NLA, LoRAHub, PEMs, MoLE (Table 6)
- mask:        the trained MoLE of table3 re-evaluated with one expert masked (mode=eval), and NLA over the
               remaining experts (Figure 8)
A family's `peers` (the causal family: PEFT's X-LoRA and Arrow) join table3 and compose. A family runs its own
studies (settings.studies), or those of them asked for (`studies=`). A composer that is not registered
(mole_exp.composers.COMPOSERS) or has no conf/composer/<name>.yaml is not run; the plan records why, and the
tables show it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mole_exp.tools.mini.settings import STUDIES, MiniSettings

MIXTURE_TASK = "synthetic"
COMPOSE_TASK = "synthetic_compose"
TWO_SKILL = "reverse_shift"  # the one dataset of COMPOSE_TASK (conf/task/synthetic_compose.yaml)
TABLE3_COMPOSERS = ("single", "nla", "lorahub", "pems", "mixer", "mole")
COMPOSE_COMPOSERS = ("nla", "lorahub", "pems", "mixer", "mole")  # no expert matches the two-skill task: no single
COUNT_COMPOSERS = ("nla", "lorahub", "pems", "mole")
MASK_COMPOSERS = ("mole", "nla")
RANDOM_LIBRARY = "random_library"
CONTROL_LABELS = {"base": "base", "fresh_lora": "fresh_lora", RANDOM_LIBRARY: "mole (random library)"}
CONTROL_COMPOSERS = {"base": "base", "fresh_lora": "fresh_lora", RANDOM_LIBRARY: "mole"}
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
    facts: dict = field(default_factory=dict, compare=False, hash=False)  # what the tables group by, and the seed axes
    family: str = "t5"  # settings.family

    @property
    def key(self) -> str:
        return ("" if self.family == "t5" else f"{self.family}:") + f"{self.study}/{self.label}/seed{self.seed}"


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


def chosen_studies(settings: MiniSettings, studies: tuple[str, ...] | None) -> tuple[str, ...]:
    """The studies of `settings` to plan: all of its own, or those of them named in `studies` (checked)."""
    if studies is None:
        return settings.studies
    unknown = [s for s in studies if s not in STUDIES]
    if unknown:
        raise ValueError(f"mini reproduction studies {unknown} unknown; known: {list(STUDIES)}")
    if "mask" in studies and "table3" not in studies:
        raise ValueError("study 'mask' re-evaluates table3's trained MoLE: ask for table3 with it (studies=table3,mask)")
    return tuple(s for s in settings.studies if s in studies)


def seed_axes(seed: int) -> dict[str, int]:
    """What seed k re-draws (settings.py): recorded in every run's facts."""
    return {"library_seed": seed, "data_seed": seed, "composer_seed": seed}


def make_plan(settings: MiniSettings, libraries: dict[int, Path], out_dir: Path, conf_dir: Path, extra: tuple[str, ...] = (),
              studies: tuple[str, ...] | None = None) -> Plan:
    """Every run of the family's studies (or of those of them in `studies`), for every seed (`libraries`: seed ->
    its expert library); `extra` overrides go to all of them (e.g. paths)."""
    wanted = chosen_studies(settings, studies)
    missing = [s for s in settings.seeds if s not in libraries]
    if missing:
        raise ValueError(f"no expert library for seeds {missing} (one library per seed: each seed re-draws the library)")
    table3_composers, compose_composers = TABLE3_COMPOSERS + settings.peers, COMPOSE_COMPOSERS + settings.peers
    all_composers = tuple(dict.fromkeys(table3_composers + compose_composers + COUNT_COMPOSERS + MASK_COMPOSERS
                                        + tuple(CONTROL_COMPOSERS[c] for c in settings.controls)))
    usable, skipped = available_composers(all_composers, conf_dir)
    runs: list[RunSpec] = []

    def add(study: str, label: str, seed: int, composer: str, task: str, extra_overrides: tuple[str, ...] = (), needs=None,
            experts: tuple[str, ...] | None = None, **facts):
        if study not in wanted:
            return None
        library = libraries[seed]
        experts = experts or ("experts=library", f"experts.library_dir={library}")
        only = (f"task.only=[{','.join(settings.tasks)}]",) if task == MIXTURE_TASK else ()
        overrides = (f"model={settings.model_option}", *settings.model, *experts, *settings.compose, *extra, f"task={task}", *only,
                     *settings.data, f"task.args.data_seed={seed}", f"composer={composer}", *COMPOSER_OVERRIDES.get(composer, ()),
                     *extra_overrides, f"seed={seed}")
        if composer == "mole" and not any(o.startswith("composer/gate=") for o in extra_overrides):
            overrides = (*overrides, f"composer/gate={settings.default_granularity}")
        run_dir = out_dir / "runs" / study / label.replace(" ", "_").replace("(", "").replace(")", "") / f"seed{seed}"
        runs.append(RunSpec(study, label, seed, overrides, run_dir, composer, needs, {**facts, **seed_axes(seed)}, settings.family))
        return run_dir

    def add_controls(study: str, seed: int, task: str) -> None:
        for control in settings.controls:
            composer = CONTROL_COMPOSERS[control]
            if composer not in usable:
                continue
            experts = None
            if control == RANDOM_LIBRARY:
                experts = ("experts=random_library", f"experts.library_dir={libraries[seed]}", f"experts.random.seed={seed}",
                           f"experts.random.match={settings.random_match}", f"experts.random.cache_dir={out_dir / 'libraries' / 'random'}")
            add(study, CONTROL_LABELS[control], seed, composer, task, experts=experts, control=control)

    for seed in settings.seeds:
        table3 = {}
        for composer in (c for c in table3_composers if c in usable):
            table3[composer] = add("table3", composer, seed, composer, MIXTURE_TASK)
        add_controls("table3", seed, MIXTURE_TASK)
        for composer in (c for c in compose_composers if c in usable):
            add("compose", composer, seed, composer, COMPOSE_TASK)
        add_controls("compose", seed, COMPOSE_TASK)
        if "mole" in usable:
            for granularity in settings.granularities:
                if granularity != settings.default_granularity:
                    add("granularity", f"mole {granularity}", seed, "mole", MIXTURE_TASK, (f"composer/gate={granularity}",), granularity=granularity)
            add("balance", "mole alpha=0", seed, "mole", MIXTURE_TASK, ("composer.alpha=0",), alpha=0.0)
            for tau in settings.temperatures:
                fixed = ("composer.alpha=0", "composer.gate.temperature.learnable=false", f"composer.gate.temperature.init={tau:g}")
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
