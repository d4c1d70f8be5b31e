"""DDP with 2 CPU processes (gloo): gate gradients are all-reduced, and the result equals one process
trained on the same global batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tests.conftest import DATA_DIR, ROOT, needs_data

pytestmark = [needs_data, pytest.mark.slow]

# WNLI targets ("yes"/"no") all tokenize to the same length, so the mean of the two ranks' token-mean
# losses equals the global token mean; alpha=0 because L_balance is not linear in the batch.
COMMON = [
    "task=nli", "task.only=[wnli]", "composer=mole", "composer.alpha=0", "model=tiny", "experts=tiny",
    "trainer.accelerator=cpu", "trainer.max_steps=5", "data.train_limit=64", "data.eval_limit=4",
    "optimizer.lr=0.05", "generation.progress=false", f"paths.data_dir={DATA_DIR}",
]


def train(args, run_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MOLE_EXP_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "train.py", *COMMON, *args, f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text()), load_file(str(run_dir / "checkpoints" / "composer.safetensors"))


def test_ddp_two_cpu_processes_match_one_process_with_the_same_global_batch(tmp_path):
    single_metrics, single_gates = train(["trainer=cpu", "data.batch_size=8"], tmp_path / "single", tmp_path)
    ddp_metrics, ddp_gates = train(["trainer=ddp", "trainer.devices=2", "data.batch_size=4"], tmp_path / "ddp", tmp_path)
    assert ddp_metrics["train"]["steps"] == single_metrics["train"]["steps"] == 5
    moved = False
    for name, tensor in single_gates.items():
        # float summation order differs across ranks and Adam amplifies it in near-zero gradient entries
        # (seen: up to 2e-4); a different batch would move the gates by ~lr = 0.05 per step
        assert (ddp_gates[name] - tensor).abs().max() < 2e-3, name
        moved |= bool((tensor != 0).any())
    assert moved  # the gates trained (they start at 0)
    assert not (tmp_path / "ddp" / "metrics.json.tmp").exists()


def test_ddp_runs_every_fit_unit_of_a_per_dataset_run(tmp_path):
    """Rank 1 follows rank 0 through the units (it trains each, evaluates none); each unit's gates match one process."""
    per_dataset = ["task.only=[qnli,wnli]", "composer.fit_per=dataset"]  # QNLI's and WNLI's targets are "yes" / "no"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MOLE_EXP_CACHE": str(tmp_path / "cache")}
    runs = {}
    for name, args in {"single": ["trainer=cpu", "data.batch_size=8"], "ddp": ["trainer=ddp", "trainer.devices=2", "data.batch_size=4"]}.items():
        result = subprocess.run([sys.executable, "train.py", *COMMON, *per_dataset, *args, f"hydra.run.dir={tmp_path / name}"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert runs["ddp"]["protocol"]["fit_units"] == ["qnli", "wnli"]
    for unit in ("qnli", "wnli"):
        assert runs["ddp"]["units"][unit]["train"]["steps"] == runs["single"]["units"][unit]["train"]["steps"] == 5
        single = load_file(str(tmp_path / "single" / "checkpoints" / unit / "composer.safetensors"))
        ddp = load_file(str(tmp_path / "ddp" / "checkpoints" / unit / "composer.safetensors"))
        assert single.keys() == ddp.keys() and all((ddp[k] - v).abs().max() < 2e-3 for k, v in single.items()), unit
