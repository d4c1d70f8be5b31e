"""Read finished and failed runs from their folders: metrics.json (what came out) and config.yaml (what ran);
name a run's variant (composer and ablation) and its setting (its config, seeds and places aside).

A run folder is any folder holding config.yaml or metrics.json (Hydra's own `.hydra/` copies are skipped, and
so are eval.py's `evals/` inside a run unless that folder is given itself).
A run completed when its metrics.json reads `"status": "completed"`; any other folder is a failed run: a
sweep member that died leaves config.yaml without metrics.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mole_exp.files import METRICS_FILE, read_json

CONFIG_FILE = "config.yaml"
SPLIT = "test"  # the split of the metric keys tables read (`test/<dataset>/<metric>`)
COMPLETED = "completed"


@dataclass(frozen=True)
class Run:
    path: Path
    config: dict[str, Any]  # config.yaml as written by the pipeline ({} when absent)
    metrics: dict[str, Any] | None  # metrics.json (None when absent or unreadable)
    problem: str | None  # why the run did not complete; None when it did

    @property
    def completed(self) -> bool:
        return self.problem is None

    def config_value(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def seed(self) -> int | None:
        return (self.metrics or {}).get("seed", self.config_value("seed"))

    @property
    def task(self) -> str | None:
        """The suite the run trained (or searched) on."""
        return (self.metrics or {}).get("task") or self.config_value("task.name")

    @property
    def eval_task(self) -> str | None:
        """The suite the run was evaluated on (its task unless eval_task was set)."""
        return (self.metrics or {}).get("eval_task") or self.config_value("eval_task.name") or self.task

    @property
    def composer(self) -> dict[str, Any]:
        """The composer's config (config.yaml), else its summary in metrics.json."""
        return self.config_value("composer") or (self.metrics or {}).get("composer") or {}

    @property
    def composer_name(self) -> str:
        return str(self.composer.get("name", "?"))

    @property
    def mask(self) -> list[Any]:
        return list(self.composer.get("mask") or [])

    @property
    def experts_count(self) -> int | None:
        """How many experts were composed: counted in metrics.json, else as configured."""
        count = ((self.metrics or {}).get("experts") or {}).get("count")
        return count if count is not None else self.config_value("experts.count")

    @property
    def layer_range(self) -> tuple[float, float] | None:
        value = self.config_value("experts.layer_range")
        return (float(value[0]), float(value[1])) if value else None

    @property
    def skipped(self) -> dict[str, str]:
        """dataset -> why it was not evaluated (e.g. not available offline)."""
        return dict((self.metrics or {}).get("skipped") or {})

    def value(self, key: str) -> float | None:
        value = ((self.metrics or {}).get("metrics") or {}).get(key)
        return None if value is None else float(value)

    def higher_is_better(self, key: str) -> bool | None:
        return ((self.metrics or {}).get("higher_is_better") or {}).get(key)

    def metric_keys(self) -> list[str]:
        return list((self.metrics or {}).get("metrics") or {})

    @property
    def evaluated(self) -> frozenset[str]:
        """The datasets the run evaluated (metrics.json `num_examples`)."""
        return frozenset((self.metrics or {}).get("num_examples") or {})


# ---- what a run was: its variant and its setting ---------------------------------------------------------

# config keys that say where, how verbosely or how resumably a run ran, not what it was
IGNORED_SETTINGS = (
    "paths", "hydra", "logger", "overrides", "checkpoint", "device", "export_dir", "gate_stats_every_n_steps",
    "resume", "callbacks", "checkpoint_every_n_steps", "trainer.default_root_dir", "generation.progress",
    "data.num_workers", "task.data_dir", "eval_task.data_dir", "gate_guard", "evaluates",
)


def fixed_temperature(run: Run) -> float | None:
    """The gate temperature when it was fixed (not learnable), else None."""
    temperature = (run.composer.get("gate") or {}).get("temperature") or {}
    return float(temperature.get("init", 1.0)) if temperature.get("learnable") is False else None


def without_balance(run: Run) -> bool:
    """A gate composer trained with alpha = 0: no L_balance."""
    alpha = run.composer.get("alpha")
    return "gate" in run.composer and alpha is not None and float(alpha) == 0.0


