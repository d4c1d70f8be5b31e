"""Decoder-only families (Llama, Qwen2, Mistral, Phi-3): the family description, the tiny causal models with the
real tokenizers, the causal text format (loss on the target only, left-padded generation, only the completion
decoded), and the static composers against PEFT's own adapters on a causal base."""

from __future__ import annotations

import copy

import pytest
import torch

from mole_exp.base.family import CAUSAL_FAMILY, T5_FAMILY, family_for
from mole_exp.base.models import BaseModel, build_tiny_causal, load_pretrained
from mole_exp.base.text_format import IGNORE_INDEX, CausalFormat, text_format
from mole_exp.composers.nla import NLAComposer
from mole_exp.composers.single import SingleComposer
from mole_exp.evaluation.evaluator import GenerationSettings, generate
from mole_exp.training.data import collator, tokenize
from tests.conftest import TOKENIZERS_DIR, needs_tokenizer
from tests.test_composers import EXAMPLES, assert_same_logits, logits, peft_model

ARCHITECTURES = {"llama": "llama3", "qwen2": "qwen2.5"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


_BUILT: dict[str, BaseModel] = {}


def tiny_causal(architecture: str) -> BaseModel:
    """A fresh copy of the tiny model (composers change weights in place); the tokenizer is built once."""
    if architecture not in _BUILT:
        _BUILT[architecture] = build_tiny_causal(architecture, str(TOKENIZERS_DIR))
    built = _BUILT[architecture]
    return BaseModel(copy.deepcopy(built.model), built.tokenizer, built.model_id, built.family)


def with_tokenizers(test):
    params = [pytest.param(a, marks=needs_tokenizer(t), id=a) for a, t in ARCHITECTURES.items()]
    return pytest.mark.parametrize("architecture", params)(test)


def block_linears(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]


# ---------------------------------------------------------------- the family description


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral", "phi3"])
def test_every_block_linear_of_each_causal_family_has_a_position(kind):
    import transformers

    config_class, model_class = {
        "llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
        "mistral": ("MistralConfig", "MistralForCausalLM"), "phi3": ("Phi3Config", "Phi3ForCausalLM"),
    }[kind]
    config = getattr(transformers, config_class)(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                                 num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
    model = getattr(transformers, model_class)(config)
    family = family_for(model)
    assert family is CAUSAL_FAMILY and family_for(config) is CAUSAL_FAMILY and family.causal
    names = block_linears(model)
    leaves = {n.rsplit(".", 1)[1] for n in names}
    expected = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"} if kind == "phi3" else \
        {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert leaves == expected
    for name in names:
        position = family.position(name)
        assert position.stream == "decoder" and position.stack == "model"
        assert position.sublayer_index == (0 if position.sublayer == "self_attn" else 1)
    assert family.num_blocks(model, "model") == 3
    assert family.depth_fraction(model, "model.layers.2.mlp.down_proj") == (2 / 3, 1.0)
    assert family.scope("model.layers.1.self_attn.o_proj", "layer") == "model.block.1.layer.0"
    assert family.scope("model.layers.1.mlp.down_proj", "block") == "model.block.1"
    assert family.scope("model.layers.1.mlp.down_proj", "network") == "network.decoder"
    with pytest.raises(ValueError, match="not a block linear of a causal-lm model"):
        family.position("lm_head")


def test_t5_family_is_unchanged():
    assert not T5_FAMILY.causal
    assert T5_FAMILY.position("decoder.block.1.layer.1.EncDecAttention.k").stream == "memory"


# ---------------------------------------------------------------- tiny causal models, real tokenizers


@with_tokenizers
def test_default_lora_targets_follow_the_family_and_share_the_named_library(architecture, tmp_path):
    """targets: null (conf/experts/tiny.yaml, conf/train_experts.yaml) is PEFT's default for the model type, and
    resolves before the cache key: the library of null is the library of the names it stands for."""
    from mole_exp.base.family import default_lora_targets
    from mole_exp.experts.tiny_library import ensure_tiny_library
    from tests.conftest import make_tiny

    base = tiny_causal(architecture)
    assert default_lora_targets(base.model) == ["q_proj", "v_proj"]
    assert default_lora_targets(make_tiny().model) == ["q", "v"]
    unnamed = ensure_tiny_library(base, str(tmp_path), num_adapters=2)
    assert ensure_tiny_library(base, str(tmp_path), num_adapters=2, targets=["q_proj", "v_proj"]) == unnamed
    with pytest.raises(ValueError, match=r"experts.tiny.targets is empty"):
        ensure_tiny_library(base, str(tmp_path), num_adapters=2, targets=[])




@with_tokenizers
def test_tiny_causal_model_is_seeded_frozen_and_uses_the_real_tokenizer(architecture):
    base = tiny_causal(architecture)
    again = build_tiny_causal(architecture, str(TOKENIZERS_DIR))
    assert base.model_id == again.model_id and base.model_id.startswith(f"tiny-{architecture}-")
    for (name, p), (_, q) in zip(base.model.named_parameters(), again.model.named_parameters(), strict=True):
        assert torch.equal(p, q), name
        assert not p.requires_grad
    assert base.model.config.vocab_size == len(base.tokenizer) == {"llama": 128256, "qwen2": 151665}[architecture]
    assert base.model.lm_head.weight.data_ptr() != base.model.model.embed_tokens.weight.data_ptr()  # untied
    assert isinstance(text_format(base.tokenizer), CausalFormat)
    with pytest.raises(ValueError, match="model.architecture='gpt2' is not one of"):
        build_tiny_causal("gpt2", str(TOKENIZERS_DIR))


def test_a_missing_tokenizer_names_the_fetch_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="fetch_tokenizers.py llama3"):
        build_tiny_causal("llama", str(tmp_path))


@needs_tokenizer("qwen2.5")
def test_local_causal_checkpoint_loads_through_model_local(tmp_path):
    base = tiny_causal("qwen2")
    base.model.save_pretrained(tmp_path / "ckpt")
    base.tokenizer.save_pretrained(tmp_path / "ckpt")
    loaded = load_pretrained(str(tmp_path / "ckpt"))
    assert loaded.family is CAUSAL_FAMILY and isinstance(text_format(loaded.tokenizer), CausalFormat)
    batch = {"input_ids": torch.tensor([[1, 2, 3, 4]])}
    torch.testing.assert_close(logits(loaded.model, batch), logits(base.model, batch), atol=0, rtol=0)
    with pytest.raises(ValueError, match="tokenizer .* has no chat template"):
        from mole_exp.base.text_format import bind_format

        tok = copy.copy(loaded.tokenizer)
        tok.chat_template = None
        bind_format(tok, causal=True, chat_template=True)


def test_hub_causal_model_offline_fails_with_the_hub_door_error(tmp_path, monkeypatch):
    import huggingface_hub

    from mole_exp.base.hub import HubUnavailableError

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    # offline mode, as users run it (HF_HUB_OFFLINE=1): no network timeouts here; the unreachable-Hub path is
    # tests/test_hub_path.py's
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnavailableError, match=r"HF_HUB_OFFLINE=1 is set.*hf download Qwen/Qwen2.5-0.5B-Instruct"):
        load_pretrained("Qwen/Qwen2.5-0.5B-Instruct")


