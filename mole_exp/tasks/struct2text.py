"""Struct-to-text: CommonGen, DART, E2E NLG, WebNLG 3.0 (en); FLAN templates `common_gen`, `dart`, `e2e_nlg`,
`web_nlg_en`, FLAN's input formatting of each. Every reference of an input is a gold answer (ROUGE takes
the best); training rows are one per (input, reference) pair.

Splits (local copy / Hub):
- CommonGen: train / dev (the Hub's `validation`; the Hub's test has no references).
- DART v1.1.1: local has no train split: dev (full-dev.json) trains, test (full-test.xml) evaluates;
  Hub: train / test.
- E2E NLG: local has no train split: devset.csv trains, testset_w_refs.csv evaluates; Hub: train / test.
- WebNLG 3.0 en: train / test (the rdf-to-text test file with references) on both.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from mole_exp.tasks.base import LoadedSplits, local_file, register_loader
from mole_exp.tasks.references import evaluation_rows, group_references, training_rows
from mole_exp.tasks.sources import file_rows, hub_rows, text_lines

Entry = tuple[dict[str, Any], list[str]]  # (template fields, references)
BRACKETED_CELL = re.compile(r"\[(.*?)\]")  # DART's "[TABLECONTEXT]", "[TITLE]" cells, which FLAN drops


def _splits(train: list[Entry], test: list[Entry], note: str) -> LoadedSplits:
    return LoadedSplits(training_rows(train), evaluation_rows(test), note)


# ---------------------------------------------------------------- CommonGen
def common_gen_fields(concepts: list[str]) -> dict[str, str]:
    return {"concepts": ", ".join(concepts), "concepts_newline": "\n".join(concepts)}


def _common_gen_local(data_dir: str | None, split: str, hub_id: str) -> list[Entry]:
    concepts = text_lines(local_file(data_dir, f"commongen/commongen.{split}.src_alpha.txt", hub_id))
    targets = text_lines(local_file(data_dir, f"commongen/commongen.{split}.tgt.txt", hub_id))
    if len(concepts) != len(targets):
        raise ValueError(f"CommonGen {split}: {len(concepts)} concept lines but {len(targets)} target lines")
    return [(common_gen_fields(key.split()), refs) for key, refs in group_references(zip(concepts, targets, strict=True))]


def _common_gen_hub(hub_id: str, split: str) -> list[Entry]:
    rows = hub_rows(hub_id, None, split)
    concepts = {row["concept_set_idx"]: row["concepts"] for row in rows}
    grouped = group_references((row["concept_set_idx"], row["target"]) for row in rows)
    return [(common_gen_fields(concepts[key]), refs) for key, refs in grouped]


@register_loader("common_gen")
def load_common_gen(name: str, source: str, data_dir: str | None, seed: int, hub_id: str = "allenai/common_gen") -> LoadedSplits:
    if source == "hub":
        return _splits(_common_gen_hub(hub_id, "train"), _common_gen_hub(hub_id, "validation"), f"hub {hub_id}: train / validation")
    return _splits(
        _common_gen_local(data_dir, "train", hub_id),
        _common_gen_local(data_dir, "dev", hub_id),
        "local: CommonGen train / dev (the Hub's validation; its test split has no references there)",
    )


# ---------------------------------------------------------------- DART
def dart_fields(triples: list[list[str]]) -> dict[str, str]:
    joined = [", ".join(triple) for triple in triples]
    return {"tripleset": BRACKETED_CELL.sub("", "; ".join(joined)), "tripleset_newline": "\n".join(joined)}


def _dart_texts(annotations: Any) -> list[str]:
    """References of a DART row: local JSON has [{source, text}], the Hub {source: [...], text: [...]}."""
    if isinstance(annotations, dict):
        return list(annotations["text"])
    return [annotation["text"] for annotation in annotations]


def _xml_entries(path: Path, triple_tag: str, keep_lex=lambda lex: True) -> list[Entry]:
    """(triples, references) of each `<entry>` of a WebNLG-style XML file (also DART's test file)."""
    entries = []
    for entry in ET.parse(path).getroot().iter("entry"):
        triples = [[part.strip() for part in (t.text or "").split(" | ")] for t in entry.iter(triple_tag)]
        references = [lex.text or "" for lex in entry.findall("lex") if keep_lex(lex)]
        entries.append((triples, references))
    return entries


@register_loader("dart")
def load_dart(name: str, source: str, data_dir: str | None, seed: int, hub_id: str = "Yale-LILY/dart") -> LoadedSplits:
    if source == "hub":
        def hub(split):
            return [(dart_fields(r["tripleset"]), _dart_texts(r["annotations"])) for r in hub_rows(hub_id, None, split)]

        return _splits(hub("train"), hub("test"), f"hub {hub_id}: train / test")
    dev = json.loads(local_file(data_dir, "dart/dart-v1.1.1-full-dev.json", hub_id).read_text(encoding="utf-8"))  # one JSON array
    test = _xml_entries(local_file(data_dir, "dart/dart-v1.1.1-full-test.xml", hub_id), "mtriple")
    return _splits(
        [(dart_fields(r["tripleset"]), _dart_texts(r["annotations"])) for r in dev],
        [(dart_fields(triples), refs) for triples, refs in test],
        "local: DART has no train split here; gates train on dev (full-dev.json), evaluation on test (full-test.xml)",
    )


# ---------------------------------------------------------------- E2E NLG
def e2e_fields(meaning_representation: str) -> dict[str, str]:
    """FLAN's form of an E2E meaning representation: 'name[Alimentum], area[city centre]' -> 'name = Alimentum, area = city centre'."""
    return {"meaning_representation": meaning_representation.replace("[", " = ").replace("]", "")}


def _e2e_entries(pairs) -> list[Entry]:
    return [(e2e_fields(mr), refs) for mr, refs in group_references(pairs)]


@register_loader("e2e_nlg")
def load_e2e_nlg(name: str, source: str, data_dir: str | None, seed: int, hub_id: str = "tuetschek/e2e_nlg") -> LoadedSplits:
    if source == "hub":
        def hub(split):
            return _e2e_entries((r["meaning_representation"], r["human_reference"]) for r in hub_rows(hub_id, None, split))

        return _splits(hub("train"), hub("test"), f"hub {hub_id}: train / test")
    dev = file_rows("csv", local_file(data_dir, "e2e/devset.csv", hub_id))
    test = file_rows("csv", local_file(data_dir, "e2e/testset_w_refs.csv", hub_id))
    return _splits(
        _e2e_entries((r["mr"], r["ref"]) for r in dev),
        _e2e_entries((r["mr"], r["ref"]) for r in test),
        "local: E2E NLG has no train split here; gates train on devset.csv, evaluation on testset_w_refs.csv",
    )


# ---------------------------------------------------------------- WebNLG
def web_nlg_fields(triples: list[str]) -> dict[str, str]:
    """FLAN's input string of WebNLG triples 'Subject_x | predicate | object': '; '-joined, '_' as space, ' | ' as ', '."""
    return {"input_string": "; ".join(triples).replace("_", " ").replace(" | ", ", ")}


WEB_NLG_TEST_FILE = "webnlg_v3.0/en/test/rdf-to-text-generation-test-data-with-refs-en.xml"


def _web_nlg_local(paths: list[Path]) -> list[Entry]:
    entries = []
    for path in paths:
        for triples, refs in _xml_entries(path, "mtriple", keep_lex=lambda lex: lex.get("lang", "en") in ("", "en")):
            entries.append((web_nlg_fields([" | ".join(t) for t in triples]), refs))
    return entries


def _web_nlg_hub_entry(row: dict[str, Any]) -> Entry:
    triples = [triple for triple_set in row["modified_triple_sets"]["mtriple_set"] for triple in triple_set]
    lex = row["lex"]
    refs = [text for text, lang in zip(lex["text"], lex.get("lang") or [""] * len(lex["text"]), strict=True) if lang in ("", "en")]
    return web_nlg_fields(triples), refs


@register_loader("web_nlg")
def load_web_nlg(
    name: str, source: str, data_dir: str | None, seed: int, hub_id: str = "webnlg-challenge/web_nlg", hub_config: str = "release_v3.0_en"
) -> LoadedSplits:
    if source == "hub":
        def hub(split):
            return [_web_nlg_hub_entry(r) for r in hub_rows(hub_id, hub_config, split)]

        return _splits(hub("train"), hub("test"), f"hub {hub_id} ({hub_config}): train / test")
    train_dir = local_file(data_dir, "webnlg_v3.0/en/train", hub_id)
    return _splits(
        _web_nlg_local(sorted(train_dir.glob("*triples/*.xml"))),
        _web_nlg_local([local_file(data_dir, WEB_NLG_TEST_FILE, hub_id)]),
        "local: WebNLG 3.0 en train / test (rdf-to-text test file with references)",
    )
