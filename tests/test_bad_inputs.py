"""Bad inputs: each raises one clear error naming the bad value and what is allowed, before expensive work,
and leaves finished results untouched."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from mole_exp.experts.loading import load_experts
from mole_exp.training.pipeline import run
from tests.conftest import ROOT, compose_cfg, make_tiny, needs_data, tiny_experts_cfg


def library_copy(tmp_path, cache_dir, tiny_base):
    """A writable copy of the tiny library, as a plain `experts=library` folder."""
    from mole_exp.experts.tiny_library import ensure_tiny_library

    source = ensure_tiny_library(tiny_base, str(cache_dir / "tiny_experts"), num_adapters=4, rank=4, alpha=8, targets=["q", "v"], seed=0)
    target = tmp_path / "library"
    shutil.copytree(source, target)
    return target


def library_cfg(folder, **extra):
    return OmegaConf.create({"_target_": "mole_exp.experts.sources.library", "library_dir": str(folder), "count": None, "selection": "first", "seed": 0, "layer_range": None, **extra})


def test_an_experts_config_must_name_a_library_source(tmp_path):
    from mole_exp.experts.loading import precheck

    with pytest.raises(ValueError, match=r"experts._target_ is missing \(one of \['mole_exp.experts.sources.tiny', "):
        precheck(OmegaConf.create({"source": "library", "library_dir": str(tmp_path), "count": None}))  # an older config's form
    with pytest.raises(ValueError, match=r"gave a dict, not a Library"):
        precheck(OmegaConf.create({"_target_": "builtins.dict", "count": None}))
    with pytest.raises(ValueError, match=r"experts=library needs experts.library_dir=<a folder of PEFT adapters"):
        precheck(OmegaConf.create({"_target_": "mole_exp.experts.sources.library", "library_dir": "???", "count": None}))
    with pytest.raises(ValueError, match=r"experts=paths / lorahub need experts.ids"):
        precheck(OmegaConf.create({"_target_": "mole_exp.experts.sources.listed", "ids": [], "ids_file": None}))


def test_expert_count_above_the_library_size(tiny_base, cache_dir):
    with pytest.raises(ValueError, match=r"experts.count=9 but the library at .* holds 4 adapters \(allowed 1..4\)"):
        load_experts(tiny_experts_cfg(cache_dir, count=9), tiny_base)
    with pytest.raises(ValueError, match="experts.count=0"):
        load_experts(tiny_experts_cfg(cache_dir, count=0), tiny_base)
    with pytest.raises(ValueError, match=r"experts.selection='best' is not one of \['first', 'random'\]"):
        load_experts(tiny_experts_cfg(cache_dir, count=2, selection="best"), tiny_base)


def test_adapters_made_for_another_base(tmp_path, cache_dir, tiny_base):
    folder = library_copy(tmp_path, cache_dir, tiny_base)
    other = make_tiny(d_model=32, d_kv=8)
    # the manifest names the base it was made on
    with pytest.raises(ValueError, match="was trained on base 'tiny-t5-d64.*but the base model is 'tiny-t5-d32"):
        load_experts(library_cfg(folder), other)
    # without a manifest the shapes give it away
    (folder / "manifest.json").unlink()
    with pytest.raises(ValueError, match=r"base layer is 32 x 32 \(adapter made for"):
        load_experts(library_cfg(folder), other)


def test_same_name_different_weights_is_caught_by_the_fingerprint(tmp_path, cache_dir, tiny_base):
    folder = library_copy(tmp_path, cache_dir, tiny_base)
    reseeded = make_tiny(seed=1)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["base_model_id"] = reseeded.model_id
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="weights fingerprint"):
        load_experts(library_cfg(folder), reseeded)


def test_adapter_targeting_a_module_the_base_lacks(tmp_path, cache_dir, tiny_base):
    from safetensors.torch import load_file, save_file

    folder = library_copy(tmp_path, cache_dir, tiny_base)
    weights_path = folder / "tiny_expert_01" / "adapter_model.safetensors"
    weights = load_file(str(weights_path))
    weights = {k.replace("block.1.", "block.7."): v for k, v in weights.items()}
    save_file(weights, str(weights_path))
    with pytest.raises(ValueError, match=r"targets module 'decoder.block.7.* which the base model .* does not have"):
        load_experts(library_cfg(folder), tiny_base)


def test_corrupt_and_absent_adapter_files(tmp_path, cache_dir, tiny_base):
    folder = library_copy(tmp_path, cache_dir, tiny_base)
    (folder / "tiny_expert_02" / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="tiny_expert_02: its weights file cannot be read"):
        load_experts(library_cfg(folder), tiny_base)
    (folder / "tiny_expert_02" / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match="tiny_expert_02 has no adapter_model.safetensors"):
        load_experts(library_cfg(folder), tiny_base)
    shutil.rmtree(folder / "tiny_expert_02")
    shutil.copytree(folder / "tiny_expert_01", folder / "tiny_expert_02")
    (folder / "tiny_expert_03" / "adapter_config.json").write_text("{broken")
    with pytest.raises(ValueError, match="adapter config .*tiny_expert_03/adapter_config.json is not valid JSON"):
        load_experts(library_cfg(folder), tiny_base)


def test_missing_library_folder(tmp_path, tiny_base):
    with pytest.raises(ValueError, match="experts.library_dir=.*nowhere' is not a folder"):
        load_experts(library_cfg(tmp_path / "nowhere"), tiny_base)


def test_mask_naming_unknown_experts_or_every_expert(tiny_bank, tiny_base):
    from mole_exp.composers.mole import MoLEComposer

    gate = {"granularity": "layer"}
    with pytest.raises(ValueError, match=r"composer.mask: unknown expert 'nli_expert'; the composed experts are \['tiny_expert_00'"):
        MoLEComposer(gate=gate, mask=["nli_expert"]).compose(tiny_base, tiny_bank)
    with pytest.raises(ValueError, match="expert index 7 is out of range; allowed 0..3"):
        MoLEComposer(gate=gate, mask=[7]).compose(make_tiny(), tiny_bank)
    with pytest.raises(ValueError, match="masks all 4 experts"):
        MoLEComposer(gate=gate, mask=[0, 1, 2, 3]).compose(make_tiny(), tiny_bank)


@pytest.mark.parametrize(
    "gate,message",
    [
        ({"granularity": "row"}, r"gate.granularity='row' is not one of \['matrix', 'layer', 'block', 'network'\]"),
        ({"granularity": "layer", "input_form": "flat"}, r"gate.input_form='flat' is not one of"),
        ({"granularity": "layer", "scope": "batch"}, r"gate.scope='batch' is not one of \['sequence', 'token'\]"),
        ({"granularity": "layer", "temperature": {"init": 0.01, "min": 0.05}}, "need 0 < min <= init <= max"),
    ],
)
def test_bad_gate_options(tiny_bank, gate, message):
    from mole_exp.composers.mole import MoLEComposer

    with pytest.raises(ValueError, match=message):
        MoLEComposer(gate=gate).compose(make_tiny(), tiny_bank)


def test_bad_composer_options():
    from mole_exp.composers.mole import MoLEComposer

    with pytest.raises(ValueError, match=r"composer.implementation='fast' is not one of \['rank_space', 'rank_space_saved', 'stacked'\]"):
        MoLEComposer(gate={}, implementation="fast")
    with pytest.raises(ValueError, match=r"composer.expert_dtype='bf16' is not one of \[None, 'bfloat16', 'float16', 'float32', 'float64'\]"):
        MoLEComposer(gate={}, expert_dtype="bf16")
    with pytest.raises(ValueError, match="composer.alpha=-1 must be >= 0"):
        MoLEComposer(gate={}, alpha=-1)


def test_non_finite_loss_stops_training_with_a_clear_error(tiny_base, tiny_bank):
    from functools import partial

    from mole_exp.composers.mole import MoLEComposer
    from mole_exp.training.lit_module import ComposerLitModule

    composer = MoLEComposer(gate={"granularity": "layer"})
    composer.compose(tiny_base, tiny_bank)
    for module in tiny_base.model.modules():
        if hasattr(module, "lora_B"):
            module.lora_B.fill_(float("nan"))
    lit = ComposerLitModule(tiny_base.model, composer, partial(torch.optim.AdamW, lr=1e-3))
    batch = tiny_base.tokenizer(["a b c"], return_tensors="pt")
    batch["labels"] = tiny_base.tokenizer(["yes"], return_tensors="pt").input_ids
    tiny_base.model.train()
    with pytest.raises(FloatingPointError, match="non-finite training loss at step 0"):
        lit.training_step(dict(batch), 0)


@needs_data
def test_bad_config_values_fail_before_loading_anything(tmp_path, smoke_overrides):
    for override, message in [
        ("data.batch_size=0", "data.batch_size=0 must be a positive integer"),
        ("trainer.max_steps=0", "trainer.max_steps=0 must be a positive integer"),
        ("mode=predict", r"mode='predict' is not one of \['train', 'eval'\]"),
        ("mode=eval", "mode=eval needs checkpoint="),
        ("task.source=s3", r"task.source='s3' is not one of \['auto', 'local', 'hub'\]"),
        ("task.only=[mnli]", r"task.only=\['mnli'\]: not datasets of suite 'nli'"),
    ]:
        with pytest.raises(ValueError, match=message):
            run(compose_cfg(smoke_overrides + [override], output_dir=tmp_path / override.split("=")[0]))


def test_unknown_group_option_lists_the_available_ones(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "composer=moe", f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "Could not find 'composer/moe'" in result.stderr and "mole" in result.stderr


@needs_data
def test_wrong_types_name_the_value(tmp_path, smoke_overrides):
    for override, message in [
        ("data.batch_size=twelve", "data.batch_size='twelve' must be a positive integer"),
        ("data.eval_limit=1.5", "data.eval_limit=1.5 must be a positive integer or null"),
    ]:
        with pytest.raises(ValueError, match=message):
            run(compose_cfg(smoke_overrides + [override], output_dir=tmp_path / "r"))
    with pytest.raises(ValueError, match=r"experts.count='eight' must be a positive integer or null"):
        run(compose_cfg(smoke_overrides + ["experts.count=eight", "task.only=[wnli]"], output_dir=tmp_path / "r2"))


def test_a_missing_shared_data_folder(tmp_path):
    from mole_exp.tasks import Task

    task = Task("nli", {"wnli": {"loader": "wnli", "metric": "exact_match", "template": "wnli"}}, source="local", data_dir=str(tmp_path / "no_shared"))
    with pytest.raises(FileNotFoundError, match=r"local data file .*no_shared/glue/WNLI/train.tsv does not exist.*task.source=hub \(dataset 'nyu-mll/glue"):
        task.load()
    # the tiny model still builds without the shared vocabulary: a small one is trained, with a warning
    from mole_exp.base.models import build_tiny

    with pytest.warns(UserWarning, match="no T5 vocabulary"):
        base = build_tiny(str(tmp_path / "no_shared" / "t5_tokenizer"))
    assert base.tokenizer("yes no").input_ids


def test_empty_datasets(tmp_path):
    from mole_exp.tasks import Task
    from mole_exp.tasks.base import LOADERS, LoadedSplits

    LOADERS["empty_for_test"] = lambda **_: LoadedSplits(train=[{"source": "a", "target": "b"}], test=[])
    try:
        task = Task("t", {"empty": {"loader": "empty_for_test", "metric": "exact_match"}}, source="local", data_dir=str(tmp_path))
        with pytest.raises(ValueError, match="dataset empty: the evaluation split is empty"):
            task.load()
    finally:
        del LOADERS["empty_for_test"]
    from mole_exp.evaluation.metrics import exact_match

    with pytest.raises(ValueError, match="cannot score an empty evaluation set"):
        exact_match([], [])


def test_expert_count_beyond_the_lorahub_list_fails_before_any_model_loads(tmp_path, monkeypatch):
    from mole_exp.base import models

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(models, "load_pretrained", no_model)
    with pytest.raises(ValueError, match=r"experts.count=197 but the library at lorahub holds 196 adapters \(allowed 1..196\)"):
        run(compose_cfg(["experts.count=197", f"paths.data_dir={tmp_path}"], output_dir=tmp_path / "r"))
    assert not (tmp_path / "r" / "metrics.json").exists()


@pytest.mark.parametrize("composer", ["mixer", "nla", "lorahub", "pems", "single", "base", "fresh_lora"])
def test_a_gate_option_on_a_composer_without_a_gate_is_refused(tmp_path, composer):
    """`composer=mixer composer/gate=block` once did nothing, silently: refused before anything loads."""
    from mole_exp.training.config import validate

    cfg = compose_cfg([f"composer={composer}", "composer/gate=block", f"paths.data_dir={tmp_path}"], output_dir=tmp_path / "r")
    with pytest.raises(ValueError, match=rf"composer={composer} has no gate, but a gate option was given \(composer/gate=block\): "
                                         r"only \['mole'\] take a gate"):
        validate(cfg)
    validate(compose_cfg([f"composer={composer}", f"paths.data_dir={tmp_path}"], output_dir=tmp_path / "r"))  # no gate: fine
    assert "gate" not in compose_cfg([f"composer={composer}"]).composer


def test_the_gate_groups_older_root_name_says_where_it_lives_now():
    from mole_exp.training.config import check_moved_groups

    for given, hint in [("gate=block", "composer/gate=block"), ("gate.temperature.init=2", "composer.gate.temperature.init=2"),
                        ("gate=matrix,block", "composer/gate=matrix,block")]:
        with pytest.raises(ValueError, match=rf"^{given}: the gate group is nested in the composers that use it now: {hint} "):
            check_moved_groups(["-m", given])
    check_moved_groups(["composer/gate=block", "composer.gate.scope=token", "+experiment=paper/figure7"])
    result = subprocess.run([sys.executable, "train.py", "gate=block", "dry_run=true"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "composer/gate=block" in result.stderr


def test_each_gate_option_is_the_layer_gate_at_its_granularity():
    for granularity in ("matrix", "layer", "block", "network"):
        gate = compose_cfg(["composer=mole", f"composer/gate={granularity}"]).composer.gate
        assert dict(gate) == {**dict(compose_cfg(["composer=mole"]).composer.gate), "granularity": granularity}
