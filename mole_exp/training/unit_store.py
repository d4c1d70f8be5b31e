"""Finished fit units on disk, so that a resumed run never redoes them.

A run with several fit units (mole_exp/training/fit_units.py) writes, as each unit finishes, its predictions and
then its record (`units/<id>.json`: the unit, its composer summary, search/train logs, checkpoint and
results) atomically; the record's presence marks the unit done. `resume=true` reloads the done units
and runs the rest: the unit that was in progress resumes from `checkpoints/<id>/last.ckpt` when it
trained that far, else restarts cleanly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mole_exp.files import read_json, write_json, write_jsonl

UNITS_DIR = "units"
RESUME_CHECKPOINT = "last.ckpt"


def record_path(run_dir: Path, unit_id: str) -> Path:
    return Path(run_dir) / UNITS_DIR / f"{unit_id}.json"


def predictions_path(run_dir: Path, unit_id: str) -> Path:
    return Path(run_dir) / UNITS_DIR / f"{unit_id}.predictions.jsonl"


def save_unit(run_dir: Path, unit_id: str, record: dict[str, Any], predictions: list[dict[str, Any]]) -> None:
    write_jsonl(predictions_path(run_dir, unit_id), predictions)
    write_json(record_path(run_dir, unit_id), record)  # last: its presence marks the unit done


def load_unit(run_dir: Path, unit_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """(record, predictions) of a finished unit, or None when it did not finish."""
    path = record_path(run_dir, unit_id)
    if not path.exists():
        return None
    lines = predictions_path(run_dir, unit_id).read_text(encoding="utf-8").splitlines()
    return read_json(path), [json.loads(line) for line in lines if line.strip()]


def has_progress(run_dir: Path) -> bool:
    """Something to resume from: a training checkpoint (the run's or a unit's) or a finished unit."""
    run_dir = Path(run_dir)
    checkpoints = run_dir / "checkpoints"
    return (
        (checkpoints / RESUME_CHECKPOINT).exists()
        or any(checkpoints.glob(f"*/{RESUME_CHECKPOINT}"))
        or any((run_dir / UNITS_DIR).glob("*.json"))
    )


def progress_time(run_dir: Path) -> float:
    """When the run last made progress (the newest checkpoint or unit record), for picking the newest run."""
    run_dir = Path(run_dir)
    paths = [
        *run_dir.glob(f"checkpoints/{RESUME_CHECKPOINT}"), *run_dir.glob(f"checkpoints/*/{RESUME_CHECKPOINT}"),
        *(run_dir / UNITS_DIR).glob("*.json"),
    ]
    return max((p.stat().st_mtime for p in paths), default=0.0)
