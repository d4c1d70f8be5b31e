"""FLAN instruction templates (google-research/FLAN PATTERNS, Apache-2.0), shipped in `mole_exp/resources/`."""

from __future__ import annotations

import json
import string
from functools import cache
from importlib import resources
from typing import Any

TEMPLATE_VERSIONS = {"v1": "flan_templates_v1.json", "v2": "flan_templates_v2.json"}


@cache
def load_templates(version: str = "v1") -> dict[str, list[dict[str, str]]]:
    if version not in TEMPLATE_VERSIONS:
        raise ValueError(f"task.template_version={version!r} is not one of {sorted(TEMPLATE_VERSIONS)}")
    return json.loads(resources.files("mole_exp.resources").joinpath(TEMPLATE_VERSIONS[version]).read_text())


def format_options(options: list[str], style: str = "flan") -> str:
    """FLAN's options block: 'OPTIONS:\\n- a\\n- b' (style 'flan'), or 'Options:\\n- a...' ('flan2')."""
    if style == "flan":
        return "OPTIONS:\n- " + "\n- ".join(options)
    if style == "flan2":
        return "Options:\n- " + "\n- ".join(options)
    raise ValueError(f"task.options_style={style!r} is not one of ['flan', 'flan2']")


def slots(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def fill_template(key: str, index: int, row: dict[str, Any], version: str = "v1", options_style: str = "flan") -> tuple[str, str]:
    templates = load_templates(version)
    if key not in templates:
        raise ValueError(f"FLAN template {key!r} does not exist; available: {sorted(templates)}")
    patterns = templates[key]
    if not 0 <= index < len(patterns):
        raise ValueError(f"template_index={index} for {key!r}: allowed 0..{len(patterns) - 1}")
    pattern = patterns[index]
    values = dict(row)
    if "options" in row and row["options"]:
        values["options_"] = format_options(list(row["options"]), options_style)
    needed = slots(pattern["input"]) | slots(pattern["target"])
    missing = sorted(needed - set(values))
    if missing:
        raise ValueError(
            f"FLAN template {key}[{index}] needs slot(s) {missing} which the dataset rows lack (rows have {sorted(values)})"
        )
    return pattern["input"].format(**values), pattern["target"].format(**values)
