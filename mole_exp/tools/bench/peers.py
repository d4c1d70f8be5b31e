"""PEFT's X-LoRA and Arrow beside MoLE on one shape (`scripts/bench_mole.py --peers`): each peer as the composer the
harness runs (composers/xlora.py, arrow.py, mole.py), on the same base, the same random experts and the same batch.

    train_step   forward + backward + AdamW step on what trains (MoLE: its gates, loss + alpha * L_balance;
                 X-LoRA: its classifier); Arrow trains nothing
    forward      one routed forward without gradient (eval mode): the inference cost of the routing

`bench_peers(base, bank, batch)` takes any model (a T5 shape from workload.build_model, a causal LM shape built by
its caller) with a batch of `input_ids`, `attention_mask`, `labels`; a peer that cannot run on that model (X-LoRA
on T5; a composer that refuses the family) is recorded as skipped with the composer's own error. PEFT's peers read
adapter folders: the bank's experts are written as PEFT adapters first (`write_adapters`, PEFT's own config I/O and
its weight-key layout), so every peer composes exactly the same experts.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mole_exp.base.models import BaseModel
from mole_exp.experts.bank import ExpertBank
from mole_exp.tools.bench.measure import autocast_context, log, median, timed

PEERS = ("mole", "xlora", "arrow")


def write_adapters(bank: ExpertBank, folder: Path) -> ExpertBank:
    """Each expert as a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors; lora_alpha = s_i r
    so that PEFT's scaling is the bank's s_i); returns the bank with those folders as its sources."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    sources = []
    for index, name in enumerate(bank.names):
        rank = bank.rank
        scalings = {float(t.scaling[index]) for t in bank.targets.values()}
        if len(scalings) != 1:
            raise ValueError(f"expert {name!r} has several scalings across modules ({sorted(scalings)}); PEFT's adapter holds one")
        path = folder / name
        config = LoraConfig(r=rank, lora_alpha=scalings.pop() * rank, target_modules=sorted(bank.targets), lora_dropout=0.0)
        config.save_pretrained(str(path))
        weights = {}
        for module, experts in bank.targets.items():
            weights[f"base_model.model.{module}.lora_A.weight"] = experts.lora_A[index].detach().float().cpu().contiguous()
            weights[f"base_model.model.{module}.lora_B.weight"] = experts.lora_B[index].detach().float().cpu().contiguous()
        save_file(weights, str(path / "adapter_model.safetensors"))
        sources.append(str(path))
    return ExpertBank(bank.names, bank.targets, sources, bank.adapter_configs, bank.manifest_entries, bank.rank_padding)


def build_peer(name: str, gate_cfg: dict[str, Any] | None = None, top_k: int = 3, alpha: float = 0.5):
    from mole_exp.composers.arrow import ArrowComposer
    from mole_exp.composers.mole import MoLEComposer
    from mole_exp.composers.xlora import XLoRAComposer

    if name == "mole":
        return MoLEComposer(gate=gate_cfg or {"granularity": "layer"}, alpha=alpha)
    if name == "xlora":
        return XLoRAComposer()
    if name == "arrow":
        return ArrowComposer(top_k=top_k)
    raise ValueError(f"--peers: {name!r} is not one of {list(PEERS)}")


def measure_peer(composer, base: BaseModel, bank: ExpertBank, batch: dict[str, torch.Tensor], device: torch.device,
                 precision: str, warmup: int, repeats: int, max_seconds: float) -> dict[str, Any]:
    record: dict[str, Any] = {}
    model = base.model
    try:
        trainable = composer.compose(base, bank)  # inside the try: a compose that fails part way is released too
        record["trainable_params"] = int(sum(p.numel() for p in trainable))
        if trainable:
            optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.0)

            def step() -> torch.Tensor:
                with autocast_context(device, precision):
                    loss = model(**batch).loss
                    extras = composer.auxiliary_losses()
                    loss = loss + sum((w * v for w, v in extras.values()), torch.zeros((), device=loss.device))
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                return loss.detach()

            model.train()
            times, losses, note = timed(step, warmup, repeats, device, max_seconds)
            record.update(train_step_ms_median=median(times) * 1e3, train_step_ms_all=[t * 1e3 for t in times],
                          loss=float(losses[-1]), losses_finite=all(math.isfinite(float(x)) for x in losses),
                          **({"train_note": note} if note else {}))
        composer.prepare_inference()
        model.eval()

        def forward() -> torch.Tensor:
            with torch.no_grad(), autocast_context(device, precision):
                return model(**batch).logits

        times, _, note = timed(forward, warmup, repeats, device, max_seconds)
        record.update(forward_ms_median=median(times) * 1e3, forward_ms_all=[t * 1e3 for t in times],
                      **({"forward_note": note} if note else {}))
    finally:
        composer.release()
        model.zero_grad(set_to_none=True)
    return record


