"""The mini reproduction's report page: set-up, the claims with their intervals, tables (controls included),
figures, the settings history, skipped composers, failures and timings. Files are named relative to the
repository (or to the output folder when it lies elsewhere), never by an absolute path."""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mole_exp.files import write_atomic
from mole_exp.tools.mini import tables
from mole_exp.tools.mini.claims import claims_section, evaluate, make_claims
from mole_exp.tools.mini.history import history_section
from mole_exp.tools.mini.plan import CONTROL_LABELS, RANDOM_LIBRARY, Plan
from mole_exp.tools.mini.runner import Outcome
from mole_exp.tools.mini.settings import FAMILIES, MiniSettings
from mole_exp.training.provenance import code_version

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[3]


class Places:
    """How the report names a file: relative to the repository, else to the output folder (`<out>/...`)."""

    def __init__(self, out: Path, root: Path = ROOT):
        self.out, self.root = Path(out).resolve(), Path(root).resolve()

    def __call__(self, path: str | Path) -> str:
        path = Path(path).resolve()
        for base, prefix in ((self.root, ""), (self.out, "<out>/")):
            try:
                return prefix + str(path.relative_to(base))
            except ValueError:
                continue
        return f"<elsewhere>/{path.name}"


def make_figures(plan: Plan, figures_dir: Path, prefix: str) -> dict[str, str]:
    """Figure 5a (gate entropy with and without L_balance) and Figure 7 (per-gate weights), from the first seed's
    runs. Returns figure -> file, or figure -> why it is missing."""
    from mole_exp.reporting.plots import plot_entropy, plot_heatmap

    seed = min((r.seed for r in plan.runs), default=0)
    mole = [r for r in plan.study("table3") if r.label == "mole" and r.seed == seed]
    no_balance = [r for r in plan.study("balance") if r.label == "mole alpha=0" and r.seed == seed]
    figures: dict[str, str] = {}
    jobs = {
        "figure5": (lambda: plot_entropy([r.run_dir for r in mole + no_balance], figures_dir / f"{prefix}figure5_gate_entropy.png")),
        "figure7": (lambda: plot_heatmap(mole[0].run_dir, figures_dir / f"{prefix}figure7_gate_weights.png")),
    }
    for name, draw in jobs.items():
        try:
            if not mole:
                raise FileNotFoundError("no MoLE run in table3 (composer not available)")
            figures[name] = str(draw())
        except (FileNotFoundError, ValueError, IndexError) as error:
            figures[name] = f"missing: {error}"
            log.warning("%s not drawn: %s", name, error)
    return figures


def _image(figures: dict[str, str], name: str, page_dir: Path, caption: str) -> str:
    target = figures.get(name, "missing: not drawn")
    if target.startswith("missing:"):
        return f"*{caption}: {target}*"
    return f"![{caption}]({os.path.relpath(Path(target).resolve(), page_dir.resolve())})"


def random_library_folders(plan: Plan) -> dict[int, Path]:
    """seed -> the random library its runs composed (from their metrics.json)."""
    found = {}
    for spec in plan.runs:
        if spec.facts.get("control") == RANDOM_LIBRARY and spec.seed not in found:
            metrics = tables.read_metrics(spec)
            sources = ((metrics or {}).get("experts") or {}).get("sources") or []
            if sources:
                found[spec.seed] = Path(sources[0]).parent
    return found


