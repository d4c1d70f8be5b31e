"""Model-family specifics, kept in one place.

Everything that knows how a model family names its modules lives here: which stacks it has, how a
module name splits into (stack, block, sub-layer, projection), and therefore which gate *scope* a
linear belongs to at each granularity, and which token *streams* its adapted linears read. Nothing outside
this module names a family's modules (tests/test_family_names.py greps the package). The causal LMs (Llama, Qwen2,
Mistral, Phi-3: one stack, one causal token stream) are one `ModelFamily`, CAUSAL_FAMILY.

The interface the mechanism (mole_exp/mole/) reads of a family:

    family.position(module_name) -> ModulePosition     where a linear sits; its `.stream`, the name of the
                                                        token sequence it reads
    family.scope(module_name, granularity) -> str      the gate it belongs to (a scope never mixes streams)
    family.streams -> tuple[Stream, ...]               every stream, each saying
        name           what `ModulePosition.stream` calls it
        module         the submodule (a name for `model.get_submodule`) whose forward carries the stream's
                       inputs: the router puts a forward pre-hook on it, which starts a new pass of the gates
        mask_argument  the keyword of that forward holding the stream's valid-token mask, or None (every token
                       valid): a bidirectional stream's sequence-scope gates average over its valid tokens ((B, T));
                       a causal stream's over its valid tokens <= t ((B, cached + new tokens) during cached
                       generation), which skips left padding in batched generation and right padding in training
        causal         the stream is read left to right and may be decoded step by step with a KV cache
                       (found in the forward's `past_key_values` / `cache` keyword): its sequence-scope gates
                       average over the prefix (position t: tokens <= t), continuing a running sum (and, with a
                       mask, a running count per row) across cached steps, so teacher forcing and cached
                       generation give identical weights; beam
                       search's reordering of the cache is followed (mole_exp/mole/beam_search.py)

T5 (an encoder-decoder) has three streams: the encoder's input (bidirectional, its attention mask), the
decoder's prefix (causal), and the cross-attention memory, the decoder's cross-attention keys/values, which
read the encoder's output (bidirectional, the decoder forward's encoder attention mask). A decoder-only family
is one entry with a single causal stream on its decoder module: CAUSAL_FAMILY's
`Stream(name="decoder", module="model", mask_argument="attention_mask", causal=True)`, whose mask skips the pads of a
left-padded generation batch and a right-padded training batch (mole_exp/mole/gates.py `pool_causal`). T5's decoder
prefix is never padded before a valid token, so its stream has no mask and pools over every position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.nn as nn

GRANULARITIES = ("matrix", "layer", "block", "network")


def check_granularity(granularity: str, key: str) -> str:
    """A gate granularity (the config key `key` names it): the one check, made where a composer reads it."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"{key}={granularity!r} is not one of {list(GRANULARITIES)}")
    return granularity


@dataclass(frozen=True)
class Stream:
    """One token sequence that adapted linears read (see the module docstring)."""

    name: str
    module: str
    mask_argument: str | None
    causal: bool


@dataclass(frozen=True)
class ModulePosition:
    """Where an adapted linear sits in the model."""

    name: str  # full module name, e.g. "encoder.block.3.layer.0.SelfAttention.q" or "model.layers.3.self_attn.q_proj"
    stack: str  # "encoder" | "decoder" (T5) | "model" (causal LMs)
    block: int  # block index inside its stack
    sublayer_index: int  # the sub-layer's index inside the block (T5: 0 self-attn, 1 cross-attn or FFN, 2 FFN; causal: 0 self_attn, 1 mlp)
    sublayer: str  # "SelfAttention" | "EncDecAttention" | "DenseReluDense" | "self_attn" | "mlp"
    projection: str  # "q", "v", "wi_0", "q_proj", "qkv_proj", ...
    causal_lm: bool = False  # a decoder-only model: every linear reads the one causal stream

    @property
    def stream(self) -> str:
        """Which token sequence the linear reads: "encoder", "decoder", or "memory".

        "memory" is the decoder's cross-attention keys/values, which read the encoder's output, not the
        decoder's prefix; their gates pool over the encoder's valid tokens, like the encoder's.
        A causal LM has one stream, read causally like T5's decoder (sequence-scope gates pool over the
        prefix), so it is named "decoder".
        """
        if self.causal_lm:
            return "decoder"
        if self.stack == "encoder":
            return "encoder"
        if self.sublayer == "EncDecAttention" and self.projection in ("k", "v"):
            return "memory"
        return "decoder"


