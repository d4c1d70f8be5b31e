"""Compare two run or sweep folders: per dataset, B - A with a 95% paired-bootstrap interval.

    python scripts/compare_runs.py outputs/runs/<date>/<nla run> outputs/runs/<date>/<mole run>
    python scripts/compare_runs.py sweep_nla/ sweep_mole/ --json diff.json      # seeds paired, two-level bootstrap

Reads each run's predictions.jsonl (and metrics.json / config.yaml to group and pair runs). Runs are paired
by seed; examples by dataset and input (runs that evaluated different examples are refused). BLEU of one
pair of runs is sacreBLEU's own paired bootstrap (`sacrebleu REF -i A B --paired-bs`); EM and ROUGE are
resampled per example. See mole_exp/reporting/intervals.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere without installing

from mole_exp.reporting.compare import as_json, compare_folders, render  # noqa: E402
from mole_exp.reporting.intervals import RESAMPLES, SEED  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="run or sweep folder A (the reference)")
    parser.add_argument("b", type=Path, help="run or sweep folder B (compared with A: B - A)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=SEED, help="bootstrap seed (default: sacreBLEU's %(default)s)")
    parser.add_argument("--decimals", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the comparisons as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for folder in (args.a, args.b):
        if not folder.is_dir():
            print(f"{folder} is not a folder (give run or sweep folders holding metrics.json and predictions.jsonl)", file=sys.stderr)
            return 2
    try:
        comparisons = compare_folders(args.a, args.b, args.resamples, args.seed)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(render(comparisons, args.decimals))
    if args.json:
        from mole_exp.files import write_atomic

        write_atomic(args.json, json.dumps(as_json(comparisons), indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
