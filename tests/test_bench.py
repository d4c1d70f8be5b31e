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


# ---------------------------------------------------------------- --family causal: a decoder-only shape


def test_the_causal_family_times_mole_on_a_decoder_only_shape(tmp_path):
    """--family causal: a random Llama-shaped LM, prompt + target in one right-padded sequence; every variant runs,
    generation counts only new tokens, and rank-space / stacked / loop / PEFT compute the same function."""
    out = tmp_path / "causal.json"
    result = load_script_main()([
        "--family", "causal", "--model", "tiny-causal", "--device", "cpu", "--experts", "2", "--targets", "qv,all",
        "--batch", "3", "--source-len", "10", "--target-len", "4", "--repeats", "1", "--warmup", "0",
        "--gen-tokens", "3", "--gen-repeats", "1", "--threads", "1", "--out", str(out),
    ])
    on_disk = json.loads(out.read_text())
    settings = on_disk["settings"]
    assert settings["family"] == "causal" and settings["model"] == "tiny-causal"
    assert settings["model_config"]["num_hidden_layers"] == 2 and settings["model_config"]["architecture"] == "llama"
    assert on_disk["base"]["generation"]["new_tokens"] == 3
    configs = {(c["targets"], c["experts"], c["variant"]): c for c in on_disk["configs"]}
    assert set(configs) == {(t, 2, v) for t in TARGETS for v in ("base", *VARIANTS)}
    assert all(c["status"] == "ok" and c["losses_finite"] for c in configs.values()), {k: c.get("reason") for k, c in configs.items()}
    # every block linear of the tiny Llama: 2 blocks x 7 projections; q/v: 2 x 2 (one gate per sub-layer: 2 x 1)
    assert configs[("all", 2, "rank_space")]["gates"] == 4 and configs[("qv", 2, "rank_space")]["gates"] == 2
    for row in result["agreement"]:
        for pair in ("rank_space_vs_stacked", "saved_vs_rank_space", "loop_vs_rank_space", "peft_vs_mole_uniform_gates"):
            assert row[pair]["logits_max_rel_diff"] < 1e-4, (row["targets"], pair)
    assert "decoder-only" in out.with_suffix(".md").read_text()


def test_causal_presets_and_overrides_build_the_named_shape():
    import torch

    from mole_exp.tools.bench.workload import CAUSAL_SHAPES, build_bench_model, make_batch

    base = build_bench_model("causal", "qwen2.5-0.5b", torch.device("cpu"), torch.float32, 0.0, 0, layers=1,
                             overrides={"vocab_size": 512})
    config = base.model.config
    assert (config.model_type, config.hidden_size, config.intermediate_size, config.num_attention_heads, config.num_key_value_heads,
            config.num_hidden_layers, config.vocab_size) == ("qwen2", 896, 4864, 14, 2, 1, 512)
    assert base.family.causal and base.model.lm_head.weight is base.model.get_input_embeddings().weight  # Qwen2.5-0.5B ties them
    assert CAUSAL_SHAPES["llama-3.2-1b"]["hidden_size"] == 2048 and CAUSAL_SHAPES["llama-3.2-1b"]["num_key_value_heads"] == 8
    batch = make_batch(base, 3, 8, 2, 512, torch.device("cpu"), 0)
    lengths = batch["prompt_lengths"]
    assert lengths[0] == 8 and batch["input_ids"].shape == (3, 10)
    assert ((batch["labels"] != -100).sum(1) == 2).all()  # the loss on the 2 target tokens of each row
    assert batch["attention_mask"].sum(1).tolist() == (lengths + 2).tolist()  # right padding after prompt + target


@pytest.mark.parametrize(("argv", "message"), [
    (["--family", "causal", "--model", "flan-t5-large"], "is not a causal shape"),
    (["--model", "qwen2.5-0.5b"], "is not a t5 shape"),
    (["--set", "hidden_size=64"], "applies to --family causal only"),
    (["--family", "causal", "--set", "width=64"], "expected key=<positive integer>"),
    (["--family", "causal", "--set", "num_attention_heads=5"], "must split"),
    (["--family", "causal", "--targets", "wo"], "--targets: 'wo' is not one of"),
])
def test_bad_family_options_are_refused(argv, message, capsys):
    from mole_exp.tools.bench.cli import parse_args

    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err
