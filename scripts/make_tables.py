"""Make the paper's NLP tables (3-8) from run and sweep folders: markdown on stdout, .md/.csv/.tex files.

    python scripts/make_tables.py outputs/multirun/2026-11-26/10-00-00
    python scripts/make_tables.py --layout table6 --out tables/ sweep_a/ sweep_b/
    python scripts/make_tables.py --layout table3 --intervals --reference nla sweep/     # mean [95% CI], ↑/↓ vs nla

Reads only the runs' metrics.json and config.yaml (every one under the folders, recursively); the paper's
numbers come from the package (mole_exp/resources/paper_results.csv). --layout auto makes every table the
runs are for. Files go to --out (default: the first folder given) as <table>.md, <table>.csv, <table>.tex.
--intervals adds each cell's 95% interval (a bootstrap over the runs' predictions.jsonl, and over seeds);
--reference <column> also marks cells significantly better (↑) or worse (↓) than that column's
(mole_exp/reporting/table_intervals.py).
Runs with lm-eval results (<run>/lm_eval/results_*.json, scripts/lm_eval.py) also get the lm_eval table: our
scorer's and lm-eval's numbers for each such model side by side (--layout lm_eval: that table alone).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mole_exp.reporting import lm_eval_table
from mole_exp.reporting.run_results import collect_runs
from mole_exp.reporting.table_layouts import LAYOUTS, detect_layouts
from mole_exp.reporting.table_render import render_markdown, write_table
from mole_exp.reporting.tables import build_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="run or sweep folders (searched recursively)")
    parser.add_argument("--layout", default="auto", choices=[*LAYOUTS, lm_eval_table.NAME, "auto"], help="which table (default: auto)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the files (default: the first folder)")
    parser.add_argument("--intervals", action="store_true", help="show mean [95%% CI] (bootstrap over examples and seeds)")
    parser.add_argument("--reference", default=None, help="a column label: mark cells significantly better/worse than it (implies --intervals)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for --intervals (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = collect_runs(args.folders)
    if not runs:
        print(f"no run folders (metrics.json or config.yaml) under {', '.join(map(str, args.folders))}", file=sys.stderr)
        return 2
    out_dir = args.out or args.folders[0]
    layouts = detect_layouts(runs) if args.layout == "auto" else [] if args.layout == lm_eval_table.NAME else [args.layout]
    for name in layouts:
        table = build_table(name, runs)
        if args.intervals or args.reference:
            from mole_exp.reporting.table_intervals import add_intervals

            try:
                add_intervals(table, args.reference, args.resamples)
            except ValueError as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
        print(render_markdown(table, base=args.folders[0]))
        for path in write_table(table, out_dir, base=args.folders[0]):
            print(f"wrote {path}", file=sys.stderr)
    if args.layout in ("auto", lm_eval_table.NAME):  # our scorer's and lm-eval's numbers side by side
        try:
            table = lm_eval_table.build_lm_eval_table(runs)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if table is None and args.layout == lm_eval_table.NAME:
            print(f"no lm-eval results (<run>/lm_eval/results_*.json) in the runs under {', '.join(map(str, args.folders))}", file=sys.stderr)
            return 2
        if table is not None:
            print(lm_eval_table.render_markdown(table, base=args.folders[0]))
            for path in lm_eval_table.write_lm_eval_table(table, out_dir, base=args.folders[0]):
                print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
