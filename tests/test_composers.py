"""The baselines (NLA, LoRAHub, PEMs, single expert) and the token-level mixer, each checked against an
independent computation: PEFT's own adapter merging, LoRAHub's state-dict arithmetic on a PEFT model,
adapter weights read straight from the safetensors files, and a plain transformers reload."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from peft import PeftModel, set_peft_model_state_dict
from peft.utils import load_peft_weights

from mole_exp.composers.base import SearchData
from mole_exp.composers.lorahub import LoRAHubComposer
from mole_exp.composers.merge import InPlaceMerge, weighted_deltas
from mole_exp.composers.mixer import MixerComposer
from mole_exp.composers.nla import NLAComposer
from mole_exp.composers.pems import PEMsComposer, simplex_grid
from mole_exp.composers.single import SingleComposer
from mole_exp.mole.token_router import top_k_weights
from mole_exp.training.data import train_loader
from mole_exp.training.fit import make_search_data
from mole_exp.training.lit_module import ComposerLitModule
from tests.conftest import compose_cfg, needs_data, needs_gpu

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


EXAMPLES = [
    {"source": "Premise: a cat sat on the mat. Hypothesis: a cat sat. Does the premise entail the hypothesis?", "target": "Yes"},
    {"source": "Premise: it rains. Hypothesis: the sun shines brightly today. Entailment?", "target": "No"},
    {"source": "Is the sentence 'dogs bark' true?", "target": "It's impossible to say"},
    {"source": "Premise: two men play chess. Hypothesis: people play a game.", "target": "Yes"},
    {"source": "translate English to French: the house is blue", "target": "la maison est bleue"},
    {"source": "Question: what colour is the sky? Answer:", "target": "blue"},
]


def encode(tokenizer, examples):
    batch = tokenizer([e["source"] for e in examples], return_tensors="pt", padding=True)
    labels = tokenizer(text_target=[e["target"] for e in examples], return_tensors="pt", padding=True).input_ids
    labels[labels == tokenizer.pad_token_id] = -100
    batch["labels"] = labels
    return batch


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def assert_same_logits(actual, expected, unmerged):
    """Equal up to float32 rounding of W x + B (A x) vs (W + B A) x, where the experts' effect is far larger."""
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    assert (expected - unmerged).abs().max() > 1e-2


def peft_model(model, sources):
    """The tiny library's adapters loaded by PEFT itself, as e0 .. e{N-1}."""
    wrapped = PeftModel.from_pretrained(copy.deepcopy(model), sources[0], adapter_name="e0")
    for i, source in enumerate(sources[1:], start=1):
        wrapped.load_adapter(source, adapter_name=f"e{i}")
    return wrapped.eval()


def adapter_delta(source, module):
    """s B A of one adapter module, straight from its files (s = lora_alpha / r)."""
    state = load_peft_weights(source)
    config = json.loads((Path(source) / "adapter_config.json").read_text())
    lora_A = state[f"base_model.model.{module}.lora_A.weight"]
    lora_B = state[f"base_model.model.{module}.lora_B.weight"]
    return config["lora_alpha"] / lora_A.shape[0] * lora_B @ lora_A, lora_A, lora_B, config["lora_alpha"] / lora_A.shape[0]


def search_data(base, examples=EXAMPLES, seed=0):
    """The pipeline's own SearchData (its loss) over a fixed list of examples."""

    class FixedExamples:
        def train_mixture(self, mixture, cap):
            return list(examples)

    cfg = OmegaConf.create(
        {"seed": seed, "data": {"max_source_length": 128, "max_target_length": 16, "eval_batch_size": 32, "mixture": "proportional", "mixture_cap": None}}
    )
    return make_search_data(base, FixedExamples(), cfg)


# ---------------------------------------------------------------- NLA against PEFT's add_weighted_adapter


