"""Crash and resume, determinism: kill -9 mid-training, rerun with resume=true, end where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tests.conftest import DATA_DIR, ROOT, needs_data

pytestmark = needs_data

COMMON = [
    "task=nli", "task.only=[wnli,qnli]", "composer=mole", "model=tiny", "experts=tiny", "trainer=cpu",
    "trainer.max_steps=12", "checkpoint_every_n_steps=4", "data.train_limit=40", "data.eval_limit=4", "data.batch_size=4",
    "optimizer.lr=0.05", "generation.progress=false", f"paths.data_dir={DATA_DIR}",
]


def train(args, tmp_path, run_name):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MOLE_EXP_CACHE": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "train.py", *COMMON, f"paths.outputs_dir={tmp_path / 'outputs'}", f"hydra.run.dir={tmp_path / 'outputs' / run_name}", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


def test_kill_9_then_resume_ends_like_an_uninterrupted_run(tmp_path):
    reference = train([], tmp_path, "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]

    crashed = train(["callbacks=[{_target_:tests.helpers.KillAtStep,step:6}]"], tmp_path, "crashed")
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    crashed_dir = tmp_path / "outputs" / "crashed"
    assert (crashed_dir / "checkpoints" / "last.ckpt").exists() and not (crashed_dir / "metrics.json").exists()

    resumed = train(["resume=true"], tmp_path, "resumed")  # the same command, plus resume=true
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming the unfinished run in" in resumed.stderr + resumed.stdout
    # the step bar continues from the checkpoint's step (4) to 12, never past it; no "Epoch 0/-2"
    counts = [int(n) for n in re.findall(r"train \(steps\):[^\r\n]*?\| *(\d+)/12 ", resumed.stdout)]
    assert counts and min(counts) == 4 and max(counts) == 12, resumed.stdout[-2000:]
    assert "Epoch 0/-2" not in resumed.stdout + resumed.stderr
    metrics = json.loads((crashed_dir / "metrics.json").read_text())  # finished in the crashed run's folder
    reference_metrics = json.loads((tmp_path / "outputs" / "reference" / "metrics.json").read_text())
    assert metrics["train"]["resumed_from"].endswith("last.ckpt")
    assert metrics["train"]["steps"] == reference_metrics["train"]["steps"] == 12
    assert metrics["metrics"] == reference_metrics["metrics"]
    gates = load_file(str(crashed_dir / "checkpoints" / "composer.safetensors"))
    reference_gates = load_file(str(tmp_path / "outputs" / "reference" / "checkpoints" / "composer.safetensors"))
    assert gates.keys() == reference_gates.keys()
    for name, tensor in reference_gates.items():
        assert (gates[name] == tensor).all(), name
    steps = [json.loads(line)["step"] for line in (crashed_dir / "gate_stats.jsonl").read_text().splitlines()]
    assert steps == list(range(12))


@pytest.mark.slow
def test_kill_9_in_a_per_dataset_run_resumes_that_unit_and_keeps_the_finished_ones(tmp_path):
    per_dataset = ["composer.fit_per=dataset", "trainer.max_steps=8"]
    reference = train(per_dataset, tmp_path, "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]

    crashed = train(per_dataset + ["callbacks=[{_target_:tests.helpers.KillAtStep,step:6,unit:wnli}]"], tmp_path, "crashed")
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    crashed_dir, reference_dir = tmp_path / "outputs" / "crashed", tmp_path / "outputs" / "reference"
    assert (crashed_dir / "units" / "qnli.json").exists() and (crashed_dir / "checkpoints" / "wnli" / "last.ckpt").exists()
    finished_qnli = (crashed_dir / "units" / "qnli.json").read_bytes()

    resumed = train(per_dataset + ["resume=true"], tmp_path, "resumed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "fit unit qnli finished before the interruption" in resumed.stderr + resumed.stdout
    assert (crashed_dir / "units" / "qnli.json").read_bytes() == finished_qnli
    metrics = json.loads((crashed_dir / "metrics.json").read_text())
    reference_metrics = json.loads((reference_dir / "metrics.json").read_text())
    assert metrics["units"]["wnli"]["train"]["resumed_from"].endswith("wnli/last.ckpt")
    assert metrics["metrics"] == reference_metrics["metrics"]
    for unit in ("qnli", "wnli"):
        gates = load_file(str(crashed_dir / "checkpoints" / unit / "composer.safetensors"))
        reference_gates = load_file(str(reference_dir / "checkpoints" / unit / "composer.safetensors"))
        assert gates.keys() == reference_gates.keys() and all((gates[k] == v).all() for k, v in reference_gates.items()), unit
    rows = [json.loads(line) for line in (crashed_dir / "gate_stats.jsonl").read_text().splitlines()]
    assert [(r["unit"], r["step"]) for r in rows] == [(u, s) for u in ("qnli", "wnli") for s in range(8)]


def test_same_seed_same_config_same_results(tmp_path, smoke_overrides):
    from mole_exp.training.pipeline import run
    from tests.conftest import compose_cfg

    overrides = smoke_overrides + ["task=nli", "task.only=[wnli]", "trainer.max_steps=4", "optimizer.lr=0.05"]
    runs = [tmp_path / name for name in ("first", "second")]
    metrics = [run(compose_cfg(overrides, output_dir=folder)) for folder in runs]
    assert metrics[0]["metrics"] == metrics[1]["metrics"] and metrics[0]["config_hash"] == metrics[1]["config_hash"]
    assert metrics[0]["composer"]["temperatures"] == metrics[1]["composer"]["temperatures"]
    gates = [load_file(str(r / "checkpoints" / "composer.safetensors")) for r in runs]
    assert all((gates[0][k] == gates[1][k]).all() for k in gates[0])
    assert (runs[0] / "predictions.jsonl").read_text() == (runs[1] / "predictions.jsonl").read_text()
    assert (runs[0] / "gate_stats.jsonl").read_text() == (runs[1] / "gate_stats.jsonl").read_text()


def test_a_failing_sweep_member_leaves_the_others_intact_and_is_listed(tmp_path):
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MOLE_EXP_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "task=nli", "task.only=[wnli]", "model=tiny", "experts=tiny", "trainer=cpu",
         "trainer.max_steps=2", "data.eval_limit=4", "data.train_limit=8", "generation.progress=false",
         f"paths.data_dir={DATA_DIR}", "experts.count=99,2", f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0  # the sweep reports the failure ...
    failed, finished = sorted(sweep_dir.glob("[01]_*"))
    assert (finished / "metrics.json").exists()  # ... and the other member finished
    state = json.loads((failed / "run_state.json").read_text())
    assert state["status"] == "failed" and "experts.count=99" in state["error"]
    table = subprocess.run([sys.executable, "scripts/make_tables.py", str(sweep_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "failed: ValueError: experts.count=99" in table.stdout
