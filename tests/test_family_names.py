"""Model-family specifics live in one place (mole_exp/base/family.py): no T5 module name appears anywhere else in
the package's core, comments and docstrings included, so that a second family (decoder-only) is one entry there.

Allowed elsewhere (justified): mole_exp/tools/, which builds its own T5 bases on purpose (the benchmark's
random-weight FLAN-T5 shapes, the mini reproduction's small T5); mole_exp/base/models.py, which builds the
tiny T5 with the real vocabulary for the tests (a T5 constructor, not a reading of module names); and
mole_exp/harness/, the lm-eval bridge, whose prose speaks of an encoder-decoder's encoder and decoder as lm-eval
and transformers do (which side gets the prompt, `decoder_start_token_id`), never of module names."""

from __future__ import annotations

import re

from tests.conftest import ROOT

PACKAGE = ROOT / "mole_exp"
FAMILY_MODULE = PACKAGE / "base" / "family.py"
ALLOWED = [PACKAGE / "tools", PACKAGE / "base" / "models.py", PACKAGE / "harness",
           PACKAGE / "base" / "text_format.py"]  # text_format: how each family reads text (the text side of family.py)
T5_NAMES = re.compile(
    r"(?<![-\w])(encoder|decoder)(?![-\w])"  # T5's stacks (and its streams); not "encoder-decoder", "decoder-only"
    r"|EncDecAttention|SelfAttention|DenseReluDense"  # its sub-layers
    r"|\bblock\.\d|\.block\b|[\"']block\.|\blayer\.\d|[\"']layer\."  # block / sub-layer module paths
    r"|[\"'](q|k|v|o|wi|wo|wi_0|wi_1)[\"']|\.(q|k|v|o|wi|wo|wi_0|wi_1)\b(?!\()"  # projection names
)


def t5_names(text: str) -> list[str]:
    return [f"{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1) if T5_NAMES.search(line)]


def test_the_pattern_finds_t5_names():
    assert t5_names('x = model.encoder\nname = "decoder.block.0.layer.1.EncDecAttention.k"\ntargets = ("q", "v")\n')
    assert len(t5_names('a = "SelfAttention"\nb = layer.wo\nc = f"{stack}.block.{i}"\n')) == 3
    assert not t5_names("granularity = 'block'  # a gate per block\nself.stream_masks = {}\nx.float()\n")
    assert not t5_names("# encoder-decoders and decoder-only models\n")  # kinds of architecture, not module names


def test_no_t5_module_name_outside_the_family_module():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == FAMILY_MODULE or any(path == a or a in path.parents for a in ALLOWED):
            continue
        hits = t5_names(path.read_text())
        if hits:
            found[str(path.relative_to(ROOT))] = hits
    assert not found, "T5 names outside mole_exp/base/family.py:\n" + "\n".join(f"{p}: {h}" for p, hs in found.items() for h in hs)
    assert t5_names(FAMILY_MODULE.read_text())  # where they do live


def test_the_router_takes_its_streams_from_the_family(tiny_bank):
    """T5's entry: three streams on two modules; the router hooks exactly those modules and pools each linear's
    gate as its stream says (causal: per position; bidirectional: one vector per example over valid tokens)."""
    import torch

    from mole_exp.base.family import CAUSAL_FAMILY, T5_FAMILY, Stream
    from mole_exp.mole.inject import inject_mole, remove
    from tests.conftest import make_tiny

    assert [(s.name, s.module, s.mask_argument, s.causal) for s in T5_FAMILY.streams] == [
        ("encoder", "encoder", "attention_mask", False), ("decoder", "decoder", None, True),
        ("memory", "decoder", "encoder_attention_mask", False)]
    # a decoder-only family: one causal stream whose gates skip the pads of its attention_mask (mole/gates.py pool_causal)
    assert CAUSAL_FAMILY.streams == (Stream(name="decoder", module="model", mask_argument="attention_mask", causal=True),)
    base = make_tiny()
    router = inject_mole(base, tiny_bank, {"granularity": "network", "init_std": 0.5})
    hooked = {name for name, module in base.model.named_modules() if module._forward_pre_hooks}
    assert hooked == {s.module for s in T5_FAMILY.streams}
    assert router.streams == {s.name: s for s in T5_FAMILY.streams}
    batch = base.tokenizer(["a b c d e f", "a b"], return_tensors="pt", padding=True)
    labels = base.tokenizer(["x y z", "x y z"], return_tensors="pt").input_ids
    with torch.no_grad(), router.collect():
        base.model(**batch, labels=labels)
        weights = {record.scope: record.probs for record in router.pop_records()}
    for scope, probs in weights.items():  # network granularity: one gate per stream, named after it
        stream = T5_FAMILY.stream(scope.removeprefix("network."))
        assert probs.shape[1] == (labels.shape[1] if stream.causal else 1), scope
    remove(base, router)
