"""eval.py evaluates a finished run with the run's own config: the same evaluation set (here 4 examples per
dataset, not the whole test sets), only the listed overrides applied, incompatible ones refused before
anything loads, results under <run>/evals/<name>/, the run's own files untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mole_exp.training.eval_run import allowed_keys, check_overrides, read_run_config
from mole_exp.training.pipeline import run
from tests.conftest import ROOT, compose_cfg, needs_data
from tests.test_run_folder import checksums

pytestmark = needs_data


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from tests.conftest import DATA_DIR, SMOKE

    folder = tmp_path_factory.mktemp("eval_run") / "run"
    overrides = SMOKE + [f"paths.data_dir={DATA_DIR}", "task=nli", "task.only=[wnli,qnli]", "optimizer.lr=0.05"]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    metrics = run(compose_cfg(overrides, output_dir=folder))
    return folder, metrics


def eval_py(args, env_extra=None, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, "eval.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_eval_py_evaluates_the_runs_own_set_and_touches_none_of_its_files(trained_run, cache_dir):
    folder, trained = trained_run
    before = checksums(folder)
    result = eval_py(["-m", f"checkpoint={folder}", "composer.mask=[],[tiny_expert_03]", "generation.progress=false"],
                     {"MOLE_EXP_CACHE": str(cache_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert {k: v for k, v in checksums(folder).items() if not k.startswith("evals")} == before

    unmasked, masked = folder / "evals" / "composer.mask=[]", folder / "evals" / "composer.mask=[tiny_expert_03]"
    run_predictions = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    for evaluated in (unmasked, masked):
        assert {p.name for p in evaluated.iterdir()} >= {"config.yaml", "metrics.json", "predictions.jsonl", "run_state.json"}
        metrics = json.loads((evaluated / "metrics.json").read_text())
        assert metrics["num_examples"] == trained["num_examples"] == {"wnli": 4, "qnli": 4}  # the run's own evaluation set
        predictions = [json.loads(line) for line in (evaluated / "predictions.jsonl").read_text().splitlines()]
        assert [p["input"] for p in predictions] == [p["input"] for p in run_predictions]
        assert metrics["evaluates"]["run"] == str(folder) and metrics["model"] == trained["model"]
    again = json.loads((unmasked / "metrics.json").read_text())
    assert again["metrics"] == trained["metrics"]  # the same gates, experts and examples: the same scores
    assert (unmasked / "predictions.jsonl").read_text() == (folder / "predictions.jsonl").read_text()
    assert json.loads((masked / "metrics.json").read_text())["composer"]["mask"] == ["tiny_expert_03"]


def test_incompatible_overrides_are_refused_before_anything_loads(trained_run):
    folder, _ = trained_run
    for override, reason in [
        ("experts.count=2", "the expert set is the run's"),
        ("model=flan-t5-small", "the base model is the run's"),
        ("composer/gate=block", "its checkpoint holds gates of that shape"),
        ("composer.gate.scope=token", "its checkpoint holds gates of that shape"),
        ("gate=block", "its checkpoint holds gates of that shape"),
        ("composer.alpha=0", "only composer.mask may change"),
        ("task=bbh", "use task@eval_task=<suite>"),
        ("trainer.max_steps=3", "a training setting"),
    ]:
        with pytest.raises(ValueError, match=rf"refused: {override.split('=')[0]}: .*{reason}.*Allowed overrides: checkpoint, name, device, composer.mask"):
            check_overrides([f"checkpoint={folder}", override])
    check_overrides([f"checkpoint={folder}", "composer.mask=[0]", "data.eval_limit=2", "task@eval_task=bbh_table8",
                     "generation.num_beams=2", "name=beams", "hydra.verbose=true"])
    assert "composer.mask" in allowed_keys() and "experts.count" not in allowed_keys()
    before = checksums(folder)
    result = eval_py([f"checkpoint={folder}", "experts.count=2"], timeout=60)
    assert result.returncode != 0 and "experts.count: the expert set is the run's" in result.stderr
    assert "Traceback" not in result.stderr and checksums(folder) == before


def test_an_unfinished_run_or_a_non_run_is_refused(tmp_path):
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(ValueError, match="holds no finished run .*python train.py resume="):
        read_run_config(tmp_path / "unfinished")
    with pytest.raises(FileNotFoundError, match="is not a run folder: it has no config.yaml"):
        read_run_config(tmp_path)


def test_eval_py_on_a_folder_without_a_run_leaves_nothing_behind(tmp_path):
    result = eval_py([f"checkpoint={tmp_path / 'nowhere'}", "composer.mask=[1]"], timeout=120)
    assert result.returncode != 0 and "is not a run folder: it has no config.yaml" in result.stderr
    assert not (tmp_path / "nowhere").exists()  # Hydra's <checkpoint>/evals/<name>/ removed again, parents too


def test_train_py_mode_eval_with_another_expert_count_is_a_clear_error(trained_run, smoke_overrides, tmp_path):
    folder, _ = trained_run
    overrides = smoke_overrides + ["task=nli", "task.only=[wnli]", "mode=eval", f"checkpoint={folder}", "experts.count=2"]
    with pytest.raises(ValueError, match=r"holds gates of other shapes than composer 'mole' builds with this config .*checkpoint \(.*8\), this config \(.*2\)"):
        run(compose_cfg(overrides, output_dir=tmp_path / "eval"))
