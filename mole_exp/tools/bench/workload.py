"""What is benchmarked: FLAN-T5-shaped models (`--family t5`) or decoder-only causal LMs with Qwen2.5's or Llama 3.2's
widths (`--family causal`), with random weights (no download), random batches and random LoRA experts per target set.

`build_bench_model(family, shape, ...)` is the one constructor of either family's model (other benchmarks call it);
`make_batch(base, ...)` the family's training batch, `generation_batch(base, batch, size)` its generation prompts."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from mole_exp.base.family import family_for
from mole_exp.base.models import BaseModel, freeze
from mole_exp.experts.bank import ExpertBank, TargetExperts

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

# Decoder-only shapes (from the checkpoints' config.json), so no download is needed. Random weights; the vocabulary is
# the real one's size (the head's cost is part of every step). Both real models tie the head to the embeddings.
CAUSAL_SHAPES: dict[str, dict[str, object]] = {
    "tiny-causal": dict(architecture="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=False),
    "qwen2.5-0.5b": dict(architecture="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6),
    "llama-3.2-1b": dict(architecture="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0, rms_norm_eps=1e-5),
}
CAUSAL_OVERRIDES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size")
CAUSAL_TARGET_SETS = {"qv": ("q_proj", "v_proj"), "all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}
BENCH_FAMILIES = {"t5": (SHAPES, TARGET_SETS, "flan-t5-large"), "causal": (CAUSAL_SHAPES, CAUSAL_TARGET_SETS, "qwen2.5-0.5b")}


def family_shapes(family: str) -> dict[str, dict]:
    if family not in BENCH_FAMILIES:
        raise ValueError(f"--family {family!r} is not one of {sorted(BENCH_FAMILIES)}")
    return BENCH_FAMILIES[family][0]


def target_sets(family: str) -> dict[str, tuple[str, ...]]:
    family_shapes(family)
    return BENCH_FAMILIES[family][1]


def default_shape(family: str) -> str:
    family_shapes(family)
    return BENCH_FAMILIES[family][2]


def causal_config(shape: str, layers: int | None = None, overrides: dict[str, int] | None = None) -> dict[str, object]:
    """`shape`'s hyper-parameters (CAUSAL_SHAPES), with `layers` blocks and `overrides` (keys in CAUSAL_OVERRIDES)."""
    if shape not in CAUSAL_SHAPES:
        raise ValueError(f"--model {shape!r} is not one of the causal shapes {sorted(CAUSAL_SHAPES)}")
    config = dict(CAUSAL_SHAPES[shape])
    for key, value in (overrides or {}).items():
        if key not in CAUSAL_OVERRIDES:
            raise ValueError(f"--set {key}={value}: {key!r} is not one of {list(CAUSAL_OVERRIDES)}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"--set {key}={value!r}: needs a positive integer")
        config[key] = value
    if layers is not None:
        if layers < 1:
            raise ValueError(f"--layers {layers} must be >= 1")
        config["num_hidden_layers"] = layers
    heads, kv_heads, hidden = config["num_attention_heads"], config["num_key_value_heads"], config["hidden_size"]
    if hidden % heads or heads % kv_heads:
        raise ValueError(f"hidden_size={hidden}, num_attention_heads={heads}, num_key_value_heads={kv_heads}: the hidden size must split "
                         f"into the heads and the heads into the key/value heads")
    return config


def build_causal_model(
    shape: str, device: torch.device, dtype: torch.dtype, dropout: float, seed: int, layers: int | None = None,
    overrides: dict[str, int] | None = None,
) -> BaseModel:
    """A decoder-only causal LM (Llama- or Qwen2-shaped, CAUSAL_SHAPES) with random weights drawn from `seed` alone."""
    import transformers

    config = causal_config(shape, layers, overrides)
    architecture = config.pop("architecture")
    config_class, model_class = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}[architecture]
    hf_config = getattr(transformers, config_class)(**config, attention_dropout=dropout, max_position_embeddings=32768,
                                                    bos_token_id=1, eos_token_id=2, pad_token_id=0)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = getattr(transformers, model_class)(hf_config)
    model = model.to(device=device, dtype=dtype)
    model.generation_config.max_length = None
    freeze(model)
    changed = {k: v for k, v in (overrides or {}).items()}
    if layers is not None:
        changed["num_hidden_layers"] = layers
    model_id = f"random-{shape}" + "".join(f"-{k}={v}" for k, v in sorted(changed.items()))
    return BaseModel(model=model, tokenizer=None, model_id=model_id, family=family_for(model))