def test_nla_exact_equals_peft_cat(tiny_base, tiny_bank):
    weights = [1.0, 2.0, 3.0, 4.0]
    normalised = [w / sum(weights) for w in weights]
    reference = peft_model(tiny_base.model, tiny_bank.sources)
    reference.add_weighted_adapter([f"e{i}" for i in range(4)], normalised, "combo", combination_type="cat")
    reference.set_adapter("combo")
    batch = encode(tiny_base.tokenizer, EXAMPLES)
    expected, unmerged = logits(reference, batch), logits(tiny_base.model, batch)
    composer = NLAComposer(weights=weights)  # Eq. 2: normalised to sum 1
    assert composer.compose(tiny_base, tiny_bank) == []
    assert composer.weights == pytest.approx(normalised)
    assert_same_logits(logits(tiny_base.model, batch), expected, unmerged)


def test_nla_factors_peft_form_equals_peft_linear(tiny_base, tiny_bank):
    # PEFT "linear": with c_i = w_i s_i, A' = sum sign(c_i) sqrt|c_i| A_i, B' = sum sqrt|c_i| B_i, scaling 1
    weights = [0.5, -0.25, 0.5, 0.25]  # sums to 1, one negative weight to exercise the sign on A
    reference = peft_model(tiny_base.model, tiny_bank.sources)
    reference.add_weighted_adapter([f"e{i}" for i in range(4)], weights, "combo", combination_type="linear")
    reference.set_adapter("combo")
    batch = encode(tiny_base.tokenizer, EXAMPLES)
    expected, unmerged = logits(reference, batch), logits(tiny_base.model, batch)
    NLAComposer(weights=weights, merge="factors", factors_form="peft").compose(tiny_base, tiny_bank)
    assert_same_logits(logits(tiny_base.model, batch), expected, unmerged)


def test_nla_factors_lorahub_form_differs_from_exact(tiny_base, tiny_bank):
    exact = weighted_deltas(tiny_bank, [0.25] * 4, "exact")
    factors = weighted_deltas(tiny_bank, [0.25] * 4, "factors", "lorahub")
    name = next(iter(exact))
    assert not torch.allclose(exact[name], factors[name], atol=1e-4)  # cross terms and w^2 on the diagonal


