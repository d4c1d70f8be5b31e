"""One benchmark run: the base, then for every (target set, N) the variants side by side, each measured, checked
against the others and recorded (the JSON and markdown are rewritten after every configuration)."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mole_exp.experts.bank import ExpertBank
from mole_exp.tools.bench.estimates import base_flops, estimate_costs, linear_inventory
from mole_exp.tools.bench.measure import (
    GIB,
    MemoryMeter,
    autocast_context,
    device_description,
    is_oom,
    log,
    make_train_step,
    median,
    mem_available_bytes,
    saved_for_backward_bytes,
    timed,
)
from mole_exp.tools.bench.report import evaluate_targets, render_markdown
from mole_exp.tools.bench.variants import (
    GENERATION_VARIANTS,
    ScaledEmbedding,
    attach_input_scale,
    compare,
    detach_input_scale,
    inject_peft,
    inject_variant,
    input_embeddings,
    reading_cfg,
    reference_outputs,
    remove_mole,
    remove_peft,
    variant_runs,
    zero_gates,
)
from mole_exp.tools.bench.workload import (
    bank_bytes,
    build_bench_model,
    generation_batch,
    make_batch,
    model_config_record,
    random_bank,
    target_module_names,
    target_sets,
    training_inputs,
)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda but CUDA is not available")
        self.precision = args.precision if args.precision != "auto" else ("bf16" if self.device.type == "cuda" else "fp32")
        self.model_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.model_dtype]
        self.act_bytes = 2 if (self.precision == "bf16" or self.model_dtype == torch.bfloat16) else 4
        expert_dtype = args.expert_dtype if args.expert_dtype != "auto" else ("bfloat16" if self.precision == "bf16" else "model")
        self.expert_dtype = torch.bfloat16 if expert_dtype == "bfloat16" else self.model_dtype
        self.weight_bytes = 2 if self.expert_dtype == torch.bfloat16 else 4
        self.meter = MemoryMeter(self.device, fixed_mmap_threshold=args.cpu_exact_rss)
        self.started = time.perf_counter()
        cpu = self.device.type == "cpu"
        self.max_config_seconds = args.max_config_seconds or (120.0 if cpu else 300.0)
        self.gate_cfg = {
            "granularity": args.granularity,
            "input_form": args.input_form,
            "scope": args.scope,
            "init_std": args.gate_init_std,
            "temperature": {"init": 1.0, "learnable": True},
            **reading_cfg(args.gate_readings[0]),
        }
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.out = Path(args.out) if args.out else Path("outputs/bench") / f"bench_{args.model}_{self.device.type}_{stamp}.json"
        self.md_path = self.out.with_suffix(".md")
        self.result: dict[str, Any] = {}

    # -------------------------------------------------------------- bookkeeping

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.result["elapsed_s"] = round(time.perf_counter() - self.started, 2)
        self.result["markdown"] = str(self.md_path)
        tmp = self.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.result, indent=2, default=str))
        tmp.replace(self.out)
        self.md_path.write_text(render_markdown(self.result))

    def over_budget(self) -> bool:
        budget = self.args.time_budget_s
        return bool(budget) and time.perf_counter() - self.started > budget

    # -------------------------------------------------------------- one training configuration

    def measure_training(self, model, batch, parameters, router, record: dict[str, Any]) -> None:
        args = self.args
        record["trainable_params"] = int(sum(p.numel() for p in parameters))
        step = make_train_step(model, batch, parameters, router, args.alpha, self.device, self.precision)
        model.train()
        record["saved_gib"] = saved_for_backward_bytes(step, model) / GIB  # one extra, untimed step
        self.meter.reset_peak()
        times, losses, note = timed(step, args.warmup, args.repeats, self.device, self.max_config_seconds)
        record["peak_gib"] = self.meter.peak()
        losses = [float(x) for x in losses]
        record.update(
            status="ok",
            step_ms_median=median(times) * 1e3,
            step_ms_all=[t * 1e3 for t in times],
            repeats_done=len(times),
            loss=losses[-1] if losses else None,
            losses_finite=all(math.isfinite(x) for x in losses),
        )
        if note:
            record["note"] = note
        if router is not None:
            router.pop_records()

    def measure_generation(self, model, gen_batch) -> dict[str, Any]:
        args = self.args
        new_tokens = args.gen_tokens
        model.eval()

        def generate():
            with torch.no_grad(), autocast_context(self.device, self.precision):
                return model.generate(
                    input_ids=gen_batch["input_ids"], attention_mask=gen_batch["attention_mask"], max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens, do_sample=False, num_beams=1, use_cache=True,
                )

        times, outputs, note = timed(generate, 1, max(1, args.gen_repeats), self.device, self.max_config_seconds)
        # new tokens: an encoder-decoder's output starts with the decoder start token, a causal LM's with the prompt
        produced = int(outputs[-1].shape[1] - (1 if model.config.is_encoder_decoder else gen_batch["input_ids"].shape[1]))
        batch_size = gen_batch["input_ids"].shape[0]
        record = {
            "status": "ok",
            "ms_median": median(times) * 1e3,
            "ms_all": [t * 1e3 for t in times],
            "new_tokens": produced,
            "batch": batch_size,
            "tokens_per_s": batch_size * produced / median(times),
        }
        if note:
            record["note"] = note
        return record

    def generation(self, model, gen_batch) -> dict[str, Any]:
        record: dict[str, Any] = {"variant": "generation"}
        self.guarded(record, lambda: record.update(self.measure_generation(model, gen_batch)))
        record.pop("variant")
        return record

    def guarded(self, record: dict[str, Any], fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args); record OOM (CUDA or CPU allocator) or any other error instead of dying."""
        error_text = None
        try:
            fn(*args)
        except Exception as error:  # noqa: BLE001 - one failing configuration must not lose the run
            error_text = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
            record["status"] = "oom" if is_oom(error) else "error"
            record["reason"] = error_text
            log(f"  {record.get('variant')}: {record['status']}: {error_text}")
        if error_text is not None:
            self.meter.release()

    # -------------------------------------------------------------- skip rules

    def skip_reason(self, variant: str, projections, num_experts: int, reading: str) -> tuple[str | None, dict[str, float]]:
        args = self.args
        est = estimate_costs(variant, self.inventory, projections, num_experts, args.rank, args.input_form, self.act_bytes,
                             self.weight_bytes, reading)
        step_s = self.base_step_s + est["flops"] / self.throughput + est["traffic_bytes"] / self.bandwidth + est["ops"] * self.op_overhead
        extra_gib = (est["static_bytes"] + est["saved_bytes"]) / GIB
        estimate = {"step_s": step_s, "extra_gib": extra_gib, "static_gib": est["static_bytes"] / GIB}
        if args.no_skip:
            return None, estimate
        if self.base_peak_gib is not None and extra_gib + self.base_peak_gib > self.mem_limit_gib:
            return f"estimated {extra_gib + self.base_peak_gib:.1f} GiB > limit {self.mem_limit_gib:.1f} GiB (would OOM)", estimate
        if step_s * (1 + args.warmup) > self.max_config_seconds:
            return f"estimated {step_s:.0f} s/step: warm-up + 1 step > {self.max_config_seconds:.0f} s cap (would take too long)", estimate
        return None, estimate

    # -------------------------------------------------------------- the whole run

    def run(self) -> dict[str, Any]:
        args, device = self.args, self.device
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        log(f"building random {args.model} ({args.family}) on {device} ({self.precision}, weights {args.model_dtype})")
        t0 = time.perf_counter()
        base = build_bench_model(args.family, args.model, device, self.model_dtype, args.dropout, args.seed, args.layers, args.overrides)
        model = base.model
        full_batch = make_batch(base, args.batch, args.source_len, args.target_len, model.config.vocab_size, device, args.seed)
        batch = training_inputs(full_batch)
        gen_batch = generation_batch(base, full_batch, args.gen_batch or args.batch)
        check_batch = {k: v[: args.check_batch] for k, v in batch.items()} if args.check_batch > 0 else None
        self.tied_head = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        self.inventory = linear_inventory(base, args.batch, args.source_len, args.target_len, args.granularity)
        self.meter.release()
        model_gib = self.meter.current()
        self.result = {
            "benchmark": "MoLE gate-training step, memory and generation",
            "created": _dt.datetime.now().isoformat(timespec="seconds"),
            "device": device_description(device),
            "settings": {
                **{k: v for k, v in vars(args).items()},
                "precision": self.precision,
                "memory_metric": self.meter.metric,
                "family": args.family,
                "model_config": model_config_record(args.family, args.model, args.layers, args.overrides, args.dropout),
                "expert_dtype": str(self.expert_dtype).removeprefix("torch."),
                "model_params": int(sum(p.numel() for p in model.parameters())),
                "untied_head": not self.tied_head,
                "gate": self.gate_cfg,
                "max_config_seconds": self.max_config_seconds,
                "step": "forward + backward + AdamW.step on the trainable parameters (MoLE: task loss + alpha * L_balance)",
                "build_s": round(time.perf_counter() - t0, 2),
                "model_memory_gib": model_gib,
            },
            "base": {},
            "configs": [],
            "agreement": [],
            "targets": [],
        }
        log(f"model built in {time.perf_counter() - t0:.1f}s, {self.result['settings']['model_params'] / 1e6:.1f}M params")

        # ---- (a) the floor
        base_record: dict[str, Any] = {"variant": "base"}
        scale = attach_input_scale(model)
        self.guarded(base_record, self.measure_training, model, batch, [scale], None, base_record)
        if args.gen_tokens > 0:
            base_record["generation"] = self.generation(model, gen_batch)
        detach_input_scale(model)
        self.meter.release()
        self.result["base"] = base_record
        self.write()
        if base_record.get("status") != "ok":
            raise RuntimeError(f"the base configuration failed: {base_record.get('reason')}")
        log(f"base: {base_record['step_ms_median']:.1f} ms/step, peak {base_record['peak_gib']}")

        # calibration for the skip rules
        self.base_step_s = base_record["step_ms_median"] / 1e3
        self.base_peak_gib = base_record["peak_gib"]
        head_tokens = args.source_len + args.target_len if base.family.causal else args.target_len
        flops = base_flops(self.inventory, model.config.hidden_size, model.config.vocab_size, args.batch, head_tokens)
        self.throughput = flops / self.base_step_s
        cpu = device.type == "cpu"
        self.bandwidth = 4e9 if cpu else 1.5e12
        self.op_overhead = 20e-6 if cpu else 15e-6
        if args.mem_limit_gib is not None:
            self.mem_limit_gib = args.mem_limit_gib
        elif cpu:
            available = mem_available_bytes()
            self.mem_limit_gib = (self.base_peak_gib or 0) + 0.5 * (available / GIB if available else 8.0)
        else:
            self.mem_limit_gib = 1.5 * torch.cuda.get_device_properties(device).total_memory / GIB
        self.result["settings"]["mem_limit_gib"] = self.mem_limit_gib

        for target_set in args.targets:
            projections = target_sets(args.family)[target_set]
            module_names = target_module_names(base, projections)
            for num_experts in args.experts:
                self.run_experts(base, batch, gen_batch, check_batch, target_set, projections, module_names, num_experts)

        self.result["targets"] = evaluate_targets(self.result)
        self.write()
        return self.result

    def run_experts(self, base, batch, gen_batch, check_batch, target_set, projections, module_names, num_experts) -> None:
        args, model = self.args, base.model
        log(f"targets={target_set} N={num_experts}: building {len(module_names)} x {num_experts} random experts")
        group_base: dict[str, Any] = {"targets": target_set, "experts": num_experts, "variant": "base"}
        if args.rebase and not self.over_budget():
            # the floor again, right before this group (and before its experts exist): ratios and memory deltas
            # compare against a base measured minutes, not an hour, apart (drift, thermals, a shared CPU)
            self.result["configs"].append(group_base)
            scale = attach_input_scale(model)
            self.guarded(group_base, self.measure_training, model, batch, [scale], None, group_base)
            detach_input_scale(model)
            self.meter.release()
        reference_base = group_base if group_base.get("status") == "ok" else self.result["base"]
        building: dict[str, Any] = {}
        holder: list[ExpertBank] = []
        self.guarded(building, lambda: holder.append(random_bank(base, module_names, num_experts, args.rank, args.seed + num_experts, self.expert_dtype)))
        if not holder:  # the experts alone do not fit: every variant of the group fails the same way
            for variant in args.variants:
                self.result["configs"].append({"targets": target_set, "experts": num_experts, "variant": variant,
                                               "status": building["status"], "reason": f"building the experts: {building['reason']}"})
            self.write()
            return
        bank = holder.pop()
        experts_gib = bank_bytes(bank) / GIB
        group_base["experts_gib"] = experts_gib
        references: dict[str, dict[str, torch.Tensor]] = {}
        for name, variant, reading in variant_runs(args.variants, args.gate_readings):
            record: dict[str, Any] = {"targets": target_set, "experts": num_experts, "variant": name, "experts_gib": experts_gib}
            if variant != "peft":
                record["reading"] = reading
            self.result["configs"].append(record)
            if self.over_budget():
                record.update(status="skipped", reason=f"time budget {args.time_budget_s:.0f}s spent")
                continue
            reason, estimate = self.skip_reason(variant, projections, num_experts, reading)
            record["estimate"] = estimate
            t_setup = time.perf_counter()
            if variant == "peft":
                self.guarded(record, self.run_peft, base, bank, batch, gen_batch, check_batch, record, references, reason)
            else:
                gate_cfg = {**self.gate_cfg, **reading_cfg(reading)}
                self.guarded(record, self.run_mole, base, bank, variant, batch, gen_batch, check_batch, record, references, reason,
                             gate_cfg, name)
            record["total_s"] = round(time.perf_counter() - t_setup, 2)
            if record.get("status") == "ok":
                record["base_step_ms"] = reference_base["step_ms_median"]
                record["ratio_to_base"] = record["step_ms_median"] / reference_base["step_ms_median"]
                if record.get("peak_gib") is not None and reference_base.get("peak_gib") is not None:
                    record["peak_over_base_gib"] = record["peak_gib"] - reference_base["peak_gib"]
                if reference_base.get("saved_gib") is not None:
                    record["saved_over_base_gib"] = record["saved_gib"] - reference_base["saved_gib"]
                generation = record.get("generation")
                base_generation = self.result["base"].get("generation") or {}
                if generation and generation.get("status") == "ok" and base_generation.get("status") == "ok":
                    generation["ratio_to_base"] = generation["tokens_per_s"] / base_generation["tokens_per_s"]
            summary = f"{record['step_ms_median']:.1f} ms ({record['ratio_to_base']:.2f}x base)" if record.get("status") == "ok" else f"{record.get('status')}: {record.get('reason')}"
            log(f"  {name}: {summary}")
            self.meter.release()
            self.write()
        self.result["agreement"].append(
            {
                "targets": target_set,
                "experts": num_experts,
                "check_batch": args.check_batch,
                "rank_space_vs_stacked": compare(references.get("rank_space"), references.get("stacked")),
                "saved_vs_rank_space": compare(references.get("rank_space_saved"), references.get("rank_space")),
                "loop_vs_rank_space": compare(references.get("loop"), references.get("rank_space")),
                "peft_vs_mole_uniform_gates": compare(references.get("peft"), references.get("rank_space_uniform")),
                "other_readings": {
                    reading: {
                        "rank_space_vs_stacked": compare(references.get(f"rank_space [{reading}]"), references.get(f"stacked [{reading}]")),
                        "saved_vs_rank_space": compare(references.get(f"rank_space_saved [{reading}]"), references.get(f"rank_space [{reading}]")),
                        "loop_vs_rank_space": compare(references.get(f"loop [{reading}]"), references.get(f"rank_space [{reading}]")),
                    }
                    for reading in args.gate_readings[1:]
                },
            }
        )
        leftovers = [n for n in module_names if type(model.get_submodule(n)) is not nn.Linear]
        retied = (model.get_output_embeddings().weight is model.get_input_embeddings().weight) != self.tied_head
        if leftovers or retied or hasattr(model, "mole_gate") or isinstance(input_embeddings(model), ScaledEmbedding):
            raise RuntimeError(f"the base model was not restored after N={num_experts}: {leftovers[:3]}")
        del bank, references
        self.meter.release()
        self.write()

    def run_mole(self, base, bank, variant, batch, gen_batch, check_batch, record, references, skip, gate_cfg=None, name=None) -> None:
        model = base.model
        t0 = time.perf_counter()
        try:
            router = inject_variant(base, bank, gate_cfg or self.gate_cfg, variant, self.args.seed + 1)
            record["gates"] = len(router.gates)
            record["setup_s"] = round(time.perf_counter() - t0, 2)
            if check_batch is not None:
                references[name or variant] = reference_outputs(model, check_batch, router)
                if (name or variant) == "rank_space":
                    saved = [g.projection.detach().clone() for g in router.gates.values()]
                    zero_gates(router)
                    references["rank_space_uniform"] = reference_outputs(model, check_batch, router)
                    with torch.no_grad():
                        for gate, projection in zip(router.gates.values(), saved, strict=True):
                            gate.projection.copy_(projection)
                    del saved
            if skip:
                record.update(status="skipped", reason=skip)
                return
            parameters = [p for p in router.parameters() if p.requires_grad]
            self.measure_training(model, batch, parameters, router, record)
            if variant in GENERATION_VARIANTS and self.args.gen_tokens > 0:
                record["generation"] = self.generation(model, gen_batch)
        finally:
            remove_mole(base)

    def run_peft(self, base, bank, batch, gen_batch, check_batch, record, references, skip) -> None:
        model = base.model
        if skip:  # building N PEFT adapters is itself slow; do not bother
            record.update(status="skipped", reason=skip)
            return
        t0 = time.perf_counter()
        peft_model = inject_peft(base, bank, self.args.rank)
        try:
            record["setup_s"] = round(time.perf_counter() - t0, 2)
            if check_batch is not None:
                references["peft"] = reference_outputs(model, check_batch)
            scale = attach_input_scale(model)
            self.measure_training(model, batch, [scale], None, record)
            if self.args.gen_tokens > 0:
                record["generation"] = self.generation(model, gen_batch)
        finally:
            detach_input_scale(model)
            remove_peft(base, peft_model)
            del peft_model
