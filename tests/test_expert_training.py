"""Synthetic tasks, the small pretrained base and expert-library training, on tiny settings."""

from __future__ import annotations

import json
import random

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mole_exp.base.models import weights_fingerprint
from mole_exp.experts.library import MANIFEST
from mole_exp.experts.loading import load_experts
from mole_exp.tasks import Task
from mole_exp.tools.expert_training import LibraryExistsError, LoraSettings, train_library
from mole_exp.tools.mini.span_corruption import corrupt_spans
from mole_exp.tools.mini.synthetic_tasks import generate_splits
from mole_exp.tools.seq2seq_training import TrainSettings
from tests.conftest import ROOT, TOKENIZER_DIR, make_tiny

SUITE_ARGS = {"data_seed": 0, "num_train": 24, "num_test": 6, "alphabet_size": 6, "min_length": 3, "max_length": 5}
TINY_LORA = LoraSettings(rank=2, alpha=4, dropout=0.0, targets=["q", "v"])
TINY_TRAIN = TrainSettings(steps=2, batch_size=8, lr=1e-3, max_source_length=32, max_target_length=16)


def synthetic_task(datasets=("reverse", "shift")) -> Task:
    specs = {d: {"loader": "synthetic", "metric": "exact_match", "max_new_tokens": 8} for d in datasets}
    return Task(name="synthetic", datasets=specs, source="local", args=SUITE_ARGS).load()


def library_cfg(folder, **extra):
    return OmegaConf.create({"_target_": "mole_exp.experts.sources.library", "library_dir": str(folder), "count": None, "selection": "first", "seed": 0,
                             "layer_range": None, **extra})


# ---------------------------------------------------------------- synthetic tasks


@pytest.mark.parametrize(
    "kind, source, target",
    [("copy", "C A D", "C A D"), ("reverse", "C A D", "D A C"), ("sort", "C A D", "A C D"), ("shift", "C A J", "D B A"),
     ("dedupe", "C A C D", "C A D"), ("reverse+shift", "C A J", "A B D")],
)
def test_letter_operations(kind, source, target):
    from mole_exp.tools.mini.synthetic_tasks import LETTER_OPERATIONS, alphabet, operations

    letters, symbols = source.split(), alphabet(10)
    for step in operations(kind):
        letters = LETTER_OPERATIONS[step](letters, symbols)
    assert " ".join(letters) == target


def test_generated_splits_are_seeded_disjoint_and_correct():
    train, test = generate_splits("reverse", 200, 50, data_seed=3)
    again_train, again_test = generate_splits("reverse", 200, 50, data_seed=3)
    assert (train, test) == (again_train, again_test)
    assert generate_splits("reverse", 200, 50, data_seed=4)[1] != test
    assert not {r["source"] for r in train} & {r["source"] for r in test}
    for row in test:
        tag, letters = row["source"].split(": ")
        assert tag == "reverse" and row["target"] == " ".join(letters.split()[::-1]) and row["answers"] == [row["target"]]
    for row in generate_splits("add", 20, 5, data_seed=0)[1]:
        a, b = (int(part.replace(" ", "")) for part in row["source"].removeprefix("add: ").split(" + "))
        assert row["target"].replace(" ", "") == str(a + b)
    for row in generate_splits("dedupe", 30, 5, data_seed=0)[0]:
        letters = row["source"].removeprefix("dedupe: ").split()
        assert len(set(letters)) < len(letters) and row["target"] == " ".join(dict.fromkeys(letters))
    assert generate_splits("reverse+shift", 5, 5, 0)[1][0]["source"].startswith("reverse shift: ")


def test_pretraining_pool_never_holds_a_task_input():
    from mole_exp.tools.mini.small_base import pretraining_examples

    for kind in ("reverse", "add"):
        tasks = generate_splits(kind, 300, 100, data_seed=0)
        pretraining = generate_splits(kind, 300, 0, data_seed=0, pool="pretraining")[0]
        assert not {r["symbols"] for r in pretraining} & {r["symbols"] for split in tasks for r in split}
    examples = pretraining_examples("shuffled_tags", ["copy", "reverse"], 50, 1000, 8, 2, 5)
    tags = {e["source"].split(":")[0] for e in examples}
    assert tags == {"copy", "reverse"} and len(examples) == 100
    mismatched = [e for e in examples if e["source"].startswith("copy:") and e["source"].split(": ")[1] != e["target"]]
    assert mismatched  # some `copy:` examples ask for the reverse: the tag does not say which operation


