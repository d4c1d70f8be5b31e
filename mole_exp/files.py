"""Results files and cached folders: written atomically (temp file or folder + rename), never over a finished run."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
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


def current_umask() -> int:
    """The process's umask (read without changing it where /proc allows; else set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_beside(path: Path, text: str) -> str:
    """`text` in a temporary file in `path`'s folder, with the mode a plain `open` would give it (0666 less the
    umask: 0644 by default), not mkstemp's private 0600. The caller renames or links it, then removes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temp, 0o666 & ~current_umask())
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return temp


def write_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    temp = _temp_beside(path, text)
    try:
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def write_new(path: str | Path, text: str, exists_hint: str = "") -> Path:
    """Write `text` to a temporary file beside `path`, then hard-link it as `path`: atomic, and refused when
    `path` exists (an earlier result is never replaced)."""
    path = Path(path)
    temp = _temp_beside(path, text)
    try:
        os.link(temp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} already exists and is never overwritten{exists_hint}") from None
    finally:
        Path(temp).unlink(missing_ok=True)
    return path


def staging_dir(parent: str | Path, prefix: str) -> Path:
    """A fresh folder in `parent` to build something in before renaming it into place; with the mode a plain
    `mkdir` gives (0777 less the umask), not mkdtemp's private 0700, since the rename makes it the result."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(folder, 0o777 & ~current_umask())
    return folder


def build_folder(folder: str | Path, build: Callable[[Path], None], *, finished: Callable[[Path], bool], what: str = "folder") -> Path:
    """`folder`, built once and atomically: `build(staging)` fills a fresh folder beside it (`.<name>.partial-*`),
    which is then renamed to `folder`. `finished(folder)` says whether a finished one is there already (it may
    raise, e.g. for a folder holding something else). Builders of the same folder take turns on a `filelock`
    lock beside it (`.<name>.lock`): the second waits and finds the first's result instead of building again.
    A build that raises or is killed leaves nothing under the final name; its staging folder is removed at
    once, or (killed) by the next builder, which holds the lock and so knows no one else is using it."""
    from filelock import FileLock

    folder = Path(folder)
    if finished(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{folder.name}.partial-"
    with FileLock(str(folder.parent / f".{folder.name}.lock")):
        if finished(folder):  # built meanwhile by another process
            return folder
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):  # refused before the (long) build
            raise FileExistsError(f"{folder} exists and holds no finished {what}; it is never overwritten: delete it or choose another folder")
        for stale in [p for p in folder.parent.iterdir() if p.name.startswith(prefix)]:
            shutil.rmtree(stale, ignore_errors=True)
        staging = staging_dir(folder.parent, prefix)
        try:
            build(staging)
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()  # an empty folder (e.g. made by hand) holds nothing to keep
            try:
                os.rename(staging, folder)
            except OSError as error:
                raise FileExistsError(
                    f"{folder} exists and holds no finished {what}; it is never overwritten: delete it or choose another folder"
                ) from error
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return folder


def write_json(path: str | Path, data: Any) -> Path:
    return write_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    return write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
