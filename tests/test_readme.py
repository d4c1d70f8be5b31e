"""The README's Run section works as written after `make install`: every command goes through the .venv
(or make), every command's overrides compose, and (slow) the cheap ones run: the tiny smoke run, then
eval.py with an expert masked on the folder it made."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import DATA_DIR, ROOT, needs_data

VENV_PYTHON = ".venv/bin/python"


def run_section_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Run\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def overrides_of(command: str) -> tuple[str, list[str]]:
    words = shlex.split(command)
    assert words[0] == VENV_PYTHON, command
    return words[1], [w for w in words[2:] if w != "-m"]


def test_every_run_command_goes_through_the_venv_and_composes():
    from hydra import compose, initialize_config_dir

    from mole_exp.training.eval_run import check_overrides

    commands = run_section_commands()
    assert len(commands) >= 5
    assert all(c.startswith((VENV_PYTHON + " ", "make ")) for c in commands), commands  # no bare `python`
    for command in commands:
        script, overrides = overrides_of(command.replace("<date>/<run>", "2026-01-01/a_run"))  # the placeholder
        assert (ROOT / script).exists(), command
        if script == "eval.py":
            check_overrides(overrides)  # only overrides eval.py applies
            continue
        first_member = [o.split("=", 1)[0] + "=" + o.split("=", 1)[1].split(",")[0] if "=" in o else o for o in overrides]
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="train", overrides=first_member)
        assert cfg.composer.name and cfg.task.name
    smoke = next(c for c in commands if "model=tiny" in c and " -m " not in c)
    make_smoke = re.search(r"^SMOKE_ARGS := (.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    assert set(overrides_of(smoke)[1]) <= set(make_smoke)  # `make smoke` runs the same (plus trainer=cpu)


def test_make_run_and_eval_use_the_venv():
    for target, script in (("run", "train.py"), ("eval", "eval.py")):
        # Under `make test` the outer make's MAKEFLAGS/MAKELEVEL reach this make, which then prints
        # "Entering directory" lines: run it as a top-level make, without them.
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")}
        dry = subprocess.run(["make", "--no-print-directory", "-n", target, "ARGS=task=nli"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0 and dry.stdout.strip() == f"{VENV_PYTHON} {script} task=nli"


@pytest.mark.slow
@needs_data
def test_the_cheap_run_commands_run_as_written(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MOLE_EXP_OUTPUTS": str(tmp_path / "outputs"), "MOLE_EXP_DATA": str(DATA_DIR),
           "MOLE_EXP_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    commands = run_section_commands()
    smoke = next(c for c in commands if "model=tiny" in c and " -m " not in c)
    evaluate = next(c for c in commands if c.startswith(f"{VENV_PYTHON} eval.py"))
    python = shlex.quote(sys.executable)
    trained = subprocess.run(["bash", "-c", smoke.replace(VENV_PYTHON, python, 1)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "runs").glob("*/*")
    assert (run_dir / "metrics.json").exists()
    command = evaluate.replace(VENV_PYTHON, python, 1).replace("outputs/runs/<date>/<run>", shlex.quote(str(run_dir)))
    evaluated = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    (eval_dir,) = (run_dir / "evals").iterdir()
    assert (eval_dir / "metrics.json").exists() and (eval_dir / "predictions.jsonl").exists()
    output = trained.stdout + trained.stderr + evaluated.stdout + evaluated.stderr
    for noise in ("💡 Tip", "LeafSpec", "Epoch 0/-2", "is_gradient_checkpointing"):
        assert noise not in output, noise
    for segment in re.split(r"[\r\n]", output):  # every log line starts its own line, never glued onto a bar
        if "][INFO] - " in segment or "][WARNING] - " in segment:
            assert segment.startswith("["), segment
