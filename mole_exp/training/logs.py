"""Console and log-file handling: the run's log file opens only once its folder is accepted, log lines and
progress bars do not collide, and third-party notices that say nothing about a run are silenced where they
are emitted (each by its exact message, never a whole category).

Hydra's job logging (conf/hydra/default.yaml) names the two handlers below:
- `RunLogFile` keeps records in memory until `open_run_logs(folder)` is called by the pipeline once the run
  folder is accepted (not finished, lock taken), then writes them, and everything after, to
  `<folder>/<job name>.log`. A refused run never opens a file in someone else's folder.
- `TqdmConsoleHandler` prints through `tqdm.write`, which lifts active progress bars above the line.
"""

from __future__ import annotations

import logging
import sys
import warnings
import weakref
from pathlib import Path

BUFFERED_RECORDS = 10_000  # records kept while no run folder is accepted yet (the oldest are dropped beyond)

_run_log_files: weakref.WeakSet[RunLogFile] = weakref.WeakSet()


class RunLogFile(logging.Handler):
    """A log file in the run folder that opens only when the folder is accepted (see `open_run_logs`)."""

    def __init__(self, filename: str, mode: str = "a", encoding: str = "utf-8", **_: object):
        super().__init__()
        self.file_name = Path(str(filename)).name
        self.mode, self.encoding = mode, encoding
        self.buffer: list[logging.LogRecord] = []
        self.target: logging.FileHandler | None = None
        _run_log_files.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        if self.target is not None:
            self.target.handle(record)
            return
        self.buffer.append(record)
        del self.buffer[:-BUFFERED_RECORDS]

    def open_in(self, folder: str | Path) -> Path:
        path = Path(folder) / self.file_name
        if self.target is not None and Path(self.target.baseFilename) == path.resolve():
            return path
        if self.target is not None:
            self.target.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.target = logging.FileHandler(path, mode=self.mode, encoding=self.encoding)
        self.target.setFormatter(self.formatter)
        self.target.setLevel(self.level)
        for record in self.buffer:
            self.target.handle(record)
        self.buffer.clear()
        return path

    def setFormatter(self, fmt: logging.Formatter | None) -> None:  # noqa: N802 (logging's name)
        super().setFormatter(fmt)
        if self.target is not None:
            self.target.setFormatter(fmt)

    def close(self) -> None:
        if self.target is not None:
            self.target.close()
        self.buffer.clear()
        _run_log_files.discard(self)
        super().close()


def open_run_logs(folder: str | Path) -> list[Path]:
    """The run folder is accepted: every waiting `RunLogFile` writes into it from now on."""
    return [handler.open_in(folder) for handler in list(_run_log_files)]


class TqdmConsoleHandler(logging.StreamHandler):
    """A console handler whose lines are printed above active tqdm progress bars instead of onto them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream or sys.stderr)
            self.flush()
        except Exception:  # as logging.StreamHandler does
            self.handleError(record)


# ---- third-party notices that say nothing about the run, silenced by their exact text --------------------

NOTICES = (
    # Lightning advertises its cloud logger on every Trainer construction
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip: For seamless cloud logging"),
    ("lightning.fabric.utilities.rank_zero", "💡 Tip: For seamless cloud logging"),
)
WARNINGS = (
    # Lightning 2.6's own pytree helper still builds torch's deprecated LeafSpec
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # PEFT reads transformers' renamed `is_gradient_checkpointing` attribute
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
)


class DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


OWN_HANDLER_LOGGERS = ("lightning.pytorch", "lightning.fabric")  # add a bare StreamHandler when imported before logging is set up


def route_to_root(names: tuple[str, ...] = OWN_HANDLER_LOGGERS) -> None:
    """Where the root logger is configured (Hydra's job logging), loggers that print through their own bare
    stream handler go through the root's handlers instead: above progress bars, and into the run's log file."""
    if not logging.getLogger().handlers:
        return
    for name in names:
        logger = logging.getLogger(name)
        bare = [h for h in logger.handlers if type(h) is logging.StreamHandler]
        for handler in bare:
            logger.removeHandler(handler)
        if bare:
            logger.propagate = True


def silence_third_party_notices() -> None:
    """Drop the notices above at the loggers and warnings that emit them, and route libraries' own console
    handlers through the root's (idempotent)."""
    route_to_root()
    for logger_name, prefix in NOTICES:
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, DropMessages) and prefix in f.prefixes for f in logger.filters):
            logger.addFilter(DropMessages((prefix,)))
    for message, category in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