def test_unnormalised_eq1_is_the_plain_sum_of_the_adapters(tiny_base, tiny_bank):
    originals = {n: tiny_base.model.get_submodule(n).weight.detach().clone() for n in tiny_bank.targets}
    composer = NLAComposer(normalize=False)
    composer.compose(tiny_base, tiny_bank)
    assert composer.weights == [1.0] * 4
    assert composer.summary()["equation"] == "Eq. 1"
    for name, original in originals.items():
        expected = original + sum(adapter_delta(source, name)[0] for source in tiny_bank.sources)
        torch.testing.assert_close(tiny_base.model.get_submodule(name).weight, expected, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------- in-place merging


def test_merge_then_restore_is_bit_identical(tiny_base, tiny_bank):
    before = {k: v.clone() for k, v in tiny_base.model.state_dict().items()}
    merger = InPlaceMerge(tiny_base.model, list(tiny_bank.targets))
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        merger.apply(weighted_deltas(tiny_bank, torch.randn(4, generator=generator).tolist(), "factors"))
    name = next(iter(tiny_bank.targets))
    assert not torch.equal(tiny_base.model.get_submodule(name).weight, before[f"{name}.weight"])
    merger.restore()
    after = tiny_base.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_lorahub_candidates_leave_the_base_bit_identical(tiny_base, tiny_bank):
    before = {k: v.clone() for k, v in tiny_base.model.state_dict().items()}
    composer = LoRAHubComposer(budget=3, progress=False)
    composer.compose(tiny_base, tiny_bank)
    data = search_data(tiny_base)
    for weights in ([0.3, -0.2, 1.1, 0.0], [1.5, 1.5, -1.5, 0.7]):
        composer.objective(weights, EXAMPLES[:5], data)
    composer.merger.restore()
    after = tiny_base.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.gpu
@needs_gpu
def test_merging_follows_the_model_to_the_gpu(tiny_base, tiny_bank):
    """The pipeline composes on the CPU, then moves the model: originals and experts must follow it."""
    before = {k: v.clone() for k, v in tiny_base.model.state_dict().items()}
    composer = LoRAHubComposer(budget=3, num_examples=3, progress=False)
    composer.compose(tiny_base, tiny_bank)
    tiny_base.model.to("cuda")
    log = composer.search(search_data(tiny_base))
    assert len(log["steps"]) == 3 and all(s["loss"] == s["loss"] for s in log["steps"])
    composer.merger.restore()
    after = {k: v.cpu() for k, v in tiny_base.model.state_dict().items()}
    assert all(torch.equal(after[k], v) for k, v in before.items())


# ---------------------------------------------------------------- LoRAHub


def test_lorahub_objective_equals_lorahub_arithmetic_on_a_peft_model(tiny_base, tiny_bank):
    weights = [0.7, -0.4, 1.2, 0.1]
    examples = EXAMPLES[:5]
    # LoRAHub's get_score: sum_i w_i * state_i key by key, loaded into a PEFT model; loss / k + 0.05 mean|w|
    states = [load_peft_weights(source) for source in tiny_bank.sources]
    combined = {key: sum(w * state[key] for w, state in zip(weights, states, strict=True)) for key in states[0]}
    reference = PeftModel.from_pretrained(copy.deepcopy(tiny_base.model), tiny_bank.sources[0]).eval()
    set_peft_model_state_dict(reference, combined)
    with torch.no_grad():
        loss = float(reference(**encode(tiny_base.tokenizer, examples)).loss)
    expected = loss / len(examples) + 0.05 * sum(abs(w) for w in weights) / len(weights)

    composer = LoRAHubComposer(budget=3, num_examples=5, progress=False)
    composer.compose(tiny_base, tiny_bank)
    objective, composed_loss = composer.objective(weights, examples, search_data(tiny_base))
    assert objective == pytest.approx(expected, rel=1e-5)
    assert composed_loss == pytest.approx(loss / len(examples), rel=1e-5)
    mean_loss = LoRAHubComposer(loss_normalization="mean").loss(examples, search_data(tiny_base))  # the model is still merged
    assert mean_loss == pytest.approx(loss, rel=1e-5)


def test_lorahub_search_logs_steps_and_is_seeded(tiny_base, tiny_bank):
    runs = []
    for _ in range(2):
        base = copy.deepcopy(tiny_base)
        composer = LoRAHubComposer(budget=4, num_examples=3, progress=False)
        composer.compose(base, tiny_bank)
        runs.append(composer.search(search_data(base)))
    log = runs[0]
    assert len(log["steps"]) == 4 and all({"weights", "loss", "objective"} <= set(s) for s in log["steps"])
    assert log["steps"][0]["weights"] == [0.0] * 4  # NGOpt starts at init=0
    assert set(log["final_weights"]) == set(tiny_bank.names)
    assert log["num_near_zero"] == sum(abs(w) < 1e-3 for w in log["final_weights"].values())
    assert runs[0]["final_weights"] == runs[1]["final_weights"]  # random and numpy seeded
    assert composer.summary()["weights"] == log["final_weights"]


# ---------------------------------------------------------------- export


def test_export_round_trips_through_plain_transformers(tiny_base, tiny_bank, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    composer = NLAComposer()
    composer.compose(tiny_base, tiny_bank)
    folder = composer.export(str(tmp_path / "merged"))
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = encode(tokenizer, EXAMPLES)
    torch.testing.assert_close(logits(reloaded, batch), logits(tiny_base.model, batch), atol=0, rtol=0)


# ---------------------------------------------------------------- single expert


def test_single_expert_equals_that_peft_adapter(tiny_base, tiny_bank):
    reference = peft_model(tiny_base.model, tiny_bank.sources)
    reference.set_adapter("e2")
    batch = encode(tiny_base.tokenizer, EXAMPLES)
    expected, unmerged = logits(reference, batch), logits(tiny_base.model, batch)
    composer = SingleComposer(expert="tiny_expert_02")
    composer.compose(tiny_base, tiny_bank)
    assert_same_logits(logits(tiny_base.model, batch), expected, unmerged)
    assert composer.summary()["applied"] == "tiny_expert_02"


def test_single_matched_swaps_experts_per_dataset_in_place(tiny_base, tiny_bank):
    name = next(iter(tiny_bank.targets))
    original = tiny_base.model.get_submodule(name).weight.detach().clone()
    composer = SingleComposer(expert="matched")
    composer.compose(tiny_base, tiny_bank)
    assert torch.equal(tiny_base.model.get_submodule(name).weight, original)  # nothing merged before a dataset
    for dataset in ("tiny_expert_01", "tiny_expert_03"):  # the tiny manifest's task is the expert's name
        composer.before_dataset(dataset)
        source = tiny_bank.sources[tiny_bank.names.index(dataset)]
        torch.testing.assert_close(tiny_base.model.get_submodule(name).weight, original + adapter_delta(source, name)[0], atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="no composed expert was trained on dataset 'anli_r1'.*tiny_expert_00"):
        composer.before_dataset("anli_r1")
    with pytest.raises(ValueError, match="matched"):
        composer.export("unused")
    assert composer.summary()["applied"] == {"tiny_expert_01": "tiny_expert_01", "tiny_expert_03": "tiny_expert_03"}


# ---------------------------------------------------------------- PEMs


def test_pems_negation_flips_b_only(tiny_base, tiny_bank):
    name = next(iter(tiny_bank.targets))
    original = tiny_base.model.get_submodule(name).weight.detach().clone()
    composer = PEMsComposer(weights=[0.3, 0.7, 0.0, 0.0], negate=["tiny_expert_00"], merge="factors")
    composer.compose(tiny_base, tiny_bank)
    _, A0, B0, s = adapter_delta(tiny_bank.sources[0], name)
    _, A1, B1, _ = adapter_delta(tiny_bank.sources[1], name)
    expected = original + s * (0.3 * -B0 + 0.7 * B1) @ (0.3 * A0 + 0.7 * A1)  # lambda(-theta_1) + (1-lambda) theta_2
    torch.testing.assert_close(tiny_base.model.get_submodule(name).weight, expected, atol=1e-6, rtol=1e-6)
    assert composer.summary()["negated"] == ["tiny_expert_00"]
    assert not composer.needs_search and not composer.needs_training_data

    base = copy.deepcopy(tiny_base)
    base.model.get_submodule(name).weight.data.copy_(original)
    PEMsComposer(weights=[1.0, 0.0, 0.0, 0.0], negate=[0], merge="exact").compose(base, tiny_bank)
    torch.testing.assert_close(base.model.get_submodule(name).weight, original - s * B0 @ A0, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("strategy", ["sequential", "simplex"])
def test_pems_grid_search_finds_the_best_lambda(tiny_base, tiny_bank, strategy):
    """A loss that is the distance to the merge with known weights: the search must land on them."""
    target = [0.5, 0.5, 0.0, 0.0]
    names = list(tiny_bank.targets)
    reference = copy.deepcopy(tiny_base)
    InPlaceMerge(reference.model, names).apply(weighted_deltas(tiny_bank, target, "factors"))
    goal = {n: reference.model.get_submodule(n).weight for n in names}
    composer = PEMsComposer(strategy=strategy, step=0.5)
    composer.compose(tiny_base, tiny_bank)

    def distance(examples):
        return float(sum((tiny_base.model.get_submodule(n).weight - goal[n]).norm() for n in names))

    log = composer.search(SearchData(EXAMPLES, EXAMPLES, loss=distance, seed=0))
    assert composer.weights == target
    assert sum(composer.weights) == pytest.approx(1.0)
    assert len(log["candidates"]) == (3 * 3 if strategy == "sequential" else 10)
    assert distance(None) < 1e-5  # the best candidate stays merged
    if strategy == "sequential":
        assert composer.lambdas == [0.5, 1.0, 1.0]


def test_simplex_grid_covers_the_simplex():
    grid = simplex_grid(3, 4)
    assert len(grid) == 15 and all(sum(w) == pytest.approx(1.0) for w in grid) and len({tuple(w) for w in grid}) == 15


# ---------------------------------------------------------------- mixer


def test_top_k_weights_keep_k_experts_summing_to_one():
    probabilities = torch.softmax(torch.randn(2, 5, 6), dim=-1)
    routed = top_k_weights(probabilities, 2)
    assert ((routed > 0).sum(dim=-1) == 2).all()
    torch.testing.assert_close(routed.sum(dim=-1), torch.ones(2, 5))


def test_mixer_trains_only_its_routers_and_leaves_base_and_experts_unchanged(tiny_base, tiny_bank):
    frozen_before = {k: v.clone() for k, v in tiny_base.model.state_dict().items()}
    composer = MixerComposer(top_k=2)
    trainable = composer.compose(tiny_base, tiny_bank)
    named = {n: p for n, p in tiny_base.model.named_parameters() if p.requires_grad}
    assert named and all(n.startswith("mixer_router.gates.") and n.endswith(".projection") for n in named)
    assert {id(p) for p in trainable} == {id(p) for p in named.values()}
    experts_before = {n: b.clone() for n, b in tiny_base.model.named_buffers() if n.endswith(("lora_A", "lora_B", "scaling"))}
    routers_before = {n: p.detach().clone() for n, p in named.items()}

    loader = train_loader(tiny_base.tokenizer, EXAMPLES, 4, 64, 16, seed=0)
    module = ComposerLitModule(tiny_base.model, composer, functools.partial(torch.optim.AdamW, lr=0.05))
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    tiny_base.model.train()
    trainer.fit(module, train_dataloaders=loader)

    assert {"balance_loss", "specialization_loss"} <= set(module.last_statistics)
    state = tiny_base.model.state_dict()
    for key, value in frozen_before.items():  # the base, keyed as before (MoLELinear keeps it as base_layer)
        moved = key if key in state else key.replace(".weight", ".base_layer.weight")
        assert torch.equal(state[moved], value), key
    assert all(torch.equal(b, experts_before[n]) for n, b in tiny_base.model.named_buffers() if n in experts_before)
    assert any(not torch.equal(p.detach(), routers_before[n]) for n, p in named.items())


# ---------------------------------------------------------------- bad options


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: NLAComposer(merge="sum"), r"composer.merge='sum' is not one of \['exact', 'factors'\]"),
        (lambda: NLAComposer(factors_form="sqrt"), r"composer.factors_form='sqrt'"),
        (lambda: NLAComposer(weights=[1, -1]), r"sum to 0"),
        (lambda: NLAComposer(weights="uniform"), r"composer.weights='uniform' must be a list"),
        (lambda: NLAComposer(normalize="yes"), r"composer.normalize='yes'"),
        (lambda: LoRAHubComposer(budget=0), r"composer.budget=0 must be a positive integer"),
        (lambda: LoRAHubComposer(loss_normalization="sum"), r"composer.loss_normalization='sum' is not one of \['lorahub', 'mean'\]"),
        (lambda: LoRAHubComposer(lower=0.5), r"lower <= 0 <= upper"),
        (lambda: PEMsComposer(step=0.3), r"composer.step=0.3 must divide 1"),
        (lambda: PEMsComposer(strategy="random"), r"composer.strategy='random' is not one of \['sequential', 'simplex'\]"),
        (lambda: PEMsComposer(criterion="bleu"), r"composer.criterion='bleu'"),
        (lambda: SingleComposer(expert=None), r"composer.expert=None"),
        (lambda: MixerComposer(top_k=0), r"composer.top_k=0"),
        (lambda: MixerComposer(granularity="token"), r"composer.granularity='token' is not one of"),
        (lambda: MixerComposer(modules="ffn"), r"composer.modules='ffn' is not one of \['attention', 'all'\]"),
    ],
)
def test_bad_options_raise_naming_the_value(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: NLAComposer(weights=[1, 2]), r"composer.weights has 2 values but 4 experts"),
        (lambda: SingleComposer(expert="nope"), r"composer.expert: unknown expert 'nope'"),
        (lambda: PEMsComposer(negate=["nope"]), r"composer.negate: unknown expert 'nope'"),
        (lambda: PEMsComposer(strategy="simplex", step=0.01, max_candidates=100), r"176851 candidates > composer.max_candidates=100"),
        (lambda: MixerComposer(top_k=5), r"composer.top_k=5 but only 4 experts"),
    ],
)
def test_bad_options_against_the_bank_raise_at_compose(tiny_base, tiny_bank, factory, match):
    with pytest.raises(ValueError, match=match):
        factory().compose(tiny_base, tiny_bank)


