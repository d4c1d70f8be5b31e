"""The paper's NLP studies in miniature, offline and seeded, on a CPU: small T5 + synthetic string tasks.

    python scripts/reproduce_mini.py                 # full: ~21 min on 2 idle CPU cores from scratch (est.; 72 min on 2 shared) -> docs/reproduce_mini.md + PNGs
    python scripts/reproduce_mini.py --fast --out /tmp/mini --docs /tmp/mini/docs     # tiny sizes, 1 seed (tests)

Stages: (1) pretrain the small base (model=small_synthetic; cached under paths.cache_dir), (2) for each seed,
train one LoRA per synthetic task on that seed's data (scripts/train_experts.py's code; the libraries land in
<out>/libraries, reused on reruns), (3) compose them with every registered composer and the controls (the
base alone, a fresh LoRA, MoLE over a random library) on the held-out mixture and on the held-out two-skill
task, for each seed, plus the ablations (granularity, L_balance and temperature, expert count, masking),
(4) the claims with their intervals, the tables and figures. Runs already finished by the same code with the
same config are not run again.
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

from mole_exp.tools.mini.settings import PRESETS  # noqa: E402
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "mole_exp.training.pipeline", "mole_exp.evaluation.evaluator"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import dataclasses

    import torch

    from mole_exp.tools.expert_training import run_from_config
    from mole_exp.tools.mini.plan import make_plan
    from mole_exp.tools.mini.report import make_figures, write_outcomes, write_report
    from mole_exp.tools.mini.runner import run_all
    from mole_exp.training.config import build

    settings = PRESETS["fast" if args.fast else "full"]
    if args.seeds:
        settings = dataclasses.replace(settings, seeds=tuple(args.seeds))
    out = (args.out or ROOT / "outputs" / f"reproduce_mini{'_fast' if args.fast else ''}").resolve()
    docs = (args.docs or (out / "docs" if args.fast else ROOT / "docs")).resolve()
    paths = [f"paths.outputs_dir={out}"] + ([f"paths.data_dir={args.data_dir.resolve()}"] if args.data_dir else [])
    torch.set_num_threads(args.threads or max(1, args.jobs))
    timings: dict[str, float] = {}

    started = time.perf_counter()
    model_cfg = compose_config("train_experts", [*paths, *settings.model])
    base = build(model_cfg.model)
    timings["1. pretrain the small base (or load it from the cache)"] = time.perf_counter() - started
    base_info = {"model_id": base.model_id, "pretraining": _pretraining_summary(model_cfg)}
    del base

    started = time.perf_counter()
    only = f"experts_training.tasks=[{','.join(settings.tasks)}]"
    libraries, manifests = {}, {}
    for seed in settings.seeds:  # each seed its own library, trained on its own draw of the task data
        library_cfg = compose_config("train_experts", [*paths, *settings.model, *settings.data, *settings.experts_training, only,
                                                f"seed={seed}", f"task.args.data_seed={seed}"])
        libraries[seed] = run_from_config(library_cfg)
        manifests[seed] = json.loads((libraries[seed] / "manifest.json").read_text())
    timings[f"2. train the {len(libraries)} expert libraries (or reuse them)"] = time.perf_counter() - started

    started = time.perf_counter()
    plan = make_plan(settings, libraries, out, CONF_DIR, extra=tuple(paths))
    for name, why in plan.skipped.items():
        log.warning("composer %s skipped: %s", name, why)
    outcomes = run_all(plan.runs, CONF_DIR, jobs=args.jobs, threads_per_job=1)
    timings[f"3. {len(plan.runs)} composition runs ({args.jobs} in parallel)"] = time.perf_counter() - started

    started = time.perf_counter()
    prefix = "reproduce_mini_" if not args.fast else "reproduce_mini_fast_"
    figures = make_figures(plan, docs / "figures", prefix)
    timings["4. figures"] = time.perf_counter() - started
    command = "python scripts/reproduce_mini.py" + (" --fast" if args.fast else "") + (f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds else "")
    # the report adds its own stage (claims, intervals, tables) and the total to the timings
    page = write_report(docs / f"{prefix.rstrip('_')}.md", settings, plan, outcomes, manifests, libraries, base_info, figures,
                        timings, command, out)
    write_outcomes(out / "outcomes.json", outcomes, timings)
    failed = [o for o in outcomes if o.status in ("failed", "blocked")]
    log.info("report: %s (%d runs, %d failed or blocked); stage seconds: %s", page, len(outcomes), len(failed),
             {k: round(v) for k, v in timings.items()})
    print(page)
    return 1 if failed else 0


def _pretraining_summary(cfg) -> str:
    pretrain = cfg.model.get("pretrain") or {}
    return f"{pretrain.get('objective')} objective, {pretrain.get('steps')} steps of batch {pretrain.get('batch_size')}"


if __name__ == "__main__":
    sys.exit(main())
