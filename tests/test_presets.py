"""The paper's presets (conf/experiment/paper/): every sweep member composes and instantiates; the Table 5
and Table 7 smoke sweeps run end to end on the tiny T5 and make_tables lays them out with the paper column."""

from __future__ import annotations

import itertools
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


def run_sweep(preset: str, overrides: list[str], sweep_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "train.py", "-m", f"+experiment=paper/{preset}", *SMOKE, *overrides, f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
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
        ("table5", ["model.num_layers=5", "model.num_decoder_layers=5"], "table5", 6),
    ],
)
def test_preset_smoke_runs_and_its_table(tmp_path, preset, overrides, layout, runs):
    sweep_dir = tmp_path / "sweep"
    result = run_sweep(preset, overrides, sweep_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(sweep_dir.glob("*/metrics.json"))) == runs
    table = make_table(layout, sweep_dir)
    assert "paper" in table.lower()


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize(
    "preset,overrides,layout",
    [
        ("table3", ["task.only=null"], "table3"),
        ("table4", ["+variant=nla,linear"], "table4"),  # tiny experts name no task: no single_matched
        ("table6", ["experts.count=2,4"], "table6"),  # the tiny library holds 8 adapters
        ("table8", [], "table8"),
        ("figure5", [], "table7"),
        ("figure8", [], "table7"),
    ],
)
def test_other_preset_smoke_runs(tmp_path, preset, overrides, layout):
    sweep_dir = tmp_path / "sweep"
    result = run_sweep(preset, overrides, sweep_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(sweep_dir.glob("*/metrics.json"))


def test_the_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher not installed")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm_gpu", "+experiment=paper/table6"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1