def run_code_versions(plan: Plan) -> dict[str, int]:
    """'commit / sources' -> how many finished runs that code made (runs reused from earlier invocations keep theirs)."""
    counts: dict[str, int] = {}
    for spec in plan.runs:
        version = (tables.read_metrics(spec) or {}).get("code_version")
        if version:
            key = f"{(version.get('commit') or 'outside git')[:12]} / sources {version.get('sources')}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def write_report(
    page: Path,
    settings: MiniSettings,
    plan: Plan,
    outcomes: list[Outcome],
    manifests: dict[int, dict[str, Any]],
    libraries: dict[int, Path],
    base_info: dict[str, Any],
    figures: dict[str, str],
    timings: dict[str, float],
    command: str,
    out_dir: Path,
) -> Path:
    started = time.perf_counter()
    place = Places(out_dir)
    datasets = list(settings.tasks)
    failed = [o for o in outcomes if o.status in ("failed", "blocked")]
    seeds = ", ".join(map(str, settings.seeds))
    page_dir = page.parent
    scores = tables.Scores(settings.resamples)
    claims = evaluate(make_claims(plan, settings), scores)
    compose_settings = " ".join(o for o in settings.compose if not o.startswith(("+trainer.enable", "generation.progress")))
    version = code_version()
    first = manifests[min(manifests)] if manifests else {}
    random_folders = random_library_folders(plan)
    fast_note = ("**This is the `--fast` variant** (tiny sizes, a few steps, one seed: the test suite's smoke run). Its numbers "
                 "are not results; it shows that every section is made.") if settings.name != "full" else ""
    sections = [
        "# Mini reproduction: MoLE, its baselines and controls on synthetic string tasks, small T5, CPU",
        f"Generated by `{command}` on {datetime.date.today().isoformat()} ({settings.name} settings, seeds {seeds}; code "
        f"{(version['commit'] or 'outside git')[:12]}{' with uncommitted changes' if version['dirty'] else ''}, sources "
        f"{version['sources']}). Every number is read from the runs' `metrics.json`; every interval is a bootstrap over their "
        f"`predictions.jsonl` ({settings.resamples} resamples; `mole_exp/reporting/intervals.py`). Exact match, 0-100, test split.",
        *([fast_note] if fast_note else []),
        *_code_note(run_code_versions(plan)),
        f"The decoder-only family (a small Llama-shaped base with PEFT's X-LoRA and Arrow beside the composers) and the two "
        f"families side by side: [{families_page_name(settings.name)}]({families_page_name(settings.name)}) (`--families t5,causal`).",
        "## Seeds: what each one re-draws",
        f"Each seed k ({seeds}) is one replicate of the whole study, and every run records its axes: the expert library's "
        "training (`scripts/train_experts.py seed=k`: LoRA initialisation and data order), the task data (`task.args.data_seed=k`: "
        "training and test examples of every task, the same draw for the library and the compositions), and the composer "
        "(`seed=k`: gate / router / fresh-LoRA initialisation, data order, LoRAHub's few-shot draw and search, PEMs' validation "
        "slice; the random library's matrices, `experts.random.seed=k`). The small base is pretrained once and shared. "
        "A cell is `mean [95% CI] (n=seeds)`: the mean over seeds, and an interval that resamples the seeds and, within each, "
        "the test examples (a two-level bootstrap; with one seed, the examples only).",
        "## The paper's claims, here",
        "Each comparison is a difference of mean EM (first minus second), paired by seed and by test example, with its 95% "
        "interval; it holds when the interval lies above 0, is reversed below 0, and is within noise otherwise "
        "(`mole_exp/tools/mini/claims.py`).",
        claims_section(claims),
        "## Set-up",
        f"- Base: `{base_info.get('model_id')}`: a T5 with the real T5 vocabulary, random seeded init, pretrained briefly "
        f"({base_info.get('pretraining', '?')}); see `mole_exp/tools/mini/small_base.py`, `conf/model/small_synthetic.yaml`.",
        f"- Tasks (`conf/task/synthetic.yaml`): {', '.join(datasets)}; inputs `<task>: <symbols>`. The held-out two-skill task "
        "(`conf/task/synthetic_compose.yaml`) is `reverse shift: ...` (reverse, then Caesar-shift); no expert saw it.",
        f"- Experts: one LoRA per task and seed (`scripts/train_experts.py`; r={_first(first, 'rank')}, targets "
        f"{_first(first, 'targets')}); libraries: " + ", ".join(f"seed {s}: `{place(p)}`" for s, p in sorted(libraries.items())) + ".",
        f"- Compositions: `python train.py` configs run through `mole_exp.training.pipeline.run`, shared overrides `{compose_settings}`; "
        "gates (MoLE), routers (mixer), the fresh LoRA and searches (LoRAHub, PEMs) fit on the training split of the task they "
        "are scored on.",
        "- Controls, run beside every composer on both held-out tasks: "
        + "; ".join(_control_text(c, settings) for c in settings.controls) + ". `single` (each task's own expert) is the oracle.",
        "## The expert libraries",
        tables.expert_table(manifests),
        "## Table 3 style: composers and controls on the held-out mixture of the tasks",
        "`single` applies each dataset's own expert (an upper reference, not a composition). ↑ / ↓: significantly above / below "
        "MoLE (paired bootstrap of the difference).",
        tables.composer_table(plan, datasets, scores),
        "## Composers and controls on the held-out two-skill task (reverse, then shift)",
        tables.compose_table(plan, scores),
        "## Table 7 style: gating balance",
        "MoLE (α=0.5, learnable τ), without L_balance (α=0), and without L_balance at fixed raised temperatures; ↑ / ↓ against MoLE.",
        tables.balance_table(plan, datasets, scores),
        "## Table 9 style: gate granularity (MoLE)",
        f"↑ / ↓ against `mole {settings.default_granularity}`.",
        tables.granularity_table(plan, datasets, settings.granularities, settings.default_granularity, scores),
        "## Table 6 style: number of experts composed (average EM over the mixture)",
        "Fewer than all: a seeded random subset (`experts.count=<n> experts.selection=random`), so the tasks without their expert "
        "count in the average.",
        tables.count_table(plan, datasets, scores),
        "## Figure 8 style: masking one expert at inference",
        "`rest` = the average EM over the other tasks. MoLE: the trained gates of the table-3 run, evaluated with "
        "`composer.mask=[<expert>]` (`mode=eval`, weights renormalised over the rest, no retraining); NLA: merged over the "
        "remaining experts.",
        tables.mask_table(plan, datasets, scores),
        "## The random libraries",
        "Norm of each random expert's factors and delta over the real expert's, averaged over experts and modules "
        "(`manifest.json` of each random library records every norm): "
        + (", ".join(f"seed {s}: `{place(p)}`" for s, p in sorted(random_folders.items())) or "none made") + ".",
        tables.random_library_table(random_folders) if random_folders else "*no random-library run finished*",
        "## Figure 5a and Figure 7: gates",
        _image(figures, "figure5", page_dir, "Figure 5: gate entropy over training steps, with and without L_balance"),
        _image(figures, "figure7", page_dir, "Figure 7: learned expert weights per gate"),
        "## Settings history",
        history_section(),
    ]
    if settings.name != "full":
        sections.append(f"(The `{settings.name}` variant's own sizes: `{' '.join(settings.compose)}`.)")
    if plan.skipped:
        sections += ["## Composers not run", *(f"- `{name}`: {why}" for name, why in plan.skipped.items())]
    if failed:
        sections += ["## Failed runs", *(f"- `{o.key}` ({o.status}): {_relative_paths(o.error or '', place)}" for o in failed)]
    timings["5. claims, intervals and tables"] = time.perf_counter() - started
    timings["total"] = sum(v for k, v in timings.items() if k != "total")
    sections += ["## Timings", tables.markdown(["stage", "seconds"], [[k, f"{v:.0f}"] for k, v in timings.items()])]
    return write_atomic(page, "\n\n".join(sections) + "\n")


