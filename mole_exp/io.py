"""Results files: written atomically (temp file + rename), never over a finished run."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"


class RunExistsError(FileExistsError):
    """The run folder already holds a finished run's results."""


def guard_run_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if (run_dir / METRICS_FILE).exists():
        raise RunExistsError(
            f"{run_dir / METRICS_FILE} already exists: this folder holds a finished run, which is never overwritten; "
            f"choose another hydra.run.dir (or delete that folder yourself)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def write_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data: Any) -> Path:
    return write_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    return write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
