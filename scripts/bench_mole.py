#!/usr/bin/env python
"""The MoLE benchmark (step time, peak memory, generation speed; base / rank_space / stacked / loop / PEFT).

    python scripts/bench_mole.py --device cuda                      # flan-t5-large shape, the full grid
    python scripts/bench_mole.py --model tiny --device cpu          # quick CPU run

The logic lives in mole_exp/tools/bench/ (cli.py: what is measured; see --help).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mole_exp.tools.bench.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
