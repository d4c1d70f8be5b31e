"""Shared fixtures: the tiny T5 with the real vocabulary, a tiny PEFT expert library, config composition."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mole_exp.base.tokenizer_fetch import FETCH_COMMAND, is_fetched, tokenizers_dir
from mole_exp.training.compose import compose_run_config

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MOLE_EXP_DATA", ROOT.parent / "shared" / "data"))
TOKENIZER_DIR = DATA_DIR / "t5_tokenizer"

needs_data = pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"shared task data not found at {DATA_DIR} (set MOLE_EXP_DATA)")
# the fetched decoder-only tokenizers, located before the tests point MOLE_EXP_CACHE at a temporary folder
TOKENIZERS_DIR = tokenizers_dir()


def needs_tokenizer(name: str):
    return pytest.mark.skipif(
        not is_fetched(name, TOKENIZERS_DIR),
        reason=f"the {name} tokenizer is not in {TOKENIZERS_DIR}; fetch it once with `{FETCH_COMMAND} {name}` (make tokenizers)",
    )


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mole_cache")


@pytest.fixture(autouse=True)
def _isolate_env(monkeypatch, cache_dir):
    monkeypatch.setenv("MOLE_EXP_CACHE", str(cache_dir))
    monkeypatch.setenv("MOLE_EXP_TOKENIZERS", str(TOKENIZERS_DIR))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")


def make_tiny(**overrides):
    from mole_exp.base.models import build_tiny

    return build_tiny(str(TOKENIZER_DIR), **overrides)


def tiny_experts_cfg(cache_dir: Path, num_adapters: int = 4, rank: int = 4, targets=("q", "v"), **extra):
    return OmegaConf.create(
        {
            "_target_": "mole_exp.experts.sources.tiny",
            "library_dir": str(cache_dir / "tiny_experts"),
            "tiny": {"num_adapters": num_adapters, "rank": rank, "alpha": 2 * rank, "targets": list(targets), "seed": 0},
            "count": None,
            "selection": "first",
            "seed": 0,
            "layer_range": None,
            **extra,
        }
    )


@pytest.fixture
def tiny_base():
    return make_tiny()


@pytest.fixture
def tiny_bank(tiny_base, cache_dir):
    from mole_exp.experts.loading import load_experts

    return load_experts(tiny_experts_cfg(cache_dir), tiny_base)


compose_cfg = compose_run_config  # conf/train.yaml with overrides, as `python train.py` sees it


SMOKE = ["model=tiny", "experts=tiny", "trainer=cpu", "trainer.max_steps=2", "data.eval_limit=4", "data.train_limit=16",
         "data.batch_size=4", "generation.progress=false", "logger=csv"]


@pytest.fixture
def smoke_overrides(tmp_path):
    return SMOKE + [f"paths.data_dir={DATA_DIR}", f"paths.outputs_dir={tmp_path / 'outputs'}"]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy shared CPU they lose a lot (spinning):
    a module that runs many of them asks for this (pytestmark = pytest.mark.usefixtures("one_torch_thread"))."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
