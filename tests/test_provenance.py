"""code_version(): the commit and whether the code that makes results has uncommitted changes."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from mole_exp.training import provenance


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_dirty_counts_code_changes_but_not_docs(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    for folder in ("mole_exp", "conf", "docs"):
        (repo / folder).mkdir(parents=True)
    (repo / "mole_exp" / "a.py").write_text("x = 1\n")
    (repo / "conf" / "c.yaml").write_text("a: 1\n")
    (repo / "docs" / "report.md").write_text("old\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=repo, check=True)
    monkeypatch.setattr(provenance, "ROOT", repo)

    def version():
        provenance.code_version.cache_clear()
        return provenance.code_version()

    assert version()["dirty"] is False
    (repo / "docs" / "report.md").write_text("a report rewrites its page and figures\n")
    assert version()["dirty"] is False
    (repo / "conf" / "c.yaml").write_text("a: 2\n")
    assert version()["dirty"] is True
    provenance.code_version.cache_clear()
