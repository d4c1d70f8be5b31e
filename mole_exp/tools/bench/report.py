"""The benchmark's report: the targets set for the GPU run evaluated on a result, and the markdown tables."""

from __future__ import annotations

from typing import Any

from mole_exp.tools.bench.measure import finite
from mole_exp.tools.bench.variants import GENERATION_VARIANTS, VARIANTS, variant_runs

# The speed and memory targets set for the GPU run (FLAN-T5-large). Recorded and reported, never asserted.
STEP_RATIO_TARGETS = {8: 1.25, 48: 1.5, 128: 2.0}  # MoLE (rank_space) step / base step <=
PEFT_OVER_MOLE_TARGET = (48, 3.5)  # PEFT multi-adapter step / MoLE step >= at N=48
MEMORY_TARGET = (128, 2.0)  # MoLE peak memory <= base peak + 2 GiB at N=128


def _find(result: dict[str, Any], targets: str, experts: int, variant: str) -> dict[str, Any] | None:
    for record in result["configs"]:
        if record["targets"] == targets and record["experts"] == experts and record["variant"] == variant:
            return record
    return None


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets set for the GPU run: value, limit, met (None when not measured)."""
    rows = []
    for targets in result["settings"]["targets"]:
        for experts, limit in STEP_RATIO_TARGETS.items():
            record = _find(result, targets, experts, "rank_space")
            if record is None:
                continue
            value = record.get("ratio_to_base")
            rows.append(dict(name=f"MoLE step / base step, N={experts}", targets=targets, experts=experts, value=value,
                             op="<=", limit=limit, met=(value <= limit) if finite(value) else None))
        experts, limit = PEFT_OVER_MOLE_TARGET
        mole, peft = _find(result, targets, experts, "rank_space"), _find(result, targets, experts, "peft")
        if mole is not None and peft is not None:
            ok = mole.get("status") == "ok" and peft.get("status") == "ok"
            value = peft["step_ms_median"] / mole["step_ms_median"] if ok else None
            rows.append(dict(name=f"PEFT multi-adapter step / MoLE step, N={experts}", targets=targets, experts=experts,
                             value=value, op=">=", limit=limit, met=(value >= limit) if finite(value) else None))
        experts, limit = MEMORY_TARGET
        record = _find(result, targets, experts, "rank_space")
        if record is not None:
            value = record.get("peak_over_base_gib")
            rows.append(dict(name=f"MoLE peak memory - base peak (GiB), N={experts}", targets=targets, experts=experts,
                             value=value, op="<=", limit=limit, met=(value <= limit) if finite(value) else None,
                             experts_gib=record.get("experts_gib"), base_peak_gib=_row_base(result, targets, experts).get("peak_gib")))
    return rows


def _row_base(result: dict[str, Any], targets: str, experts: int) -> dict[str, Any]:
    """The base a row's ratios use: the one measured before its group, else the run's first."""
    record = _find(result, targets, experts, "base")
    return record if record is not None and record.get("status") == "ok" else (result.get("base") or {})


def _cell_step(record: dict[str, Any] | None) -> str:
    if record is None:
        return "-"
    if record.get("status") == "ok":
        return f"{record['step_ms_median']:.1f} ({record['ratio_to_base']:.2f}x)"
    return _status(record)


def _cell_memory(record: dict[str, Any] | None, kind: str) -> str:
    """`<kind>_gib (+<kind>_over_base_gib)` of a record; kind is "peak" or "saved"."""
    if record is None:
        return "-"
    if record.get("status") == "ok" and finite(record.get(f"{kind}_gib")):
        return f"{record[f'{kind}_gib']:.3g} (+{_fmt(record.get(f'{kind}_over_base_gib'))})"
    return _status(record)


def _status(record: dict[str, Any]) -> str:
    status = record.get("status", "?")
    if status == "skipped":
        reason = record.get("reason", "")
        if "OOM" in reason:
            return "skip (OOM est.)"
        if "too long" in reason:
            return "skip (too slow est.)"
        if "budget" in reason:
            return "skip (budget)"
        return "skip"
    return status.upper() if status == "oom" else status


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return format(value, spec) if finite(value) else "-"


def render_markdown(result: dict[str, Any]) -> str:
    settings, device, base = result["settings"], result["device"], result.get("base") or {}
    readings = settings.get("gate_readings") or ["delta/per_expert"]
    variants = [name for name, _, _ in variant_runs([v for v in VARIANTS if v in settings["variants"]], readings)]
    model_config = settings.get("model_config") or {}
    lines = [
        f"# MoLE benchmark: {settings['model']} (random weights) on {device.get('name')}",
        "",
        f"torch {device.get('torch')}, {settings['precision']}, weights {settings['model_dtype']}, experts {settings.get('expert_dtype')}; "
        + (f"{model_config['num_hidden_layers']} blocks (decoder-only, hidden {model_config.get('hidden_size')}); "
           if "num_hidden_layers" in model_config else
           f"{model_config.get('num_layers', '?')}+{model_config.get('num_decoder_layers', '?')} blocks; ")
        +
        f"batch {settings['batch']} x ({settings['source_len']} + {settings['target_len']}) tokens; rank {settings['rank']}; "
        f"gate {settings['granularity']}/{settings['input_form']}/{settings['scope']}, reading {readings[0]}"
        + (f" (columns `[...]`: {', '.join(readings[1:])})" if len(readings) > 1 else "") + "; "
        f"warm-up {settings['warmup']}, median of {settings['repeats']}. Memory: {settings['memory_metric']}.",
        "",
    ]
    if base.get("status") == "ok":
        gen = base.get("generation") or {}
        lines += [
            f"Base (frozen, one trainable input scalar), first measurement: **{base['step_ms_median']:.1f} ms/step**, peak {_fmt(base.get('peak_gib'))} GiB"
            + (f", generation {gen['tokens_per_s']:.1f} tok/s ({gen['new_tokens']} new tokens, batch {gen['batch']})" if gen.get("status") == "ok" else ""),
            "",
        ]
    keys = sorted({(r["targets"], r["experts"]) for r in result.get("configs", [])},
                  key=lambda k: (settings["targets"].index(k[0]), k[1]))
    header_variants = " | ".join(variants)
    lines += ["## Gate-training step: median ms (ratio to the base measured just before the row)", "",
              f"| targets | N | base | {header_variants} | PEFT / MoLE |", "|" + "---|" * (4 + len(variants))]
    for targets, experts in keys:
        cells = [_cell_step(_find(result, targets, experts, v)) for v in variants]
        mole, peft = _find(result, targets, experts, "rank_space"), _find(result, targets, experts, "peft")
        ratio = (peft["step_ms_median"] / mole["step_ms_median"]) if (mole and peft and mole.get("status") == "ok" and peft.get("status") == "ok") else None
        row_base = _row_base(result, targets, experts)
        lines.append(f"| {targets} | {experts} | {_fmt(row_base.get('step_ms_median'), '.1f')} | " + " | ".join(cells) + f" | {_fmt(ratio, '.2f')} |")
    lines += ["", "## Peak memory: GiB (over base)", "",
              f"| targets | N | experts GiB | base | {header_variants} |", "|" + "---|" * (4 + len(variants))]
    for targets, experts in keys:
        cells = [_cell_memory(_find(result, targets, experts, v), "peak") for v in variants]
        any_record = next((r for r in result["configs"] if r["targets"] == targets and r["experts"] == experts), {})
        row_base = _row_base(result, targets, experts)
        lines.append(f"| {targets} | {experts} | {_fmt(any_record.get('experts_gib'))} | {_fmt(row_base.get('peak_gib'))} | " + " | ".join(cells) + " |")
    lines += ["", "## Kept for backward: GiB of saved activations (over base), device-independent", "",
              f"| targets | N | base | {header_variants} |", "|" + "---|" * (3 + len(variants))]
    for targets, experts in keys:
        cells = [_cell_memory(_find(result, targets, experts, v), "saved") for v in variants]
        row_base = _row_base(result, targets, experts)
        lines.append(f"| {targets} | {experts} | {_fmt(row_base.get('saved_gib'))} | " + " | ".join(cells) + " |")
    gen_variants = [name for name, variant, _ in variant_runs([v for v in VARIANTS if v in settings["variants"]], readings)
                    if variant in GENERATION_VARIANTS]
    if settings.get("gen_tokens", 0) > 0 and gen_variants:
        base_gen = base.get("generation") or {}
        lines += ["", f"## Greedy generation: tokens/s ({settings['gen_tokens']} new tokens; ratio to base)", "",
                  "| targets | N | base | " + " | ".join(gen_variants) + " |", "|" + "---|" * (3 + len(gen_variants))]
        for targets, experts in keys:
            cells = []
            for v in gen_variants:
                gen = (_find(result, targets, experts, v) or {}).get("generation") or {}
                cells.append(f"{gen['tokens_per_s']:.1f} ({_fmt(gen.get('ratio_to_base'), '.2f')}x)" if gen.get("status") == "ok" else "-")
            lines.append(f"| {targets} | {experts} | {_fmt(base_gen.get('tokens_per_s'), '.1f')} | " + " | ".join(cells) + " |")
    check_dtype = "fp32" if settings.get("model_dtype") == "float32" else f"{settings.get('model_dtype')} weights"
    lines += ["", f"## Agreement ({check_dtype}, no autocast, eval, first {settings.get('check_batch')} examples): "
              "max |diff| of logits (relative) / of gate weights", "",
              "| targets | N | rank_space vs stacked | rank_space_saved vs rank_space | loop vs rank_space | PEFT vs MoLE uniform gates |", "|---|---|---|---|---|---|"]
    for row in result.get("agreement", []):
        def cell(c):
            if not c:
                return "-"
            text = f"{c['logits_max_abs_diff']:.2e} ({c['logits_max_rel_diff']:.1e})"
            return text + (f" / {c['gates_max_abs_diff']:.1e}" if "gates_max_abs_diff" in c else "")
        lines.append(f"| {row['targets']} | {row['experts']} | {cell(row['rank_space_vs_stacked'])} | {cell(row.get('saved_vs_rank_space'))} | {cell(row['loop_vs_rank_space'])} | {cell(row['peft_vs_mole_uniform_gates'])} |")
        for reading, checks in (row.get("other_readings") or {}).items():
            lines.append(f"| {row['targets']} | {row['experts']} [{reading}] | {cell(checks['rank_space_vs_stacked'])} | {cell(checks['saved_vs_rank_space'])} | {cell(checks['loop_vs_rank_space'])} | - |")
    if result.get("targets"):
        lines += ["", "## Targets (for the GPU run; informational here)", "", "| target | targets | value | limit | met |", "|---|---|---|---|---|"]
        for row in result["targets"]:
            met = {True: "yes", False: "no", None: "n/a"}[row["met"]]
            lines.append(f"| {row['name']} | {row['targets']} | {_fmt(row['value'])} | {row['op']} {row['limit']} | {met} |")
    notes = [r for r in result.get("configs", []) if r.get("status") in ("skipped", "oom", "error") or r.get("note")]
    if notes:
        lines += ["", "## Notes", ""]
        for r in notes:
            lines.append(f"- {r['targets']} N={r['experts']} {r['variant']}: {r.get('status')}: {r.get('reason') or r.get('note')}")
    return "\n".join(lines) + "\n"
