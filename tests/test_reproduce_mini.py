"""The mini reproduction: its plan composes into valid configs (one library per seed, the seed axes, the
controls), its tables read runs, its settings history is the settings in force, and the --fast variant runs
end to end (~30 s on a quiet 2-core CPU): pretrain -> experts -> every composer and control -> claims with
intervals, tables and figures, naming no absolute path."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from mole_exp.tools.mini.history import in_force
from mole_exp.tools.mini.plan import RunSpec, make_plan
from mole_exp.tools.mini.settings import FAST, FULL
from mole_exp.tools.mini.tables import dataset_table, format_cell
from mole_exp.training.compose import compose_run_config
from tests.conftest import DATA_DIR, ROOT

CONF = ROOT / "conf"


def test_plan_covers_every_study_and_composes_into_valid_configs(tmp_path):
    plan = make_plan(FAST, {0: tmp_path / "lib0"}, tmp_path / "out", CONF, extra=(f"paths.data_dir={DATA_DIR}",))
    studies = {r.study for r in plan.runs}
    assert studies == {"table3", "compose", "granularity", "balance", "count", "mask"}
    assert len({r.run_dir for r in plan.runs}) == len(plan.runs)  # every run its own folder
    controls = {"base", "fresh_lora", "mole (random library)"}
    peers = set(FAST.peers)  # PEFT's Arrow beside the composers (X-LoRA is decoder-only)
    assert peers == {"arrow"}
    assert {r.label for r in plan.study("table3")} == {"single", "nla", "lorahub", "pems", "mixer", "mole"} | controls | peers
    assert controls <= {r.label for r in plan.study("compose")}
    assert {r.facts["granularity"] for r in plan.study("granularity")} == set(FAST.granularities) - {FAST.default_granularity}
    masks = [r for r in plan.study("mask") if r.composer == "mole"]
    assert all(r.needs == next(t.run_dir for t in plan.study("table3") if t.label == "mole") for r in masks)
    for run in plan.runs:
        cfg = compose_run_config(list(run.overrides), run.run_dir, conf_dir=CONF)
        assert cfg.composer.name == run.composer and cfg.seed == run.seed and cfg.paths.output_dir == str(run.run_dir)
        assert cfg.experts.library_dir == str(tmp_path / "lib0") and cfg.task.args.data_seed == run.seed
        assert run.facts["library_seed"] == run.facts["data_seed"] == run.facts["composer_seed"] == run.seed
        random = run.label == "mole (random library)"
        assert cfg.experts._target_.endswith(".random_library") == random
        if random:
            assert cfg.experts.random.seed == run.seed and cfg.experts.random.match == FAST.random_match
    compose_runs = plan.study("compose")
    assert all(compose_run_config(list(r.overrides), r.run_dir, conf_dir=CONF).task.name == "synthetic_compose" for r in compose_runs)
    libraries = {seed: tmp_path / f"lib{seed}" for seed in FULL.seeds}
    full = make_plan(FULL, libraries, tmp_path / "out", CONF)
    assert {r.seed for r in full.runs} == set(FULL.seeds) and len(full.study("balance")) == len(FULL.seeds) * (1 + len(FULL.temperatures))
    assert {r.facts["granularity"] for r in full.study("granularity")} == {"matrix", "block", "network"}
    for run in full.runs:  # each seed composes its own library, on its own data
        assert f"experts.library_dir={libraries[run.seed]}" in run.overrides and f"task.args.data_seed={run.seed}" in run.overrides
    with pytest.raises(ValueError, match=r"no expert library for seeds \[1, 2\]"):
        make_plan(FULL, {0: tmp_path / "lib0"}, tmp_path / "out", CONF)


def test_settings_history_is_the_settings_in_force():
    """A setting of the full run changes only with an entry in mole_exp/tools/mini/history.py."""
    for key, value in in_force().items():
        assert f"{key}={value}" in FULL.compose, (key, value)


def test_unregistered_composers_are_skipped_with_a_reason(tmp_path, monkeypatch):
    from mole_exp import composers

    monkeypatch.delitem(composers.COMPOSERS, "pems")
    plan = make_plan(FAST, {0: tmp_path / "lib"}, tmp_path / "out", CONF)
    assert "pems" in plan.skipped and "not registered" in plan.skipped["pems"]
    assert not [r for r in plan.runs if r.composer == "pems"]


def test_tables_aggregate_seeds_and_say_what_is_missing(tmp_path):
    assert format_cell([]) == "—" and format_cell([], failures=1) == "failed (1)"
    assert format_cell([50.0]) == "50.0" and format_cell([40.0, 60.0]) == "50.0 ± 14.1 (n=2)"
    specs = []
    for seed, value in ((0, 40.0), (1, 60.0)):
        run_dir = tmp_path / f"seed{seed}"
        run_dir.mkdir()
        (run_dir / "metrics.json").write_text(json.dumps({"metrics": {"test/copy/em": value, "test/synthetic/avg": value}}))
        specs.append(RunSpec("table3", "mole", seed, (), run_dir, "mole"))
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "run_state.json").write_text('{"status": "failed"}')
    table = dataset_table({"mole": specs, "nla": [RunSpec("table3", "nla", 0, (), failed, "nla")]}, ["copy"], "synthetic")
    assert "| copy | 50.0 ± 14.1 (n=2) | failed (1) |" in table
    assert "| **average** | 50.0 ± 14.1 (n=2) | failed (1) |" in table


def test_fast_reproduction_end_to_end(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("reproduce_mini_script", ROOT / "scripts" / "reproduce_mini.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out, docs = tmp_path / "out", tmp_path / "docs"
    assert script.main(["--fast", "--out", str(out), "--docs", str(docs), "--jobs", "1", "--data-dir", str(DATA_DIR)]) == 0

    page = (docs / "reproduce_mini_fast.md").read_text()
    for heading in ("Seeds: what each one re-draws", "The paper's claims, here", "Table 3 style",
                    "Composers and controls on the held-out two-skill", "Table 7 style", "Table 9 style", "Table 6 style", "Figure 8 style", "The random libraries", "Settings history", "Timings"):
        assert f"## {heading}" in page
    assert "failed" not in page.lower()
    for claim in ("MoLE above the static composers", "L_balance helps", "Raised temperatures hurt", "Intermediate granularity best",
                  "Masking keeps the rest", "MoLE above MoLE over a random library", "MoLE above a fresh LoRA"):
        assert f"| {claim} | **" in page  # each claim has a verdict ...
    assert re.search(r"\| mole − nla, mixture average \| [+-]\d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\] \| 1 \|", page)  # ... and intervals
    assert re.search(r"\| copy( \| \d+\.\d \[\d+\.\d, \d+\.\d\]( [↑↓])?){10} \|\n", page)  # table 3: 10 columns with intervals
    for absolute in (str(tmp_path), str(ROOT), str(Path.home())):
        assert absolute not in page  # files named relative to the repository or to --out
    assert "`<out>/libraries/" in page
    for figure in ("reproduce_mini_fast_figure5_gate_entropy.png", "reproduce_mini_fast_figure7_gate_weights.png"):
        assert (docs / "figures" / figure).stat().st_size > 1000 and f"figures/{figure}" in page
    outcomes = json.loads((out / "outcomes.json").read_text())
    assert outcomes["runs"] and all(r["status"] == "completed" for r in outcomes["runs"])
    runs = list(Path(out, "runs").rglob("metrics.json"))
    assert len(runs) == len(outcomes["runs"])
    mole = json.loads((out / "runs" / "table3" / "mole" / "seed0" / "metrics.json").read_text())
    assert mole["experts"]["names"] == list(FAST.tasks) and "test/synthetic/avg" in mole["metrics"]

    # a rerun reuses the cached base, the library and every finished run
    assert script.main(["--fast", "--out", str(out), "--docs", str(docs), "--jobs", "1", "--data-dir", str(DATA_DIR)]) == 0
    again = json.loads((out / "outcomes.json").read_text())
    assert all(r["status"] == "reused" for r in again["runs"])


def test_claim_verdicts_follow_the_intervals(tmp_path):
    from mole_exp.reporting.intervals import Interval
    from mole_exp.tools.mini.claims import NO_LOSS, Claim, Comparison, make_claims

    def compared(low, high, kind="above"):
        interval = Interval((low + high) / 2, low, high, None, 1000, 3, 600, "two-level paired bootstrap")
        return Comparison("x − y", [], [], ["copy"], kind, interval)

    assert [compared(*bounds).verdict for bounds in ((1, 3), (-1, 3), (-3, -1))] == ["holds", "within noise", "reversed"]
    assert [compared(*bounds, kind=NO_LOSS).verdict for bounds in ((-1, 3), (-3, -1))] == ["holds", "reversed"]
    assert Claim("c", "p", [compared(1, 3), compared(2, 4)]).verdict == "holds"
    assert Claim("c", "p", [compared(1, 3), compared(-1, 4)]).verdict == "not shown (within noise)"
    assert Claim("c", "p", [compared(1, 3), compared(-4, -1)]).verdict == "does not hold"
    assert Claim("c", "p", [Comparison("x − y", [], [], ["copy"])]).verdict == "not tested (no runs)"

    plan = make_plan(FULL, {seed: tmp_path / f"lib{seed}" for seed in FULL.seeds}, tmp_path / "out", CONF)
    claims = {c.name: c for c in make_claims(plan, FULL)}
    assert [c.text for c in claims["MoLE above the static composers"].comparisons][:3] == [
        "mole − nla, mixture average", "mole − lorahub, mixture average", "mole − pems, mixture average"]
    assert len(claims["Intermediate granularity best"].comparisons) == 4  # layer and block against matrix and network
    assert len(claims["Raised temperatures hurt"].comparisons) == len(FULL.temperatures)
    masks = claims["Masking keeps the rest"].comparisons
    assert len(masks) == len(FULL.tasks) and all(len(c.datasets) == len(FULL.tasks) - 1 and c.kind == NO_LOSS for c in masks)
    for name in ("MoLE above MoLE over a random library", "MoLE above a fresh LoRA"):
        assert [len(c.better) for c in claims[name].comparisons] == [len(FULL.seeds)] * 2  # mixture and two-skill, every seed
