"""The users' default path (Hub ids for the model and the LoRAHub experts), tested offline through a local
Hugging Face cache holding the tiny T5 and tiny adapters under those exact ids, with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mole_exp.experts import ensure_tiny_library, packaged_id_list
from mole_exp.hub_cache import seed_repo
from tests.conftest import DATA_DIR, ROOT, make_tiny, needs_data

pytestmark = needs_data


def run_train(args, env_extra, cwd=ROOT):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", **env_extra}
    return subprocess.run([sys.executable, "train.py", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def hub_cache(tmp_path, cache_dir):
    base = make_tiny()
    model_dir = tmp_path / "tiny_model"
    base.model.save_pretrained(model_dir)
    base.tokenizer.save_pretrained(model_dir)
    cache = tmp_path / "hf_cache"
    seed_repo("google/flan-t5-large", model_dir, cache)
    library = ensure_tiny_library(base, str(cache_dir / "tiny_experts"), num_adapters=3, rank=4, alpha=8, targets=["q", "v"], seed=0)
    hub_ids = packaged_id_list("lorahub")[:3]
    for index, hub_id in enumerate(hub_ids):
        seed_repo(hub_id, library / f"tiny_expert_{index:02d}", cache)
    return cache, hub_ids


def test_default_hub_ids_resolve_from_a_local_cache(tmp_path, hub_cache):
    cache, hub_ids = hub_cache
    run_dir = tmp_path / "run"
    result = run_train(
        ["task=nli", "task.only=[wnli]", "experts.pool=list", "experts.count=3", "experts.selection=first", "trainer.max_steps=2",
         "data.eval_limit=4", "data.train_limit=8", "data.batch_size=4", "generation.progress=false",
         f"paths.data_dir={DATA_DIR}", f"hydra.run.dir={run_dir}"],
        {"HF_HUB_CACHE": str(cache)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["model"] == "google/flan-t5-large"  # the default model id, resolved from the cache
    assert metrics["experts"]["sources"] == hub_ids
    assert "test/wnli/em" in metrics["metrics"]


def test_without_cache_or_network_one_clear_error(tmp_path):
    result = run_train(
        ["task=nli", "task.only=[wnli]", f"paths.data_dir={DATA_DIR}", f"hydra.run.dir={tmp_path / 'run'}"],
        {"HF_HUB_CACHE": str(tmp_path / "empty_cache")},
    )
    assert result.returncode != 0
    assert "could not load model 'google/flan-t5-large': HF_HUB_OFFLINE=1 is set and it is not in the local cache" in result.stderr
    assert "hf download google/flan-t5-large" in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()
