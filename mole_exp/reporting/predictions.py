"""A run's predictions.jsonl, read per dataset, and two runs' examples matched one to one.

Each line of predictions.jsonl (mole_exp.training.pipeline) is {dataset, input, prediction, references, metric}.
Two runs are compared on the same examples: an example is identified by its dataset and input (the n-th
occurrence of a repeated input is matched to the n-th), and runs that evaluated different examples, or the
same inputs with other references, are refused with an error that says where they differ.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mole_exp.files import PREDICTIONS_FILE

SHOWN = 3  # examples quoted in an error


@dataclass(frozen=True)
class Example:
    input: str
    prediction: str
    references: tuple[str, ...]


@dataclass(frozen=True)
class DatasetPredictions:
    dataset: str
    metric: str
    examples: tuple[Example, ...]

    @property
    def predictions(self) -> list[str]:
        return [e.prediction for e in self.examples]

    @property
    def references(self) -> list[list[str]]:
        return [list(e.references) for e in self.examples]


def predictions_path(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    return path if path.name == PREDICTIONS_FILE else path / PREDICTIONS_FILE


def read_predictions(run_dir: str | Path) -> dict[str, DatasetPredictions]:
    """dataset -> its predictions, in the order the run wrote them."""
    path = predictions_path(run_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: intervals need each run's {PREDICTIONS_FILE} (written by every finished run)")
    rows: dict[str, list[Example]] = {}
    metrics: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            dataset, metric = str(row["dataset"]), str(row["metric"])
            example = Example(str(row["input"]), str(row["prediction"]), tuple(str(r) for r in row["references"]))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: not a prediction row with dataset, input, prediction, references, metric ({error})") from error
        if metrics.setdefault(dataset, metric) != metric:
            raise ValueError(f"{path}:{number}: dataset {dataset} is scored with {metrics[dataset]!r} and {metric!r}")
        rows.setdefault(dataset, []).append(example)
    return {d: DatasetPredictions(d, metrics[d], tuple(examples)) for d, examples in rows.items()}


def _keys(examples: tuple[Example, ...]) -> list[tuple[str, int]]:
    """(input, occurrence) per example: a repeated input is told apart by its rank."""
    seen: Counter = Counter()
    keys = []
    for example in examples:
        keys.append((example.input, seen[example.input]))
        seen[example.input] += 1
    return keys


def _quote(keys) -> str:
    shown = [repr(text[:60] + ("..." if len(text) > 60 else "")) for text, _ in list(keys)[:SHOWN]]
    return ", ".join(shown) + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")


def align(a: DatasetPredictions, b: DatasetPredictions, names: tuple[str, str] = ("A", "B")) -> tuple[DatasetPredictions, DatasetPredictions]:
    """The two runs' predictions of one dataset in one example order (a's); refuses different examples."""
    if a.metric != b.metric:
        raise ValueError(f"dataset {a.dataset}: {names[0]} is scored with {a.metric!r}, {names[1]} with {b.metric!r}")
    keys_a, keys_b = _keys(a.examples), _keys(b.examples)
    only_a, only_b = set(keys_a) - set(keys_b), set(keys_b) - set(keys_a)
    if only_a or only_b:
        raise ValueError(
            f"dataset {a.dataset}: the runs evaluated different examples ({names[0]}: {len(keys_a)}, {names[1]}: {len(keys_b)}; "
            f"{len(only_a)} only in {names[0]}" + (f" e.g. {_quote(sorted(only_a))}" if only_a else "")
            + f"; {len(only_b)} only in {names[1]}" + (f" e.g. {_quote(sorted(only_b))}" if only_b else "")
            + "); a paired comparison needs the same examples (same data.eval_limit, splits and seeds of the data)"
        )
    position = {key: i for i, key in enumerate(keys_b)}
    reordered = tuple(b.examples[position[key]] for key in keys_a)
    differing = [key for key, x, y in zip(keys_a, a.examples, reordered, strict=True) if x.references != y.references]
    if differing:
        raise ValueError(f"dataset {a.dataset}: {len(differing)} example(s) have other references in the two runs, e.g. {_quote(differing)}")
    return a, DatasetPredictions(b.dataset, b.metric, reordered)