def variant_label(run: Run) -> str:
    """The composer's name, with what sets this run apart: α=0, a fixed τ, a mask, a layer range."""
    qualifiers = []
    if without_balance(run):
        qualifiers.append("α=0")
    if fixed_temperature(run) is not None:
        qualifiers.append(f"τ={fixed_temperature(run):g} fixed")
    if run.mask:
        qualifiers.append("mask " + ",".join(map(str, run.mask)))
    if run.layer_range:
        qualifiers.append("layers {:g}-{:g}".format(*run.layer_range))
    return f"{run.composer_name} ({', '.join(qualifiers)})" if qualifiers else run.composer_name


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(tree, dict):
        flat: dict[str, str] = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tree if isinstance(tree, str) else json.dumps(tree)}


def setting(run: Run, ignore: tuple[str, ...] = ()) -> dict[str, str]:
    """The run's config, flattened, without its seed and places (keys that follow the seed stay: see seed_keys)."""
    ignored = IGNORED_SETTINGS + ignore + ("seed",)
    return {k: v for k, v in flatten(run.config).items() if not any(k == i or k.startswith(i + ".") for i in ignored)}


def seed_keys(runs: list[Run], settings: list[dict[str, str]]) -> set[str]:
    """Keys that hold each run's own seed (task.seed, experts.seed: `${seed}`): they differ by seed alone."""
    keys = {k for s in settings for k in s if k.endswith(".seed")}
    return {k for k in keys if all(s.get(k) == json.dumps(r.seed) for r, s in zip(runs, settings, strict=True))}


def differing_keys(runs: list[Run]) -> set[str]:
    """The config keys, seeds aside, whose values differ among the runs."""
    settings = [setting(r) for r in runs]
    keys = {k for k in set().union(*settings) if len({s.get(k) for s in settings}) > 1}
    return keys - seed_keys(runs, settings)


def split_metric_key(key: str) -> tuple[str, str, str] | None:
    """`split/dataset/metric` -> (split, dataset, metric); the dataset may itself hold a '/'."""
    if key.count("/") < 2:
        return None
    split, rest = key.split("/", 1)
    dataset, metric = rest.rsplit("/", 1)
    return split, dataset, metric


def read_run(run_dir: Path) -> Run:
    config: dict[str, Any] = {}
    config_path = run_dir / CONFIG_FILE
    if config_path.exists():
        try:
            config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            return Run(run_dir, {}, None, f"config.yaml is unreadable: {error}")
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.exists():
        state_path = run_dir / "run_state.json"  # the pipeline records a failure's error there
        try:
            state = read_json(state_path) if state_path.exists() else {}
        except (json.JSONDecodeError, OSError):
            state = {}
        if state.get("status") in ("failed", "interrupted"):  # mole_exp.training.run_folder.end_state
            return Run(run_dir, config, None, f"{state['status']}: {state.get('error', 'unknown error')}")
        return Run(run_dir, config, None, "no metrics.json (the run did not finish)")
    try:
        metrics = read_json(metrics_path)
    except (json.JSONDecodeError, OSError) as error:
        return Run(run_dir, config, None, f"metrics.json is unreadable: {error}")
    if metrics.get("status") != COMPLETED:
        return Run(run_dir, config, metrics, f"metrics.json has status={metrics.get('status')!r}")
    return Run(run_dir, config, metrics, None)


EVALS_DIR = "evals"  # eval.py's results inside a run folder: tables read them only when given that folder itself


def find_run_dirs(folder: Path) -> list[Path]:
    found = set()
    for name in (METRICS_FILE, CONFIG_FILE):
        for path in folder.rglob(name):
            parts = path.relative_to(folder).parts[:-1]
            if not any(part.startswith(".") or part == EVALS_DIR for part in parts):
                found.add(path.parent)
    return sorted(found)


def collect_runs(folders: list[str | Path]) -> list[Run]:
    """Every run under the folders (recursively), each once, in path order."""
    run_dirs: dict[Path, Path] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder (give run or sweep folders holding metrics.json files)")
        for run_dir in find_run_dirs(folder):
            run_dirs.setdefault(run_dir.resolve(), run_dir)
    return [read_run(run_dirs[key]) for key in sorted(run_dirs)]
