"""Translation: WMT'14 En<->Fr (newstest2014) and WMT'16 En<->De, En<->Ro (newstest2016); FLAN templates
`wmt14_enfr` / `wmt16_translate`, slots `sent1 lang1 sent2 lang2`.

FLAN fills sent1/lang1 with English and sent2/lang2 with the other language, whatever the direction.
Here the rows are oriented by the dataset's direction instead: sent1/lang1 is the source side and
sent2/lang2 the target side, so the "translate {sent1} to {lang2}" templates (indices 0 and 4-7) ask
for the dataset's direction in both directions; the "{sent2} to {lang1}" ones (1-3) would ask for the
reverse and are refused at rendering (their target is not the reference); 8 and 9 are not translation
prompts (write a sentence / name the language).

Splits:
- WMT'14 local: only newstest2014 (3,003 segments, the same pairs in both directions) is here: a
  seeded, disjoint split carves train/eval out of it; with the same seed both directions get the same
  partition, so no evaluation pair of one direction is a training pair of the other.
- WMT'14 Hub (`wmt/wmt14`, fr-en): the first `hub_train_rows` training pairs (streamed) / test (newstest2014).
- WMT'16: Hub only (`wmt/wmt16`, de-en / ro-en): first `hub_train_rows` training pairs / test
  (newstest2016). Without the Hub (offline, or the local copy chosen) it raises DataUnavailableError,
  and the suite records it as skipped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mole_exp.tasks.base import DataUnavailableError, LoadedSplits, carve, local_file, register_loader
from mole_exp.tasks.sources import hub_rows

LANGUAGES = {"en": "English", "fr": "French", "de": "German", "ro": "Romanian"}
SEGMENT = re.compile(r"<seg[^>]*>(.*?)</seg>")


def translation_row(pair: dict[str, str], source_lang: str, target_lang: str) -> dict[str, Any]:
    """A FLAN translation row of a {language code: sentence} pair, oriented source -> target."""
    for lang in (source_lang, target_lang):
        if lang not in LANGUAGES:
            raise ValueError(f"language {lang!r} is not one of {sorted(LANGUAGES)}")
    return {
        "sent1": pair[source_lang].strip(),
        "lang1": LANGUAGES[source_lang],
        "sent2": pair[target_lang].strip(),
        "lang2": LANGUAGES[target_lang],
        "answers": [pair[target_lang].strip()],
    }


def sgm_segments(path: Path) -> list[str]:
    """The `<seg>` texts of a WMT SGML file, in order."""
    return [match.group(1) for match in SEGMENT.finditer(path.read_text(encoding="utf-8"))]


def _hub_pairs(hub_id: str, config: str, split: str, limit: int | None = None) -> list[dict[str, str]]:
    return [row["translation"] for row in hub_rows(hub_id, config, split, limit)]


@register_loader("wmt14")
def load_wmt14(
    name: str,
    source: str,
    data_dir: str | None,
    seed: int,
    source_lang: str = "en",
    target_lang: str = "fr",
    eval_fraction: float = 0.5,
    hub_id: str = "wmt/wmt14",
    hub_config: str = "fr-en",
    hub_train_rows: int = 30000,
) -> LoadedSplits:
    direction = f"{source_lang}->{target_lang}"
    if source == "hub":
        train = [translation_row(p, source_lang, target_lang) for p in _hub_pairs(hub_id, hub_config, "train", hub_train_rows)]
        test = [translation_row(p, source_lang, target_lang) for p in _hub_pairs(hub_id, hub_config, "test")]
        return LoadedSplits(train, test, f"hub {hub_id} ({hub_config}) {direction}: first {hub_train_rows} train pairs / test (newstest2014)")
    hub = f"{hub_id} ({hub_config})"
    sources = sgm_segments(local_file(data_dir, f"wmt14_fren/newstest2014-fren-src.{source_lang}.sgm", hub))
    references = sgm_segments(local_file(data_dir, f"wmt14_fren/newstest2014-fren-ref.{target_lang}.sgm", hub))
    if len(sources) != len(references):
        raise ValueError(f"newstest2014 {direction}: {len(sources)} source segments but {len(references)} references")
    rows = [translation_row({source_lang: s, target_lang: r}, source_lang, target_lang) for s, r in zip(sources, references, strict=True)]
    train, test = carve(rows, eval_fraction, seed)
    return LoadedSplits(
        train,
        test,
        f"local: WMT'14 has only newstest2014 here; seeded (seed={seed}) disjoint split of its {len(rows)} segments, "
        f"{len(train)} train / {len(test)} eval ({direction}; the same partition for both directions)",
    )


@register_loader("wmt16")
def load_wmt16(
    name: str,
    source: str,
    data_dir: str | None,
    seed: int,
    source_lang: str = "en",
    target_lang: str = "de",
    hub_id: str = "wmt/wmt16",
    hub_config: str = "de-en",
    hub_train_rows: int = 30000,
) -> LoadedSplits:
    from mole_exp.base.hub import HubUnavailableError

    direction = f"{source_lang}->{target_lang}"
    if source != "hub":
        raise DataUnavailableError(
            f"WMT'16 {direction} (newstest2016) has no local copy under {data_dir}: it exists only as the Hub dataset "
            f"{hub_id!r} (config {hub_config!r}); run with network access and task.source=hub to evaluate it"
        )
    try:
        train = [translation_row(p, source_lang, target_lang) for p in _hub_pairs(hub_id, hub_config, "train", hub_train_rows)]
        test = [translation_row(p, source_lang, target_lang) for p in _hub_pairs(hub_id, hub_config, "test")]
    except HubUnavailableError as error:
        raise DataUnavailableError(f"WMT'16 {direction}: the Hub dataset {hub_id!r} (config {hub_config!r}) is unavailable: {error}") from error
    return LoadedSplits(train, test, f"hub {hub_id} ({hub_config}) {direction}: first {hub_train_rows} train pairs / test (newstest2016)")


load_wmt16.hub_optional = True  # without the Hub it is recorded as skipped, not an error (mole_exp/training/hub_preflight.py)