# ---------------------------------------------------------------- the causal text format


@needs_tokenizer("llama3")
@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat_template"])
def test_training_features_put_the_loss_on_the_target_tokens_only(chat):
    base = tiny_causal("llama")
    tokenizer = copy.copy(base.tokenizer)
    from mole_exp.base.text_format import bind_format

    bind_format(tokenizer, causal=True, chat_template=chat)
    example = {"source": "Premise: it rains. Hypothesis: it is wet. Yes or no?", "target": "Yes"}
    (features,) = tokenize(tokenizer, [example], 128, 16)
    target = tokenizer("Yes", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prompt = features["input_ids"][: -len(target)]
    assert features["input_ids"][-len(target) :] == target
    assert features["labels"] == [IGNORE_INDEX] * len(prompt) + target
    if chat:  # the template's own tokens around the prompt, ending with the assistant's header
        expected = tokenizer.apply_chat_template([{"role": "user", "content": example["source"]}], add_generation_prompt=True, tokenize=False)
        assert tokenizer.decode(prompt) == expected
    else:
        assert prompt == [tokenizer.bos_token_id] + tokenizer(example["source"], add_special_tokens=False)["input_ids"]
    # the model's loss on the batch = cross-entropy of the target tokens given everything before them
    batch = collator(tokenizer)(tokenize(tokenizer, [example, {"source": "Hi", "target": "No way"}], 128, 16))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    with torch.no_grad():
        out = base.model(**batch)
    scores = out.logits[:, :-1].log_softmax(-1)
    labels = batch["labels"][:, 1:]
    picked = labels != IGNORE_INDEX
    reference = -scores[picked].gather(-1, labels[picked][:, None]).mean()
    torch.testing.assert_close(out.loss, reference)


@with_tokenizers
def test_greedy_outputs_do_not_depend_on_padding_batching_or_the_kv_cache(architecture):
    base = tiny_causal(architecture)
    tokenizer, form = base.tokenizer, text_format(base.tokenizer)
    sources = [e["source"] for e in EXAMPLES]
    settings = GenerationSettings(batch_size=len(sources), max_source_length=128, progress=False)
    batched = generate(base.model, tokenizer, sources, 6, settings)
    one_at_a_time = generate(base.model, tokenizer, sources, 6, GenerationSettings(batch_size=1, max_source_length=128, progress=False))
    assert batched == one_at_a_time
    assert len(set(batched)) > 1 and all(batched)
    # tokens: cached vs uncached decoding, and left padding vs each prompt alone (no padding)
    prompts = form.encode_prompts(tokenizer, sources, 128)
    assert (prompts["attention_mask"][:, -1] == 1).all() and (prompts["attention_mask"][:, 0] == 0).any()  # left-padded
    with torch.no_grad():
        cached = base.model.generate(**prompts, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = base.model.generate(**prompts, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    width = prompts["input_ids"].shape[1]
    for row, source in enumerate(sources):
        alone = form.encode_prompts(tokenizer, [source], 128)
        with torch.no_grad():
            single = base.model.generate(**alone, max_new_tokens=6, do_sample=False)
        assert torch.equal(single[0, alone["input_ids"].shape[1] :], cached[row, width:]), source
    # right padding (training's) gives the same next-token greedy choice at each row's last prompt token
    right = collator(tokenizer)([{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids} for ids in
                                 (form.prompt_ids(tokenizer, s, 128) for s in sources)])
    lengths = right["attention_mask"].sum(1)
    with torch.no_grad():
        right_next = base.model(input_ids=right["input_ids"], attention_mask=right["attention_mask"]).logits
    assert torch.equal(right_next[torch.arange(len(sources)), lengths - 1].argmax(-1), cached[:, width])


# ---------------------------------------------------------------- composers against PEFT on a causal base


def causal_batch(tokenizer):
    return collator(tokenizer)(tokenize(tokenizer, EXAMPLES, 128, 16))


def tiny_causal_bank(base, cache_dir):
    from mole_exp.experts.loading import load_experts
    from tests.conftest import tiny_experts_cfg

    return load_experts(tiny_experts_cfg(cache_dir, targets=("q_proj", "v_proj", "down_proj")), base)


@with_tokenizers
def test_nla_exact_equals_peft_cat_on_a_causal_base(architecture, cache_dir):
    base = tiny_causal(architecture)
    bank = tiny_causal_bank(base, cache_dir)
    weights = [1.0, 2.0, 3.0, 4.0]
    normalised = [w / sum(weights) for w in weights]
    reference = peft_model(base.model, bank.sources)
    reference.add_weighted_adapter([f"e{i}" for i in range(4)], normalised, "combo", combination_type="cat")
    reference.set_adapter("combo")
    batch = causal_batch(base.tokenizer)
    expected, unmerged = logits(reference, batch), logits(base.model, batch)
    NLAComposer(weights=weights).compose(base, bank)
    assert_same_logits(logits(base.model, batch), expected, unmerged)


@with_tokenizers
def test_single_expert_equals_that_peft_adapter_on_a_causal_base(architecture, cache_dir):
    base = tiny_causal(architecture)
    bank = tiny_causal_bank(base, cache_dir)
    reference = peft_model(base.model, bank.sources)
    reference.set_adapter("e1")
    batch = causal_batch(base.tokenizer)
    expected, unmerged = logits(reference, batch), logits(base.model, batch)
    SingleComposer(expert="tiny_expert_01").compose(base, bank)
    assert_same_logits(logits(base.model, batch), expected, unmerged)
    # the one-hot NLA (every weight on expert 1) is the same adapter
    other = tiny_causal(architecture)
    NLAComposer(weights=[0.0, 1.0, 0.0, 0.0]).compose(other, bank)
    assert_same_logits(logits(other.model, batch), expected, unmerged)


@needs_tokenizer("llama3")
def test_a_t5_adapter_on_a_causal_base_is_one_clear_error(cache_dir):
    from mole_exp.experts.loading import load_experts
    from tests.conftest import make_tiny, tiny_experts_cfg

    t5_bank = load_experts(tiny_experts_cfg(cache_dir), make_tiny())
    cfg = tiny_experts_cfg(cache_dir)
    del cfg["tiny"]
    cfg._target_, cfg.ids = "mole_exp.experts.sources.listed", list(t5_bank.sources[:1])
    with pytest.raises(ValueError, match=r"targets module '(en|de)coder\.block\.0\.layer\.0\.SelfAttention\.q', which the base model "
                       r"tiny-llama.*base modules look like 'model\.layers\.0\.self_attn\.q_proj'"):
        load_experts(cfg, tiny_causal("llama"))


# ---------------------------------------------------------------- train.py end to end on the tiny causal models

CAUSAL_SMOKE = ["experts=tiny_causal", "experts.tiny.num_adapters=4", "trainer=cpu", "trainer.max_steps=2", "data.eval_limit=2",
                "data.train_limit=8", "data.batch_size=4", "data.max_source_length=96", "generation.progress=false", "logger=csv"]
COMPOSERS = {
    "nla": ["composer=nla"],
    "nla_factors": ["composer=nla", "composer.merge=factors"],
    "lorahub": ["composer=lorahub", "composer.budget=2", "composer.progress=false", "composer.fit_per=suite", "composer.search_seeds=1"],
    "pems": ["composer=pems", "composer.step=0.5", "composer.num_validation=2", "experts.count=2"],
    "single": ["composer=single", "composer.expert=tiny_expert_01"],
    "base": ["composer=base"],
    "fresh_lora": ["composer=fresh_lora"],
}
# each (model, composer) takes a few seconds: the default suite runs every composer once, on one model or the other
FAST = {("tiny_llama", "nla"), ("tiny_llama", "lorahub"), ("tiny_llama", "fresh_lora"), ("tiny_qwen2", "nla_factors"),
        ("tiny_qwen2", "pems"), ("tiny_qwen2", "single"), ("tiny_qwen2", "base")}


def pipeline_params():
    for model, tokenizer in (("tiny_llama", "llama3"), ("tiny_qwen2", "qwen2.5")):
        for name in COMPOSERS:
            marks = [needs_tokenizer(tokenizer)] + ([] if (model, name) in FAST else [pytest.mark.slow])
            yield pytest.param(model, name, marks=marks, id=f"{model}-{name}")


@pytest.mark.parametrize(("model", "composer"), list(pipeline_params()))
def test_static_composers_run_through_the_pipeline_on_causal_models(tmp_path, model, composer):
    from mole_exp.training.pipeline import run
    from tests.conftest import DATA_DIR, compose_cfg

    if not DATA_DIR.is_dir():
        pytest.skip(f"shared task data not found at {DATA_DIR}")
    overrides = [f"model={model}", *CAUSAL_SMOKE, "task=nli", f"paths.data_dir={DATA_DIR}", f"paths.outputs_dir={tmp_path / 'outputs'}",
                 *COMPOSERS[composer]]
    exportable = composer != "lorahub"  # a searched composition exports too, but each search unit its own folder
    if exportable:
        overrides.append(f"export_dir={tmp_path / 'export'}")
    metrics = run(compose_cfg(overrides, output_dir=tmp_path / "run"))
    assert metrics["composer"]["name"] == COMPOSERS[composer][0].split("=")[1]
    assert sorted(metrics["num_examples"]) == ["anli_r1", "anli_r2", "anli_r3", "qnli", "wnli"]
    assert (tmp_path / "run" / "metrics.json").exists()
    rows = [line for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines() if line]
    assert len(rows) == 10
    if exportable:  # the composed model as a plain transformers causal LM checkpoint
        from transformers import AutoModelForCausalLM

        reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "export")).eval()
        assert family_for(reloaded) is CAUSAL_FAMILY and (tmp_path / "export" / "tokenizer.json").exists()


# ---------------------------------------------------------------- adapters in a Hub repo's subfolders (PEFT's Arrow library)


@needs_tokenizer("llama3")
def test_hub_adapters_in_repo_subfolders_load_offline_and_pass_the_preflight(tmp_path, cache_dir, monkeypatch):
    import shutil

    from mole_exp.base.hub_cache import seed_repo
    from mole_exp.experts.adapters import read_adapter
    from mole_exp.training.hub_preflight import Artifact, is_cached

    base = tiny_causal("llama")
    bank = tiny_causal_bank(base, cache_dir)
    repo = tmp_path / "repo"
    for i, source in enumerate(bank.sources[:2]):  # a repo holding ts_expert_0/ and ts_expert_1/, as TahaBa/phi3-mini-clustered-flan
        shutil.copytree(source, repo / f"ts_expert_{i}")
    hub = tmp_path / "hub"
    seed_repo("someone/causal-library", repo, hub)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))  # read at import time by the Hub library
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    artifact = Artifact("adapter", "someone/causal-library/ts_expert_1")
    assert is_cached(artifact) and not is_cached(Artifact("adapter", "someone/causal-library/ts_expert_7"))
    assert artifact.download == "hf download someone/causal-library --include 'ts_expert_1/*'"
    config, modules = read_adapter("someone/causal-library/ts_expert_1")
    _, expected = read_adapter(bank.sources[1])
    assert sorted(modules) == sorted(expected) and modules and config["r"] == 4
    for name, (lora_A, lora_B, scaling) in modules.items():
        assert torch.equal(lora_A, expected[name][0]) and torch.equal(lora_B, expected[name][1]) and scaling == expected[name][2]


