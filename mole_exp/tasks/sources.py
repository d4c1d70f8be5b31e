"""Raw rows from a loader's two sources: local files of the shared data copy, and the Hugging Face Hub.

Local jsonl/csv files go through `datasets.load_dataset("json"/"csv", data_files=...)`; XML, SGML and
plain-text formats are parsed by the loaders themselves. Every Hub access goes through
`mole_exp.base.hub.from_hub`, so an offline machine gets one clear error naming the Hub id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def file_rows(kind: str, path: str | Path, **kwargs: Any) -> list[dict[str, Any]]:
    """The rows of one local jsonl ("json") or csv ("csv") file, read by `datasets`."""
    import datasets

    datasets.disable_progress_bars()
    return list(datasets.load_dataset(kind, data_files=str(path), split="train", **kwargs))


def text_lines(path: str | Path) -> list[str]:
    """The lines of a plain-text file (one example per line), without their line ends ("\\n" or "\\r\\n" only:
    `str.splitlines` would also split at characters such as U+0085 that occur inside some lines)."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    lines = [line.removesuffix("\r") for line in lines]
    return lines[:-1] if lines and lines[-1] == "" else lines


def hub_rows(hub_id: str, config: str | None, split: str, limit: int | None = None) -> list[dict[str, Any]]:
    """A split of a Hub dataset; with `limit`, only its first `limit` rows, streamed (for corpora of millions of rows)."""
    import datasets

    from mole_exp.base.hub import from_hub

    def load() -> list[dict[str, Any]]:
        datasets.disable_progress_bars()
        if limit is None:
            return list(datasets.load_dataset(hub_id, config, split=split))
        return list(datasets.load_dataset(hub_id, config, split=split, streaming=True).take(limit))

    return from_hub("dataset", hub_id, load)
