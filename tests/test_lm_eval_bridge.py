"""lm-evaluation-harness on composed models (mole_exp/harness/, scripts/lm_eval.py, the lm_eval table).

On tiny finished runs (a MoLE run, an eval.py-style evaluation of it with an expert masked, a PEMs run whose
weights were searched: LoRAHub): lm-eval's HFLM around the composed model writes our evaluator's greedy generations
(the runs' own predictions.jsonl) whatever its batching and left padding, its log-likelihoods are a direct
forward's, the masked folder gives the masked model, and the searched weights are merged as the search left
them. The README command writes lm-eval's results JSON into the run and make_tables.py shows it beside our
scorer; bad input gets one clear error before any model loads.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mole_exp.reporting.lm_eval_results import lm_eval_values, read_results_file, results_files
from mole_exp.training.pipeline import run
from tests.conftest import DATA_DIR, ROOT, SMOKE, compose_cfg, needs_data, needs_tokenizer

needs_lm_eval = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None,
    reason="lm-eval is not installed (the optional extra: pip install 'mole-exp[lm-eval]'; make install installs it)",
)
LOCAL_TASKS = ROOT / "conf" / "lm_eval_tasks"
MASKED = "tiny_expert_03"
NLI_SMOKE = SMOKE + [f"paths.data_dir={DATA_DIR}", "task=nli", "task.only=[wnli,qnli]"]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, cache_dir):
    """A MoLE run, the same run evaluated with an expert masked (<run>/evals/mask), and a LoRAHub run (one search)."""
    root = tmp_path_factory.mktemp("lm_eval_runs")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MOLE_EXP_CACHE", str(cache_dir))
        env.setenv("HF_HUB_OFFLINE", "1")
        mole, masked, lorahub = root / "mole", root / "mole" / "evals" / "mask", root / "lorahub"
        run(compose_cfg(NLI_SMOKE + ["optimizer.lr=0.05"], output_dir=mole))
        run(compose_cfg(NLI_SMOKE + ["optimizer.lr=0.05", "mode=eval", f"checkpoint={mole}", f"composer.mask=[{MASKED}]"], output_dir=masked))
        search = ["composer=lorahub", "composer.fit_per=suite", "composer.search_seeds=1", "composer.budget=5", "composer.progress=false"]
        run(compose_cfg(NLI_SMOKE + search, output_dir=lorahub))
    return {"mole": mole, "masked": masked, "lorahub": lorahub}


def predictions(folder):
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def max_new_tokens(folder) -> dict[str, int]:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(folder / "config.yaml")
    return {name: spec.max_new_tokens for name, spec in cfg.task.datasets.items()}


def forward_logprob(model, prompt_ids: list[int], target_ids: list[int]) -> float:
    """Sum of the target tokens' log-probs from one unbatched forward: the prompt to the encoder, the target to the decoder."""
    prompt, target = torch.tensor([prompt_ids]), torch.tensor([target_ids])
    with torch.no_grad():
        logits = model(input_ids=prompt, labels=target).logits[0]
    return float(torch.log_softmax(logits, dim=-1).gather(1, target.T).sum())


def direct_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context): the prompt with its </s>, the continuation's own tokens."""
    return forward_logprob(model, tokenizer(context).input_ids, tokenizer(continuation, add_special_tokens=False).input_ids)


