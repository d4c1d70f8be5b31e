"""Evaluate a composed model with lm-evaluation-harness: lm-eval's own flags plus the model.

    python scripts/lm_eval.py --run <run folder> --tasks local_bbh_zeroshot --include_path conf/lm_eval_tasks --limit 8
    python scripts/lm_eval.py --compose composer=nla model=tiny experts=tiny --tasks local_anli_r1 \
        --include_path conf/lm_eval_tasks --output_path outputs/lm_eval/nla

Writes lm-eval's results JSON to <run>/lm_eval/results_<time>.json (never over an earlier one), which
scripts/make_tables.py shows beside our scorer's numbers. Logic in mole_exp/harness/cli.py.
"""

import sys
from pathlib import Path

# this file is named like the package it drives: keep its folder off the import path, or `import lm_eval` finds it
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from mole_exp.harness.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
