"""A run folder has one writer, and a finished one is never written to.

- `accept_run_folder(folder)`: refuses a folder holding a finished run (metrics.json), then takes the
  folder's lock (`RunLock`), then opens the run's log file there and writes Hydra's record of the command
  (`.hydra/`). Hydra itself writes nothing into the folder (conf/hydra/default.yaml sets
  `hydra.output_subdir: null` and a log file that opens only on acceptance), so a refused run leaves the
  folder byte for byte as it was.
- `RunLock`: a `filelock` lock on `<folder>/.lock` with a holder record `<folder>/.lock.json` (pid, host,
  start time, command). A second process gets `RunLockedError` naming the holder. The operating system
  releases the lock of a killed process (even `kill -9`); the holder record it leaves behind is reported
  as stale and replaced. Where the file system gives only a soft lock (a lock file), a lock file whose
  holder is a dead process on this host is removed and taken over.
- `end_state(error)`: how a run that stopped early is recorded in run_state.json: `interrupted` (Ctrl-C,
  SIGINT, also when Lightning turns it into `SystemExit`) or `failed`.
- `RunFolderCallback`: a Hydra callback that removes the folders Hydra made for jobs that never accepted
  them (dry runs, refused runs, a resume that continued another folder), so they leave nothing behind.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

from mole_exp.files import guard_run_dir, write_atomic, write_json

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
HOLDER_FILE = ".lock.json"
HYDRA_RECORD_DIR = ".hydra"  # where Hydra would have written its record (its default output_subdir)
INTERRUPTED, FAILED = "interrupted", "failed"


def folder_name(text: str, limit: int = 120) -> str:
    """A safe folder name from a Hydra override string: '/' and other path-unsafe characters become '-'
    (a sweep member's folder, an evaluation's folder under evals/)."""
    safe = re.sub(r"[^A-Za-z0-9=,._+\-\[\]]", "-", str(text))
    return safe[:limit] if safe else "run"


class RunLockedError(RuntimeError):
    """Another process holds the run folder."""


def describe_holder(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, since {since} ({holder.get('command', '?')})"


def read_holder(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / HOLDER_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_distributed_worker() -> bool:
    """A rank > 0 of a distributed run: the rank-0 process holds the folder for all of them."""
    return any(int(os.environ.get(name, "0") or 0) > 0 for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


class RunLock:
    """One writer per run folder (see the module docstring)."""

    def __init__(self, folder: str | Path):
        from filelock import FileLock

        self.folder = Path(folder)
        self.lock = FileLock(str(self.folder / LOCK_FILE))
        self.took_over: dict[str, Any] | None = None

    def acquire(self) -> RunLock:
        from filelock import Timeout

        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            holder = read_holder(self.folder)
            if not self._stale_soft_lock(holder):
                who = describe_holder(holder) if holder else "a process that left no holder record"
                raise RunLockedError(
                    f"run folder {self.folder} is in use by {who}; one process writes a run folder at a time. Wait "
                    f"for it to finish or stop it (if that process is gone and the lock stays, delete {self.folder / LOCK_FILE})"
                ) from None
            self.lock.acquire(timeout=0)
        previous = read_holder(self.folder)
        if previous and previous.get("pid") != os.getpid():
            self.took_over = previous
            log.warning("run folder %s: the process that held it is gone (%s); taking it over", self.folder, describe_holder(previous))
        write_json(self.folder / HOLDER_FILE, {
            "pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": " ".join(sys.argv),
        })
        return self

    def _stale_soft_lock(self, holder: dict[str, Any] | None) -> bool:
        """A soft lock file left by a dead process of this host: remove it (a kernel lock needs no such care)."""
        if not holder or holder.get("host") != socket.gethostname() or process_alive(int(holder.get("pid", -1))):
            return False
        if type(self.lock).__name__ not in ("SoftFileLock", "StrictSoftFileLock", "MarkerSoftFileLock"):
            return False
        log.warning("run folder %s: removing the lock file of a dead process (%s)", self.folder, describe_holder(holder))
        (self.folder / LOCK_FILE).unlink(missing_ok=True)
        return True

    def release(self) -> None:
        if self.lock.is_locked:
            holder = read_holder(self.folder)
            if holder and holder.get("pid") == os.getpid():
                (self.folder / HOLDER_FILE).unlink(missing_ok=True)
            self.lock.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *_: object) -> None:
        self.release()


def write_hydra_record(folder: Path, task_cfg: Any) -> Path | None:
    """Hydra's record of the command (`.hydra/config.yaml`, `hydra.yaml`, `overrides.yaml`), written once the
    folder is accepted; nothing outside a Hydra run, or where Hydra already wrote it (hydra.output_subdir set)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.instance().cfg
    if hydra_cfg is None or OmegaConf.select(hydra_cfg, "hydra.output_subdir") is not None:
        return None
    record = folder / HYDRA_RECORD_DIR
    write_atomic(record / "config.yaml", OmegaConf.to_yaml(task_cfg))
    write_atomic(record / "hydra.yaml", OmegaConf.to_yaml(hydra_cfg))
    overrides = OmegaConf.select(hydra_cfg, "hydra.overrides.task")
    write_atomic(record / "overrides.yaml", OmegaConf.to_yaml(overrides if overrides is not None else []))
    return record