def build_bench_model(
    family: str, shape: str, device: torch.device, dtype: torch.dtype, dropout: float, seed: int, layers: int | None = None,
    overrides: dict[str, int] | None = None,
) -> BaseModel:
    """The benchmark's model of `family` ("t5" | "causal") and `shape`, random weights from `seed`: the one constructor."""
    if family == "causal":
        return build_causal_model(shape, device, dtype, dropout, seed, layers, overrides)
    family_shapes(family)
    if overrides:
        raise ValueError(f"--set {overrides} applies to --family causal only (T5 shapes: --model, --layers)")
    return build_model(shape, device, dtype, dropout, seed, layers)


def model_config_record(family: str, shape: str, layers: int | None, overrides: dict[str, int] | None, dropout: float) -> dict:
    """The hyper-parameters the run's model was built with (for the JSON)."""
    if family == "causal":
        return {**causal_config(shape, layers, overrides), "attention_dropout": dropout}
    return {**COMMON_CONFIG, **shape_config(shape, layers), "dropout_rate": dropout}


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
    with torch.random.fork_rng(devices=[]), torch.device(device):  # the weights depend on `seed` alone
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(config)
        if model.lm_head.weight is model.shared.weight:
            # transformers 5 forces T5Config.tie_word_embeddings=True (a checkpoint whose head differs loads
            # untied); FLAN-T5's head is untied, so give it its own weights (HF's init for an untied head)
            model.lm_head.weight = nn.Parameter(torch.randn_like(model.shared.weight) * config.initializer_factor)
    model = model.to(device=device, dtype=dtype)
    model.generation_config.max_length = None
    freeze(model)
    model_id = f"random-{shape}" + (f"-{layers}+{layers}-layers" if layers is not None else "")
    return BaseModel(model=model, tokenizer=None, model_id=model_id, family=family_for(model))


def make_batch(base: BaseModel, batch: int, source_len: int, target_len: int, vocab: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """The family's random training batch (seq2seq: sources and targets; causal: prompt + target in one sequence)."""
    make = make_causal_batch if base.family.causal else make_seq2seq_batch
    return make(batch, source_len, target_len, vocab, device, seed)


def make_seq2seq_batch(batch: int, source_len: int, target_len: int, vocab: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """Random tokens; source lengths vary in [L/2, L] (the first example is full length) so masks matter."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, vocab, (batch, source_len), generator=generator)
    lengths = torch.randint(max(1, source_len // 2), source_len + 1, (batch,), generator=generator)
    lengths[0] = source_len
    attention_mask = (torch.arange(source_len)[None, :] < lengths[:, None]).long()
    input_ids = input_ids * attention_mask  # pad id 0
    labels = torch.randint(2, vocab, (batch, target_len), generator=generator)
    return {k: v.to(device) for k, v in {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}.items()}


def make_causal_batch(batch: int, source_len: int, target_len: int, vocab: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """A causal LM's training batch, as training makes it: each row a prompt of [L/2, L] random tokens (the first full
    length) then `target_len` target tokens, padded on the right to L + target_len; the loss on the targets only.
    `prompt_lengths` (B,) says where each target starts (generation_batch takes the prompts from it)."""
    generator = torch.Generator().manual_seed(seed)
    width = source_len + target_len
    tokens = torch.randint(3, vocab, (batch, width), generator=generator)
    lengths = torch.randint(max(1, source_len // 2), source_len + 1, (batch,), generator=generator)
    lengths[0] = source_len
    positions = torch.arange(width)[None, :]
    attention_mask = (positions < (lengths + target_len)[:, None]).long()  # (B, L + T), right padding
    input_ids = tokens * attention_mask  # pad id 0
    is_target = (positions >= lengths[:, None]) & attention_mask.bool()
    labels = torch.where(is_target, input_ids, torch.full_like(input_ids, -100))
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return {**{k: v.to(device) for k, v in out.items()}, "prompt_lengths": lengths.to(device)}


def training_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the model's forward takes of a batch (not `prompt_lengths`)."""
    return {k: v for k, v in batch.items() if k != "prompt_lengths"}


def generation_batch(base: BaseModel, batch: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
    """The first `size` rows' prompts: T5's sources as they are; a causal LM's prompts left-padded, as generation pads."""
    if not base.family.causal:
        return {k: v[:size] for k, v in batch.items() if k not in ("labels", "prompt_lengths")}
    lengths = batch["prompt_lengths"][:size]
    width = int(lengths.max())
    input_ids = torch.zeros(len(lengths), width, dtype=batch["input_ids"].dtype, device=lengths.device)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths.tolist()):
        input_ids[row, width - length :] = batch["input_ids"][row, :length]
        attention_mask[row, width - length :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


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
