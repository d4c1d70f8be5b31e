#!/usr/bin/env python
"""LoRAHub search speed: our `lorahub` composer against the official lorahub==0.1.0 package, side by side.

    pip install --no-deps lorahub==0.1.0
    python scripts/bench_lorahub.py --experts 8,128 --threads 1 --output outputs/bench/lorahub.json

The logic lives in mole_exp/tools/bench_lorahub.py; see its docstring and --help.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mole_exp.tools.bench_lorahub import main  # noqa: E402

if __name__ == "__main__":
    main()
