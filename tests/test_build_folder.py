"""files.build_folder: a cached folder is built in a staging folder and renamed into place, once, under a lock.
A build that fails or is killed leaves nothing under the final name; parallel builders of one folder build once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mole_exp.files import build_folder
from tests.conftest import ROOT


def finished(folder: Path) -> bool:
    return (folder / "done.txt").exists()


def write_done(staging: Path) -> None:
    (staging / "part.txt").write_text("part")
    (staging / "done.txt").write_text("done")


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_builds_once_and_returns_the_finished_folder(tmp_path):
    calls = []
    folder = build_folder(tmp_path / "key", lambda s: (calls.append(s), write_done(s)), finished=finished)
    assert folder == tmp_path / "key" and (folder / "part.txt").read_text() == "part"
    assert build_folder(folder, lambda s: calls.append(s), finished=finished) == folder
    assert len(calls) == 1 and hidden(tmp_path) == [".key.lock"]


def test_a_failing_build_leaves_no_folder_and_no_staging(tmp_path):
    def fail(staging: Path) -> None:
        (staging / "part.txt").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build_folder(tmp_path / "key", fail, finished=finished)
    assert not (tmp_path / "key").exists() and hidden(tmp_path) == [".key.lock"]


def test_an_empty_folder_is_replaced_and_a_foreign_one_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    assert finished(build_folder(tmp_path / "empty", write_done, finished=finished))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("keep")
    built = []
    with pytest.raises(FileExistsError, match=r"other exists and holds no finished cached thing; it is never overwritten"):
        build_folder(tmp_path / "other", lambda staging: built.append(staging), finished=finished, what="cached thing")
    assert built == []  # refused before the (long) build, not after it
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["mine.txt"]


BUILDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mole_exp.files import build_folder

    folder, log, pause = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])

    def build(staging):
        with open(log, "a") as out:
            out.write("built\\n")
        (staging / "part.txt").write_text("half")
        time.sleep(pause)
        (staging / "done.txt").write_text("done")

    build_folder(folder, build, finished=lambda f: (f / "done.txt").exists())
""")


def builder(folder: Path, log: Path, pause: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", BUILDER, str(folder), str(log), str(pause)], cwd=ROOT, env=env)


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_killed_build_leaves_no_half_folder_and_the_next_builder_cleans_up(tmp_path):
    folder, log = tmp_path / "key", tmp_path / "log.txt"
    process = builder(folder, log, pause=120)
    wait_for(lambda: any(p.name.startswith(".key.partial-") and (p / "part.txt").exists() for p in tmp_path.iterdir()))
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not folder.exists()  # the half-built staging folder is not under the final name
    assert any(p.startswith(".key.partial-") for p in hidden(tmp_path))
    build_folder(folder, write_done, finished=finished)
    assert finished(folder) and hidden(tmp_path) == [".key.lock"]  # the killed builder's staging folder is gone


def test_parallel_builders_of_one_folder_build_it_once(tmp_path):
    folder, log = tmp_path / "key", tmp_path / "log.txt"
    processes = [builder(folder, log, pause=1.0) for _ in range(2)]
    assert [p.wait(timeout=120) for p in processes] == [0, 0]
    assert finished(folder) and log.read_text() == "built\n"
    assert hidden(tmp_path) == [".key.lock"]