def _code_note(versions: dict[str, int]) -> list[str]:
    if len(versions) <= 1:
        return []
    listed = "; ".join(f"{key}: {count} runs" for key, count in versions.items())
    return [f"**The runs were made by {len(versions)} versions of the code** ({listed}): finished runs are reused across "
            "invocations; delete the output folder to make them all with one version."]


def _control_text(control: str, settings: MiniSettings) -> str:
    label = CONTROL_LABELS[control]
    return {
        "base": f"`{label}`: the frozen base, no expert (`composer=base`)",
        "fresh_lora": f"`{label}`: one new LoRA (rank = the library's, alpha 2r, q/v like the experts) trained on exactly the "
                      "data the gates see with MoLE's steps, batch and optimizer (`composer=fresh_lora`)",
        RANDOM_LIBRARY: f"`{label}`: MoLE over seeded random LoRAs of the library's shapes, per-module norms of "
                        f"{'A and B' if settings.random_match == 'factors' else 'the delta'} matched to the real library "
                        f"(`experts=random_library experts.random.match={settings.random_match}`)",
    }[control]


def _relative_paths(text: str, place: Places) -> str:
    for base, prefix in ((str(place.out), "<out>"), (str(place.root), ".")):
        text = text.replace(base, prefix)
    return text


def _first(manifest: dict[str, Any], key: str) -> Any:
    adapters = manifest.get("adapters") or [{}]
    return adapters[0].get(key, "?")


def write_outcomes(path: Path, outcomes: list[Outcome], timings: dict[str, float]) -> Path:
    data = {"timings": timings, "runs": [vars(o) for o in outcomes]}
    return write_atomic(path, json.dumps(data, indent=2) + "\n")


def families_page_name(settings_name: str) -> str:
    """The families page beside the report: reproduce_mini_families.md (reproduce_mini_families_fast.md for --fast)."""
    return "reproduce_mini_families" + ("_fast" if "fast" in settings_name else "") + ".md"


@dataclass
class FamilyRun:
    """One family's part of an invocation: its settings, plan, libraries (seed -> folder) and their manifests, base."""

    settings: MiniSettings
    plan: Plan
    libraries: dict[int, Path]
    manifests: dict[int, dict[str, Any]]
    base_info: dict[str, Any]
    out_dir: Path


FAMILY_BASES = {
    "t5": "a T5 with the real T5 vocabulary (`mole_exp/tools/mini/small_base.py`, `conf/model/small_synthetic.yaml`)",
    "causal": "a Llama-shaped decoder-only LM with Llama 3's real tokenizer, trained with the causal LM objective on the "
              "completion (`mole_exp/tools/mini/small_causal_base.py`, `conf/model/small_synthetic_causal.yaml`)",
}