@dataclass(frozen=True)
class ModelFamily:
    name: str
    model_types: tuple[str, ...]
    stacks: tuple[str, ...]
    module_pattern: re.Pattern
    # short target names users write in configs -> the leaf names the family uses
    attention_projections: tuple[str, ...]
    all_linear_projections: tuple[str, ...]
    streams: tuple[Stream, ...]  # the token sequences its adapted linears read (module docstring)
    kind: str = "seq2seq"  # "seq2seq" (encoder-decoder) | "causal" (decoder-only)
    blocks_attribute: str = "block"  # the ModuleList of blocks inside a stack module
    sublayer_index: tuple[tuple[str, int], ...] = ()  # where module names carry no sub-layer index: name -> index
    # what a model's stacks are, from the model: stack name -> attribute path (T5: "encoder" -> model.encoder)
    stack_paths: tuple[tuple[str, str], ...] = ()

    @property
    def causal(self) -> bool:
        return self.kind == "causal"

    def position(self, module_name: str) -> ModulePosition:
        match = self.module_pattern.match(module_name)
        if match is None:
            raise ValueError(
                f"module {module_name!r} is not a block linear of a {self.name} model "
                f"(expected a name matching {self.module_pattern.pattern})"
            )
        groups = match.groupdict()
        sublayer_index = int(groups["layer"]) if groups.get("layer") is not None else dict(self.sublayer_index)[match["sublayer"]]
        return ModulePosition(
            name=module_name,
            stack=match["stack"],
            block=int(match["block"]),
            sublayer_index=sublayer_index,
            sublayer=match["sublayer"],
            projection=match["projection"],
            causal_lm=self.causal,
        )

    def scope(self, module_name: str, granularity: str) -> str:
        """The gate a linear belongs to: linears with the same scope share one gate.

        A scope never mixes token streams (see `ModulePosition.stream`): a gate's weights are per
        example (or per token) of the sequence it reads, so the decoder's cross-attention keys/values
        get a gate of their own ("...:memory") at the layer, block and network granularities.
        """
        pos = self.position(module_name)
        if granularity == "matrix":
            return module_name
        suffix = ":memory" if pos.stream == "memory" else ""
        if granularity == "layer":
            return f"{pos.stack}.block.{pos.block}.layer.{pos.sublayer_index}{suffix}"
        if granularity == "block":
            return f"{pos.stack}.block.{pos.block}{suffix}"
        if granularity == "network":
            return f"network.{pos.stream}"
        raise ValueError(f"granularity {granularity!r}: check it with check_granularity where it is read")

    def stack_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        paths = dict(self.stack_paths)
        return {stack: model.get_submodule(paths.get(stack, stack)) for stack in self.stacks}

    def stream(self, name: str) -> Stream:
        for stream in self.streams:
            if stream.name == name:
                return stream
        raise ValueError(f"stream {name!r} is not one of the {self.name} family's streams {[s.name for s in self.streams]}")

    def num_blocks(self, model: nn.Module, stack: str) -> int:
        return len(getattr(self.stack_modules(model)[stack], self.blocks_attribute))

    def example_module(self, model: nn.Module) -> str:
        """One adaptable linear's name (for error messages): what this family's module names look like."""
        return next((name for name, _ in model.named_modules() if self.module_pattern.match(name)), "")

    def depth_fraction(self, model: nn.Module, module_name: str) -> tuple[float, float]:
        """The [start, end) fraction of depth a linear's block covers, counted inside its own stack.

        Blocks are counted from the input end: block 0 of the encoder (closest to the embeddings) is
        depth 0.0 and the encoder's last block ends at 1.0; the decoder is counted the same way on its
        own (block 0 next to its embeddings). So `layer_range=[0.8, 1.0]` means the top 20% of the
        encoder *and* the top 20% of the decoder.
        """
        pos = self.position(module_name)
        n = self.num_blocks(model, pos.stack)
        return pos.block / n, (pos.block + 1) / n