# ---------------------------------------------------------------- the same train.py pipeline for each


@needs_data
@pytest.mark.parametrize(
    "composer",
    [
        ["composer=nla"],
        ["composer=nla", "composer.normalize=false"],
        ["composer=lorahub", "composer.budget=3", "composer.progress=false", "composer.fit_per=suite", "composer.search_seeds=1"],
        ["composer=pems", "composer.step=0.5", "composer.num_validation=4", "experts.count=3"],
        ["composer=single", "composer.expert=tiny_expert_01"],
        ["composer=mixer"],
    ],
    ids=["nla", "nla-eq1", "lorahub", "pems", "single", "mixer"],
)
def test_each_composer_runs_through_the_pipeline(tmp_path, smoke_overrides, composer):
    from mole_exp.training.pipeline import run

    export = [f"export_dir={tmp_path / 'export'}"] if composer[0] != "composer=mixer" else []
    cfg = compose_cfg(smoke_overrides + ["task=nli", "task.only=[wnli]", "data.eval_limit=4"] + composer + export, output_dir=tmp_path / "run")
    metrics = run(cfg)
    name = composer[0].split("=")[1]
    assert metrics["composer"]["name"] == name
    assert "test/wnli/em" in metrics["metrics"]
    if name == "lorahub":
        assert len(metrics["search"]["steps"]) == 3 and "num_near_zero" in metrics["search"]
    if name == "pems":
        assert sum(metrics["composer"]["weights"].values()) == pytest.approx(1.0)
    if name == "mixer":
        assert metrics["train"]["steps"] == 2 and metrics["checkpoint"].endswith("composer.safetensors")
    else:
        assert (tmp_path / "export" / "config.json").exists()


