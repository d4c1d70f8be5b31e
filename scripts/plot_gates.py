"""Gate figures from runs' gate_stats.jsonl.

    python scripts/plot_gates.py entropy <sweep or run folders...> [--out fig5.png]   (Figure 5)
    python scripts/plot_gates.py heatmap <run folder> [--out fig7.png] [--unit <dataset>] (Figure 7; --unit: a run fitted per dataset)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mole_exp.reporting.plots import plot_entropy, plot_heatmap  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    entropy = commands.add_parser("entropy", help="Figure 5: gate entropy over steps and final weight per expert")
    entropy.add_argument("folders", nargs="+", type=Path)
    entropy.add_argument("--out", type=Path, default=None)
    heatmap = commands.add_parser("heatmap", help="Figure 7: per-gate expert weights of one run")
    heatmap.add_argument("run", type=Path)
    heatmap.add_argument("--out", type=Path, default=None)
    heatmap.add_argument("--unit", default=None, help="the fit unit (dataset) of a run fitted per dataset")
    args = parser.parse_args(argv)
    if args.command == "entropy":
        path = plot_entropy(args.folders, args.out or args.folders[0] / "figure5_gate_entropy.png")
    else:
        path = plot_heatmap(args.run, args.out or args.run / "figure7_gate_weights.png", args.unit)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