def write_families_report(page: Path, families: dict[str, FamilyRun], outcomes: list[Outcome], timings: dict[str, float],
                          command: str, out_dir: Path) -> Path:
    """The families page: Table 3's study and the two-skill task per family, side by side, then each family's set-up,
    libraries and per-task tables, skipped composers, failures and timings."""
    started = time.perf_counter()
    place = Places(out_dir)
    version = code_version()
    resamples = min(f.settings.resamples for f in families.values())
    scores = tables.Scores(resamples)
    plans = {name: f.plan for name, f in families.items()}
    datasets = {name: list(f.settings.tasks) for name, f in families.items()}
    fast = any("fast" in f.settings.name for f in families.values())
    sections = [
        "# Mini reproduction, model families side by side: T5 and decoder-only",
        f"Generated by `{command}` on {datetime.date.today().isoformat()} (code {(version['commit'] or 'outside git')[:12]}"
        f"{' with uncommitted changes' if version['dirty'] else ''}, sources {version['sources']}). Every number is read from the "
        f"runs' `metrics.json`; every interval is a bootstrap over their `predictions.jsonl` ({resamples} resamples; "
        "`mole_exp/reporting/intervals.py`). Exact match, 0-100, test split. The T5 family's other studies (granularity, "
        "balance, count, masking) and its claims are in [reproduce_mini.md](reproduce_mini.md).",
        *(["**This is the `--fast` variant** (tiny sizes, a few steps, one seed: the test suite's smoke run). Its numbers are "
           "not results; it shows that every section is made."] if fast else []),
        *_code_note({k: v for f in families.values() for k, v in run_code_versions(f.plan).items()}),
        *([f"**Only the {', '.join(tables.FAMILY_LABELS.get(n, n) for n in families)} family ran in this invocation**; both "
           "columns come from one run of `python scripts/reproduce_mini.py --families t5,causal` (`make reproduce-mini`; "
           "`--studies table3,compose` for these two studies alone)."] if len(families) < len(FAMILIES) else []),
        "## Composers and controls on both families",
        "Each family: its own small base pretrained on the synthetic family, its own expert libraries (one LoRA per task and "
        "seed, the same recipe), the same synthetic tasks, composers, controls and evaluation. `mixture average`: the mean EM "
        "over the held-out mixture's tasks (Table 3's study); `two-skill`: the held-out `reverse shift` task, which no expert "
        "saw. A cell is `mean [95% CI] (n=seeds)`; ↑ / ↓: significantly above / below that family's MoLE (paired bootstrap); "
        "`—`: not run in that family (see \"Composers not run\"). `single` (each task's own expert) is the oracle.",
        tables.families_table(plans, datasets, scores),
    ]
    for name, family in families.items():
        settings, plan = family.settings, family.plan
        label = tables.FAMILY_LABELS.get(name, name)
        first = family.manifests[min(family.manifests)] if family.manifests else {}
        compose_settings = " ".join(o for o in settings.compose if not o.startswith(("+trainer.enable", "generation.progress")))
        sections += [
            f"## {label}",
            f"- Base: `{family.base_info.get('model_id')}`: {FAMILY_BASES.get(name, name)}, random seeded init, pretrained briefly "
            f"({family.base_info.get('pretraining', '?')}).",
            f"- Seeds {', '.join(map(str, settings.seeds))} (each re-draws the library, the task data and the composer); tasks "
            f"{', '.join(settings.tasks)}; studies {', '.join(s for s in settings.studies if plan.study(s))}.",
            f"- Experts: one LoRA per task and seed (r={_first(first, 'rank')}, targets {_first(first, 'targets')}); libraries: "
            + ", ".join(f"seed {s}: `{place(p)}`" for s, p in sorted(family.libraries.items())) + ".",
            f"- Compositions: shared overrides `{compose_settings}`"
            + (f"; beside the composers: {', '.join(f'`composer={c}`' for c in settings.peers)} (PEFT's)" if settings.peers else "")
            + ".",
            f"### {label}: the expert libraries",
            tables.expert_table(family.manifests),
            f"### {label}: composers and controls on the held-out mixture (Table 3 style)",
            tables.composer_table(plan, list(settings.tasks), scores),
            f"### {label}: composers and controls on the held-out two-skill task",
            tables.compose_table(plan, scores),
        ]
        if plan.skipped:
            sections += [f"### {label}: composers not run", *(f"- `{c}`: {why}" for c, why in plan.skipped.items())]
    failed = [o for o in outcomes if o.status in ("failed", "blocked")]
    if failed:
        sections += ["## Failed runs", *(f"- `{o.key}` ({o.status}): {_relative_paths(o.error or '', place)}" for o in failed)]
    timings["tables"] = time.perf_counter() - started
    timings["total"] = sum(v for k, v in timings.items() if k != "total")
    sections += ["## Timings", tables.markdown(["stage", "seconds"], [[k, f"{v:.0f}"] for k, v in timings.items()])]
    return write_atomic(page, "\n\n".join(sections) + "\n")
