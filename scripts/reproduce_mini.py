"""The paper's NLP studies in miniature, offline and seeded, on a CPU: small T5 (and a small decoder-only LM) + synthetic string tasks.

    python scripts/reproduce_mini.py                 # T5, every study: ~21 min on 2 idle CPU cores from scratch (est.; 72 min on 2 shared) -> docs/reproduce_mini.md + PNGs
    python scripts/reproduce_mini.py --families t5,causal     # and the decoder-only family (`make reproduce-mini`) -> also docs/reproduce_mini_families.md
    python scripts/reproduce_mini.py --families t5,causal --studies table3,compose   # Table 3's study and the two-skill task only: the families page alone
    python scripts/reproduce_mini.py --fast --out /tmp/mini --docs /tmp/mini/docs     # tiny sizes, 1 seed (tests)

Stages, for each family (`t5`: model=small_synthetic, every study; `causal`: model=small_synthetic_causal, Table 3's
study and the two-skill task with PEFT's X-LoRA and Arrow beside the composers; settings.py): (1) pretrain the small
base (cached under paths.cache_dir), (2) for each seed, train one LoRA per synthetic task on that seed's data
(scripts/train_experts.py's code; the libraries land in <out>/libraries, the causal family's under <out>/causal),
(3) compose them with every registered composer and the controls (the base alone, a fresh LoRA, MoLE over a random
library) on the held-out mixture and on the held-out two-skill task, for each seed, plus the ablations (granularity,
L_balance and temperature, expert count, masking), every family's runs in one pool, (4) the reports: the T5 report
(claims with their intervals, tables and figures; only when every T5 study ran, so a partial run never overwrites
it) and, with the causal family or a partial run, the families page. Runs already finished by the same code with
the same config are not run again.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere without installing

from mole_exp.tools.mini.settings import FAMILIES, STUDIES, preset  # noqa: E402
from mole_exp.training.compose import CONF_DIR, compose_config  # noqa: E402

log = logging.getLogger("reproduce_mini")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="tiny sizes, one seed, a few steps (the test suite's variant)")
    parser.add_argument("--out", type=Path, default=None, help="runs and the library (default: outputs/reproduce_mini[_fast])")
    parser.add_argument("--docs", type=Path, default=None, help="where the report and figures go (default: docs/, or <out>/docs with --fast)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the preset's seeds")
    parser.add_argument("--jobs", type=int, default=2, help="composition runs in parallel (worker processes, 1 torch thread each)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for pretraining and expert training (default: --jobs)")
    parser.add_argument("--data-dir", type=Path, default=None, help="paths.data_dir (holds t5_tokenizer/); default: conf/paths")
    parser.add_argument("--families", type=_names(FAMILIES, "families"), default=("t5",),
                        help=f"comma-separated model families, of {','.join(FAMILIES)} (default: t5)")
    parser.add_argument("--studies", type=_names(STUDIES, "studies"), default=None,
                        help=f"comma-separated studies, of {','.join(STUDIES)} (default: each family's own; a partial run writes only the families page)")
    return parser.parse_args(argv)


def _names(allowed: tuple[str, ...], what: str):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"--{what} {text!r}: {unknown or 'none named'}; allowed: {','.join(allowed)}")
        return names

    return parse


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "mole_exp.training.pipeline", "mole_exp.evaluation.evaluator"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import dataclasses

    import torch

    from mole_exp.tools.mini.plan import chosen_studies
    from mole_exp.tools.mini.report import (
        families_page_name,
        make_figures,
        write_families_report,
        write_outcomes,
        write_report,
    )
    from mole_exp.tools.mini.runner import run_all

    out = (args.out or ROOT / "outputs" / f"reproduce_mini{'_fast' if args.fast else ''}").resolve()
    docs = (args.docs or (out / "docs" if args.fast else ROOT / "docs")).resolve()
    settings_of = {}
    for name in args.families:  # every bad option refused before any work
        settings = preset(name, args.fast)
        settings_of[name] = dataclasses.replace(settings, seeds=tuple(args.seeds)) if args.seeds else settings
        chosen_studies(settings, args.studies)
    torch.set_num_threads(args.threads or max(1, args.jobs))
    timings: dict[str, float] = {}
    families = {name: _prepare(name, settings, out if name == "t5" else out / name, args, timings) for name, settings in settings_of.items()}
    for family in families.values():
        for composer, why in family.plan.skipped.items():
            log.warning("%s: composer %s skipped: %s", family.settings.family, composer, why)

    started = time.perf_counter()
    runs = [spec for family in families.values() for spec in family.plan.runs]
    outcomes = run_all(runs, CONF_DIR, jobs=args.jobs, threads_per_job=1)
    timings[f"3. {len(runs)} composition runs ({args.jobs} in parallel)"] = time.perf_counter() - started

    command = "python scripts/reproduce_mini.py" + (" --fast" if args.fast else "") + (f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds else "")
    command += (f" --families {','.join(args.families)}" if args.families != ("t5",) else "") + (f" --studies {','.join(args.studies)}" if args.studies else "")
    pages = []
    t5 = families.get("t5")
    complete_t5 = t5 is not None and chosen_studies(t5.settings, args.studies) == t5.settings.studies
    if complete_t5:  # the full T5 report, only from a run of every T5 study
        started = time.perf_counter()
        prefix = "reproduce_mini_" if not args.fast else "reproduce_mini_fast_"
        figures = make_figures(t5.plan, docs / "figures", prefix)
        own = {k.removeprefix("t5: "): v for k, v in timings.items() if not k.startswith("causal: ")}
        own["4. figures"] = time.perf_counter() - started
        # the report adds its own stage (claims, intervals, tables) and the total to the timings
        pages.append(write_report(docs / f"{prefix.rstrip('_')}.md", t5.settings, t5.plan, [o for o in outcomes if o.key in {r.key for r in t5.plan.runs}],
                                  t5.manifests, t5.libraries, t5.base_info, figures, own, command, out))
    if "causal" in families or not complete_t5:
        pages.append(write_families_report(docs / families_page_name("fast" if args.fast else "full"), families, outcomes, dict(timings),
                                           command, out))
    write_outcomes(out / "outcomes.json", outcomes, timings)
    failed = [o for o in outcomes if o.status in ("failed", "blocked")]
    log.info("reports: %s (%d runs, %d failed or blocked); stage seconds: %s", [str(p) for p in pages], len(outcomes), len(failed),
             {k: round(v) for k, v in timings.items()})
    print("\n".join(map(str, pages)))
    return 1 if failed else 0


def _prepare(name: str, settings, out: Path, args: argparse.Namespace, timings: dict[str, float]):
    """One family's base and expert libraries (stages 1 and 2) and its plan."""
    from mole_exp.tools.expert_training import run_from_config
    from mole_exp.tools.mini.plan import make_plan
    from mole_exp.tools.mini.report import FamilyRun
    from mole_exp.training.config import build

    paths = [f"paths.outputs_dir={out}"] + ([f"paths.data_dir={args.data_dir.resolve()}"] if args.data_dir else [])
    model = [f"model={settings.model_option}", *settings.model]
    started = time.perf_counter()
    model_cfg = compose_config("train_experts", [*paths, *model])
    base = build(model_cfg.model)
    timings[f"{name}: 1. pretrain the small base (or load it from the cache)"] = time.perf_counter() - started
    base_info = {"model_id": base.model_id, "pretraining": _pretraining_summary(model_cfg)}
    del base

    started = time.perf_counter()
    only = f"experts_training.tasks=[{','.join(settings.tasks)}]"
    libraries, manifests = {}, {}
    for seed in settings.seeds:  # each seed its own library, trained on its own draw of the task data
        library_cfg = compose_config("train_experts", [*paths, *model, *settings.data, *settings.experts_training, only,
                                                f"seed={seed}", f"task.args.data_seed={seed}"])
        libraries[seed] = run_from_config(library_cfg)
        manifests[seed] = json.loads((libraries[seed] / "manifest.json").read_text())
    timings[f"{name}: 2. train the {len(libraries)} expert libraries (or reuse them)"] = time.perf_counter() - started
    plan = make_plan(settings, libraries, out, CONF_DIR, extra=tuple(paths), studies=args.studies)
    return FamilyRun(settings, plan, libraries, manifests, base_info, out)


def _pretraining_summary(cfg) -> str:
    pretrain = cfg.model.get("pretrain") or {}
    return f"{pretrain.get('objective')} objective, {pretrain.get('steps')} steps of batch {pretrain.get('batch_size')}"


if __name__ == "__main__":
    sys.exit(main())
