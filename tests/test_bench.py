"""The MoLE benchmark script on the tiny model, CPU: every configuration runs and is recorded with finite
numbers, and rank-space / stacked / loop / PEFT agree. No timing assertions (CI timings mean nothing)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERTS = (2, 4)
TARGETS = ("qv", "all")
VARIANTS = ("rank_space", "rank_space_saved", "stacked", "loop", "peft")


def load_script_main():
    spec = importlib.util.spec_from_file_location("bench_mole_script", ROOT / "scripts" / "bench_mole.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    main = load_script_main()
    result = main([
        "--model", "tiny", "--device", "cpu", "--experts", ",".join(map(str, EXPERTS)), "--targets", ",".join(TARGETS),
        "--batch", "2", "--source-len", "12", "--target-len", "6", "--repeats", "1", "--warmup", "0",
        "--gen-tokens", "3", "--gen-repeats", "1", "--threads", "1", "--out", str(out),
    ])
    return result, out


def test_every_configuration_is_recorded_with_finite_numbers(bench_run):
    result, out = bench_run
    on_disk = json.loads(out.read_text())
    assert on_disk["settings"]["experts"] == list(EXPERTS)
    assert on_disk["device"]["type"] == "cpu" and on_disk["device"]["name"] and on_disk["device"]["torch"]
    memory = on_disk["settings"]["memory_metric"]
    base = on_disk["base"]
    assert base["status"] == "ok" and finite(base["step_ms_median"]) and base["step_ms_median"] > 0
    assert base["trainable_params"] == 1 and base["losses_finite"]
    assert base["generation"]["status"] == "ok" and finite(base["generation"]["tokens_per_s"])
    assert base["generation"]["new_tokens"] == 3
    configs = {(c["targets"], c["experts"], c["variant"]): c for c in on_disk["configs"]}
    assert set(configs) == {(t, n, v) for t in TARGETS for n in EXPERTS for v in ("base", *VARIANTS)}
    for key, record in configs.items():
        assert record["status"] == "ok", (key, record.get("reason"))
        if key[2] == "base":  # the floor again, measured before each (targets, N) group
            assert finite(record["step_ms_median"]) and record["trainable_params"] == 1, key
            continue
        assert finite(record["step_ms_median"]) and record["step_ms_median"] > 0, key
        assert finite(record["saved_gib"]) and finite(record["saved_over_base_gib"]), key
        assert finite(record["ratio_to_base"]) and record["ratio_to_base"] > 0, key
        assert record["losses_finite"] and record["repeats_done"] == 1, key
        assert record["trainable_params"] > 0, key
        if not memory.startswith("n/a"):
            assert finite(record["peak_gib"]) and finite(record["peak_over_base_gib"]), key
        if key[2] in ("rank_space", "peft"):
            generation = record["generation"]
            assert generation["status"] == "ok" and finite(generation["tokens_per_s"]) and finite(generation["ratio_to_base"]), key
    # MoLE trains the gates only; PEFT and the base train the one input scalar
    assert all(configs[(t, n, "peft")]["trainable_params"] == 1 for t in TARGETS for n in EXPERTS)
    assert configs[("qv", 4, "rank_space")]["trainable_params"] == configs[("qv", 4, "stacked")]["trainable_params"] > 1
    assert result["configs"] == on_disk["configs"]


def test_rank_space_stacked_loop_and_peft_compute_the_same_function(bench_run):
    result, _ = bench_run
    rows = {(a["targets"], a["experts"]): a for a in result["agreement"]}
    assert set(rows) == {(t, n) for t in TARGETS for n in EXPERTS}
    for key, row in rows.items():
        for pair in ("rank_space_vs_stacked", "saved_vs_rank_space", "loop_vs_rank_space"):
            check = row[pair]
            assert check is not None, (key, pair)
            assert finite(check["logits_max_abs_diff"]) and check["logits_max_rel_diff"] < 1e-4, (key, pair, check)
            assert check["gates_max_abs_diff"] < 1e-5, (key, pair, check)
        peft = row["peft_vs_mole_uniform_gates"]
        assert peft is not None and peft["logits_max_rel_diff"] < 1e-4, (key, peft)


def test_recomputing_rank_space_keeps_less_for_backward_than_saving(bench_run):
    """Device-independent memory: the bytes autograd keeps for backward (not a timing)."""
    result, _ = bench_run
    configs = {(c["targets"], c["experts"], c["variant"]): c for c in result["configs"]}
    for targets in TARGETS:
        for experts in EXPERTS:
            lean, saved = configs[(targets, experts, "rank_space")], configs[(targets, experts, "rank_space_saved")]
            assert lean["saved_over_base_gib"] < saved["saved_over_base_gib"], (targets, experts)
            assert saved["saved_over_base_gib"] < configs[(targets, experts, "stacked")]["saved_over_base_gib"], (targets, experts)


def test_markdown_report_is_written_next_to_the_json(bench_run):
    result, out = bench_run
    markdown = out.with_suffix(".md").read_text()
    assert "Gate-training step" in markdown and "Peak memory" in markdown and "Agreement" in markdown
    for variant in VARIANTS:
        assert variant in markdown


def test_gpu_targets_are_evaluated_not_asserted():
    from mole_exp.tools.bench.report import evaluate_targets, render_markdown

    def record(variant, experts, ms, peak):
        return {"targets": "qv", "experts": experts, "variant": variant, "status": "ok", "step_ms_median": ms,
                "ratio_to_base": ms / 100.0, "peak_gib": peak, "peak_over_base_gib": peak - 10.0, "experts_gib": 0.5}

    result = {
        "settings": {"targets": ["qv"], "variants": list(VARIANTS), "model": "x", "precision": "bf16", "model_dtype": "float32",
                     "batch": 1, "source_len": 1, "target_len": 1, "rank": 16, "granularity": "layer", "input_form": "concat",
                     "scope": "sequence", "warmup": 1, "repeats": 1, "memory_metric": "m", "gen_tokens": 0},
        "device": {"name": "fake", "torch": "x"},
        "base": {"status": "ok", "step_ms_median": 100.0, "peak_gib": 10.0},
        "configs": [record("rank_space", 8, 120.0, 10.5), record("rank_space", 48, 160.0, 11.0), record("peft", 48, 600.0, 10.2),
                    record("rank_space", 128, 190.0, 13.0), {"targets": "qv", "experts": 128, "variant": "stacked", "status": "skipped", "reason": "estimated 900 GiB > limit (would OOM)"}],
        "agreement": [],
    }
    rows = {row["name"]: row for row in evaluate_targets(result)}
    assert rows["MoLE step / base step, N=8"]["met"] is True
    assert rows["MoLE step / base step, N=48"]["met"] is False
    assert rows["MoLE step / base step, N=128"]["met"] is True
    assert rows["PEFT multi-adapter step / MoLE step, N=48"]["value"] == pytest.approx(3.75)
    assert rows["MoLE peak memory - base peak (GiB), N=128"]["met"] is False
    result["targets"] = list(rows.values())
    markdown = render_markdown(result)
    assert "skip (OOM est.)" in markdown and "## Targets (for the GPU run" in markdown


def test_bf16_autocast_with_bf16_experts_runs_every_variant(tmp_path):
    """The GPU run's settings (bf16 autocast, experts held in bf16 by --expert-dtype auto) on the CPU."""
    result = load_script_main()([
        "--model", "tiny", "--device", "cpu", "--precision", "bf16", "--experts", "2", "--targets", "qv",
        "--batch", "2", "--source-len", "12", "--target-len", "6", "--repeats", "1", "--warmup", "0",
        "--gen-tokens", "2", "--gen-repeats", "1", "--threads", "1", "--out", str(tmp_path / "bf16.json"),
    ])
    assert result["settings"]["expert_dtype"] == "bfloat16"
    statuses = {c["variant"]: (c["status"], c.get("reason")) for c in result["configs"]}
    assert statuses == {v: ("ok", None) for v in ("base", *VARIANTS)}
    assert all(c["losses_finite"] for c in result["configs"])


