"""scripts/lm_eval.py: lm-eval's own `run` flags, on a composed model.

    python scripts/lm_eval.py --run <run folder> --tasks local_bbh_zeroshot --include_path conf/lm_eval_tasks
    python scripts/lm_eval.py --run <run folder> --unit anli_r1 --tasks local_anli_r1 --include_path conf/lm_eval_tasks
    python scripts/lm_eval.py --compose composer=nla model=tiny experts=tiny --tasks ... --output_path <folder>

`--run` is a finished run folder (or an eval.py folder, <run>/evals/<name>: its mask), `--unit` one fit unit
of a run fitted several times, `--compose` Hydra overrides of conf/train.yaml for a composer that fits
nothing (nla, single, base, pems with fixed weights). Every other flag is lm-eval's (`lm_eval run --help`);
`--model` can only be `mole` (mole_exp/harness/lm.py), `--model_args` go to its HFLM (e.g. truncation=True).

It writes lm-eval's own results JSON (what `lm_eval --output_path` writes) to
`<run>/lm_eval/results_<time>.json` (`--output_path <folder>`: there instead; required with `--compose`),
atomically and never over an earlier file; with `--log_samples`, `samples_<task>_<time>.jsonl` beside it,
before the results file. A folder without a finished run, its checkpoint or its searched weights, a spec
that needs a fit, and a task lm-eval does not know are refused before any model loads; a model family the
bridge has no lm-eval backend for, once the base has loaded, before its experts do.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from mole_exp.files import write_new
from mole_exp.harness.composed import check_run, check_spec, default_device

PROG = "scripts/lm_eval.py"
RESULTS_DIR = "lm_eval"  # <run>/lm_eval/: read by scripts/make_tables.py (mole_exp/reporting/lm_eval_results.py)
OURS = ("run", "unit", "compose")


def parser() -> argparse.ArgumentParser:
    """lm-eval's `run` parser (its flags, help and defaults) with the composed model's flags added."""
    from lm_eval._cli.run import Run

    subcommands = argparse.ArgumentParser(prog=PROG).add_subparsers()
    Run.create(subcommands)
    run_parser: argparse.ArgumentParser = subcommands.choices["run"]
    run_parser.prog, run_parser.usage, run_parser.epilog = PROG, None, __doc__
    ours = run_parser.add_argument_group("composed model (mole-exp)")
    ours.add_argument("--run", default=None, metavar="<folder>", help="a finished run folder (or <run>/evals/<name>)")
    ours.add_argument("--unit", default=None, metavar="<unit>", help="the fit unit of a run fitted per dataset or with several search seeds")
    ours.add_argument("--compose", nargs="+", default=None, metavar="<override>",
                      help="Hydra overrides of conf/train.yaml composing a model without a fit, e.g. composer=nla model=tiny experts=tiny")
    return run_parser


def results_folder(args: argparse.Namespace) -> Path:
    if args.output_path:
        if str(args.output_path).endswith((".json", ".jsonl")):
            raise ValueError(f"--output_path {args.output_path!r}: give a folder; the results file is named results_<time>.json")
        return Path(args.output_path)
    if args.compose:
        raise ValueError("--compose has no run folder to write into: give --output_path <folder>")
    return Path(args.run) / RESULTS_DIR


def check_model_flags(args: argparse.Namespace) -> None:
    if bool(args.run) == bool(args.compose):
        raise ValueError("give the composed model: --run <finished run folder> or --compose <overrides of conf/train.yaml> (one of them)")
    if args.model not in (None, "mole"):
        raise ValueError(f"--model {args.model!r}: {PROG} evaluates composed models (--model mole); evaluate other models with lm_eval itself")
    if args.unit and not args.run:
        raise ValueError("--unit names a fit unit of a run: it needs --run")
    clash = sorted(set(args.model_args or {}) & set(OURS))
    if clash:
        raise ValueError(f"--model_args {clash}: give them as --{' --'.join(clash)}")


def unknown_tasks_error(error: ValueError, include_path: str | None) -> ValueError:
    """lm-eval's 'Tasks not found: x' with where it looked and how to list what it knows."""
    missing = str(error).split("Tasks not found:", 1)[1].strip()
    where = "its own tasks" + (f" and those under --include_path {include_path}" if include_path else " (no --include_path given)")
    listing = "lm_eval ls tasks" + (f" --include_path {include_path}" if include_path else "")
    return ValueError(f"lm-eval knows no task named {missing} (searched {where}); `{listing}` lists them")


