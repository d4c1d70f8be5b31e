"""Run folders at the edges: a refused run leaves a finished folder byte for byte as it was, one process
writes a folder at a time (a stale lock of a killed process is taken over), a resume never duplicates
statistics, an interrupted member is recorded as interrupted, a dry run creates no folders, and results
files get the user's umask."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mole_exp.files import write_atomic, write_json
from mole_exp.training.run_folder import HOLDER_FILE, RunLock, end_state
from tests.conftest import DATA_DIR, ROOT, needs_data

TINY = ["task=nli", "task.only=[wnli]", "composer=mole", "model=tiny", "experts=tiny", "trainer=cpu", "trainer.max_steps=2",
        "data.train_limit=8", "data.eval_limit=2", "data.batch_size=4", "generation.progress=false"]


def checksums(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones included) -> its sha256, plus every folder (-> 'dir')."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        found[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def train_py(args: list[str], tmp_path: Path, timeout: int = 300, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MOLE_EXP_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, **popen)


def finished_folder(folder: Path) -> Path:
    """A finished run's folder as training leaves it (results, Hydra's record, the log, checkpoints)."""
    write_atomic(folder / "config.yaml", "trainer:\n  max_steps: 20\n")
    write_atomic(folder / ".hydra" / "config.yaml", "trainer:\n  max_steps: 20\n")
    write_atomic(folder / ".hydra" / "hydra.yaml", "hydra:\n  run:\n    dir: x\n")
    write_atomic(folder / ".hydra" / "overrides.yaml", "- trainer.max_steps=20\n")
    write_atomic(folder / "train.log", "[INFO] - results written\n")
    write_atomic(folder / "checkpoints" / "composer.safetensors", "gates")
    write_json(folder / "run_state.json", {"config_hash": "abc", "status": "completed"})
    write_json(folder / "metrics.json", {"status": "completed", "metrics": {"test/wnli/em": 50.0}})
    return folder


# ---- 1. a refused run touches nothing -------------------------------------------------------------------


def test_a_refused_run_leaves_the_finished_folder_byte_for_byte(tmp_path):
    folder = finished_folder(tmp_path / "finished")
    before = checksums(folder)
    result = train_py([*TINY, "trainer.max_steps=3", f"hydra.run.dir={folder}"], tmp_path)
    assert result.returncode != 0
    assert "holds a finished run, which is never overwritten" in result.stderr
    assert checksums(folder) == before  # Hydra's .hydra/ and train.log included


# ---- 2. one writer per run folder -----------------------------------------------------------------------

TRY_LOCK = "import sys; from mole_exp.training.run_folder import RunLock; RunLock(sys.argv[1]).acquire(); print('acquired')"


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    folder = tmp_path / "run"
    with RunLock(folder):
        holder = json.loads((folder / HOLDER_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        other = subprocess.run([sys.executable, "-c", TRY_LOCK, str(folder)], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert other.returncode != 0 and "acquired" not in other.stdout
        assert "RunLockedError" in other.stderr
        assert f"is in use by pid {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d')}" in other.stderr
    assert not (folder / HOLDER_FILE).exists()  # released: the holder record goes with the lock
    again = subprocess.run([sys.executable, "-c", TRY_LOCK, str(folder)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "acquired" in again.stdout


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, caplog):
    folder = tmp_path / "run"
    die_holding = "import os, sys; from mole_exp.training.run_folder import RunLock; RunLock(sys.argv[1]).acquire(); os.kill(os.getpid(), 9)"
    killed = subprocess.run([sys.executable, "-c", die_holding, str(folder)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    stale = json.loads((folder / HOLDER_FILE).read_text())
    assert stale["pid"] != os.getpid()
    lock = RunLock(folder).acquire()
    try:
        assert lock.took_over == stale
        assert f"the process that held it is gone (pid {stale['pid']}" in caplog.text
        assert json.loads((folder / HOLDER_FILE).read_text())["pid"] == os.getpid()
    finally:
        lock.release()


@needs_data
def test_resume_of_a_folder_in_use_is_refused_before_anything_loads(tmp_path):
    folder = tmp_path / "outputs" / "unfinished"
    write_atomic(folder / "checkpoints" / "last.ckpt", "not read: the lock is checked first")
    before = checksums(folder)
    with RunLock(folder):
        before = checksums(folder)
        result = train_py([*TINY, f"paths.data_dir={DATA_DIR}", f"paths.outputs_dir={tmp_path / 'outputs'}",
                           f"resume={folder}", f"hydra.run.dir={tmp_path / 'outputs' / 'second'}"], tmp_path)
        assert result.returncode != 0
        assert f"run folder {folder} is in use by pid {os.getpid()} on host {socket.gethostname()}" in result.stderr
        assert checksums(folder) == before
    assert not (tmp_path / "outputs" / "second").exists()  # the folder Hydra made for the refused run is gone


def test_gate_statistics_never_repeat_a_step(tmp_path):
    from types import SimpleNamespace

    from mole_exp.training.lit_module import GateStatisticsWriter

    path = tmp_path / "gate_stats.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(10)))  # written past the checkpoint
    writer = GateStatisticsWriter(path)
    trainer, module = SimpleNamespace(global_rank=0), SimpleNamespace()
    for step in (6, 6, 7, 5, 8):  # resumed at 6; 6 and 5 come again (e.g. a second writer, a replayed batch)
        module.last_statistics = {"step": step, "loss": 0.5}
        writer.on_train_batch_end(trainer, module, None, None, 0)
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4, 5, 6, 7, 8]


@pytest.mark.slow
@needs_data
def test_two_concurrent_resumes_one_proceeds_one_is_refused(tmp_path):
    outputs = tmp_path / "outputs"
    common = [*TINY, "task.only=[wnli,qnli]", "trainer.max_steps=12", "checkpoint_every_n_steps=4", "data.train_limit=40",
              "optimizer.lr=0.05", f"paths.data_dir={DATA_DIR}", f"paths.outputs_dir={outputs}"]
    crashed = train_py([*common, "callbacks=[{_target_:tests.helpers.KillAtStep,step:6}]", f"hydra.run.dir={outputs / 'crashed'}"], tmp_path)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MOLE_EXP_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(
        [sys.executable, "train.py", *common, "resume=true", "callbacks=[{_target_:tests.helpers.SlowSteps,seconds:1}]",
         f"hydra.run.dir={outputs / 'first'}"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    holder_file = outputs / "crashed" / HOLDER_FILE
    stale = json.loads(holder_file.read_text())["pid"]  # the killed run left its holder record

    def held_by_first() -> bool:
        try:
            return json.loads(holder_file.read_text())["pid"] == first.pid
        except (OSError, ValueError):
            return False

    deadline = time.time() + 240
    while not held_by_first() and first.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert held_by_first(), first.communicate()[1][-2000:]  # it took over the killed run's lock
    second = train_py([*common, "resume=true", f"hydra.run.dir={outputs / 'second'}"], tmp_path)
    first_out, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err[-2000:]
    assert f"the process that held it is gone (pid {stale} on host" in first_out + first_err
    assert second.returncode != 0 and f"is in use by pid {first.pid}" in second.stderr
    steps = [json.loads(line)["step"] for line in (outputs / "crashed" / "gate_stats.jsonl").read_text().splitlines()]
    assert steps == list(range(12))
    assert json.loads((outputs / "crashed" / "metrics.json").read_text())["train"]["steps"] == 12


# ---- 6. interrupted members, dry runs ---------------------------------------------------------------------


def test_an_interrupt_is_recorded_as_interrupted_not_failed():
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)  # what Lightning does on Ctrl-C
    except SystemExit as error:
        assert end_state(error)[0] == "interrupted"
    assert end_state(KeyboardInterrupt())[0] == "interrupted"
    assert end_state(SystemExit(1)) == ("failed", "SystemExit: 1")
    assert end_state(ValueError("x")) == ("failed", "ValueError: x")


@pytest.mark.slow
@needs_data
def test_ctrl_c_in_a_sweep_records_the_member_as_interrupted(tmp_path):
    sweep = tmp_path / "sweep"
    result = train_py(["-m", *TINY, "trainer.max_steps=50", f"paths.data_dir={DATA_DIR}", f"hydra.sweep.dir={sweep}",
                       "callbacks=[{_target_:tests.helpers.InterruptAtStep,step:1}]"], tmp_path)
    assert result.returncode != 0
    (member,) = [p for p in sweep.iterdir() if p.is_dir()]
    state = json.loads((member / "run_state.json").read_text())
    assert state["status"] == "interrupted", state
    assert "resume=true" in state["error"]
    table = subprocess.run([sys.executable, "scripts/make_tables.py", str(sweep)], cwd=ROOT, capture_output=True, text=True,
                           timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert table.returncode == 0 and "interrupted: interrupted by the user" in table.stdout


def test_a_dry_run_creates_no_folders(tmp_path):
    outputs = tmp_path / "outputs"
    result = train_py(["-m", "+experiment=paper/table6", "experts.count=8", "dry_run=true", f"paths.outputs_dir={outputs}"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("[dry run] ") - result.stdout.count("[dry run]   experts") == 4  # one per composer
    assert not outputs.exists(), sorted(str(p) for p in outputs.rglob("*"))


@pytest.mark.slow
def test_a_single_dry_run_creates_no_folder(tmp_path):
    outputs = tmp_path / "outputs"
    result = train_py(["dry_run=true", f"paths.outputs_dir={outputs}"], tmp_path)
    assert result.returncode == 0 and "[dry run]" in result.stdout
    assert not outputs.exists()


# ---- 7. file modes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_results_files_get_the_users_umask(tmp_path, umask, file_mode, dir_mode):
    script = textwrap.dedent(f"""
        import os, sys
        os.umask({umask})
        from mole_exp.files import write_json, write_jsonl, staging_dir
        write_json(sys.argv[1] + "/metrics.json", {{"a": 1}})
        write_jsonl(sys.argv[1] + "/predictions.jsonl", [{{"a": 1}}])
        print(staging_dir(sys.argv[1], ".staging-"))
    """)
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in ("metrics.json", "predictions.jsonl"):
        assert oct((tmp_path / name).stat().st_mode & 0o777) == oct(file_mode), name
    assert oct(Path(result.stdout.strip()).stat().st_mode & 0o777) == oct(dir_mode)
