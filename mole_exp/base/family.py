"""Model-family specifics, kept in one place.

Everything that knows how a model family names its modules lives here: which stacks it has, how a
module name splits into (stack, block, sub-layer, projection), and therefore which gate *scope* a
linear belongs to at each granularity. Adding a decoder-only family means adding one `ModelFamily`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.nn as nn

GRANULARITIES = ("matrix", "layer", "block", "network")


@dataclass(frozen=True)
class ModulePosition:
    """Where an adapted linear sits in the model."""

    name: str  # full module name, e.g. "encoder.block.3.layer.0.SelfAttention.q"
    stack: str  # "encoder" | "decoder"
    block: int  # block index inside its stack
    layer: int  # sub-layer index inside the block (T5: 0 self-attn, 1 cross-attn or FFN, 2 FFN)
    sublayer: str  # "SelfAttention" | "EncDecAttention" | "DenseReluDense"
    projection: str  # "q", "v", "wi_0", ...

    @property
    def stream(self) -> str:
        """Which token sequence the linear reads: "encoder", "decoder", or "memory".

        "memory" is the decoder's cross-attention keys/values, which read the encoder's output, not the
        decoder's prefix; their gates pool over the encoder's valid tokens, like the encoder's.
        """
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

    def position(self, module_name: str) -> ModulePosition:
        match = self.module_pattern.match(module_name)
        if match is None:
            raise ValueError(
                f"module {module_name!r} is not a block linear of a {self.name} model "
                f"(expected a name matching {self.module_pattern.pattern})"
            )
        return ModulePosition(
            name=module_name,
            stack=match["stack"],
            block=int(match["block"]),
            layer=int(match["layer"]),
            sublayer=match["sublayer"],
            projection=match["projection"],
        )

    def scope(self, module_name: str, granularity: str) -> str:
        """The gate a linear belongs to: linears with the same scope share one gate.

        A scope never mixes token streams (see `ModulePosition.stream`): a gate's weights are per
        example (or per token) of the sequence it reads, so the decoder's cross-attention keys/values
        get a gate of their own ("...:memory") at the layer, block and network granularities.
        """
        if granularity not in GRANULARITIES:
            raise ValueError(f"gate granularity {granularity!r} is not one of {list(GRANULARITIES)}")
        pos = self.position(module_name)
        if granularity == "matrix":
            return module_name
        suffix = ":memory" if pos.stream == "memory" else ""
        if granularity == "layer":
            return f"{pos.stack}.block.{pos.block}.layer.{pos.layer}{suffix}"
        if granularity == "block":
            return f"{pos.stack}.block.{pos.block}{suffix}"
        return f"network.{pos.stream}"

    def stack_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        return {stack: getattr(model, stack) for stack in self.stacks}

    def num_blocks(self, model: nn.Module, stack: str) -> int:
        return len(getattr(model, stack).block)

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
)

FAMILIES = (T5_FAMILY,)


def family_for(model: nn.Module) -> ModelFamily:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    known = [t for f in FAMILIES for t in f.model_types]
    raise ValueError(f"model_type {model_type!r} is not supported; supported model types: {known}")