def loglikelihood_requests(folder, prompts: int) -> list[tuple[str, str]]:
    """`prompts` prompts of the run (from both ends of predictions.jsonl: both datasets, several lengths), each with a
    continuation of one token and one of several."""
    rows = predictions(folder)
    picked = [row["input"] for row in rows[: prompts // 2] + rows[len(rows) - (prompts - prompts // 2) :]]
    return [(prompt, continuation) for prompt in picked for continuation in (" yes", " it is not possible to tell")]


def scores(lm, pairs):
    from lm_eval.api.instance import Instance

    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    return [logprob for logprob, _ in lm.loglikelihood(requests, disable_tqdm=True)]


def generations(lm, prompts_and_lengths):
    from lm_eval.api.instance import Instance

    requests = [Instance("generate_until", {}, (prompt, {"until": [], "max_gen_toks": n}), i) for i, (prompt, n) in enumerate(prompts_and_lengths)]
    return lm.generate_until(requests, disable_tqdm=True)


# ---- the bridge's numbers ------------------------------------------------------------------------------


@needs_data
@needs_lm_eval
@pytest.mark.parametrize("which", ["mole", "masked", "lorahub"])
def test_greedy_generations_equal_our_evaluators_at_any_batching(tiny_runs, which):
    from mole_exp.harness.composed import load_run
    from mole_exp.harness.lm import ComposedLM

    folder = tiny_runs[which]
    rows, lengths = predictions(folder), max_new_tokens(folder)
    composed = load_run(folder)
    try:
        for batch_size in (1, 3):  # 3: batches padded on the left (lm-eval) of prompts of other lengths
            lm = ComposedLM(composed=composed, batch_size=batch_size)
            assert generations(lm, [(row["input"], lengths[row["dataset"]]) for row in rows]) == [row["prediction"] for row in rows]
    finally:
        composed.release()


@needs_data
@needs_lm_eval
def test_the_bridge_leaves_the_composed_models_weights_as_they_are(tiny_runs):
    """HFLM's constructor calls tie_weights(), which in transformers 5 ties T5's head to its embeddings."""
    from mole_exp.harness.composed import load_run
    from mole_exp.harness.lm import ComposedLM

    composed = load_run(tiny_runs["mole"])
    model = composed.base.model
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ComposedLM(composed=composed)
    after = dict(model.named_parameters())
    assert model.lm_head.weight is not model.shared.weight
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert "tie_weights" not in vars(model)  # the method is the class's again
    composed.release()


@needs_data
@needs_lm_eval
def test_loglikelihood_equals_a_direct_forward_of_the_composed_model(tiny_runs):
    from mole_exp.harness.composed import load_run
    from mole_exp.harness.lm import ComposedLM

    composed = load_run(tiny_runs["mole"])
    model, tokenizer = composed.base.model, composed.base.tokenizer
    pairs = loglikelihood_requests(tiny_runs["mole"], 4)
    expected = [direct_loglikelihood(model, tokenizer, *pair) for pair in pairs]
    bridged = scores(ComposedLM(composed=composed, batch_size=3), pairs)  # batches padded on the right, both sides
    assert bridged == pytest.approx(expected, abs=1e-4)
    assert len({round(v, 3) for v in expected}) > len(pairs) // 2  # the requests really differ

    from lm_eval.api.instance import Instance

    lm = ComposedLM(composed=composed, batch_size=2)
    texts = [row["input"] for row in predictions(tiny_runs["mole"])[-2:]]
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), i) for i, text in enumerate(texts)], disable_tqdm=True)
    # seq2seq: the encoder reads lm-eval's prefix token (</s> for T5, which has no <s>), the decoder the whole text and its </s>
    expected_rolling = [forward_logprob(model, [tokenizer.eos_token_id], tokenizer(text).input_ids) for text in texts]
    assert rolling == pytest.approx(expected_rolling, rel=1e-6, abs=1e-4)  # float32 sums of ~200 log-probs
    composed.release()


@needs_data
@needs_lm_eval
def test_a_run_folder_with_a_mask_gives_the_masked_model(tiny_runs):
    from mole_exp.harness.composed import load_run
    from mole_exp.harness.lm import ComposedLM

    pairs = loglikelihood_requests(tiny_runs["mole"], 2)
    masked = load_run(tiny_runs["masked"])
    assert masked.source["mask"] == [MASKED] and masked.source["checkpoint"] == str(tiny_runs["mole"] / "checkpoints" / "composer.safetensors")
    masked_scores = scores(ComposedLM(composed=masked, batch_size=4), pairs)
    masked.release()

    unmasked = load_run(tiny_runs["mole"])
    assert unmasked.source["mask"] == []
    unmasked_scores = scores(ComposedLM(composed=unmasked, batch_size=4), pairs)
    assert max(abs(a - b) for a, b in zip(masked_scores, unmasked_scores, strict=True)) > 1e-3  # the mask matters
    # our evaluator's masking (composer.mask -> Router.set_expert_mask) on the unmasked model gives the same numbers
    keep = [i for i, name in enumerate(unmasked.source["experts"]) if name != MASKED]
    unmasked.composer.router.set_expert_mask(keep)
    model, tokenizer = unmasked.base.model, unmasked.base.tokenizer
    assert masked_scores == pytest.approx([direct_loglikelihood(model, tokenizer, *pair) for pair in pairs], abs=1e-4)
    unmasked.release()


