"""Tasks: a suite of datasets, each = loading (Hub or local files) + a FLAN prompt + a metric + generation settings.

A suite is defined in `conf/task/<suite>.yaml`; code exists only for loading raw rows (one registered
loader per dataset family, under `mole_exp/tasks/`) and for scoring (`mole_exp/evaluation/metrics.py`).

Every loader returns, per split, rows holding the template's `{field}` slots plus `answers` (the list of
gold references) and, for classification, `options` and `answer` (the gold option). The same rows come
out whether the source is the Hub (`datasets.load_dataset(<hub id>)`) or the local copy.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mole_exp.evaluation.metrics import normalization_for
from mole_exp.tasks.templates import fill_template

log = logging.getLogger(__name__)

SOURCES = ("auto", "local", "hub")
MIXTURES = ("proportional", "capped")
EVAL_SUBSETS = ("random", "first")  # how `eval_limit` picks a dataset's evaluation examples

# loader(name, source, data_dir, seed, **args) -> LoadedSplits
LOADERS: dict[str, Callable[..., LoadedSplits]] = {}


def register_loader(name: str):
    def register(fn):
        if name in LOADERS:
            raise ValueError(f"loader {name!r} registered twice")
        LOADERS[name] = fn
        return fn

    return register


@dataclass
class LoadedSplits:
    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    note: str = ""  # how the splits were made (e.g. carved from dev), recorded in metrics.json


class DataUnavailableError(RuntimeError):
    """A dataset cannot be had here (e.g. Hub-only and offline); recorded as skipped, never as 0."""


@dataclass
class DatasetSpec:
    name: str
    loader: str
    metric: str
    template: str | None = None  # FLAN template key; None: the rows carry `source` already
    template_index: int = 0
    max_new_tokens: int = 16
    args: dict[str, Any] = field(default_factory=dict)
    normalization: str | None = None  # exact-match metrics: the normalisation (None: the suite's em_normalization)


def local_file(data_dir: str | Path, relative: str, hub_id: str) -> Path:
    """A file of the local data copy, or an error naming the path and the Hub alternative."""
    path = Path(data_dir) / relative
    if not path.exists():
        raise FileNotFoundError(
            f"local data file {path} does not exist; set data.data_dir to the folder holding the shared data, "
            f"or use the Hub copy with task.source=hub (dataset {hub_id!r})"
        )
    return path


def eval_subset(rows: list[dict[str, Any]], limit: int | None, how: str, split_seed: int, dataset: str) -> list[dict[str, Any]]:
    """At most `limit` of a dataset's evaluation rows: a random subset seeded by (split_seed, dataset), kept in
    the rows' order (`random`), or the first `limit` (`first`). The same whatever the run's seed."""
    if how not in EVAL_SUBSETS:
        raise ValueError(f"data.eval_subset={how!r} is not one of {list(EVAL_SUBSETS)}")
    if not limit or limit >= len(rows):
        return list(rows)
    if how == "first":
        return list(rows[:limit])
    chosen = sorted(random.Random(f"{split_seed}:{dataset}").sample(range(len(rows)), limit))
    return [rows[i] for i in chosen]


def carve(rows: list[dict[str, Any]], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded, disjoint (train, eval) split of rows that only exist as one split locally."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(len(rows) * eval_fraction)))
    eval_idx, train_idx = sorted(order[:n_eval]), sorted(order[n_eval:])
    return [rows[i] for i in train_idx], [rows[i] for i in eval_idx]


class Task:
    """A suite: train mixture over its datasets, evaluation per dataset."""

    def __init__(
        self,
        name: str,
        datasets: dict[str, dict[str, Any]],
        source: str = "local",
        data_dir: str | None = None,
        template_version: str = "v1",
        options_style: str = "flan",
        seed: int = 0,
        only: list[str] | None = None,
        args: dict[str, Any] | None = None,
        split_seed: int = 0,
        eval_subset: str = "random",
        em_normalization: str | None = None,
    ):
        """`seed` (the run's) orders the training mixture; `split_seed` alone carves local train/eval splits and
        picks `eval_limit` subsets (`eval_subset`), so the evaluated examples do not move with the run's seed.
        `em_normalization`: the exact-match normalisation of the suite's EM metrics (None: each metric's own)."""
        if source not in SOURCES:
            raise ValueError(f"task.source={source!r} is not one of {list(SOURCES)}")
        if eval_subset not in EVAL_SUBSETS:
            raise ValueError(f"data.eval_subset={eval_subset!r} is not one of {list(EVAL_SUBSETS)}")
        if isinstance(split_seed, bool) or not isinstance(split_seed, int):
            raise ValueError(f"data.split_seed={split_seed!r} must be an integer")
        if source == "auto":  # the local copy when it is there, else the Hub
            source = "local" if data_dir and Path(data_dir).is_dir() else "hub"
        self.name, self.source, self.data_dir, self.seed = name, source, data_dir, int(seed)
        self.split_seed, self.eval_subset = int(split_seed), eval_subset
        self.template_version, self.options_style = template_version, options_style
        self.args = dict(args or {})  # loader args shared by every dataset of the suite; a dataset's own args win
        self.specs = {key: DatasetSpec(name=key, **dict(spec)) for key, spec in datasets.items()}
        for spec in self.specs.values():
            if spec.loader not in LOADERS:
                raise ValueError(f"task {name}: dataset {spec.name} names loader {spec.loader!r}; known loaders: {sorted(LOADERS)}")
        if only is not None and len(only) == 0:
            raise ValueError(f"task.only=[] selects no dataset of suite {name!r}; name some of {list(self.specs)}, or null for all")
        if only:
            unknown = [d for d in only if d not in self.specs]
            if unknown:
                raise ValueError(f"task.only={unknown}: not datasets of suite {name!r}; available: {list(self.specs)}")
            self.specs = {k: v for k, v in self.specs.items() if k in only}
        for spec in self.specs.values():  # exact-match metrics: the normalisation, checked before anything loads
            spec.normalization = normalization_for(spec.metric, spec.normalization or em_normalization,
                                                   f"task.datasets.{spec.name}.normalization" if spec.normalization else "task.em_normalization")
        self.train: dict[str, list[dict[str, Any]]] = {}
        self.test: dict[str, list[dict[str, Any]]] = {}
        self.notes: dict[str, str] = {}
        self.skipped: dict[str, str] = {}

    @property
    def dataset_names(self) -> list[str]:
        return list(self.specs)

    def load(self, need_train: bool = True, train_limit: int | None = None, eval_limit: int | None = None) -> Task:
        for key, spec in self.specs.items():
            try:
                splits = LOADERS[spec.loader](
                    name=key, source=self.source, data_dir=self.data_dir, seed=self.split_seed, **{**self.args, **dict(spec.args)}
                )
            except DataUnavailableError as error:
                log.warning("dataset %s skipped: %s", key, error)
                self.skipped[key] = str(error)
                continue
            if not splits.test:
                raise ValueError(f"dataset {key}: the evaluation split is empty")
            if need_train and not splits.train:
                raise ValueError(f"dataset {key}: the training split is empty")
            train = splits.train[:train_limit] if train_limit else splits.train
            test = eval_subset(splits.test, eval_limit, self.eval_subset, self.split_seed, key)
            self.train[key] = [self.render(spec, row) for row in train]
            self.test[key] = [self.render(spec, row) for row in test]
            self.notes[key] = splits.note
        if not self.test:
            raise ValueError(f"task {self.name}: no dataset could be loaded ({self.skipped})")
        return self

    def render(self, spec: DatasetSpec, row: dict[str, Any]) -> dict[str, Any]:
        if spec.template is None:
            source, target = row["source"], row["target"]
        else:
            source, target = fill_template(spec.template, spec.template_index, row, self.template_version, self.options_style)
            if row.get("answers") and target not in row["answers"]:
                raise ValueError(
                    f"dataset {spec.name}: FLAN template {spec.template}[{spec.template_index}] targets {target[:80]!r}, which is "
                    f"not one of the row's gold answers {list(row['answers'])[:3]}: that template asks another question of "
                    f"the data (an inverted template, or the reverse translation direction); choose another template_index"
                )
        answers = row.get("answers") or [target]
        return {"dataset": spec.name, "source": source, "target": target, "references": list(answers),
                **({"options": list(row["options"])} if row.get("options") else {}),
                "row": row}  # the slots, for cutting an over-long input where the prompt says least (truncation.py)

    def train_mixture(self, strategy: str = "proportional", cap: int | None = None) -> list[dict[str, Any]]:
        """The FLAN-style training mixture: every dataset's examples (capped per dataset), shuffled."""
        if strategy not in MIXTURES:
            raise ValueError(f"data.mixture={strategy!r} is not one of {list(MIXTURES)}")
        mixture = []
        rng = random.Random(self.seed)
        for rows in self.train.values():
            rows = list(rows)
            if strategy == "capped" and cap is not None and len(rows) > cap:
                rows = rng.sample(rows, cap)
            mixture.extend(rows)
        if not mixture:
            raise ValueError(f"task {self.name}: the training mixture is empty")
        rng.shuffle(mixture)
        return mixture

    def eval_sets(self) -> dict[str, list[dict[str, Any]]]:
        return dict(self.test)