T5_FAMILY = ModelFamily(
    name="t5",
    model_types=("t5", "mt5", "umt5"),
    stacks=("encoder", "decoder"),
    module_pattern=re.compile(
        r"^(?P<stack>encoder|decoder)\.block\.(?P<block>\d+)\.layer\.(?P<layer>\d+)\."
        r"(?P<sublayer>SelfAttention|EncDecAttention|DenseReluDense)\.(?P<projection>q|k|v|o|wi|wi_0|wi_1|wo)$"
    ),
    attention_projections=("q", "k", "v", "o"),
    all_linear_projections=("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"),
    streams=(
        Stream(name="encoder", module="encoder", mask_argument="attention_mask", causal=False),
        Stream(name="decoder", module="decoder", mask_argument=None, causal=True),
        Stream(name="memory", module="decoder", mask_argument="encoder_attention_mask", causal=False),
    ),
)

# Decoder-only causal LMs from transformers (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM,
# Phi3ForCausalLM): blocks at model.layers.<i>, attention and MLP projections; Phi-3 fuses q/k/v into
# qkv_proj and gate/up into gate_up_proj. One stack ("model"), one causal stream.
CAUSAL_FAMILY = ModelFamily(
    name="causal-lm",
    model_types=("llama", "qwen2", "mistral", "phi3"),
    stacks=("model",),
    module_pattern=re.compile(
        r"^(?P<stack>model)\.layers\.(?P<block>\d+)\.(?P<sublayer>self_attn|mlp)\."
        r"(?P<projection>q_proj|k_proj|v_proj|o_proj|qkv_proj|gate_proj|up_proj|down_proj|gate_up_proj)$"
    ),
    attention_projections=("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj"),
    all_linear_projections=("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "gate_proj", "up_proj", "down_proj", "gate_up_proj"),
    # one causal stream on the decoder stack (ModulePosition.stream is "decoder", as T5's decoder prefix); its gates pool
    # over the valid tokens <= t of the causal LM's attention_mask (left padding in generation, right padding in training)
    streams=(Stream(name="decoder", module="model", mask_argument="attention_mask", causal=True),),
    kind="causal",
    blocks_attribute="layers",
    sublayer_index=(("self_attn", 0), ("mlp", 1)),
)

FAMILIES = (T5_FAMILY, CAUSAL_FAMILY)


def family_for(model: nn.Module) -> ModelFamily:
    """The family of a model, or of a transformers config (checked before weights load)."""
    config = model if hasattr(model, "model_type") and not isinstance(model, nn.Module) else getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    known = [t for f in FAMILIES for t in f.model_types]
    raise ValueError(f"model_type {model_type!r} is not supported; supported model types: {known}")


# The linears a LoRA adapts when a config names none (`targets: null` in conf/experts/tiny.yaml and
# conf/train_experts.yaml): PEFT's own default for the model type, and where PEFT has none (Phi-3 in peft 0.21), the
# fused attention projection that holds the query and value.
DEFAULT_LORA_TARGETS_BEYOND_PEFT = {"phi3": ("qkv_proj",)}


def default_lora_targets(model: nn.Module) -> list[str]:
    """T5: [q, v]; Llama, Qwen2, Mistral: [q_proj, v_proj] (peft.utils.constants' mapping); Phi-3: [qkv_proj]."""
    family_for(model)  # an unsupported model type is refused first, naming the supported ones
    return default_lora_targets_for(model.config.model_type)


def default_lora_targets_for(model_type: str) -> list[str]:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type) or DEFAULT_LORA_TARGETS_BEYOND_PEFT.get(model_type)
    if not targets:
        raise ValueError(f"no default LoRA targets for model_type {model_type!r}; name them (e.g. experts.tiny.targets=[...])")
    return list(targets)
