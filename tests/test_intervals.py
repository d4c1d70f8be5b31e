"""Paired bootstrap intervals: per-example statistics give back each metric, identical predictions give exactly
0 with a zero-width interval, a planted difference is detected, the BLEU path agrees with sacreBLEU's
command line, runs that evaluated other examples are refused, and the compare script prints differences."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mole_exp.evaluation.metrics import score
from mole_exp.files import write_json, write_jsonl
from mole_exp.reporting.example_stats import dataset_stats
from mole_exp.reporting.intervals import (
    mean_interval,
    paired_difference,
    paired_run_scores,
    sacrebleu_paired,
    target_of,
)
from tests.conftest import ROOT

REFERENCES = [["the cat sat on the mat"], ["a quick brown fox jumps over it"], ["hello world again"], ["this is a small test"],
              ["machine translation is hard"], ["we like bleu scores", "we love bleu scores"], ["the dog barks at night"],
              ["it rains in the city today"]]
SYSTEM_A = ["the cat sat on a mat", "a quick brown fox jumped", "hello world", "this is small test", "machine translation is very hard",
            "we like bleu", "a dog barks at night", "it rains in town today"]
SYSTEM_B = ["the cat is on the mat", "quick brown fox jumps over it", "hello again world", "this is a small test",
            "translation is hard", "we love bleu scores", "the dog barks at night", "rain in the city today"]


def em_runs(n: int = 200, correct_a: float = 0.4, correct_b: float = 0.8, seed: int = 0):
    rng = np.random.default_rng(seed)
    references = [[f"answer {i}"] for i in range(n)]
    a = [r[0] if rng.random() < correct_a else "wrong" for r in references]
    b = [r[0] if rng.random() < correct_b else "wrong" for r in references]
    return references, a, b


@pytest.mark.parametrize("metric", ["exact_match", "squad_em", "rouge", "bleu"])
def test_per_example_statistics_give_back_the_metric(metric):
    stats = dataset_stats("d", metric, SYSTEM_A, REFERENCES)
    expected, _ = score(metric, SYSTEM_A, REFERENCES)
    assert stats.full_values() == pytest.approx([expected[name] for name in stats.outputs], abs=1e-9)
    assert stats.size == len(SYSTEM_A)


@pytest.mark.parametrize("metric", ["exact_match", "rouge", "bleu"])
def test_identical_predictions_give_exactly_zero_with_a_zero_width_interval(metric):
    scores = {"d": dataset_stats("d", metric, SYSTEM_A, REFERENCES)}
    for pairs in ([(scores, scores)], [(scores, scores)] * 3):  # one seed, and three (two-level)
        for target in (target_of(scores), target_of(scores)[:1]):
            interval = paired_difference(pairs, target)
            assert (interval.estimate, interval.low, interval.high) == (0.0, 0.0, 0.0)
            assert not interval.significant and interval.p_value == 1.0
    if metric == "bleu":
        found = sacrebleu_paired(SYSTEM_A, SYSTEM_A, REFERENCES)
        assert (found.difference.estimate, found.difference.low, found.difference.high) == (0.0, 0.0, 0.0)


def test_a_planted_difference_is_detected_and_a_tiny_one_is_not():
    references, a, b = em_runs()
    scores_a = {"d": dataset_stats("d", "exact_match", a, references)}
    scores_b = {"d": dataset_stats("d", "exact_match", b, references)}
    target = target_of(scores_a)
    planted = paired_difference([(scores_a, scores_b)], target)
    expected = 100 * (np.mean([x == r[0] for x, r in zip(b, references, strict=True)]) - np.mean([x == r[0] for x, r in zip(a, references, strict=True)]))
    assert planted.estimate == pytest.approx(expected) and planted.significant and planted.low > 20 and planted.p_value < 0.01
    assert paired_difference([(scores_b, scores_a)], target).high < 0  # and the other way round
    one_more = list(a)
    one_more[next(i for i, x in enumerate(a) if x == "wrong")] = references[next(i for i, x in enumerate(a) if x == "wrong")][0]
    tiny = paired_difference([(scores_a, {"d": dataset_stats("d", "exact_match", one_more, references)})], target)
    assert tiny.estimate == pytest.approx(0.5) and not tiny.significant and tiny.low <= 0 <= tiny.high
    # a single composer's interval brackets its value and narrows with more examples
    wide = mean_interval([{"d": dataset_stats("d", "exact_match", a[:50], references[:50])}], target)
    narrow = mean_interval([scores_a], target)
    assert wide.low <= wide.estimate <= wide.high and narrow.half_width < wide.half_width


def test_seeds_widen_the_interval_when_they_disagree():
    references, a, b = em_runs()
    _, _, b_weak = em_runs(correct_b=0.42, seed=0)
    stats = {name: {"d": dataset_stats("d", "exact_match", x, references)} for name, x in (("a", a), ("b", b), ("weak", b_weak))}
    target = target_of(stats["a"])
    agreeing = paired_difference([(stats["a"], stats["b"])] * 3, target)
    disagreeing = paired_difference([(stats["a"], stats["b"]), (stats["a"], stats["weak"]), (stats["a"], stats["b"])], target)
    assert agreeing.method == "two-level paired bootstrap" and agreeing.replicates == 3
    assert disagreeing.high - disagreeing.low > agreeing.high - agreeing.low
    assert disagreeing.low < agreeing.low


def test_sacrebleu_paired_path_agrees_with_the_sacrebleu_command_line(tmp_path):
    for name, lines in (("ref.txt", [r[0] for r in REFERENCES]), ("a.txt", SYSTEM_A), ("b.txt", SYSTEM_B)):
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    single_refs = [[r[0]] for r in REFERENCES]
    command = [str(Path(sys.executable).parent / "sacrebleu"), "ref.txt", "-i", "a.txt", "b.txt", "--paired-bs", "-f", "json"]
    printed = json.loads(subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=True,
                                        env={"SACREBLEU_SEED": "12345", "PATH": ""}).stdout)
    found = sacrebleu_paired(SYSTEM_A, SYSTEM_B, single_refs)
    base, system = printed[0]["BLEU"], printed[1]["BLEU"]
    assert (found.score_a, found.mean_a, found.ci_a) == pytest.approx((base["score"], base["mean"], base["ci"]), abs=1e-9)
    assert (found.score_b, found.mean_b, found.ci_b, found.p_value) == pytest.approx(
        (system["score"], system["mean"], system["ci"], system["p_value"]), abs=1e-9)
    assert found.difference.estimate == pytest.approx(system["score"] - base["score"])
    assert found.difference.low < found.difference.estimate < found.difference.high


def write_run(folder: Path, composer: str, seed: int, predictions: list[str], references: list[list[str]], inputs=None,
              dataset: str = "qa", metric: str = "exact_match") -> Path:
    folder.mkdir(parents=True)
    inputs = inputs or [f"question {i}" for i in range(len(predictions))]
    write_jsonl(folder / "predictions.jsonl", [{"dataset": dataset, "input": x, "prediction": p, "references": r, "metric": metric}
                                                for x, p, r in zip(inputs, predictions, references, strict=True)])
    values, _ = score(metric, predictions, references)
    (folder / "config.yaml").write_text(f"seed: {seed}\ncomposer:\n  name: {composer}\ntask:\n  name: suite\n")
    write_json(folder / "metrics.json", {"status": "completed", "seed": seed, "task": "suite", "eval_task": "suite",
                                         "metrics": {f"test/{dataset}/{k}": v for k, v in values.items()},
                                         "num_examples": {dataset: len(predictions)}, "composer": {"name": composer}})
    return folder


def test_runs_that_evaluated_other_examples_are_refused(tmp_path):
    references, a, b = em_runs(n=20)
    run_a = write_run(tmp_path / "a", "nla", 0, a, references)
    run_b = write_run(tmp_path / "b", "mole", 0, b[:19], references[:19])
    with pytest.raises(ValueError, match=r"dataset qa: the runs evaluated different examples \(.*20.*19; 1 only in"):
        paired_run_scores(run_a, run_b)
    shuffled = write_run(tmp_path / "c", "mole", 0, b[::-1], references[::-1], inputs=[f"question {i}" for i in range(20)][::-1])
    scores_a, scores_c = paired_run_scores(run_a, shuffled)  # same examples in another order: matched by input
    assert np.array_equal(scores_c["qa"].stats, dataset_stats("qa", "exact_match", b, references).stats)
    other_refs = write_run(tmp_path / "d", "mole", 0, b, [[r[0] + "!"] for r in references])
    with pytest.raises(ValueError, match="other references"):
        paired_run_scores(run_a, other_refs)


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_script_pairs_seeds_and_prints_differences(tmp_path, capsys):
    for seed in (0, 1, 2):
        references, a, b = em_runs(seed=seed)
        write_run(tmp_path / "sweep_a" / f"seed{seed}", "nla", seed, a, references)
        write_run(tmp_path / "sweep_b" / f"seed{seed}", "mole", seed, b, references)
    write_run(tmp_path / "sweep_b" / "seed7", "mole", 7, b, references)  # no partner: listed, not paired
    compare = load_script("compare_runs")
    assert compare.main([str(tmp_path / "sweep_a"), str(tmp_path / "sweep_b"), "--json", str(tmp_path / "diff.json")]) == 0
    out = capsys.readouterr().out
    assert "B = mole  vs  A = nla  (seeds 0, 1, 2)" in out and "two-level paired bootstrap" in out and "seed 7" in out
    row = json.loads((tmp_path / "diff.json").read_text())[0]["rows"][0]
    assert row["significant"] and row["low"] > 0 and row["b"] - row["a"] == pytest.approx(row["estimate"])
    # one run against itself: exactly 0
    assert compare.main([str(tmp_path / "sweep_a" / "seed0"), str(tmp_path / "sweep_a" / "seed0")]) == 0
    assert re.search(r"\| qa \| em \| (\d+\.\d) \| \1 \| \+0\.0 \| \[\+0\.0, \+0\.0\] \| 1\.000 \| no \|", capsys.readouterr().out)
    write_run(tmp_path / "short", "mole", 0, b[:10], references[:10])
    assert compare.main([str(tmp_path / "sweep_a" / "seed0"), str(tmp_path / "short")]) == 2
    assert "different examples" in capsys.readouterr().err
