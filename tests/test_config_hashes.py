"""Every member of every paper preset and every run of the mini reproduction (full and fast settings) composes to
the config hash recorded before the config groups changed shape (tests/fixtures/config_hashes/table.json, made by
its make_table.py), so finished runs stay found by resume=true and reused by the mini reproduction."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.config_hashes.make_table import HERE, member_hash, mini_members, paper_members

RECORDED = json.loads((HERE / "table.json").read_text())


def test_the_table_covers_every_member_there_is_now():
    assert set(paper_members()) | set(mini_members()) == set(RECORDED)


@pytest.mark.parametrize("kind", ["paper", "mini/fast", "mini/full", "mini/causal_fast", "mini/causal_full"])
def test_every_member_composes_to_its_recorded_hash(kind):
    members = {k: v for k, v in {**paper_members(), **mini_members()}.items() if k.startswith(kind + "/") or k.startswith(kind + "#")}
    assert members
    changed = {key: (RECORDED[key], member_hash(overrides)) for key, overrides in members.items()}
    changed = {key: pair for key, pair in changed.items() if pair[0] != pair[1]}
    assert not changed, f"{len(changed)} of {len(members)} members hash differently now (recorded, now): {dict(list(changed.items())[:5])}"
