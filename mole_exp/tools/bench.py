"""Issue 7's benchmark: gate-training step time, peak memory and generation speed of MoLE, side by side.

One process, one run, on a FLAN-T5-shaped model with random weights (no download):

    base        the frozen model alone; gradient flows to one scalar that scales the encoder's input
                embeddings (the floor: full backward through the network, nothing else trains)
    rank_space  MoLE, implementation="rank_space" (the default: never materialises the expert outputs;
                backward recomputes u = A x from x instead of keeping it)
    rank_space_saved  MoLE, implementation="rank_space_saved" (the same, keeping u and the gate's
                r-space intermediates for backward: no recomputation, more memory)
    stacked     MoLE, implementation="stacked" (the reference: materialises E (B, T, N, d_out))
    loop        MoLE with each expert's delta s_i B_i A_i x computed in a Python loop and weighted by its
                gate in output space (benchmark-only `LoopMoLELinear`; gates computed exactly as rank_space)
    peft        HF PEFT LoraModel with the same N adapters all active at once (their sum, each scaled by
                s_i / N, which is MoLE with uniform gates); adapters frozen, the input scalar trains

Per (targets, N) the same random experts serve every variant. A training step is forward + backward +
AdamW step on the trainable parameters (MoLE: task loss + alpha * L_balance, as in training), under bf16
autocast on CUDA. Before timing, each variant's fp32 outputs on a small slice of the batch are compared
(rank_space vs stacked, loop vs rank_space, PEFT vs MoLE with uniform gates) so the timings compare equal math.

Memory: `saved_gib`, the bytes autograd keeps for backward in one training forward (tensors saved by
any op, deduplicated by storage, parameters and buffers excluded; device-independent, so it is the
memory figure to read on CPU), and the peak: on CUDA `torch.cuda.max_memory_allocated` (peak over the steps, reset after set-up); on CPU the
process's peak RSS (VmHWM, reset through /proc/self/clear_refs after set-up; glibc heap trimmed first),
which includes everything the process holds, so compare `peak_over_base_gib`, not absolute values.

On CPU the glibc heap keeps freed blocks, so peak RSS overstates allocation-heavy variants (PEFT, loop);
`--cpu-exact-rss` fixes the mmap threshold (truer memory, slower steps).

Gate readings (`gate.expert_output` / `gate.normalization`, Eqs. 8-9): `--gate-readings delta/per_expert,full/joint`
runs every MoLE variant once per reading, side by side; the first reading's records keep the plain variant
names, the others are named `<variant> [<expert_output>/<normalization>]`.

Run: `python scripts/bench_mole.py --device cuda` (defaults: flan-t5-large shape, N=8,24,48,128,
targets q/v and all linears, rank 16, batch 32 x (256 + 32) tokens). `--model tiny --device cpu` for a
quick CPU run. Under a device-time limit add e.g. `--max-config-seconds 60 --gen-repeats 2 --time-budget-s 420`
(the JSON and markdown are rewritten after every configuration, so a cut-off run keeps what it measured).
Configurations estimated not to fit (or far too slow) are recorded as skipped with the estimate; `--no-skip`
runs them anyway (CUDA OOMs are caught and recorded). See `python scripts/bench_mole.py --help`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as _dt
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mole_exp.base.family import family_for
from mole_exp.base.models import BaseModel, freeze
from mole_exp.experts.bank import ExpertBank, TargetExperts
from mole_exp.mole import rank_space
from mole_exp.mole.gates import EXPERT_OUTPUTS, NORMALIZATIONS, check_reading
from mole_exp.mole.inject import inject_mole
from mole_exp.mole.layers import MoLELinear

# FLAN-T5 hyper-parameters (from the checkpoints' config.json), so no download is needed.
SHAPES: dict[str, dict[str, int]] = {
    "tiny": dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4),  # = build_tiny
    "flan-t5-small": dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6),
    "flan-t5-base": dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12),
    "flan-t5-large": dict(d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_decoder_layers=24, num_heads=16),
    "flan-t5-xl": dict(d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_decoder_layers=24, num_heads=32),
}
COMMON_CONFIG = dict(
    vocab_size=32128,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,  # FLAN-T5's head is untied
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
)
TARGET_SETS = {"qv": ("q", "v"), "all": ("q", "k", "v", "o", "wi_0", "wi_1", "wo")}
VARIANTS = ("rank_space", "rank_space_saved", "stacked", "loop", "peft")
MOLE_VARIANTS = ("rank_space", "rank_space_saved", "stacked", "loop")
GENERATION_VARIANTS = ("rank_space", "peft")

# Issue 7's targets, for the GPU run. Recorded and reported, never asserted.
STEP_RATIO_TARGETS = {8: 1.25, 48: 1.5, 128: 2.0}  # MoLE (rank_space) step / base step <=
PEFT_OVER_MOLE_TARGET = (48, 3.5)  # PEFT multi-adapter step / MoLE step >= at N=48
MEMORY_TARGET = (128, 2.0)  # MoLE peak memory <= base peak + 2 GiB at N=128

GIB = 1024**3


# ---------------------------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def device_description(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "type": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }
    try:
        import peft
        import transformers

        info["transformers"], info["peft"] = transformers.__version__, peft.__version__
    except ImportError:  # pragma: no cover
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=torch.cuda.get_device_name(device),
            total_memory_gib=round(props.total_memory / GIB, 2),
            cuda=torch.version.cuda,
            capability=f"{props.major}.{props.minor}",
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        )
    else:
        name = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
            if match:
                name = match.group(1).strip()
        info.update(name=name, cpu_count=os.cpu_count())
    return info


def _mem_available_bytes() -> int | None:
    with contextlib.suppress(OSError, AttributeError):
        match = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        if match:
            return int(match.group(1)) * 1024
    return None


class MemoryMeter:
    """Peak memory of a window: CUDA allocator peak, or peak RSS (VmHWM) on CPU."""

    def __init__(self, device: torch.device, fixed_mmap_threshold: bool = False):
        self.device = device
        self._libc = None
        if device.type == "cpu":
            with contextlib.suppress(OSError):
                self._libc = ctypes.CDLL("libc.so.6")
            if self._libc is not None and fixed_mmap_threshold:
                # blocks >= 128 KiB are mmapped and returned on free, so peak RSS tracks live tensors instead of
                # glibc heap growth (the dynamic threshold keeps freed blocks); costs page faults, i.e. step time
                with contextlib.suppress(AttributeError):
                    self._libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
            self.cpu_ok = self._read_status("VmHWM") is not None and self._can_reset()
        self.metric = (
            "torch.cuda.max_memory_allocated (reset after set-up)"
            if device.type == "cuda"
            else "process peak RSS, VmHWM reset via /proc/self/clear_refs after set-up"
            + (" (glibc mmap threshold fixed at 128 KiB)" if fixed_mmap_threshold else " (glibc heap: overstates allocation-heavy variants)")
            if self.cpu_ok
            else "n/a (no /proc/self/status VmHWM or clear_refs on this system)"
        )

    @staticmethod
    def _read_status(field: str) -> int | None:
        with contextlib.suppress(OSError):
            match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
            if match:
                return int(match.group(1)) * 1024
        return None

    @staticmethod
    def _can_reset() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def release(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self._libc is not None:
            with contextlib.suppress(AttributeError):
                self._libc.malloc_trim(0)

    def current(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / GIB
        rss = self._read_status("VmRSS") if self.cpu_ok else None
        return rss / GIB if rss is not None else None

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.cpu_ok:
            self._can_reset()

    def peak(self) -> float | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / GIB
        hwm = self._read_status("VmHWM") if self.cpu_ok else None
        return hwm / GIB if hwm is not None else None


def is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text.lower() or "can't allocate memory" in text.lower())


# ---------------------------------------------------------------------------------------------- model, data, experts


def shape_config(shape: str, layers: int | None = None) -> dict[str, int]:
    """`shape`'s hyper-parameters; `layers` keeps its widths with that many encoder and decoder blocks
    (per-layer costs unchanged: a wide shape that fits a CPU run)."""
    if shape not in SHAPES:
        raise ValueError(f"--model {shape!r} is not one of {sorted(SHAPES)}")
    config = dict(SHAPES[shape])
    if layers is not None:
        if layers < 1:
            raise ValueError(f"--layers {layers} must be >= 1")
        config.update(num_layers=layers, num_decoder_layers=layers)
    return config


def build_model(shape: str, device: torch.device, dtype: torch.dtype, dropout: float, seed: int, layers: int | None = None) -> BaseModel:
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(**COMMON_CONFIG, **shape_config(shape, layers), dropout_rate=dropout)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    with torch.device(device):
        model = T5ForConditionalGeneration(config)
        if model.lm_head.weight is model.shared.weight:
            # transformers 5 forces T5Config.tie_word_embeddings=True (a checkpoint whose head differs loads
            # untied); FLAN-T5's head is untied, so give it its own weights (HF's init for an untied head)
            model.lm_head.weight = nn.Parameter(torch.randn_like(model.shared.weight) * config.initializer_factor)
    torch.random.set_rng_state(state)
    model = model.to(device=device, dtype=dtype)
    model.generation_config.max_length = None
    freeze(model)
    model_id = f"random-{shape}" + (f"-{layers}+{layers}-layers" if layers is not None else "")
    return BaseModel(model=model, tokenizer=None, model_id=model_id, family=family_for(model))


def make_batch(batch: int, source_len: int, target_len: int, vocab: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """Random tokens; source lengths vary in [L/2, L] (the first example is full length) so masks matter."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, vocab, (batch, source_len), generator=generator)
    lengths = torch.randint(max(1, source_len // 2), source_len + 1, (batch,), generator=generator)
    lengths[0] = source_len
    attention_mask = (torch.arange(source_len)[None, :] < lengths[:, None]).long()
    input_ids = input_ids * attention_mask  # pad id 0
    labels = torch.randint(2, vocab, (batch, target_len), generator=generator)
    return {k: v.to(device) for k, v in {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}.items()}


def target_module_names(base: BaseModel, projections: tuple[str, ...]) -> list[str]:
    names = []
    for name, module in base.model.named_modules():
        if isinstance(module, nn.Linear) and base.family.module_pattern.match(name):
            if base.family.position(name).projection in projections:
                names.append(name)
    return names


def random_bank(
    base: BaseModel, module_names: list[str], num_experts: int, rank: int, seed: int, dtype: torch.dtype | None = None
) -> ExpertBank:
    """N random LoRA experts per module: A ~ N(0, 1/d_in), B ~ N(0, 0.1^2/r), s_i = alpha_i / r in [1, 2],
    held in `dtype` (default: the model's)."""
    weight = next(base.model.parameters())
    device, dtype = weight.device, dtype or weight.dtype
    generator = torch.Generator(device=device).manual_seed(seed)
    scaling = torch.empty(num_experts, device=device).uniform_(1.0, 2.0, generator=generator)
    targets = {}
    for name in module_names:
        linear = base.model.get_submodule(name)
        lora_A = torch.randn(num_experts, rank, linear.in_features, device=device, generator=generator) / math.sqrt(linear.in_features)
        lora_B = torch.randn(num_experts, linear.out_features, rank, device=device, generator=generator) * (0.1 / math.sqrt(rank))
        targets[name] = TargetExperts(lora_A.to(dtype), lora_B.to(dtype), scaling.to(dtype))
    names = [f"expert_{i:03d}" for i in range(num_experts)]
    return ExpertBank(names=names, targets=targets, sources=["random"] * num_experts)


def bank_bytes(bank: ExpertBank) -> int:
    return sum(t.lora_A.nbytes + t.lora_B.nbytes + t.scaling.nbytes for t in bank.targets.values())


# ---------------------------------------------------------------------------------------------- the variants


class ScaledEmbedding(nn.Module):
    """The encoder's input embedding times one trainable scalar (the floor's only trainable parameter)."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.embedding = embedding
        self.scale = nn.Parameter(torch.ones((), device=embedding.weight.device, dtype=torch.float32))

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.embedding(input_ids)
        return embeds * self.scale.to(embeds.dtype)


def attach_input_scale(model: nn.Module) -> nn.Parameter:
    scaled = ScaledEmbedding(model.encoder.embed_tokens)
    model.encoder.embed_tokens = scaled
    return scaled.scale


def detach_input_scale(model: nn.Module) -> None:
    if isinstance(model.encoder.embed_tokens, ScaledEmbedding):
        model.encoder.embed_tokens = model.encoder.embed_tokens.embedding


class LoopMoLELinear(MoLELinear):
    """Benchmark-only MoLELinear: each expert's delta s_i B_i A_i x is computed in a Python loop and weighted
    by its gate in output space (the naive implementation). Gates are the rank-space ones, so outputs equal
    MoLELinear's."""

    @classmethod
    def from_layer(cls, layer: MoLELinear) -> LoopMoLELinear:
        experts = TargetExperts(layer.lora_A, layer.lora_B, layer.scaling)
        loop = cls(layer.base_layer, experts, layer.module_name, layer.gate_key, layer.stream, layer.lora_A.dtype)
        loop.bind(layer._router[0])
        return loop

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        base_output = self.base_layer(hidden)
        router = self._router[0]
        dtype = rank_space.compute_dtype(hidden)  # the experts may be held in another dtype (--expert-dtype)
        lora_A, lora_B = self.lora_A.to(dtype), self.lora_B.to(dtype)
        rank_parts = [F.linear(hidden, lora_A[i]) for i in range(self.num_experts)]  # u_i = A_i x, (B, T, r)
        gate_probs = router.gate_weights(self, hidden, torch.stack(rank_parts, dim=2), None, base_output=base_output)  # (B, T or 1, N)
        mixed = None
        for i, rank_input in enumerate(rank_parts):
            delta = F.linear(rank_input, lora_B[i]) * self.scaling[i]  # s_i B_i A_i x, (B, T, d_out)
            term = delta * gate_probs[..., i : i + 1].to(delta.dtype)
            mixed = term if mixed is None else mixed + term
        return base_output + mixed.to(base_output.dtype)


def reading_cfg(reading: str) -> dict[str, str]:
    """"full/joint" -> {"expert_output": "full", "normalization": "joint"} (the gate config keys)."""
    expert_output, _, normalization = reading.partition("/")
    return {"expert_output": expert_output, "normalization": normalization}


def variant_runs(variants: list[str], readings: list[str]) -> list[tuple[str, str, str]]:
    """(record name, variant, gate reading) in run order: each MoLE variant once per reading, side by side;
    the first reading keeps the plain variant name, the others are named `<variant> [<reading>]`."""
    runs = []
    for variant in variants:
        for index, reading in enumerate(readings if variant in MOLE_VARIANTS else readings[:1]):
            runs.append((variant if index == 0 else f"{variant} [{reading}]", variant, reading))
    return runs


def inject_variant(base: BaseModel, bank: ExpertBank, gate_cfg: dict[str, Any], variant: str, seed: int):
    torch.manual_seed(seed)  # same gate initialisation for every variant
    implementation = variant if variant in ("stacked", "rank_space_saved") else "rank_space"
    expert_dtype = next(iter(bank.targets.values())).lora_A.dtype  # as the bank holds them (--expert-dtype)
    router = inject_mole(base, bank, gate_cfg, implementation=implementation, expert_dtype=expert_dtype)
    if variant == "loop":
        for name in bank.targets:
            parent_name, _, leaf = name.rpartition(".")
            parent = base.model.get_submodule(parent_name)
            setattr(parent, leaf, LoopMoLELinear.from_layer(getattr(parent, leaf)))
    return router


def remove_mole(base: BaseModel, bank: ExpertBank) -> None:
    model = base.model
    for name in bank.targets:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = getattr(parent, leaf)
        if isinstance(layer, MoLELinear):
            setattr(parent, leaf, layer.base_layer)
    router = getattr(model, "mole_gate", None)
    if router is not None:
        for hook in router._hooks:
            hook.remove()
        router._hooks = []
        router.pop_records()
        router._pass_probs.clear()
        router._decoder_state.clear()
        del model.mole_gate


def inject_peft(base: BaseModel, bank: ExpertBank, rank: int):
    """PEFT LoraModel with the bank's N experts as N adapters, all active, all frozen.

    Adapters are created on the meta device and then given the bank's tensors (views: no copy); adapter i's
    scaling is s_i / N, so the sum of the active adapters equals MoLE with uniform gates.
    """
    from peft import LoraConfig, get_peft_model

    names = list(bank.names)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(bank.targets), lora_dropout=0.0, bias="none")
    peft_model = get_peft_model(base.model, config, adapter_name=names[0], low_cpu_mem_usage=True)
    for name in names[1:]:
        peft_model.add_adapter(name, config, low_cpu_mem_usage=True)
    inner = peft_model.base_model.model
    n = len(names)
    for module_name, experts in bank.targets.items():
        layer = inner.get_submodule(module_name)
        scalings = experts.scaling.float().tolist()
        for i, adapter in enumerate(names):
            layer.lora_A[adapter].weight = nn.Parameter(experts.lora_A[i], requires_grad=False)
            layer.lora_B[adapter].weight = nn.Parameter(experts.lora_B[i], requires_grad=False)
            layer.scaling[adapter] = scalings[i] / n
    peft_model.base_model.set_adapter(names, inference_mode=True)  # all N adapters active at once
    meta = [k for k, p in peft_model.named_parameters() if p.is_meta]
    if meta:
        raise RuntimeError(f"PEFT adapters left on the meta device: {meta[:3]}")
    trainable = [k for k, p in peft_model.named_parameters() if p.requires_grad]
    if trainable:
        raise RuntimeError(f"PEFT adapters should be frozen, found trainable {trainable[:3]}")
    return peft_model


def remove_peft(base: BaseModel, peft_model) -> None:
    model = peft_model.base_model.unload()
    if model is not base.model:  # pragma: no cover - unload returns the wrapped model itself
        raise RuntimeError("PEFT unload returned a different model")
    for attribute in ("peft_config", "_hf_peft_config_loaded"):
        if attribute in model.__dict__:
            delattr(model, attribute)


# ---------------------------------------------------------------------------------------------- cost estimates (skip rules)


def linear_inventory(base: BaseModel, batch: int, source_len: int, target_len: int, granularity: str) -> list[dict[str, Any]]:
    """Every block linear: dims, the tokens it reads per batch, and whether it computes its gate."""
    items = []
    for name, module in base.model.named_modules():
        if isinstance(module, nn.Linear) and base.family.module_pattern.match(name):
            position = base.family.position(name)
            tokens = batch * (target_len if position.stream == "decoder" else source_len)
            items.append(
                dict(name=name, projection=position.projection, d_in=module.in_features, d_out=module.out_features,
                     tokens=tokens, scope=base.family.scope(name, granularity))
            )
    return items


def estimate_costs(
    variant: str,
    inventory: list[dict[str, Any]],
    projections: tuple[str, ...],
    num_experts: int,
    rank: int,
    input_form: str,
    act_bytes: int,
    weight_bytes: int,
    reading: str = "delta/per_expert",
) -> dict[str, float]:
    """Rough per-step cost of a variant beyond the base: FLOPs, bytes moved by element-wise ops, op count,
    extra bytes held (experts, gates and optimizer state, saved activations). Only used to skip configurations
    that would obviously not fit or take far too long; never reported as a measurement."""
    n_e, r = num_experts, rank
    flops = traffic = ops = saved = static = 0.0
    seen_scopes: set[str] = set()
    for item in inventory:
        if item["projection"] not in projections:
            continue
        n, d_in, d_out = item["tokens"], item["d_in"], item["d_out"]
        computes_gate = item["scope"] not in seen_scopes
        seen_scopes.add(item["scope"])
        static += n_e * r * (d_in + d_out) * weight_bytes
        low_rank = 4.0 * n * n_e * r * (d_in + d_out)  # forward + input-gradient backward
        # saved-activation factors roughly calibrated on the tiny model (CPU, fp32): within ~30%
        if variant == "rank_space":
            flops += low_rank + 2.0 * n * n_e * r * d_in  # u recomputed in backward
            saved += n * d_in * act_bytes
            ops += 14
        elif variant == "rank_space_saved":
            flops += low_rank
            saved += n * n_e * r * (act_bytes + 4)
            ops += 12
        elif variant == "stacked":
            flops += low_rank + 6.0 * n * n_e * d_out
            traffic += 8.0 * n * n_e * d_out * act_bytes
            saved += n * n_e * d_out * act_bytes
            ops += 12
        elif variant == "loop":
            flops += low_rank + 6.0 * n * n_e * d_out
            traffic += 6.0 * n * n_e * d_out * act_bytes
            saved += 1.5 * n * n_e * (d_out + r) * act_bytes
            ops += 14 * n_e
        elif variant == "peft":
            flops += low_rank
            traffic += 4.0 * n * n_e * d_out * act_bytes
            saved += 2.0 * n * n_e * r * act_bytes
            ops += 10 * n_e
        if variant in MOLE_VARIANTS and computes_gate:
            feature = d_in if input_form == "hidden" else d_out
            gate_params = {"concat": n_e * feature * n_e, "per_expert": n_e * feature, "hidden": feature * n_e}[input_form]
            static += 16.0 * gate_params  # fp32 parameter + gradient + two AdamW moments
            ops += 40
            if variant == "stacked" and input_form != "hidden":
                traffic += 10.0 * n * n_e * d_out * 4
                saved += 2.0 * n * n_e * d_out * 4
            elif input_form == "concat":  # rank-space gate: one (B*T, N*r) @ (N*r, N) product
                flops += 6.0 * n * n_e * r * n_e
                traffic += 6.0 * n * n_e * r * 4
                if variant != "rank_space":  # rank_space recomputes the gate's intermediates in backward
                    saved += 3.0 * n * n_e * r * 4
            if input_form != "hidden" and reading.startswith("full/"):  # the gate reads W x: B^T y, y . e
                flops += 6.0 * n * n_e * r * d_out + 6.0 * n * d_out * (n_e * n_e if reading == "full/per_expert" and input_form == "concat" else n_e)
                saved += n * d_out * act_bytes
    return {"flops": flops, "traffic_bytes": traffic, "ops": ops, "saved_bytes": saved, "static_bytes": static}


def base_flops(inventory: list[dict[str, Any]], d_model: int, vocab: int, batch: int, target_len: int) -> float:
    linear = sum(4.0 * item["tokens"] * item["d_in"] * item["d_out"] for item in inventory)
    return linear + 4.0 * batch * target_len * d_model * vocab


# ---------------------------------------------------------------------------------------------- measurements


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_context(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_train_step(model, batch, parameters, router, alpha: float, device, precision: str) -> Callable[[], torch.Tensor]:
    optimizer = torch.optim.AdamW(parameters, lr=1e-5, weight_decay=0.0)

    def step() -> torch.Tensor:
        with autocast_context(device, precision):
            loss = model(**batch).loss
            if router is not None:
                loss = loss + alpha * router.balance_loss(router.pop_records())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def saved_for_backward_bytes(step: Callable[[], Any], model: nn.Module) -> int:
    """Run one training step, counting the bytes autograd keeps for backward during its forward: every
    saved tensor's storage once, parameters and buffers excluded. Device-independent activation memory."""
    held = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in held:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return sum(storages.values())


def timed(
    fn: Callable[[], Any], warmup: int, repeats: int, device: torch.device, max_seconds: float
) -> tuple[list[float], list[Any], str | None]:
    """Wall-clock seconds of each call (synchronised on CUDA). Stops early, keeping >= 1 measured call,
    when the projected total exceeds max_seconds."""
    times, outputs, note = [], [], None
    started = time.perf_counter()
    index, total = 0, warmup + repeats
    while index < total:
        synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        synchronize(device)
        elapsed = time.perf_counter() - t0
        if index >= warmup:
            times.append(elapsed)
            outputs.append(out)
        index += 1
        remaining = total - index
        if remaining and (time.perf_counter() - started) + remaining * elapsed > max_seconds:
            if times:
                note = f"stopped after {len(times)} of {repeats} timed repeats (time cap {max_seconds:.0f}s)"
                break
            warmup, total = index, index + 1  # still warming up: go straight to one timed call
            note = f"warm-up cut to {warmup}, 1 timed repeat (time cap {max_seconds:.0f}s)"
    return times, outputs, note


def reference_outputs(model, batch, router=None) -> dict[str, torch.Tensor]:
    """fp32 logits (and gate weights) on the check slice, eval mode, no grad."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if router is not None:
                with router.collect():
                    logits = model(**batch).logits.float()
                    records = router.pop_records()
                gates = torch.cat([p.float().reshape(-1) for _, p in records])
                return {"logits": logits, "gates": gates}
            return {"logits": model(**batch).logits.float()}
    finally:
        model.train(was_training)


def compare(a: dict[str, torch.Tensor] | None, b: dict[str, torch.Tensor] | None) -> dict[str, float] | None:
    if a is None or b is None:
        return None
    result = {}
    for key in ("logits", "gates"):
        if key in a and key in b:
            diff = (a[key] - b[key]).abs().max().item()
            scale = b[key].abs().max().item()
            result[f"{key}_max_abs_diff"] = diff
            result[f"{key}_max_rel_diff"] = diff / scale if scale > 0 else diff
    return result


def zero_gates(router) -> None:
    with torch.no_grad():
        for gate in router.gates.values():
            gate.projection.zero_()


# ---------------------------------------------------------------------------------------------- the run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="flan-t5-large", choices=sorted(SHAPES), help="shape of the random-weight FLAN-T5")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="auto: bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--model-dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of the frozen weights")
    parser.add_argument("--expert-dtype", default="auto", choices=["auto", "model", "bfloat16"],
                        help="dtype the experts are held in, by every variant: auto = bfloat16 under bf16 autocast, else the model's")
    parser.add_argument("--layers", type=int, default=None, help="encoder and decoder blocks (default: the shape's); widths unchanged")
    parser.add_argument("--experts", default="8,24,48,128", help="comma-separated expert counts N")
    parser.add_argument("--targets", default="qv,all", help=f"comma-separated target sets from {sorted(TARGET_SETS)}")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)} (base always runs)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--source-len", type=int, default=256)
    parser.add_argument("--target-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed training steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    parser.add_argument("--gen-tokens", type=int, default=32, help="greedy new tokens per generation (0: no generation)")
    parser.add_argument("--gen-repeats", type=int, default=3)
    parser.add_argument("--gen-batch", type=int, default=None, help="generation batch size (default: --batch)")
    parser.add_argument("--granularity", default="layer", choices=["matrix", "layer", "block", "network"])
    parser.add_argument("--input-form", default="concat", choices=["concat", "per_expert", "hidden"])
    parser.add_argument("--scope", default="sequence", choices=["sequence", "token"])
    parser.add_argument("--gate-readings", default="delta/per_expert",
                        help="comma-separated gate readings <expert_output>/<normalization> "
                             f"(expert_output in {list(EXPERT_OUTPUTS)}, normalization in {list(NORMALIZATIONS)}); "
                             "every MoLE variant runs once per reading, side by side (e.g. delta/per_expert,full/joint)")
    parser.add_argument("--gate-init-std", type=float, default=0.01, help="random gates, so the agreement check is not trivially uniform")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of L_balance in the MoLE step")
    parser.add_argument("--dropout", type=float, default=0.1, help="model dropout (FLAN-T5: 0.1)")
    parser.add_argument("--check-batch", type=int, default=2, help="examples in the fp32 agreement check (0: no check)")
    parser.add_argument("--max-config-seconds", type=float, default=None, help="skip/cut a configuration projected to take longer (default: 120 on CPU, 300 on CUDA)")
    parser.add_argument("--mem-limit-gib", type=float, default=None, help="skip a configuration estimated to need more (default: base peak + 50%% of available RAM on CPU, 1.5x the GPU's memory on CUDA)")
    parser.add_argument("--no-skip", action="store_true", help="run every configuration, whatever the estimates say")
    parser.add_argument("--no-rebase", dest="rebase", action="store_false",
                        help="measure the base once only (default: again before each (targets, N) group; ratios use that one)")
    parser.add_argument("--time-budget-s", type=float, default=0.0, help="stop starting new configurations after this many seconds (0: no limit)")
    parser.add_argument("--cpu-exact-rss", action="store_true",
                        help="CPU: fix glibc's mmap threshold so peak RSS tracks live tensors (slower steps; default off)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU); default: torch's choice")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON path (default outputs/bench/bench_<model>_<device>_<time>.json); the markdown goes next to it")
    args = parser.parse_args(argv)
    args.experts = [int(x) for x in str(args.experts).split(",") if x.strip()]
    args.targets = [t.strip() for t in str(args.targets).split(",") if t.strip()]
    args.variants = [v.strip() for v in str(args.variants).split(",") if v.strip()]
    args.gate_readings = list(dict.fromkeys(r.strip() for r in str(args.gate_readings).split(",") if r.strip()))
    if not args.gate_readings:
        parser.error("--gate-readings needs at least one <expert_output>/<normalization>")
    for reading in args.gate_readings:
        expert_output, _, normalization = reading.partition("/")
        try:
            check_reading(args.input_form, expert_output, normalization)
        except ValueError as error:
            parser.error(f"--gate-readings {reading!r}: {error}")
    for target in args.targets:
        if target not in TARGET_SETS:
            parser.error(f"--targets: {target!r} is not one of {sorted(TARGET_SETS)}")
    for variant in args.variants:
        if variant not in VARIANTS:
            parser.error(f"--variants: {variant!r} is not one of {list(VARIANTS)}")
    if not args.experts or min(args.experts) < 1:
        parser.error("--experts needs positive integers")
    if args.layers is not None and args.layers < 1:
        parser.error(f"--layers {args.layers}: need at least 1 encoder and 1 decoder block")
    return args


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
            step_ms_median=_median(times) * 1e3,
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
        produced = int(outputs[-1].shape[1] - 1)  # minus the decoder start token
        batch_size = gen_batch["input_ids"].shape[0]
        record = {
            "status": "ok",
            "ms_median": _median(times) * 1e3,
            "ms_all": [t * 1e3 for t in times],
            "new_tokens": produced,
            "batch": batch_size,
            "tokens_per_s": batch_size * produced / _median(times),
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
        log(f"building random {args.model} on {device} ({self.precision}, weights {args.model_dtype})")
        t0 = time.perf_counter()
        base = build_model(args.model, device, self.model_dtype, args.dropout, args.seed, args.layers)
        model = base.model
        batch = make_batch(args.batch, args.source_len, args.target_len, model.config.vocab_size, device, args.seed)
        gen_batch_size = args.gen_batch or args.batch
        gen_batch = {k: v[:gen_batch_size] for k, v in batch.items() if k != "labels"}
        check_batch = {k: v[: args.check_batch] for k, v in batch.items()} if args.check_batch > 0 else None
        self.inventory = linear_inventory(base, args.batch, args.source_len, args.target_len, args.granularity)
        self.meter.release()
        model_gib = self.meter.current()
        self.result = {
            "benchmark": "MoLE gate-training step, memory and generation (issue 7)",
            "created": _dt.datetime.now().isoformat(timespec="seconds"),
            "device": device_description(device),
            "settings": {
                **{k: v for k, v in vars(args).items()},
                "precision": self.precision,
                "memory_metric": self.meter.metric,
                "model_config": {**COMMON_CONFIG, **shape_config(args.model, args.layers), "dropout_rate": args.dropout},
                "expert_dtype": str(self.expert_dtype).removeprefix("torch."),
                "model_params": int(sum(p.numel() for p in model.parameters())),
                "untied_head": model.lm_head.weight is not model.shared.weight,
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
        flops = base_flops(self.inventory, model.config.d_model, model.config.vocab_size, args.batch, args.target_len)
        self.throughput = flops / self.base_step_s
        cpu = device.type == "cpu"
        self.bandwidth = 4e9 if cpu else 1.5e12
        self.op_overhead = 20e-6 if cpu else 15e-6
        if args.mem_limit_gib is not None:
            self.mem_limit_gib = args.mem_limit_gib
        elif cpu:
            available = _mem_available_bytes()
            self.mem_limit_gib = (self.base_peak_gib or 0) + 0.5 * (available / GIB if available else 8.0)
        else:
            self.mem_limit_gib = 1.5 * torch.cuda.get_device_properties(device).total_memory / GIB
        self.result["settings"]["mem_limit_gib"] = self.mem_limit_gib

        for target_set in args.targets:
            projections = TARGET_SETS[target_set]
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
        retied = model.lm_head.weight is model.shared.weight
        if leftovers or retied or hasattr(model, "mole_gate") or isinstance(model.encoder.embed_tokens, ScaledEmbedding):
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
            remove_mole(base, bank)

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


# ---------------------------------------------------------------------------------------------- targets and report


def _find(result: dict[str, Any], targets: str, experts: int, variant: str) -> dict[str, Any] | None:
    for record in result["configs"]:
        if record["targets"] == targets and record["experts"] == experts and record["variant"] == variant:
            return record
    return None


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 7's targets (meant for the GPU run): value, limit, met (None when not measured)."""
    rows = []
    for targets in result["settings"]["targets"]:
        for experts, limit in STEP_RATIO_TARGETS.items():
            record = _find(result, targets, experts, "rank_space")
            if record is None:
                continue
            value = record.get("ratio_to_base")
            rows.append(dict(name=f"MoLE step / base step, N={experts}", targets=targets, experts=experts, value=value,
                             op="<=", limit=limit, met=(value <= limit) if _finite(value) else None))
        experts, limit = PEFT_OVER_MOLE_TARGET
        mole, peft = _find(result, targets, experts, "rank_space"), _find(result, targets, experts, "peft")
        if mole is not None and peft is not None:
            ok = mole.get("status") == "ok" and peft.get("status") == "ok"
            value = peft["step_ms_median"] / mole["step_ms_median"] if ok else None
            rows.append(dict(name=f"PEFT multi-adapter step / MoLE step, N={experts}", targets=targets, experts=experts,
                             value=value, op=">=", limit=limit, met=(value >= limit) if _finite(value) else None))
        experts, limit = MEMORY_TARGET
        record = _find(result, targets, experts, "rank_space")
        if record is not None:
            value = record.get("peak_over_base_gib")
            rows.append(dict(name=f"MoLE peak memory - base peak (GiB), N={experts}", targets=targets, experts=experts,
                             value=value, op="<=", limit=limit, met=(value <= limit) if _finite(value) else None,
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
    if record.get("status") == "ok" and _finite(record.get(f"{kind}_gib")):
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
    return format(value, spec) if _finite(value) else "-"


def render_markdown(result: dict[str, Any]) -> str:
    settings, device, base = result["settings"], result["device"], result.get("base") or {}
    readings = settings.get("gate_readings") or ["delta/per_expert"]
    variants = [name for name, _, _ in variant_runs([v for v in VARIANTS if v in settings["variants"]], readings)]
    model_config = settings.get("model_config") or {}
    lines = [
        f"# MoLE benchmark: {settings['model']} (random weights) on {device.get('name')}",
        "",
        f"torch {device.get('torch')}, {settings['precision']}, weights {settings['model_dtype']}, experts {settings.get('expert_dtype')}; "
        f"{model_config.get('num_layers', '?')}+{model_config.get('num_decoder_layers', '?')} blocks; "
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
        lines += ["", "## Issue 7 targets (for the GPU run; informational here)", "", "| target | targets | value | limit | met |", "|---|---|---|---|---|"]
        for row in result["targets"]:
            met = {True: "yes", False: "no", None: "n/a"}[row["met"]]
            lines.append(f"| {row['name']} | {row['targets']} | {_fmt(row['value'])} | {row['op']} {row['limit']} | {met} |")
    notes = [r for r in result.get("configs", []) if r.get("status") in ("skipped", "oom", "error") or r.get("note")]
    if notes:
        lines += ["", "## Notes", ""]
        for r in notes:
            lines.append(f"- {r['targets']} N={r['experts']} {r['variant']}: {r.get('status')}: {r.get('reason') or r.get('note')}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    bench = Bench(args)
    result = bench.run()
    markdown = render_markdown(result)
    print(markdown)
    log(f"wrote {bench.out} and {bench.md_path}")
    return result


if __name__ == "__main__":  # pragma: no cover
    main()