@needs_data
def test_searched_weights_are_the_runs(tiny_runs):
    from mole_exp.harness.composed import check_run

    plan = check_run(tiny_runs["lorahub"])
    recorded = json.loads((tiny_runs["lorahub"] / "metrics.json").read_text())["composer"]["weights"]
    assert plan.checkpoint is None and dict(zip(plan.experts, plan.weights, strict=True)) == recorded
    assert sum(abs(w) > 1e-6 for w in plan.weights) >= 2  # a mix of several experts (merged by the generations test)


# ---- the command, its files and the table -------------------------------------------------------------


@needs_data
@needs_lm_eval
def test_the_readme_command_writes_lm_evals_results_into_the_run_and_make_tables_shows_them(tiny_runs, tmp_path, capsys):
    from mole_exp.evaluation.evaluator import GenerationSettings, generate
    from mole_exp.harness.composed import load_run
    from scripts.make_tables import main as make_tables

    folder = tmp_path / "run"
    shutil.copytree(tiny_runs["mole"], folder, ignore=shutil.ignore_patterns("evals"))
    tasks = ["local_bbh_zeroshot_boolean_expressions", "local_anli_r1"]
    command = [sys.executable, "scripts/lm_eval.py", "--run", str(folder), "--tasks", *tasks, "--include_path", "conf/lm_eval_tasks",
               "--limit", "4", "--batch_size", "4", "--gen_kwargs", "max_gen_toks=8", "--log_samples"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "MOLE_EXP_DATA": str(DATA_DIR)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = results_files(folder)
    data = json.loads(path.read_text())
    assert {t: data["n-samples"][t]["effective"] for t in tasks} == {t: 4 for t in tasks}
    assert set(data["results"]["local_bbh_zeroshot_boolean_expressions"]) >= {"exact_match,flexible-extract", "exact_match,strict-match"}
    assert 0.0 <= data["results"]["local_anli_r1"]["acc,none"] <= 1.0
    assert data["config"]["model"] == "mole" and data["config"]["composed"]["run"] == str(folder.resolve())
    assert f"wrote {path}" in done.stdout and "local_anli_r1" in done.stdout  # lm-eval's own results table, printed

    # the generations lm-eval scored are our evaluator's on the same prompts (cut where lm-eval cuts: its stop strings)
    rows = [json.loads(line) for line in next(folder.glob("lm_eval/samples_local_bbh_*.jsonl")).read_text().splitlines()]
    (prompt, gen_kwargs), = rows[0]["arguments"]
    prompts = list(dict.fromkeys(row["arguments"][0][0] for row in rows))
    composed = load_run(folder)
    ours = generate(composed.base.model, composed.base.tokenizer, prompts, 8, GenerationSettings(batch_size=4, progress=False))
    composed.release()
    for text in gen_kwargs["until"]:
        ours = [o.split(text)[0] for o in ours]
    theirs = {row["arguments"][0][0]: row["resps"][0][0] for row in rows}
    assert [theirs[p].strip() for p in prompts] == ours and len(prompts) == 4

    assert make_tables([str(folder), "--layout", "lm_eval", "--out", str(tmp_path / "tables")]) == 0
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("| column"))
    assert "ours nli avg" in header and "lm-eval local_anli_r1 acc" in header
    assert "lm-eval local_bbh_zeroshot_boolean_expressions exact_match (flexible-extract)" in header
    row = next(line for line in table.splitlines() if line.startswith("| mole"))
    assert f"{data['results']['local_anli_r1']['acc,none']:.4f} (n=4)" in row
    assert "--limit 4" in table and (tmp_path / "tables" / "lm_eval.csv").exists()


