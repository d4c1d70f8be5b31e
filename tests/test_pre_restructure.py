"""Results written before the package restructure still load and match (tests/fixtures/pre_restructure/,
made by its make_fixture.py at commit 41e4a9e).

- The gates checkpoint of a real run (MoLE over 3 tiny PEFT experts) loads into today's model and gives the
  outputs it gave then: the same generations (greedy and 2-beam) token for token, and the same hidden states
  and loss up to float32 rounding (1e-5; bit for bit at the thread count that made them).
- config_hash ignores this package's module paths: the run's config.yaml hashes to one value before and after
  every move, and today's config composed from the run's overrides hashes the same. Runs that recorded the
  pre-move hash (which included module paths) are still found by `resume=true` and the mini reproduction.
- The cache keys of the tiny and random libraries and of the small base are those the pre-move code gave.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from tests.conftest import TOKENIZER_DIR, compose_cfg, needs_data

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "pre_restructure"
RECORD = json.loads((FIXTURE / "fixture.json").read_text())


def fixture_config():
    return OmegaConf.load(FIXTURE / "config.yaml")


def composed_model(load_checkpoint: bool = True):
    """Today's tiny base, the fixture's expert library and today's MoLE composer with the run's options."""
    from mole_exp.base.models import build_tiny
    from mole_exp.composers.mole import MoLEComposer
    from mole_exp.experts.loading import load_experts
    from mole_exp.training.checkpoints import load_composer_state

    cfg = fixture_config()
    options = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if k not in ("_target_", "tokenizer_dir")}
    base = build_tiny(str(TOKENIZER_DIR), **options)
    assert base.model_id == RECORD["base_model_id"]
    library = OmegaConf.create({"_target_": "mole_exp.experts.sources.library", "library_dir": str(FIXTURE / "library"), "count": None,
                                "selection": "first", "pool": "list", "seed": 0, "layer_range": None})
    bank = load_experts(library, base)  # its manifest's base fingerprint is checked against the base built here
    assert bank.names == RECORD["experts"]
    composer = MoLEComposer(**{k: v for k, v in OmegaConf.to_container(cfg.composer).items() if k != "_target_"})
    composer.compose(base, bank)
    if load_checkpoint:
        load_composer_state(composer, FIXTURE / "composer.safetensors")
    composer.prepare_inference()
    return base.model.eval()


def run_model(model, recorded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    inputs = {"input_ids": recorded["input_ids"], "attention_mask": recorded["attention_mask"]}
    with torch.no_grad():
        out = model(**inputs, labels=recorded["labels"], output_hidden_states=True)
        return {
            "encoder_last_hidden_state": out.encoder_last_hidden_state,
            "decoder_last_hidden_state": out.decoder_hidden_states[-1],
            "loss": out.loss.reshape(1),
            "greedy": model.generate(**inputs, max_new_tokens=8, num_beams=1, do_sample=False),
            "beam2": model.generate(**inputs, max_new_tokens=8, num_beams=2, do_sample=False),
        }


@needs_data
def test_the_pre_restructure_gates_checkpoint_gives_identical_outputs():
    from safetensors.torch import load_file

    recorded = load_file(str(FIXTURE / "outputs.safetensors"))
    produced = run_model(composed_model(), recorded)
    for name, tensor in produced.items():
        if tensor.is_floating_point():  # the same up to float32 rounding (the CPU thread count reorders sums: ~5e-7)
            torch.testing.assert_close(tensor, recorded[name], rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
        else:  # token ids: identical
            assert torch.equal(tensor, recorded[name]), f"{name}: {tensor.tolist()} != {recorded[name].tolist()}"
    # the comparison can fail: fresh (uniform) gates give other hidden states than the checkpoint's
    fresh = run_model(composed_model(load_checkpoint=False), recorded)
    assert (fresh["decoder_last_hidden_state"] - recorded["decoder_last_hidden_state"]).abs().max() > 1e-3


# config_hash ignores this package's module paths since the restructure began (pre-move code hashed them, giving
# the fixture's recorded 61ab4872e5d7); this is the fixture config's hash without them, the same after every move.
HASH_WITHOUT_MODULE_PATHS = "1ce89a38f4d6"


def test_the_pre_restructure_config_hash_ignores_module_paths():
    from mole_exp.training.config import config_hash

    cfg = fixture_config()
    assert config_hash(cfg) == HASH_WITHOUT_MODULE_PATHS
    moved = fixture_config()
    moved.model._target_ = "mole_exp.base.models.build_tiny"  # a module moved: the same config
    moved.composer._target_ = "mole_exp.composers.moved.MoLEComposer"
    assert config_hash(moved) == HASH_WITHOUT_MODULE_PATHS
    for key, value in (("seed", 1), ("composer.alpha", 0.25), ("optimizer._target_", "torch.optim.SGD")):
        changed = fixture_config()
        OmegaConf.update(changed, key, value)  # what changes a result still changes the hash (third-party targets too)
        assert config_hash(changed) != HASH_WITHOUT_MODULE_PATHS, key


def test_todays_config_from_the_runs_overrides_hashes_the_same():
    from mole_exp.training.config import config_hash

    paths = [f"paths.data_dir={RECORD['paths']['data_dir']}", f"paths.cache_dir={RECORD['paths']['cache_dir']}"]
    assert config_hash(compose_cfg(RECORD["overrides"] + paths)) == HASH_WITHOUT_MODULE_PATHS


def pre_restructure_run(folder: Path, finished: bool) -> Path:
    """A run folder as the pre-move code left it: its config.yaml and the (module-path) hash it recorded."""
    from mole_exp.files import write_json

    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text((FIXTURE / "config.yaml").read_text())
    write_json(folder / "run_state.json", {"config_hash": RECORD["config_hash"], "status": "completed" if finished else "interrupted"})
    if finished:
        write_json(folder / "metrics.json", {"config_hash": RECORD["config_hash"], "metrics": RECORD["test_metrics"]})
    else:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "last.ckpt").write_bytes(b"gates")
    return folder


def test_runs_recorded_with_the_pre_restructure_hash_are_not_orphaned(tmp_path):
    """resume=true finds an interrupted pre-move run of the same config, and the mini reproduction's reuse check
    recognises a finished one; a run of another config stays apart."""
    from mole_exp.training.config import config_hash
    from mole_exp.training.resume import find_resumable_run, matches_config

    interrupted = pre_restructure_run(tmp_path / "outputs" / "runs" / "old", finished=False)
    paths = [f"paths.data_dir={RECORD['paths']['data_dir']}", f"paths.cache_dir={RECORD['paths']['cache_dir']}",
             f"paths.outputs_dir={tmp_path / 'outputs'}"]
    cfg = compose_cfg(RECORD["overrides"] + paths + ["resume=true"], output_dir=tmp_path / "outputs" / "runs" / "new")
    assert find_resumable_run(cfg, tmp_path / "outputs" / "runs" / "new") == interrupted
    other = compose_cfg(RECORD["overrides"] + paths + ["resume=true", "seed=1"], output_dir=tmp_path / "outputs" / "runs" / "new")
    assert find_resumable_run(other, tmp_path / "outputs" / "runs" / "new") is None
    finished = pre_restructure_run(tmp_path / "finished", finished=True)
    assert matches_config(finished, RECORD["config_hash"], config_hash(cfg))
    assert not matches_config(finished, RECORD["config_hash"], config_hash(other))


def test_cache_keys_of_libraries_and_bases_do_not_depend_on_module_paths(tmp_path):
    """The random library and the small base are cached under a hash of their settings; moving modules
    must not change it (or every cached library and base would be made again)."""
    from mole_exp.experts.random_library import ensure_random_library
    from mole_exp.tools.mini.small_base import cache_key, pretraining_spec

    keys = RECORD["spec_keys"]
    model = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "model" / "small_synthetic.yaml")
    spec, _ = pretraining_spec(OmegaConf.to_container(model.architecture), OmegaConf.to_container(model.pretrain), model.seed,
                               model.dtype, vocab_size=32100)
    assert cache_key(spec) == keys["small_base"]
    random_library = ensure_random_library(FIXTURE / "library", {"seed": 0, "match": "factors"}, tmp_path / "random")
    assert random_library.name == keys["random_library"]


@needs_data
def test_the_tiny_library_cache_key_does_not_depend_on_module_paths(tmp_path):
    from mole_exp.base.models import build_tiny
    from mole_exp.experts.tiny_library import ensure_tiny_library

    folder = ensure_tiny_library(build_tiny(str(TOKENIZER_DIR)), str(tmp_path), num_adapters=3, rank=4, alpha=8, targets=("q", "v"), seed=0)
    assert folder.name == RECORD["spec_keys"]["tiny_library"]


def test_a_pre_restructure_run_config_still_instantiates():
    """eval.py reads a finished run's config.yaml as written: every `_target_` of a pre-move config names where
    its object lives now (the synthetic suite: the tool's target, which registers the synthetic loader)."""
    from hydra.utils import get_object, instantiate

    from mole_exp.training.config import config_hash
    from mole_exp.training.moved_paths import with_current_targets

    cfg = with_current_targets(fixture_config())
    assert cfg.model._target_ == "mole_exp.base.models.build_tiny"
    assert fixture_config().experts.source == "tiny" and "source" not in cfg.experts  # experts.source -> the library's _target_
    assert cfg.experts._target_ == "mole_exp.experts.sources.tiny" and list(cfg.experts)[0] == "_target_"
    assert config_hash(cfg) == HASH_WITHOUT_MODULE_PATHS  # the upgraded config is the same run
    for node in (cfg.model, cfg.composer, cfg.task, cfg.optimizer, cfg.experts, cfg.trainer):
        assert callable(get_object(node._target_)), node._target_
    old_synthetic = OmegaConf.create({"task": {"_target_": "mole_exp.tasks.Task", "name": "synthetic", "source": "local",
                                               "datasets": {"copy": {"loader": "synthetic", "metric": "exact_match"}}},
                                      "model": {"_target_": "mole_exp.small_base.build_small_synthetic"}})
    upgraded = with_current_targets(old_synthetic)
    assert upgraded.model._target_ == "mole_exp.tools.mini.small_base.build_small_synthetic"
    assert callable(get_object(upgraded.model._target_))
    task = instantiate(upgraded.task, _convert_="all").load(need_train=False, eval_limit=3)
    assert len(task.test["copy"]) == 3


@needs_data
def test_the_expert_library_key_does_not_depend_on_module_paths():
    """A trained library is reused when its settings key matches (the mini reproduction's libraries), else refused."""
    from mole_exp.base.models import build_tiny, weights_fingerprint
    from mole_exp.tools.expert_training import LoraSettings, adapter_plan, library_settings
    from mole_exp.tools.mini.synthetic_tasks import synthetic_suite
    from mole_exp.tools.seq2seq_training import TrainSettings

    task = synthetic_suite(name="synthetic", source="local", args={"num_train": 20, "num_test": 5, "data_seed": 3},
                           datasets={"copy": {"loader": "synthetic", "metric": "exact_match"},
                                     "reverse": {"loader": "synthetic", "metric": "exact_match"}}).load(need_train=True)
    base = build_tiny(str(TOKENIZER_DIR))
    datasets = ["copy", "reverse"]
    _, key = library_settings(base.model_id, weights_fingerprint(base.model), task, datasets, adapter_plan(task, datasets, None),
                              False, LoraSettings().resolved(base), TrainSettings(), seed=0)  # the defaults, as a T5 run resolves them
    assert key == RECORD["spec_keys"]["expert_library"]