def timestamp() -> str:
    """lm-eval's own results-file stamp (EvaluationTracker): the local time, ':' replaced by '-'."""
    return datetime.now().isoformat().replace(":", "-")


EXISTS_HINT = " (an earlier lm-eval result); run again for a new time stamp"


def write_results(folder: Path, results: dict[str, Any], samples: dict[str, list[dict[str, Any]]] | None, stamp: str | None = None) -> Path:
    """results_<stamp>.json (lm-eval's results dict, serialised as lm-eval does) and samples_<task>_<stamp>.jsonl,
    the samples first: a results file is only there once everything of its evaluation is."""
    from lm_eval.utils import handle_non_serializable

    stamp = stamp or timestamp()
    for task, rows in (samples or {}).items():
        lines = "".join(json.dumps(row, default=handle_non_serializable, ensure_ascii=False) + "\n" for row in rows)
        write_new(folder / f"samples_{task}_{stamp}.jsonl", lines, EXISTS_HINT)
    text = json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n"
    return write_new(folder / f"results_{stamp}.json", text, EXISTS_HINT)


def evaluate(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """Check everything that needs no model, then lm-eval's simple_evaluate on the `mole` model; write the results."""
    check_model_flags(args)
    if args.run:
        check_run(args.run, args.unit)  # a finished run, its unit, its checkpoint or searched weights
    else:
        check_spec(args.compose)  # composes, and fits nothing
    folder = results_folder(args)

    from lm_eval import simple_evaluate
    from lm_eval.config.evaluate_config import EvaluatorConfig

    import mole_exp.harness.lm  # noqa: F401  (registers the `mole` model)

    source = {"run": args.run, **({"unit": args.unit} if args.unit else {})} if args.run else {"compose": list(args.compose)}
    model_args = {**(args.model_args or {}), **source}
    namespace = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in OURS})
    namespace.model, namespace.model_args, namespace.output_path = "mole", model_args, str(folder)
    namespace.device = args.device or default_device()
    cfg = EvaluatorConfig.from_cli(namespace)  # lm-eval's own checks of its flags
    try:
        task_manager = cfg.process_tasks(cfg.metadata)
    except ValueError as error:
        if "Tasks not found" in str(error):
            raise unknown_tasks_error(error, cfg.include_path) from None
        raise
    results = simple_evaluate(  # as lm-eval's `run` calls it (lm_eval/_cli/run.py), without its hub logging
        model=cfg.model, model_args=cfg.model_args, tasks=cfg.tasks, num_fewshot=cfg.num_fewshot, batch_size=cfg.batch_size,
        max_batch_size=cfg.max_batch_size, device=cfg.device, use_cache=cfg.use_cache,
        cache_requests=cfg.cache_requests.get("cache_requests", False),
        rewrite_requests_cache=cfg.cache_requests.get("rewrite_requests_cache", False),
        delete_requests_cache=cfg.cache_requests.get("delete_requests_cache", False),
        limit=cfg.limit, samples=cfg.samples, check_integrity=cfg.check_integrity, write_out=cfg.write_out,
        log_samples=cfg.log_samples, system_instruction=cfg.system_instruction, apply_chat_template=cfg.apply_chat_template,
        fewshot_as_multiturn=cfg.fewshot_as_multiturn, gen_kwargs=cfg.gen_kwargs, task_manager=task_manager,
        predict_only=cfg.predict_only,
        random_seed=cfg.seed[0] if cfg.seed else None, numpy_random_seed=cfg.seed[1] if cfg.seed else None,
        torch_random_seed=cfg.seed[2] if cfg.seed else None, fewshot_random_seed=cfg.seed[3] if cfg.seed else None,
        confirm_run_unsafe_code=cfg.confirm_run_unsafe_code, metadata=cfg.metadata,
    )
    samples = results.pop("samples", None) if cfg.log_samples else None
    return results, write_results(folder, results, samples)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        results, path = evaluate(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    from lm_eval.utils import make_table

    print(make_table(results))
    if "groups" in results:
        print(make_table(results, "groups"))
    print(f"wrote {path}")
    return 0