def accept_run_folder(folder: str | Path, task_cfg: Any = None, record: bool = True) -> tuple[Path, RunLock | None]:
    """Refuse a finished folder, lock it, then let the log file and Hydra's record in. Returns (folder, lock);
    the lock is None in a distributed worker (its rank-0 process holds it)."""
    from mole_exp.training.logs import open_run_logs

    folder = guard_run_dir(folder)
    lock = None if is_distributed_worker() else RunLock(folder).acquire()
    try:
        guard_run_dir(folder)  # it may have finished while we waited for the lock
        open_run_logs(folder)
        if record and task_cfg is not None and lock is not None:
            write_hydra_record(folder, task_cfg)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return folder, lock


def end_state(error: BaseException) -> tuple[str, str]:
    """(status, text) for run_state.json when a run stops with `error`: interrupted or failed."""
    interrupted = isinstance(error, KeyboardInterrupt) or (
        isinstance(error, SystemExit) and isinstance(error.__context__, KeyboardInterrupt)  # Lightning's Ctrl-C exit
    )
    if interrupted:
        return INTERRUPTED, "interrupted by the user (KeyboardInterrupt / SIGINT); rerun with resume=true to continue"
    return FAILED, f"{type(error).__name__}: {error}"


# ---- Hydra callback: folders Hydra made for jobs that never used them ------------------------------------


def first_missing_ancestor(path: Path) -> Path | None:
    """The outermost folder of `path` (itself included) that does not exist yet, or None if it exists."""
    path = Path(os.path.abspath(path))
    if path.exists():
        return None
    missing = path
    while not missing.parent.exists():
        missing = missing.parent
    return missing


def remove_empty_chain(path: Path, stop: Path | None) -> None:
    """rmdir `path` and its parents up to `stop` (included) while they are empty."""
    if stop is None:
        return
    path, stop = Path(os.path.abspath(path)), Path(os.path.abspath(stop))
    while True:
        try:
            path.rmdir()
        except OSError:  # not empty (or gone): keep it and everything above
            return
        if path == stop or stop not in path.parents:
            return
        path = path.parent


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra is a dependency
    _HydraCallback = object


class RunFolderCallback(_HydraCallback):
    """Removes the folders Hydra created for a job that left them empty (see the module docstring)."""

    def __init__(self) -> None:
        self.created: dict[str, Path | None] = {}

    def on_run_start(self, config: Any, **_: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)  # as run_job does next: the run dir may read ${hydra:...}
        self.created["run"] = first_missing_ancestor(Path(str(config.hydra.run.dir)))

    def on_multirun_start(self, config: Any, **_: Any) -> None:
        self.created["sweep"] = first_missing_ancestor(Path(str(config.hydra.sweep.dir)))

    def on_job_start(self, config: Any, **_: Any) -> None:
        folder = Path(str(config.hydra.runtime.output_dir))
        self.created["job"] = folder if folder.is_dir() and not any(folder.iterdir()) else None

    def on_job_end(self, config: Any, **_: Any) -> None:
        folder = Path(str(config.hydra.runtime.output_dir))
        if self.created.get("job") is not None:
            remove_empty_chain(folder, self.created.get("run") or folder)

    def on_multirun_end(self, config: Any, **_: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        if self.created.get("sweep") is None or not sweep.is_dir():
            return
        left = [p for p in sweep.iterdir() if p.name != "multirun.yaml"]
        if not left:  # every member left its folder empty: the sweep wrote nothing but Hydra's own file
            (sweep / "multirun.yaml").unlink(missing_ok=True)
            remove_empty_chain(sweep, self.created["sweep"])
