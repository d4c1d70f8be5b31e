"""lm-eval's results files beside a run's metrics.json, read as plain JSON (no lm_eval import).

scripts/lm_eval.py writes lm-eval's own results dict to `<run>/lm_eval/results_<time>.json`. Each file holds,
per task and group, `"<metric>,<filter>": value` and `"<metric>_stderr,<filter>": stderr` under `results`, the
tasks of each group under `group_subtasks`, the examples scored under `n-samples` (`effective`), the direction
under `higher_is_better`, and the run's `--limit` under `config.limit`. Values are lm-eval's, on its scale
(acc and exact_match are fractions of 1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS_DIR = "lm_eval"
RESULTS_GLOB = "results_*.json"
NO_FILTER = "none"
SKIPPED_KEYS = ("alias", "name", "sample_len", "samples")  # entries of a task's results that are not metric values


@dataclass(frozen=True)
class LmEvalValue:
    task: str  # lm-eval's task or group name
    metric: str  # e.g. exact_match, acc
    filter: str  # e.g. flexible-extract; "none" without a filter
    value: float
    stderr: float | None
    higher_is_better: bool | None
    samples: int | None  # examples scored (a group: the sum over its tasks)
    group: bool  # a group's aggregate
    top_level: bool  # a group, or a task in no group (what the markdown table shows)
    file: Path
    limit: float | None  # the evaluation's --limit

    @property
    def label(self) -> str:
        """The column name: `lm-eval <task> <metric>`, with the filter where there is one."""
        return f"lm-eval {self.task} {self.metric}" + (f" ({self.filter})" if self.filter != NO_FILTER else "")


def results_files(run_dir: str | Path) -> list[Path]:
    """A run's lm-eval results files, oldest first (their names carry the time)."""
    return sorted((Path(run_dir) / RESULTS_DIR).glob(RESULTS_GLOB))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_results_file(path: str | Path) -> list[LmEvalValue]:
    """Every metric value of one results file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        results = data["results"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not an lm-eval results file: {error}") from None
    subtasks = {group: list(tasks) for group, tasks in (data.get("group_subtasks") or {}).items()}
    inside_a_group = {task for tasks in subtasks.values() for task in tasks}
    samples = {task: (counts or {}).get("effective") for task, counts in (data.get("n-samples") or {}).items()}

    def scored(task: str) -> int | None:
        if task in samples:
            return samples[task]
        counts = [scored(sub) for sub in subtasks.get(task, [])]
        return sum(counts) if counts and None not in counts else None

    limit = _number((data.get("config") or {}).get("limit"))
    values = []
    for task, entries in results.items():
        directions = (data.get("higher_is_better") or {}).get(task) or {}
        for key, value in entries.items():
            metric, _, filter_name = key.partition(",")
            if key in SKIPPED_KEYS or metric.endswith("_stderr") or _number(value) is None:
                continue
            stderr = _number(entries.get(f"{metric}_stderr,{filter_name}"))
            values.append(LmEvalValue(
                task, metric, filter_name or NO_FILTER, float(value), stderr, directions.get(metric), scored(task),
                task in subtasks, task not in inside_a_group, path, limit,
            ))
    return values


def lm_eval_values(run_dir: str | Path) -> list[LmEvalValue]:
    """A run's lm-eval values: for each task, metric and filter the newest file's (earlier evaluations of the same
    task are superseded, never mixed)."""
    newest: dict[tuple[str, str, str], LmEvalValue] = {}
    for path in results_files(run_dir):
        for value in read_results_file(path):
            newest[(value.task, value.metric, value.filter)] = value
    return list(newest.values())
