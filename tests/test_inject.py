"""`inject` and `remove` are inverses: after `remove` the model equals the base bit for bit (state dict, module
tree, no hook left on any module, identical outputs), for MoLE at every granularity and implementation, for the
mixer's token router, and through `Composer.release` for every composer that changes the base."""

from __future__ import annotations

import pytest
import torch

from mole_exp.mole.inject import inject_mole, remove
from tests.conftest import make_tiny, needs_tokenizer

HOOK_DICTS = (
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called", "_backward_pre_hooks", "_backward_hooks", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)


def snapshot(model: torch.nn.Module) -> dict:
    """Everything `remove` must restore: tensors (cloned), the module tree (names, types, identities), hooks."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "tree": [(name, type(module).__name__, id(module)) for name, module in model.named_modules()],
        "parameters": [(name, p.requires_grad, id(p)) for name, p in model.named_parameters()],
        "hooks": {name: {d: len(getattr(module, d, {})) for d in HOOK_DICTS} for name, module in model.named_modules()},
        "attributes": sorted(model.__dict__),
    }


def assert_same_model(model, before: dict) -> None:
    after = snapshot(model)
    assert after["tree"] == before["tree"]
    assert after["parameters"] == before["parameters"]
    assert after["hooks"] == before["hooks"]
    assert after["attributes"] == before["attributes"]
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key


def no_hooks_anywhere(model) -> bool:
    return all(not getattr(module, d, {}) for module in model.modules() for d in HOOK_DICTS)


def inputs(tokenizer):
    batch = tokenizer(["premise: a cat sat on the mat. hypothesis: a cat sat.", "Is this true?"], return_tensors="pt", padding=True)
    batch["labels"] = tokenizer(["yes", "it is not possible to tell"], return_tensors="pt", padding=True).input_ids
    return batch


def exercise(model, batch) -> torch.Tensor:
    """A training step's forward and backward, and a cached beam-search generation (the hooks' work)."""
    model.train()
    model(**batch).loss.backward()
    model.eval()
    with torch.no_grad():
        generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=4, num_beams=2)
    model.zero_grad(set_to_none=True)
    return generated


def assert_back_to_base(model, before: dict, batch, base_logits: torch.Tensor) -> None:
    """After remove: the same model bit for bit, no hook anywhere, the base's logits."""
    assert_same_model(model, before)
    assert no_hooks_anywhere(model)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, base_logits)


@pytest.mark.parametrize(
    "granularity,implementation,scope",
    [("matrix", "rank_space", "sequence"), ("layer", "rank_space_saved", "token"), ("block", "stacked", "sequence"),
     ("network", "rank_space", "sequence")],
)
def test_remove_inverts_inject_mole(tiny_bank, granularity, implementation, scope):
    base = make_tiny()
    model, batch = base.model, inputs(base.tokenizer)
    assert no_hooks_anywhere(model)  # the base carries none, so "as before" also means "none at all"
    before = snapshot(model)
    with torch.no_grad():
        base_logits = model(**batch).logits
    router = inject_mole(base, tiny_bank, {"granularity": granularity, "scope": scope, "init_std": 0.5}, implementation=implementation)
    with torch.no_grad():
        assert not torch.equal(model(**batch).logits, base_logits)  # injected: the experts act
    exercise(model, batch)
    remove(base, router)
    assert_back_to_base(model, before, batch, base_logits)
    assert not router.records and not router._hooks
    with pytest.raises(ValueError, match="not attached to this model"):
        remove(base, router)
    again = inject_mole(base, tiny_bank, {"granularity": granularity})  # the base takes a new injection
    remove(base, again)
    assert_same_model(model, before)


def test_remove_inverts_the_mixers_token_router(tiny_bank):
    from mole_exp.composers.mixer import inject_mixer

    base = make_tiny()
    model, batch = base.model, inputs(base.tokenizer)
    before = snapshot(model)
    with torch.no_grad():
        base_logits = model(**batch).logits
    router = inject_mixer(base, tiny_bank, "attention", "layer", top_k=2, init_std=0.5, temperature={"init": 1.0, "learnable": False})
    exercise(model, batch)
    remove(base, router)
    assert_back_to_base(model, before, batch, base_logits)


@pytest.mark.parametrize("name", ["mole", "mixer", "fresh_lora", "lorahub", "pems", "nla", "single"])
def test_release_gives_back_the_base_bit_for_bit(tiny_bank, name):
    from mole_exp.composers import COMPOSERS

    options = {"mole": {"gate": {"granularity": "matrix", "init_std": 0.5}}, "mixer": {}, "fresh_lora": {},
               "lorahub": {}, "pems": {"weights": [0.1, 0.2, 0.3, 0.4]}, "nla": {}, "single": {"expert": 1}}[name]
    base = make_tiny()
    model, batch = base.model, inputs(base.tokenizer)
    before = snapshot(model)
    with torch.no_grad():
        base_logits = model(**batch).logits
    composer = COMPOSERS[name](**options)
    trainable = composer.compose(base, tiny_bank)
    if name == "fresh_lora":  # PEFT starts B at zero: move it, as training would
        with torch.no_grad():
            for parameter in trainable:
                parameter.add_(0.1)
    if name == "lorahub":
        composer.merge_weights([1.0, -0.5, 0.5, 1.5], "factors")
    composer.prepare_inference()
    composer.before_dataset("qnli")
    exercise(model, batch) if trainable else None
    composer.release()
    assert_same_model(model, before)
    assert no_hooks_anywhere(model)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, base_logits)


@pytest.mark.parametrize("architecture", [
    pytest.param(a, marks=needs_tokenizer(t), id=a) for a, t in (("llama", "llama3"), ("qwen2", "qwen2.5"))])
@pytest.mark.parametrize("router_kind", ["mole", "mixer"])
def test_remove_inverts_injection_on_a_causal_base(cache_dir, architecture, router_kind):
    """The same on a decoder-only model: its one causal stream's hook (with its attention_mask), beam reordering."""
    from mole_exp.composers.mixer import inject_mixer
    from tests.test_causal_models import causal_batch, tiny_causal, tiny_causal_bank

    base = tiny_causal(architecture)
    bank = tiny_causal_bank(base, cache_dir)
    model, batch = base.model, causal_batch(base.tokenizer)
    assert no_hooks_anywhere(model)
    before = snapshot(model)
    with torch.no_grad():
        base_logits = model(**batch).logits
    if router_kind == "mole":
        router = inject_mole(base, bank, {"granularity": "layer", "init_std": 0.5})
    else:
        router = inject_mixer(base, bank, "attention", "layer", top_k=2, init_std=0.5, temperature={"init": 1.0, "learnable": False})
    with torch.no_grad():
        assert not torch.equal(model(**batch).logits, base_logits)
    exercise(model, batch)
    remove(base, router)
    assert_back_to_base(model, before, batch, base_logits)
