"""Fetch the pinned decoder-only tokenizers (Qwen2.5, Llama 3) into the cache, sha256-verified (run by `make install`).

    python scripts/fetch_tokenizers.py            # every pinned tokenizer
    python scripts/fetch_tokenizers.py llama3     # one

Never fails: offline it prints what is missing and this command to run later (exit status 0). Where the
files go: $MOLE_EXP_TOKENIZERS, else $MOLE_EXP_CACHE/tokenizers, else ~/.cache/mole_exp/tokenizers.
The logic lives in mole_exp/base/tokenizer_fetch.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from mole_exp.base.tokenizer_fetch import FETCH_COMMAND, TOKENIZERS, fetch_tokenizer  # noqa: E402


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in TOKENIZERS]
    if unknown:
        print(f"unknown tokenizer(s) {unknown}; pinned: {sorted(TOKENIZERS)}", file=sys.stderr)
        return 2
    missing = []
    for name in names or sorted(TOKENIZERS):
        try:
            print(f"{name}: {fetch_tokenizer(name)} ({TOKENIZERS[name].licence})")
        except Exception as error:  # offline, a proxy, a bad download: report, never fail the install
            missing.append(name)
            print(f"{name}: NOT fetched ({type(error).__name__}: {error})", file=sys.stderr)
    if missing:
        print(f"missing tokenizers {missing}: tests that need them skip; fetch later with `{FETCH_COMMAND}`", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