def test_synthetic_errors_are_clear():
    with pytest.raises(ValueError, match="unknown operation"):
        generate_splits("rotate", 5, 5, 0)
    with pytest.raises(ValueError, match="alphabet_size"):
        generate_splits("copy", 5, 5, 0, alphabet_size=30)
    with pytest.raises(ValueError, match="distinct inputs"):
        generate_splits("copy", 500, 10, 0, alphabet_size=2, min_length=2, max_length=2)


def test_synthetic_task_configs_compose_and_load(tmp_path):
    from tests.conftest import compose_cfg

    for suite, datasets in (("synthetic", ["copy", "reverse", "sort", "shift", "dedupe", "add"]), ("synthetic_compose", ["reverse_shift"])):
        cfg = compose_cfg([f"task={suite}", "task.args.num_train=10", "task.args.num_test=4"], output_dir=tmp_path)
        from mole_exp.training.config import build

        task = build(cfg.task, _convert_="all").load()
        assert task.dataset_names == datasets
        assert all(len(task.test[d]) == 4 and task.specs[d].metric == "exact_match" for d in datasets)
    assert task.test["reverse_shift"][0]["source"].startswith("reverse shift: ")


def test_span_corruption_keeps_every_symbol_once():
    rng = random.Random(0)
    for _ in range(50):
        text = " ".join(rng.choice("ABCDEFG") for _ in range(rng.randint(2, 12)))
        source, target = corrupt_spans(text, rng)
        assert "<extra_id_0>" in source and target.startswith("<extra_id_0>")
        spans = {}
        for chunk in target.split("<extra_id_")[1:]:
            index, _, rest = chunk.partition(">")
            spans[f"<extra_id_{index}>"] = rest.split()
        rebuilt = [s for token in source.split() for s in spans.get(token, [token])]
        assert rebuilt == text.split()


# ---------------------------------------------------------------- the small pretrained base


def test_small_base_is_pretrained_once_and_cached(tmp_path):
    from mole_exp.tools.mini.small_base import build_small_synthetic

    architecture = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2}
    pretrain = {"objective": "shuffled_tags", "kinds": ["copy", "add"], "examples_per_kind": 16, "data_seed": 1000, "alphabet_size": 6,
                "min_length": 3, "max_length": 5, "noise_density": 0.3, "steps": 2, "batch_size": 8, "lr": 1e-3}
    first = build_small_synthetic(str(TOKENIZER_DIR), str(tmp_path), architecture, pretrain, seed=3)
    untrained = make_tiny(**architecture, seed=3)
    assert weights_fingerprint(first.model) != weights_fingerprint(untrained.model)  # it did train
    assert "seed3" in first.model_id and "shuffled_tags2" in first.model_id
    assert not any(p.requires_grad for p in first.model.parameters())
    cached = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]  # beside it only the builders' lock
    assert len(cached) == 1 and (cached[0] / "pretraining.json").exists()
    again = build_small_synthetic(str(TOKENIZER_DIR), str(tmp_path), architecture, pretrain, seed=3)
    assert again.model_id == first.model_id and weights_fingerprint(again.model) == weights_fingerprint(first.model)
    other = build_small_synthetic(str(TOKENIZER_DIR), str(tmp_path), architecture, {**pretrain, "steps": 1}, seed=3)
    assert other.model_id != first.model_id and len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 2
    with pytest.raises(ValueError, match="objective"):
        build_small_synthetic(str(TOKENIZER_DIR), str(tmp_path), architecture, {**pretrain, "objective": "lm"}, seed=3)


# ---------------------------------------------------------------- expert libraries


def test_library_round_trip_and_manifest(tmp_path):
    base = make_tiny()
    fingerprint = weights_fingerprint(base.model)
    task = synthetic_task()
    folder = train_library(base, task, tmp_path / "lib", lora=TINY_LORA, train=TINY_TRAIN, seed=0)

    # the base is left exactly as it was: same weights, frozen, no LoRA layers
    assert weights_fingerprint(base.model) == fingerprint
    assert not any(p.requires_grad for p in base.model.parameters())
    assert not any("lora" in name for name, _ in base.model.named_modules())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".lib.lock"]  # the builders' lock; no staging folder left

    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["kind"] == "trained-lora"
    assert manifest["base_model_id"] == base.model_id and manifest["base_fingerprint"] == fingerprint
    assert [a["name"] for a in manifest["adapters"]] == ["reverse", "shift"]
    for adapter in manifest["adapters"]:
        assert {"name", "path", "task", "rank", "targets", "train_steps", "eval_score"} <= set(adapter)
        assert adapter["rank"] == 2 and adapter["targets"] == ["q", "v"] and adapter["train_steps"] == 2
        assert adapter["task"] == adapter["name"] and adapter["suite"] == "synthetic" and 0 <= adapter["eval_score"] <= 100
        assert (folder / adapter["path"] / "adapter_model.safetensors").exists()
        config = json.loads((folder / adapter["path"] / "adapter_config.json").read_text())
        assert config["r"] == 2 and config["lora_alpha"] == 4 and config["base_model_name_or_path"] == base.model_id

    bank = load_experts(library_cfg(folder), base)
    assert bank.names == ["reverse", "shift"] and len(bank.targets) == 2 * 2 + 2 * 4  # q, v (+ cross q, v) of 2+2 blocks
    assert [e["task"] for e in bank.manifest_entries] == ["reverse", "shift"]
    lora_B = next(iter(bank.targets.values())).lora_B
    assert lora_B.abs().sum() > 0  # trained: B left its zero initialisation
    assert load_experts(library_cfg(folder, count=1), base).names == ["reverse"]