def test_a_composer_sweep_fills_one_table_column_per_composer(tmp_path):
    """`-m composer=mole,nla,lorahub,pems,mixer`: one folder per composer, side by side in the table."""
    import os
    import subprocess
    import sys

    from tests.conftest import DATA_DIR, ROOT

    if not DATA_DIR.is_dir():
        pytest.skip(f"shared task data not found at {DATA_DIR}")
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MOLE_EXP_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "composer=mole,nla,lorahub,pems,mixer", "task=nli", "task.only=[wnli]",
         "model=tiny", "experts=tiny", "experts.count=4", "trainer=cpu", "trainer.max_steps=2", "data.train_limit=16",
         "data.eval_limit=4", "data.batch_size=4", "generation.progress=false", f"paths.data_dir={DATA_DIR}",
         f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    folders = sorted(p.parent.name for p in sweep_dir.glob("*/metrics.json"))
    assert len(folders) == 5
    table = subprocess.run([sys.executable, "scripts/make_tables.py", "--layout", "table3", str(sweep_dir)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr[-2000:]
    header = next(line for line in table.stdout.splitlines() if line.startswith("| suite"))
    for composer in ("mole", "nla", "lorahub", "pems", "mixer"):
        assert f"| {composer} |" in header or f"| {composer} " in header, header
