"""The users' default path (Hub ids for the model and the LoRAHub experts), tested offline through a local
Hugging Face cache holding the tiny T5 and tiny adapters under those exact ids, with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from mole_exp.base.hub_cache import seed_repo
from mole_exp.experts.library import packaged_id_list
from mole_exp.experts.tiny_library import ensure_tiny_library
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
        ["task=nli", "task.only=[wnli]", "experts.pool=list", "experts.pool=list", "experts.count=3", "trainer.max_steps=2",
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
    assert "this run needs 21 artifact(s) from the Hugging Face Hub that are not in the local cache" in result.stderr
    assert "HF_HUB_OFFLINE=1 is set" in result.stderr
    assert "  - model google/flan-t5-large: hf download google/flan-t5-large" in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def offline_run_missing_four(tmp_path, hub_cache, monkeypatch):
    """The model, two of three adapters and a dataset are not in the cache: one error lists the four."""
    from mole_exp.base.hub import HubUnavailableError
    from mole_exp.training.pipeline import run
    from tests.conftest import compose_cfg

    cache, hub_ids = hub_cache
    shutil.rmtree(cache / "models--google--flan-t5-large")
    for hub_id in hub_ids[1:]:
        shutil.rmtree(cache / f"models--{hub_id.replace('/', '--')}")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    cfg = compose_cfg(["task=nli", "task.only=[wnli]", "task.source=hub", "experts.pool=list", "experts.count=3",
                       f"paths.data_dir={tmp_path / 'no_shared_data'}"], output_dir=tmp_path / "run")
    started = time.perf_counter()
    with pytest.raises(HubUnavailableError) as caught:
        run(cfg)
    elapsed = time.perf_counter() - started
    state = json.loads((tmp_path / "run" / "run_state.json").read_text())  # the folder records why (a sweep lists it)
    assert state["status"] == "failed" and "HubUnavailableError" in state["error"]
    assert not (tmp_path / "run" / "metrics.json").exists()
    return str(caught.value), elapsed, hub_ids


def test_offline_one_error_names_the_model_every_missing_adapter_and_dataset_within_seconds(tmp_path, hub_cache, monkeypatch):
    message, elapsed, hub_ids = offline_run_missing_four(tmp_path, hub_cache, monkeypatch)
    assert elapsed < 10, elapsed
    assert "this run needs 4 artifact(s)" in message and "HF_HUB_OFFLINE=1 is set" in message
    assert "  - model google/flan-t5-large: hf download google/flan-t5-large\n" in message
    for hub_id in hub_ids[1:]:
        assert f"  - adapter {hub_id}: hf download {hub_id}\n" in message
    assert hub_ids[0] not in message  # that one is in the cache
    assert "  - dataset nyu-mll/glue (wnli): hf download nyu-mll/glue --repo-type dataset" in message
    assert "MOLE_EXP_DATA=<folder>" in message and "no_shared_data (which does not exist)" in message
    assert "../shared/data" in message and "python -m mole_exp.base.hub_cache <repo_id> <folder>" in message


def test_an_unreachable_hub_fails_as_fast_as_an_offline_one(tmp_path, hub_cache, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: the connection is refused
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    message, elapsed, _ = offline_run_missing_four(tmp_path, hub_cache, monkeypatch)
    assert elapsed < 10, elapsed
    assert "the Hub (127.0.0.1:9) cannot be reached" in message and "this run needs 4 artifact(s)" in message
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True  # the rest of the process does not retry either