def test_library_checked_against_the_base(tmp_path):
    base = make_tiny()
    folder = train_library(base, synthetic_task(("copy",)), tmp_path / "lib", lora=TINY_LORA, train=TINY_TRAIN, score_base=False)
    with pytest.raises(ValueError, match="was trained on base .*seed0.* but the base model is .*seed1"):
        load_experts(library_cfg(folder), make_tiny(seed=1))
    impostor = make_tiny()
    with torch.no_grad():
        impostor.model.shared.weight.add_(1.0)  # same name, other weights
    with pytest.raises(ValueError, match="weights fingerprint"):
        load_experts(library_cfg(folder), impostor)


def test_a_finished_library_is_reused_never_overwritten(tmp_path):
    base, task = make_tiny(), synthetic_task(("copy",))
    folder = train_library(base, task, tmp_path / "lib", lora=TINY_LORA, train=TINY_TRAIN, score_base=False)
    written = (folder / MANIFEST).stat().st_mtime_ns
    assert train_library(base, task, folder, lora=TINY_LORA, train=TINY_TRAIN, score_base=False) == folder
    assert (folder / MANIFEST).stat().st_mtime_ns == written
    with pytest.raises(LibraryExistsError, match="never overwritten"):
        train_library(base, task, folder, lora=TINY_LORA, train=TrainSettings(steps=3, batch_size=8), score_base=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file").write_text("x")
    with pytest.raises(LibraryExistsError, match="not empty"):
        train_library(base, task, tmp_path / "junk", lora=TINY_LORA, train=TINY_TRAIN, score_base=False)
    derived = train_library(base, task, None, lora=TINY_LORA, train=TINY_TRAIN, score_base=False, libraries_root=tmp_path / "libs")
    assert derived.parent == tmp_path / "libs" and derived.name.startswith("synthetic-")
    with pytest.raises(ValueError, match="not loaded datasets"):
        train_library(base, task, tmp_path / "x", datasets=["sort"], lora=TINY_LORA, train=TINY_TRAIN)


def test_train_experts_config_end_to_end(tmp_path):
    """conf/train_experts.yaml as scripts/train_experts.py composes it, with the tiny base."""
    from mole_exp.tools.expert_training import run_from_config

    overrides = [
        "model=tiny", f"paths.data_dir={TOKENIZER_DIR.parent}", f"paths.outputs_dir={tmp_path}", "experts_training.tasks=[add]",
        "task.args.num_train=16", "task.args.num_test=4", "experts_training.train.steps=2", "experts_training.train.batch_size=8",
        "experts_training.lora.rank=2", "experts_training.score_base=false",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train_experts", overrides=overrides)
    folder = run_from_config(cfg)
    assert folder.parent == tmp_path / "libraries"
    manifest = json.loads((folder / MANIFEST).read_text())
    assert [a["name"] for a in manifest["adapters"]] == ["add"] and manifest["adapters"][0]["rank"] == 2
    assert manifest["base_model_id"].startswith("tiny-t5-")


def test_joint_adapters_are_named_and_checked():
    from mole_exp.tools.expert_training import adapter_plan

    task = synthetic_task(("reverse", "shift", "add"))
    assert adapter_plan(task, ["add"], {"both": ["reverse", "shift"]}) == [("add", ["add"]), ("both", ["reverse", "shift"])]
    with pytest.raises(ValueError, match=r"experts_training.joint.both=\['reverse', 'sort'\]: .*unknown \['sort'\]"):
        adapter_plan(task, [], {"both": ["reverse", "sort"]})
    with pytest.raises(ValueError, match="the name 'add' is a dataset's"):
        adapter_plan(task, [], {"add": ["reverse", "shift"]})
    with pytest.raises(ValueError, match="nothing to train"):
        adapter_plan(task, [], {})