def test_gate_readings_run_side_by_side(tmp_path):
    """--gate-readings: every MoLE variant once per gate reading (Eqs. 8-9), the others named `<variant> [<reading>]`."""
    result = load_script_main()([
        "--model", "tiny", "--device", "cpu", "--experts", "2", "--targets", "qv", "--variants", "rank_space,stacked,peft",
        "--gate-readings", "delta/per_expert,full/joint", "--batch", "2", "--source-len", "12", "--target-len", "6",
        "--repeats", "1", "--warmup", "0", "--gen-tokens", "0", "--threads", "1", "--out", str(tmp_path / "readings.json"),
    ])
    configs = {c["variant"]: c for c in result["configs"]}
    assert list(configs) == ["base", "rank_space", "rank_space [full/joint]", "stacked", "stacked [full/joint]", "peft"]
    assert all(configs[name]["status"] == "ok" for name in configs), {n: c.get("reason") for n, c in configs.items()}
    assert configs["rank_space"]["reading"] == "delta/per_expert" and configs["stacked [full/joint]"]["reading"] == "full/joint"
    other = result["agreement"][0]["other_readings"]["full/joint"]["rank_space_vs_stacked"]
    assert other["logits_max_rel_diff"] < 1e-4 and other["gates_max_abs_diff"] < 1e-5
    assert "rank_space [full/joint]" in (tmp_path / "readings.md").read_text()


@pytest.mark.parametrize("readings", ["full", "full/all", "delta/per_expert,outputs/joint"])
def test_bad_gate_readings_are_refused(readings, capsys):
    from mole_exp.tools.bench.cli import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--gate-readings", readings])
    assert "--gate-readings" in capsys.readouterr().err