def bench_peers(
    base: BaseModel,
    bank: ExpertBank,
    batch: dict[str, torch.Tensor],
    peers: tuple[str, ...] = PEERS,
    device: torch.device | None = None,
    precision: str = "fp32",
    warmup: int = 2,
    repeats: int = 5,
    max_seconds: float = 120.0,
    alpha: float = 0.5,
    gate_cfg: dict[str, Any] | None = None,
    top_k: int = 3,
) -> dict[str, Any]:
    """Step and forward times of each peer on `base` with `bank`'s experts and `batch`; plus the frozen base's forward."""
    for name in peers:
        if name not in PEERS:
            raise ValueError(f"--peers: {name!r} is not one of {list(PEERS)}")
    device = device or next(base.model.parameters()).device
    base.model.eval()

    def base_forward() -> torch.Tensor:
        with torch.no_grad(), autocast_context(device, precision):
            return base.model(**batch).logits

    times, _, _ = timed(base_forward, warmup, repeats, device, max_seconds)
    shape = {"model": base.model_id, "family": base.family.name, "experts": len(bank), "rank": bank.rank,
             "modules": len(bank.targets), "batch": list(batch["input_ids"].shape), "precision": precision}
    records: dict[str, Any] = {"base": {"status": "ok", "forward_ms_median": median(times) * 1e3}}
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as folder:
        library = write_adapters(bank, Path(folder))
        for name in peers:
            composer = build_peer(name, gate_cfg, top_k, alpha)
            log(f"peers: {name} on {base.model_id} ({len(bank)} experts)")
            try:
                composer.check_base(base)
            except ValueError as error:  # the composer refuses this family (e.g. X-LoRA on T5): recorded, the others go on
                records[name] = {"status": "skipped", "reason": str(error)}
                continue
            records[name] = {"status": "ok", **measure_peer(composer, base, library, batch, device, precision, warmup, repeats, max_seconds)}
    return {"shape": shape, "peers": records}


def run_peers(args, build_base: Callable[..., BaseModel] | None = None,
              make_inputs: Callable[..., dict[str, torch.Tensor]] | None = None) -> dict[str, Any]:
    """`scripts/bench_mole.py --peers`: bench_peers per (targets, N) on the shape `build_base(args, device, dtype)`
    builds (default: workload.build_bench_model, the random-weight shape of --family and --model) with `make_inputs(args, base, device)`'s batch
    (default: workload.make_batch); the JSON is rewritten atomically after each configuration."""
    from mole_exp.files import write_atomic
    from mole_exp.tools.bench.measure import device_description
    from mole_exp.tools.bench.variants import reading_cfg
    from mole_exp.tools.bench.workload import (
        build_bench_model,
        make_batch,
        random_bank,
        target_module_names,
        target_sets,
        training_inputs,
    )

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.model_dtype]
    base = (build_base(args, device, dtype) if build_base else
            build_bench_model(args.family, args.model, device, dtype, args.dropout, args.seed, args.layers, args.overrides))
    batch = (make_inputs(args, base, device) if make_inputs else
             training_inputs(make_batch(base, args.batch, args.source_len, args.target_len, base.model.config.vocab_size, device, args.seed)))
    gate_cfg = {"granularity": args.granularity, "input_form": args.input_form, "scope": args.scope, "init_std": args.gate_init_std,
                "temperature": {"init": 1.0, "learnable": True}, **reading_cfg(args.gate_readings[0])}
    out = Path(args.out) if args.out else Path("outputs/bench") / f"peers_{base.model_id}_{device.type}_{time.strftime('%Y%m%d-%H%M%S')}.json"
    result: dict[str, Any] = {"device": device_description(device), "args": vars(args), "runs": []}
    for target_set in args.targets:
        names = target_module_names(base, target_sets(args.family)[target_set])
        for num_experts in args.experts:
            bank = random_bank(base, names, num_experts, args.rank, args.seed)
            run = bench_peers(base, bank, batch, tuple(args.peers), device, precision, args.warmup, args.repeats,
                              args.max_config_seconds or (120.0 if device.type == "cpu" else 300.0), args.alpha, gate_cfg, args.arrow_top_k)
            result["runs"].append({"targets": target_set, **run})
            out.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(out, json.dumps(result, indent=2, default=str))
    log(f"wrote {out}")
    result["out"] = str(out)
    return result
