"""The paper's presets (conf/experiment/paper/): every sweep member composes and instantiates; the Table 5
and Table 7 smoke sweeps run end to end on the tiny T5 and make_tables lays them out with the paper column."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from tests.conftest import DATA_DIR, ROOT, compose_cfg, needs_data

PRESETS = sorted(p.stem for p in (ROOT / "conf" / "experiment" / "paper").glob("*.yaml"))
SMOKE = ["model=tiny", "experts=tiny", "trainer.max_steps=2", "data.eval_limit=8", "data.train_limit=16",
         "data.batch_size=4", "generation.progress=false", f"paths.data_dir={DATA_DIR}"]


def sweep_members(preset: str, extra: list[str] = ()) -> list[list[str]]:
    """The override lists a `-m +experiment=paper/<preset>` sweep expands to (BasicSweeper's cartesian product)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"+experiment=paper/{preset}", *extra], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params) if cfg.hydra.sweeper.get("params") else {}
    parser = OverridesParser.create()
    axes = []
    for key, value in params.items():
        override = parser.parse_override(f"{key}={value}")
        axes.append([f"{key}={v}" for v in override.sweep_string_iterator()] if override.is_sweep_override() else [f"{key}={value}"])
    return [list(combo) for combo in itertools.product(*axes)] or [[]]


def test_there_is_a_preset_for_every_nlp_experiment():
    assert set(PRESETS) == {"table3", "table4", "table5", "table6", "table7", "table8", "figure5", "figure7", "figure8"}


@needs_data
@pytest.mark.parametrize("preset", PRESETS)
def test_every_member_of_every_preset_composes_and_instantiates(tmp_path, preset):
    members = sweep_members(preset)
    assert members
    for member in members:
        cfg = compose_cfg([f"+experiment=paper/{preset}", *member, f"paths.data_dir={DATA_DIR}"], output_dir=tmp_path / "x")
        composer = hydra.utils.instantiate(cfg.composer, _convert_="all")
        task = hydra.utils.instantiate(cfg.task, _convert_="all")
        assert composer.name == cfg.composer.name and task.dataset_names
        assert cfg.trainer.max_steps == 800 and cfg.optimizer.lr == 1e-5 and cfg.data.batch_size == 12
        if cfg.composer.name == "mole" and "alpha" not in " ".join(member) and "variant=mole_" not in " ".join(member):
            assert cfg.composer.alpha == 0.5
        if preset == "table8":
            assert cfg.eval_task.name == "bbh_table8" and cfg.task.name == "nli"


def test_table6_expands_to_the_paper_grid():
    members = sweep_members("table6")
    assert len(members) == 16
    assert {m[0] for m in members} == {f"experts.count={n}" for n in (8, 24, 48, 128)}


def run_sweep(preset: str, overrides: list[str], sweep_dir: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "train.py", "-m", f"+experiment=paper/{preset}", *SMOKE, *overrides, f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def make_table(layout: str, sweep_dir: Path) -> str:
    result = subprocess.run([sys.executable, "scripts/make_tables.py", "--layout", layout, str(sweep_dir)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@needs_data
@pytest.mark.parametrize(
    "preset,overrides,layout,runs",
    [
        ("table7", [], "table7", 6),
    ],
)
def test_preset_smoke_runs_and_its_table(tmp_path, preset, overrides, layout, runs):
    sweep_dir = tmp_path / "sweep"
    result = run_sweep(preset, overrides, sweep_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(sweep_dir.glob("*/metrics.json"))) == runs
    table = make_table(layout, sweep_dir)
    assert "paper" in table.lower()


TABLE5_SHAPE = ["model=tiny", "model.num_layers=5", "model.num_decoder_layers=5"]  # one block per 20% slice
TABLE5_LORA = "joint_anli_r1_r2_qnli"


def train_table5_lora(tmp_path: Path) -> Path:
    """The Table 5 LoRA on the tiny T5: one adapter on the union of ANLI-R1, ANLI-R2 and QNLI (scripts/train_experts.py
    with experts_training.joint), checked in its manifest."""
    from hydra import compose, initialize_config_dir

    from mole_exp.tools.expert_training import run_from_config

    overrides = [*TABLE5_SHAPE, "task=nli", f"paths.data_dir={DATA_DIR}", f"paths.outputs_dir={tmp_path}",
                 "experts_training.tasks=[]", f"experts_training.joint={{{TABLE5_LORA}:[anli_r1,anli_r2,qnli]}}",
                 "experts_training.train.steps=2", "experts_training.train.batch_size=4", "experts_training.train.max_source_length=64",
                 "experts_training.train_limit=4", "experts_training.eval_limit=2", "experts_training.score_base=false",
                 f"experts_training.library_dir={tmp_path / 'lib'}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        library = run_from_config(compose(config_name="train_experts", overrides=overrides))
    (adapter,) = json.loads((library / "manifest.json").read_text())["adapters"]
    assert adapter["name"] == TABLE5_LORA and adapter["tasks"] == ["anli_r1", "anli_r2", "qnli"] and adapter["task"] is None
    assert adapter["train_examples"] == 3 * 4 and set(adapter["eval_scores"]) == {"anli_r1", "anli_r2", "qnli"}
    return library


@pytest.fixture
def one_torch_thread():
    """The tiny model is far faster on one thread when the machine's cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@needs_data
def test_table5_smoke_trains_the_joint_lora_and_runs_a_slice(tmp_path, one_torch_thread):
    """The fast Table 5 smoke: the joint LoRA trained, then one member of the preset, its top 20% slice (the slow
    test below runs all six and the table)."""
    from mole_exp.training.pipeline import run

    library = train_table5_lora(tmp_path)
    smoke = [o for o in SMOKE if not o.startswith(("model=", "experts=", "data.eval_limit"))]
    for layer_range in ("[0.8,1.0]",):
        cfg = compose_cfg(["+experiment=paper/table5", *TABLE5_SHAPE, *smoke, "data.eval_limit=2", f"experts.library_dir={library}",
                           f"experts.layer_range={layer_range}"], output_dir=tmp_path / layer_range)
        metrics = run(cfg)
        assert metrics["experts"]["names"] == [TABLE5_LORA] and metrics["composer"]["expert"] == TABLE5_LORA
        assert set(metrics["num_examples"]) == {"anli_r1", "anli_r2", "qnli"}
        assert metrics["protocol"]["experts"]["trained_on"] == {TABLE5_LORA: ["anli_r1", "anli_r2", "qnli"]}


@needs_data
@pytest.mark.slow
def test_table5_smoke_trains_the_joint_lora_and_runs_the_six_slices(tmp_path, one_torch_thread):
    """The full Table 5 smoke: the joint LoRA, the preset's six-member sweep, and its table."""
    library = train_table5_lora(tmp_path)
    sweep_dir = tmp_path / "sweep"
    smoke = [o for o in SMOKE if not o.startswith(("model=", "experts="))]
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "+experiment=paper/table5", *TABLE5_SHAPE, *smoke, f"experts.library_dir={library}",
         f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    members = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))]
    assert len(members) == 6
    assert all(m["experts"]["names"] == [TABLE5_LORA] and m["protocol"]["experts"]["pool"] == "list" for m in members)
    table = make_table("table5", sweep_dir)
    rows = [line for line in table.splitlines() if line.startswith("| nli")]
    assert len(rows) == 3 and not any("(no run)" in line for line in rows)


@needs_data
def test_table5_refuses_a_library_without_its_joint_lora(tmp_path):
    """No silent stand-in (the ANLI-R1 LoRA, say): a library lacking the joint adapter fails before any model loads."""
    from mole_exp.training.pipeline import run

    library = tmp_path / "lib"
    library.mkdir()
    (library / "manifest.json").write_text(json.dumps({"adapters": [{"name": "anli_r1", "task": "anli_r1"}, {"name": "qnli", "task": "qnli"}]}))
    cfg = compose_cfg(["+experiment=paper/table5", f"experts.library_dir={library}", f"paths.data_dir={DATA_DIR}"], output_dir=tmp_path / "r")
    with pytest.raises(ValueError, match=rf"experts.names: \['{TABLE5_LORA}'\] are not in the library at .*lib; it holds 2 experts"):
        run(cfg)
    with pytest.raises(ValueError, match="experts=library needs experts.library_dir"):
        run(compose_cfg(["+experiment=paper/table5", f"paths.data_dir={DATA_DIR}"], output_dir=tmp_path / "r"))


TINY_NLI = "{" + ",".join(f"tiny_expert_0{i}:{d}" for i, d in enumerate(("anli_r1", "anli_r2", "anli_r3", "qnli", "wnli"))) + "}"


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize(
    "preset,overrides,layout",
    [
        ("table3", ["task.only=null", "experts.count=4"], "table3"),  # in_domain fills 4 (the tiny adapters name no task)
        ("table4", [f"experts.tasks={TINY_NLI}"], "table4"),  # the tiny adapters stand for the NLI datasets: single_matched runs
        ("table6", ["experts.count=2,4"], "table6"),  # the tiny library holds 8 adapters
        ("table8", [f"experts.tasks={TINY_NLI}"], "table8"),  # the nli family: the tiny adapters given NLI datasets
        ("figure5", [], "table7"),
        ("figure8", [], "table7"),
    ],
)
def test_other_preset_smoke_runs(tmp_path, preset, overrides, layout):
    sweep_dir = tmp_path / "sweep"
    result = run_sweep(preset, overrides, sweep_dir, timeout=2400 if preset == "table3" else 900)  # Table 3: 40 members
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(sweep_dir.glob("*/metrics.json"))


def test_the_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher not installed")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm_gpu", "+experiment=paper/table6"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1