def write_results_file(folder, stamp, results, subtasks=None, samples=None, limit=None):
    data = {"results": results, "group_subtasks": subtasks or {}, "n-samples": samples or {}, "config": {"limit": limit},
            "higher_is_better": {task: {"acc": True} for task in results}}
    path = folder / "lm_eval" / f"results_{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_lm_eval_results_are_read_per_task_group_and_file_newest_first(tmp_path):
    group = {"alias": "g", "acc,none": 0.5, "acc_stderr,none": 0.1}
    write_results_file(tmp_path, "2026-01-01T00-00-00", {"g": group, "a_x": {"alias": "a_x", "acc,none": 0.25, "acc_stderr,none": "N/A"},
                                                         "a_y": {"alias": "a_y", "acc,none": 0.75}, "solo": {"acc,none": 0.1}},
                       subtasks={"g": ["a_x", "a_y"]}, samples={"a_x": {"effective": 3}, "a_y": {"effective": 5}, "solo": {"effective": 2}}, limit=5)
    write_results_file(tmp_path, "2026-01-02T00-00-00", {"solo": {"acc,none": 0.9, "acc_stderr,none": 0.05}}, samples={"solo": {"effective": 7}})
    values = {v.task: v for v in lm_eval_values(tmp_path)}
    assert values["g"].group and values["g"].top_level and values["g"].samples == 8 and values["g"].stderr == 0.1
    assert not values["a_x"].top_level and values["a_x"].stderr is None and values["a_x"].limit == 5
    assert values["solo"].value == 0.9 and values["solo"].samples == 7  # the newer evaluation of that task
    assert values["g"].label == "lm-eval g acc" and values["solo"].higher_is_better is True
    (tmp_path / "lm_eval" / "results_2026-01-03T00-00-00.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"results_2026-01-03T00-00-00.json is not an lm-eval results file"):
        lm_eval_values(tmp_path)
    assert len(read_results_file(tmp_path / "lm_eval" / "results_2026-01-01T00-00-00.json")) == 4


def test_the_lm_eval_table_puts_each_scorers_number_for_the_same_model_side_by_side(tmp_path):
    from mole_exp.reporting.lm_eval_table import build_lm_eval_table, render_csv, render_markdown
    from mole_exp.reporting.run_results import read_run

    (tmp_path / "config.yaml").write_text("composer: {name: mole}\ntask: {name: bbh}\nseed: 0\n")
    metrics = {"status": "completed", "task": "bbh", "eval_task": "bbh", "seed": 0,
               "metrics": {"test/boolean_expressions/em": 40.0, "test/snarks/em": 60.0, "test/web_of_lies/em": 10.0, "test/bbh/avg": 36.7},
               "num_examples": {"boolean_expressions": 20, "snarks": 10, "web_of_lies": 5}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    group = "local_bbh_zeroshot"
    write_results_file(tmp_path, "2026-01-01T00-00-00", {group: {"exact_match,flexible-extract": 0.5},
                                                         f"{group}_boolean_expressions": {"exact_match,flexible-extract": 0.5}},
                       subtasks={group: [f"{group}_boolean_expressions"]}, samples={f"{group}_boolean_expressions": {"effective": 250}})
    write_results_file(tmp_path, "2026-01-02T00-00-00", {f"{group}_snarks": {"exact_match,strict-match": 0.25}}, samples={f"{group}_snarks": {"effective": 178}})
    table = build_lm_eval_table([read_run(tmp_path)])
    assert table.columns == ["ours bbh avg", "ours snarks em", f"lm-eval {group} exact_match (flexible-extract)",
                             f"lm-eval {group}_snarks exact_match (strict-match)"]  # a group's tasks (and their datasets): csv only
    assert "| mole | . | 36.70 (n=35) | 60.00 (n=10) | 0.5000 (n=250) | 0.2500 (n=178) |" in render_markdown(table, tmp_path)
    lines = render_csv(table, tmp_path).splitlines()
    assert "mole,.,ours,boolean_expressions,em,none,40.0,,20,False,," in lines and not any(",web_of_lies," in line for line in lines)
    assert any(line.startswith(f"mole,.,lm-eval,{group}_boolean_expressions,exact_match,flexible-extract,0.5,,250,False") for line in lines)
    assert build_lm_eval_table([read_run(tmp_path / "lm_eval")]) is None  # no run there


@needs_lm_eval
def test_a_results_file_is_never_overwritten(tmp_path):
    from mole_exp.harness.cli import write_results

    first = write_results(tmp_path, {"results": {"t": {"acc,none": 0.5}}}, {"t": [{"doc_id": 0}]}, stamp="S")
    with pytest.raises(FileExistsError, match=r"samples_t_S.jsonl already exists .*never overwritten"):
        write_results(tmp_path, {"results": {"t": {"acc,none": 0.9}}}, {"t": [{"doc_id": 1}]}, stamp="S")
    with pytest.raises(FileExistsError, match=r"results_S.json already exists"):
        write_results(tmp_path, {"results": {"t": {"acc,none": 0.9}}}, None, stamp="S")
    assert json.loads(first.read_text())["results"]["t"]["acc,none"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results_S.json", "samples_t_S.jsonl"]  # no temporary files left


# ---- bad input ----------------------------------------------------------------------------------------


@needs_data
@needs_lm_eval
def test_an_unknown_task_is_refused_before_any_model_loads(tiny_runs, monkeypatch, capsys):
    import mole_exp.harness.lm as lm
    from mole_exp.harness.cli import main

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(lm, "load_run", no_model)
    folder = tiny_runs["masked"]
    code = main(["--run", str(folder), "--tasks", "local_anli_r1", "no_such_task", "--include_path", str(LOCAL_TASKS)])
    error = capsys.readouterr().err
    assert code == 2 and "lm-eval knows no task named no_such_task" in error and f"--include_path {LOCAL_TASKS}" in error
    assert "lm_eval ls tasks" in error and not (folder / "lm_eval").exists()


@needs_data
@needs_lm_eval
def test_a_folder_without_its_checkpoint_or_a_finished_run_is_refused(tiny_runs, tmp_path, capsys):
    from mole_exp.harness.cli import main
    from mole_exp.harness.composed import check_run

    folder = tmp_path / "no_checkpoint"
    shutil.copytree(tiny_runs["mole"], folder, ignore=shutil.ignore_patterns("checkpoints", "evals"))
    with pytest.raises(FileNotFoundError, match=r"composer 'mole' trains its parameters, but the run's checkpoint of them is missing: .*composer.safetensors"):
        check_run(folder)
    assert main(["--run", str(folder), "--tasks", "local_anli_r1", "--include_path", str(LOCAL_TASKS)]) == 2
    assert "checkpoint of them is missing" in capsys.readouterr().err and not (folder / "lm_eval").exists()

    (folder / "metrics.json").unlink()
    with pytest.raises(ValueError, match=r"holds no finished run \(no metrics.json\)"):
        check_run(folder)
    with pytest.raises(FileNotFoundError, match=r"is not a run folder: it has no config.yaml"):
        check_run(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"is not a folder"):
        check_run(tmp_path / "nowhere")


@needs_data
def test_a_run_fitted_several_times_needs_its_unit(tiny_runs, tmp_path):
    from mole_exp.harness.composed import check_run

    folder = tmp_path / "two_units"
    shutil.copytree(tiny_runs["lorahub"], folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["units"] = {"qnli": {**metrics["units"]["suite"], "scope": "qnli"}, "wnli": {**metrics["units"]["suite"], "scope": "wnli"}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match=r"holds 2 fits .*choose one with --unit, one of \['qnli', 'wnli'\]"):
        check_run(folder)
    with pytest.raises(ValueError, match=r"--unit 'anli_r1' is not a fit unit .*\['qnli', 'wnli'\]"):
        check_run(folder, "anli_r1")
    assert check_run(folder, "wnli").unit.scope == "wnli"


@needs_lm_eval
def test_an_unsupported_family_is_one_clear_error(tiny_base):
    from mole_exp.base.family import CAUSAL_FAMILY
    from mole_exp.composers.no_experts import BaseOnlyComposer
    from mole_exp.harness.backends import backend_for
    from mole_exp.harness.composed import Composed
    from mole_exp.harness.lm import ComposedLM

    assert backend_for(tiny_base.family) == "seq2seq" and backend_for(CAUSAL_FAMILY) == "causal"
    other = replace(tiny_base.family, name="rwkv", model_types=("rwkv",))
    message = (r"the lm-eval bridge does not support model family 'rwkv' \(model types \['rwkv'\]\); supported families: "
               r"t5 \(seq2seq\), causal-lm \(causal\)")
    with pytest.raises(ValueError, match=message):
        backend_for(other)
    with pytest.raises(ValueError, match=message):
        ComposedLM(composed=Composed(replace(tiny_base, family=other), BaseOnlyComposer()))


@needs_lm_eval
@needs_tokenizer("llama3")
def test_the_causal_backend_runs_a_composed_decoder_only_model(cache_dir):
    """MoLE on the tiny Llama through HFLM's causal backend: greedy generations are the same at batch 1 and in left-padded
    batches of 3 and equal the model's own greedy generation of each prompt alone; log-likelihoods (right-padded batches)
    are a direct forward's of context + continuation in one sequence."""
    from mole_exp.composers.mole import MoLEComposer
    from mole_exp.harness.composed import Composed
    from mole_exp.harness.lm import ComposedLM
    from tests.test_causal_models import tiny_causal, tiny_causal_bank
    from tests.test_gates import randomise_gates

    base = tiny_causal("llama")
    composer = MoLEComposer(gate=compose_cfg(["composer=mole"]).composer.gate)
    composer.compose(base, tiny_causal_bank(base, cache_dir))
    randomise_gates(composer.router, std=2.0)
    composer.prepare_inference()
    composed = Composed(base, composer, {"composer": "mole"}, max_length=256)
    model = base.model.eval()
    prompts = ["Premise: a cat sat on the mat. Hypothesis: a cat sat. Yes or no?", "Is the sky blue?",
               "Translate to French: the house is blue and the garden is green", "Question: what colour is grass? Answer:"]
    lm = ComposedLM(composed=composed, batch_size=3)
    assert lm.backend == "causal" and lm.max_length == 256
    expected = []
    for prompt in prompts:
        ids = torch.tensor([lm.tok_encode(prompt)])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
        expected.append(lm.tok_decode(out[0, ids.shape[1]:].tolist()))
    assert len(set(expected)) > 1
    assert generations(lm, [(p, 5) for p in prompts]) == expected
    assert generations(ComposedLM(composed=composed, batch_size=1), [(p, 5) for p in prompts]) == expected
    pairs = [(prompt, continuation) for prompt in prompts[:3] for continuation in (" yes", " it is not possible to tell")]
    direct = []
    for context, continuation in pairs:
        whole, context_ids = lm.tok_encode(context + continuation), lm.tok_encode(context)
        ids = torch.tensor([whole])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1], dim=-1)
        targets = torch.tensor(whole[1:])
        direct.append(float(logprobs.gather(1, targets[:, None])[len(context_ids) - 1 :].sum()))
    assert scores(lm, pairs) == pytest.approx(direct, abs=1e-4)
    assert len({round(v, 3) for v in direct}) > len(pairs) // 2
    composed.release()


@needs_data
def test_a_spec_composes_only_what_needs_no_fit():
    from mole_exp.harness.composed import check_spec

    tiny = ["model=tiny", "experts=tiny", f"paths.data_dir={DATA_DIR}"]
    for spec, message in [
        (["composer=mole"], r"composer 'mole' trains its parameters, which a spec does not hold; evaluate a finished run of it with --run"),
        (["composer=lorahub"], r"composer 'lorahub' fits its weights by search; evaluate a finished run"),
        (["composer=pems"], r"or give composer.weights=\[\.\.\.\]"),
        (["composer=single", "composer.expert=matched"], r"composer.expert=matched applies each evaluated dataset's own expert"),
        (["composer=no_such_composer"], r"--compose composer=no_such_composer .*no_such_composer"),
        (["composer=nla", "composer.merge=sideways"], r"composer.merge='sideways'"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_spec(spec + tiny)
    with pytest.raises(ValueError, match=r"--compose needs overrides"):
        check_spec([])
    cfg, composer = check_spec(["composer=nla"] + tiny)
    assert composer.name == "nla" and cfg.model._target_.endswith("build_tiny")


@needs_data
@needs_lm_eval
def test_a_spec_builds_the_composed_model_our_evaluator_runs():
    from mole_exp.evaluation.evaluator import GenerationSettings, generate
    from mole_exp.harness.lm import ComposedLM

    lm = ComposedLM(compose=f"composer=nla model=tiny experts=tiny paths.data_dir={DATA_DIR}", batch_size=2)
    assert lm.composed.source["composer"] == "nla" and len(lm.composed.source["experts"]) == 8
    assert lm.max_length == 512  # data.max_source_length (the tiny T5's config would give lm-eval's default, 2048)
    prompts = ["premise: the sky is blue. hypothesis: the sky has a colour.", "Is this a question?", "Translate: bonjour"]
    ours = generate(lm.model, lm.tokenizer, prompts, 6, GenerationSettings(batch_size=3, progress=False))
    assert generations(lm, [(p, 6) for p in prompts]) == ours
    lm.composed.release()  # the base again: other generations
    assert generate(lm.model, lm.tokenizer, prompts, 6, GenerationSettings(batch_size=3, progress=False)) != ours


@needs_lm_eval
def test_the_commands_model_flags(tmp_path, capsys):
    from mole_exp.harness.cli import main

    for argv, message in [
        (["--tasks", "t"], "give the composed model: --run <finished run folder> or --compose"),
        (["--run", str(tmp_path), "--compose", "composer=nla", "--tasks", "t"], "(one of them)"),
        (["--run", str(tmp_path), "--model", "hf", "--tasks", "t"], "--model 'hf': scripts/lm_eval.py evaluates composed models"),
        (["--compose", "composer=nla", "--unit", "qnli", "--tasks", "t"], "--unit names a fit unit of a run: it needs --run"),
        (["--run", str(tmp_path), "--model_args", "run=x", "--tasks", "t"], "--model_args ['run']: give them as --run"),
        (["--run", str(tmp_path), "--tasks", "t"], "is not a run folder: it has no config.yaml"),
    ]:
        assert main(argv) == 2
        assert message in capsys.readouterr().err, argv


def by_name(node):
    """A task config with every function it names as its dotted name (lm-eval loads a file's functions anew)."""
    if isinstance(node, dict):
        return {k: by_name(v) for k, v in node.items()}
    if isinstance(node, list):
        return [by_name(v) for v in node]
    return f"{node.__module__}.{node.__qualname__}" if callable(node) else node


@needs_data
@needs_lm_eval
def test_the_local_tasks_are_lm_evals_own_but_for_their_data():
    """conf/lm_eval_tasks/ against lm-eval's installed configs (includes and functions resolved): the same prompts,
    filters, metrics and generation settings; only the names, where the rows come from and the split names differ.
    And every one of them loads its rows."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    installed = Path(lm_eval.__file__).parent / "tasks"
    data_keys = {"task", "group", "tag", "custom_dataset", "dataset_kwargs", "dataset_path", "training_split", "validation_split", "test_split"}
    pairs = [(f, installed / "bbh" / "zeroshot" / f.name.removeprefix("local_bbh_zeroshot_")) for f in (LOCAL_TASKS / "bbh_zeroshot").glob("local_*.yaml")]
    pairs += [(f, installed / "anli" / f.name.removeprefix("local_")) for f in (LOCAL_TASKS / "anli").glob("local_*.yaml")]
    pairs.append((LOCAL_TASKS / "bbh_zeroshot" / "_local_bbh_zeroshot.yaml", installed / "bbh" / "zeroshot" / "_bbh_zeroshot.yaml"))
    assert len(pairs) == 27 + 3 + 1
    for local, theirs in pairs:
        mine, original = by_name(load_yaml(local)), by_name(load_yaml(theirs))
        assert {k: v for k, v in mine.items() if k not in data_keys} == {k: v for k, v in original.items() if k not in data_keys}, local.name
        if "group" in mine:
            assert mine["group"] == "local_" + original["group"] and mine["task"] == ["local_" + name for name in original["task"]]
        else:
            assert mine["task"] == "local_" + original["task"], local.name
            assert mine["custom_dataset"] in ("mole_exp.harness.local_tasks.bbh", "mole_exp.harness.local_tasks.anli"), local.name

    loaded = TaskManager(include_path=str(LOCAL_TASKS)).load(["local_bbh_zeroshot", "local_anli"])["tasks"]
    sizes = {name: len(list(task.test_docs())) for name, task in loaded.items()}
    assert len(sizes) == 30 and sizes["local_anli_r3"] == 1200 and sizes["local_bbh_zeroshot_boolean_expressions"] == 250
    assert min(sizes.values()) >= 146  # BBH's smallest task (penguins_in_a_table)
