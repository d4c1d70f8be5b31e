"""What is benchmarked: FLAN-T5-shaped models with random weights (no download), random batches and random
LoRA experts per target set."""

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
