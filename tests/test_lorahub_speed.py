"""The fast LoRAHub objective: the batched merge and the tokenise-once loss give the same values as the
plain per-linear merge and per-call loss, and the objective matches the official lorahub package."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mole_exp.composers.lorahub import LoRAHubComposer
from mole_exp.composers.merge import InPlaceMerge, weighted_deltas
from mole_exp.composers.stacked_merge import StackedMerge
from mole_exp.training.data import collator, tokenize
from mole_exp.training.search_loss import ExampleLoss
from tests.conftest import TOKENIZER_DIR

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


EXAMPLES = [
    {"source": "Premise: a cat sat on the mat. Hypothesis: a cat sat. Does the premise entail the hypothesis?", "target": "Yes"},
    {"source": "Premise: it rains. Hypothesis: the sun shines brightly today. Entailment?", "target": "No"},
    {"source": "Is the sentence 'dogs bark' true?", "target": "It's impossible to say"},
    {"source": "Premise: two men play chess. Hypothesis: people play a game.", "target": "Yes"},
    {"source": "translate English to French: the house is blue", "target": "la maison est bleue"},
    {"source": "Question: what colour is the sky? Answer:", "target": "blue"},
]


def candidates(count: int, num_experts: int, seed: int = 0) -> list[list[float]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.rand(num_experts, generator=generator, dtype=torch.float64) * 3 - 1.5).tolist() for _ in range(count)]


def search_data(base, examples=EXAMPLES, eval_batch_size=4):
    from mole_exp.tools.bench_lorahub import FixedExamples
    from mole_exp.training.fit import make_search_data

    cfg = OmegaConf.create(
        {"seed": 0, "data": {"max_source_length": 128, "max_target_length": 16, "eval_batch_size": eval_batch_size, "mixture": "proportional", "mixture_cap": None}}
    )
    return make_search_data(base, FixedExamples(examples), cfg)


@pytest.mark.parametrize(
    "merge, form, negate", [("factors", "lorahub", False), ("factors", "peft", False), ("exact", "lorahub", False), ("factors", "lorahub", True)]
)
def test_stacked_merge_writes_the_per_linear_merge(tiny_base, tiny_bank, merge, form, negate):
    """The batched merge equals weighted_deltas + InPlaceMerge (the per-linear reference) bit for bit."""
    b_signs = torch.tensor([1.0, -1.0, 1.0, -1.0]) if negate else None
    before = {k: v.clone() for k, v in tiny_base.model.state_dict().items()}
    stacked, reference = StackedMerge(tiny_base.model, tiny_bank), InPlaceMerge(tiny_base.model, list(tiny_bank.targets))
    for weights in candidates(3, len(tiny_bank)):
        stacked.apply_weights(weights, merge, form, b_signs)
        ours = {name: tiny_base.model.get_submodule(name).weight.clone() for name in tiny_bank.targets}
        reference.apply(weighted_deltas(tiny_bank, weights, merge, form, b_signs))
        for name, weight in ours.items():
            expected = tiny_base.model.get_submodule(name).weight
            assert torch.equal(weight, expected), (name, (weight - expected).abs().max())
            assert not torch.equal(weight, before[f"{name}.weight"])
    stacked.restore()
    assert all(torch.equal(tiny_base.model.state_dict()[k], v) for k, v in before.items())


def reference_objective(base, bank, weights, examples, batch_size=4):
    """LoRAHub's objective as the composer computed it before it was made faster: merge linear by linear,
    tokenise on every call, loss / k + 0.05 mean |w|."""
    merger = InPlaceMerge(base.model, list(bank.targets))
    merger.apply(weighted_deltas(bank, weights, "factors", "lorahub"))
    features = tokenize(base.tokenizer, examples, 128, 16)
    total = 0.0
    with torch.no_grad():
        base.model.eval()
        for start in range(0, len(features), batch_size):
            batch = collator(base.tokenizer)(features[start : start + batch_size])
            total += float(base.model(**batch).loss) * len(batch["input_ids"])
    merger.restore()
    loss = total / len(features) / len(examples)
    return loss + 0.05 * float(np.abs(np.asarray(weights)).sum()) / len(weights)


def test_fast_objective_equals_the_plain_objective_on_fixed_candidates(tiny_base, tiny_bank):
    composer = LoRAHubComposer(num_examples=5, progress=False)
    composer.compose(tiny_base, tiny_bank)
    data = search_data(tiny_base)
    examples = EXAMPLES[:5]  # two batches of data.eval_batch_size=4
    objective = composer.prepared_objective(examples, data)
    fixed = candidates(4, len(tiny_bank))
    fast = [objective(w)[0] for w in fixed]  # the merge and the loss of the search path
    composer.merger.restore()
    assert fast == [reference_objective(tiny_base, tiny_bank, w, examples) for w in fixed]
    assert len(set(fast)) == len(fast)  # the candidates do move the objective


def test_prepared_loss_equals_the_loss_and_sees_the_current_weights(tiny_base, tiny_bank):
    loss = ExampleLoss(tiny_base.model, tiny_base.tokenizer, 128, 16, batch_size=4)
    prepared = loss.prepare(EXAMPLES)
    assert prepared() == loss(EXAMPLES)
    merger = StackedMerge(tiny_base.model, tiny_bank)
    merger.apply_weights([1.0, -0.5, 0.25, 1.5], "factors", "lorahub")
    assert prepared() == loss(EXAMPLES) != ExampleLoss(tiny_base.model, tiny_base.tokenizer, 128, 16, 4).prepare(EXAMPLES[:2])()
    merged = prepared()
    merger.restore()
    assert prepared() != merged


# ---------------------------------------------------------------- against the official package


def test_objective_matches_the_official_lorahub_package(tiny_base, tiny_bank):
    """The official lorahub==0.1.0 objective (module cache cloned: see mole_exp/tools/bench_lorahub.py) equals ours
    to 1e-6 (relative) on the candidates of a search; without the clone it depends on what ran before."""
    from mole_exp.tools.bench_lorahub import Official, import_official, save_base

    algorithm, why_not = import_official()
    if algorithm is None:
        pytest.skip(why_not)
    import datasets

    datasets.disable_progress_bars()
    composer = LoRAHubComposer(budget=6, num_examples=5, progress=False)
    composer.compose(tiny_base, tiny_bank)
    data = search_data(tiny_base, eval_batch_size=32)  # the k examples in one batch, as the package scores them
    examples = composer.few_shot_examples(data)
    with tempfile.TemporaryDirectory() as folder:
        official = Official(algorithm, save_base(tiny_base, Path(folder)), tiny_bank.sources, examples)
    searched = [step["weights"] for step in composer.search(data)["steps"]]
    composer.merger.restore()
    ours = composer.prepared_objective(examples, data)
    theirs = official.objective()
    for weights in searched + candidates(2, len(tiny_bank)):
        assert ours(weights)[0] == pytest.approx(theirs(weights), rel=1e-6, abs=0)
    assert official.unpatched_drift(len(tiny_bank)) > 1e-4


def test_bench_lorahub_script_writes_json(tmp_path):
    from mole_exp.tools.bench_lorahub import main

    output = tmp_path / "bench.json"
    main(["--experts", "2", "--candidates", "3", "--repeats", "1", "--official", "skip", "--tokenizer-dir", str(TOKENIZER_DIR),
          "--cache-dir", str(tmp_path / "cache"), "--output", str(output)])
    report = json.loads(output.read_text())
    (result,) = report["results"]
    assert result["num_experts"] == 2 and result["ours_evals_per_second"] > 0 and len(result["ours_rates"]) == 1
    assert report["official_missing"] == "--official skip" and "ratio" not in result
