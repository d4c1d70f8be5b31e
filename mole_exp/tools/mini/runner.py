"""Run planned compositions: each is `mole_exp.training.pipeline.run` on the real Hydra config (conf/train.yaml)
composed with its overrides, in worker processes (spawned, one torch thread each) or in this process.

A run whose folder already holds metrics.json is not run again (reruns resume where they stopped); a
run that fails is recorded with its error (the pipeline also writes run_state.json) and the rest go on.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mole_exp.files import METRICS_FILE

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    key: str
    run_dir: str
    status: str  # completed | reused | failed | blocked
    seconds: float
    error: str | None = None


def execute(key: str, overrides: list[str], run_dir: str, conf_dir: str) -> Outcome:
    """One run, start to metrics.json; a finished run of the same config is reused, of another config refused."""
    from mole_exp.files import read_json
    from mole_exp.training.compose import compose_run_config
    from mole_exp.training.config import config_hash
    from mole_exp.training.pipeline import run
    from mole_exp.training.resume import matches_config

    started = time.perf_counter()
    cfg = compose_run_config(overrides, Path(run_dir), conf_dir=conf_dir)
    if (Path(run_dir) / METRICS_FILE).exists():
        found = read_json(Path(run_dir) / METRICS_FILE).get("config_hash")
        if matches_config(Path(run_dir), found, config_hash(cfg)):
            return Outcome(key, run_dir, "reused", 0.0)
        return Outcome(key, run_dir, "failed", 0.0, f"{run_dir} holds a finished run of another config (hash {found}, now "
                       f"{config_hash(cfg)}); finished runs are never overwritten: delete it or choose another --out")
    try:
        run(cfg)
    except Exception as error:  # recorded; the other runs go on
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        log.error("run %s failed: %s", key, detail)
        return Outcome(key, run_dir, "failed", round(time.perf_counter() - started, 2), detail)
    return Outcome(key, run_dir, "completed", round(time.perf_counter() - started, 2))


def _worker_setup(threads: int, level: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "pytorch_lightning", "mole_exp.training.pipeline", "mole_exp.evaluation.evaluator"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


TRAINED = ("mole", "mixer", "fresh_lora", "xlora")  # minutes each at full size
SEARCHED = ("lorahub", "pems")  # seconds


def longest_first(specs: list[Any]) -> list[Any]:
    """Runs that train first, then searches, then the rest (stable): the worker pool's last minutes are not
    spent waiting on one long run started late."""
    return sorted(specs, key=lambda s: 0 if s.composer in TRAINED and "mode=eval" not in s.overrides else 1 if s.composer in SEARCHED else 2)


def run_all(specs: list[Any], conf_dir: Path, jobs: int = 1, threads_per_job: int = 1) -> list[Outcome]:
    """Run specs (RunSpec) in order of dependency: those that need another run's checkpoint go last, and
    are blocked (not run) when that run did not complete. Within a wave, runs that train go first."""
    first = longest_first([s for s in specs if s.needs is None])
    later = longest_first([s for s in specs if s.needs is not None])
    outcomes = _run_wave(first, conf_dir, jobs, threads_per_job)
    done = {o.run_dir for o in outcomes if o.status in ("completed", "reused")}
    runnable = [s for s in later if str(s.needs) in done or (Path(s.needs) / METRICS_FILE).exists()]
    blocked = [Outcome(s.key, str(s.run_dir), "blocked", 0.0, f"needs {s.needs}, which did not complete") for s in later if s not in runnable]
    return outcomes + _run_wave(runnable, conf_dir, jobs, threads_per_job) + blocked


def _run_wave(specs: list[Any], conf_dir: Path, jobs: int, threads_per_job: int) -> list[Outcome]:
    arguments = [(s.key, list(s.overrides), str(s.run_dir), str(conf_dir)) for s in specs]
    if jobs <= 1 or len(arguments) <= 1:
        return [_logged(execute(*a), i, len(arguments)) for i, a in enumerate(arguments)]
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    level = logging.getLogger().getEffectiveLevel()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_setup, initargs=(threads_per_job, level)) as pool:
        futures = [pool.submit(execute, *a) for a in arguments]
        return [_logged(f.result(), i, len(futures)) for i, f in enumerate(futures)]


def _logged(outcome: Outcome, index: int, total: int) -> Outcome:
    log.info("[%d/%d] %s: %s (%.1fs)%s", index + 1, total, outcome.key, outcome.status, outcome.seconds,
             f" {outcome.error}" if outcome.error else "")
    return outcome