# ---------------------------------------------------------------- expert-library training on a causal base


@needs_tokenizer("qwen2.5")
def test_expert_library_training_on_a_causal_base(tmp_path):
    import json

    from mole_exp.base.models import weights_fingerprint
    from mole_exp.experts.library import MANIFEST
    from mole_exp.experts.loading import load_experts
    from mole_exp.tools.expert_training import LoraSettings, train_library
    from mole_exp.tools.seq2seq_training import TrainSettings
    from tests.test_expert_training import library_cfg, synthetic_task

    base = tiny_causal("qwen2")
    fingerprint = weights_fingerprint(base.model)
    lora = LoraSettings(rank=2, alpha=4, dropout=0.0, targets=["q_proj", "v_proj"])
    train = TrainSettings(steps=2, batch_size=8, lr=1e-3, max_source_length=48, max_target_length=16)
    folder = train_library(base, synthetic_task(), tmp_path / "lib", lora=lora, train=train, seed=0)
    assert weights_fingerprint(base.model) == fingerprint and not any(p.requires_grad for p in base.model.parameters())
    manifest = json.loads((folder / MANIFEST).read_text())
    assert [a["name"] for a in manifest["adapters"]] == ["reverse", "shift"]
    assert all(a["targets"] == ["q_proj", "v_proj"] and 0 <= a["eval_score"] <= 100 for a in manifest["adapters"])
    bank = load_experts(library_cfg(folder), base)
    assert sorted(bank.targets) == sorted(f"model.layers.{b}.self_attn.{p}" for b in (0, 1) for p in ("q_proj", "v_proj"))
    assert next(iter(bank.targets.values())).lora_B.abs().sum() > 0  # trained: B left its zero initialisation


@pytest.mark.slow
@needs_tokenizer("llama3")
@pytest.mark.parametrize("suite", ["nli", "translation", "struct2text", "cbqa", "bbh"])
def test_every_suite_runs_on_a_causal_model(tmp_path, suite):
    from mole_exp.training.pipeline import run
    from tests.conftest import DATA_DIR, compose_cfg

    if not DATA_DIR.is_dir():
        pytest.skip(f"shared task data not found at {DATA_DIR}")
    overrides = ["model=tiny_llama", *CAUSAL_SMOKE, "data.eval_limit=1", "generation.max_new_tokens=4", f"task={suite}",
                 f"paths.data_dir={DATA_DIR}", f"paths.outputs_dir={tmp_path / 'outputs'}", "composer=base"]
    metrics = run(compose_cfg(overrides, output_dir=tmp_path / "run"))
    assert metrics["num_examples"] and all(n == 1 for n in metrics["num_examples"].values())
    assert f"test/{suite}/avg" in metrics["metrics"]
