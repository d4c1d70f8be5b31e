"""The paper's gate figures from runs' gate_stats.jsonl (written every training step by gate composers).

- Figure 5a: mean gate entropy over training steps, one line per run (e.g. with and without L_balance).
- Figure 5b: each expert's mean weight at the end of training, one group of bars per run.
- Figure 7: per-gate expert weights of one trained run as a heatmap (rows: gates in model order).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

STATS_FILE = "gate_stats.jsonl"


def read_all_stats(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / STATS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: only gate composers (mole, mixer) write gate statistics")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path} is empty")
    return rows


def stats_units(run_dir: Path) -> list[str | None]:
    """The fit units whose rows the file holds ([None] for a run fitted once for its suite)."""
    return list(dict.fromkeys(row.get("unit") for row in read_all_stats(run_dir)))


def read_stats(run_dir: Path, unit: str | None = None) -> list[dict[str, Any]]:
    """The rows of one fit: the run's, or (a run fitted per dataset) those of `unit`."""
    rows, units = read_all_stats(run_dir), stats_units(run_dir)
    if unit is None and len(units) > 1:
        raise ValueError(f"{Path(run_dir) / STATS_FILE} holds the gates of {len(units)} fit units {units} (fitted per dataset); choose one")
    if unit is not None:
        rows = [row for row in rows if row.get("unit") == unit]
        if not rows:
            raise ValueError(f"{Path(run_dir) / STATS_FILE} has no rows of fit unit {unit!r}; its units are {units}")
    return rows


def run_label(run_dir: Path) -> str:
    """A short label from the run's config: composer, alpha, fixed temperature."""
    config_path = Path(run_dir) / "config.yaml"
    if not config_path.exists():
        return Path(run_dir).name
    config = yaml.safe_load(config_path.read_text()) or {}
    composer = config.get("composer", {})
    label = composer.get("name", "?")
    if "alpha" in composer:
        label += f" α={composer['alpha']:g}"
    temperature = (config.get("gate") or {}).get("temperature") or {}
    if temperature.get("learnable") is False:
        label += f" τ={temperature.get('init'):g} fixed"
    return f"{label} (seed {config.get('seed', 0)})"


def expert_names(run_dir: Path, count: int) -> list[str]:
    metrics_path = Path(run_dir) / "metrics.json"
    if metrics_path.exists():
        names = json.loads(metrics_path.read_text()).get("experts", {}).get("names")
        if names and len(names) == count:
            return names
    return [f"expert {i}" for i in range(count)]


def find_runs(folders: list[Path]) -> list[Path]:
    runs = sorted({p.parent for folder in folders for p in Path(folder).rglob(STATS_FILE)})
    if not runs:
        raise FileNotFoundError(f"no {STATS_FILE} under {[str(f) for f in folders]}")
    return runs


def plot_entropy(folders: list[Path], out: Path) -> Path:
    """Figure 5: (a) mean gate entropy per step; (b) final mean weight per expert, per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = find_runs(folders)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    fits = [(run_dir, unit) for run_dir in runs for unit in stats_units(run_dir)]  # per-dataset runs: a line per unit
    width = 0.8 / len(fits)
    for index, (run_dir, unit) in enumerate(fits):
        rows = read_stats(run_dir, unit)
        label = run_label(run_dir) + (f" [{unit}]" if unit else "")
        left.plot([r["step"] for r in rows], [r["gate_entropy"] for r in rows], label=label)
        gates = rows[-1].get("gates") or {}
        if gates:
            per_gate = [g["weights"] for g in gates.values()]
            mean_weights = [sum(col) / len(col) for col in zip(*per_gate, strict=True)]
            positions = [i + index * width for i in range(len(mean_weights))]
            right.bar(positions, mean_weights, width=width, label=label)
    left.set_xlabel("training step")
    left.set_ylabel("mean gate entropy (nats)")
    left.set_title("(a) gate entropy")
    left.legend(fontsize=7)
    right.set_xlabel("expert")
    right.set_ylabel("mean weight at the last step")
    right.set_title("(b) weight per expert")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=150)
    plt.close(figure)
    return out


def plot_heatmap(run_dir: Path, out: Path, unit: str | None = None) -> Path:
    """Figure 7: the learned weight of every expert at every gate (last logged step); `unit`: which fit of a
    run fitted per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_stats(run_dir, unit)
    gates = rows[-1].get("gates") or {}
    if not gates:
        raise ValueError(f"{Path(run_dir) / STATS_FILE} holds no per-gate weights")
    scopes = list(gates)
    weights = [gates[s]["weights"] for s in scopes]
    names = expert_names(run_dir, len(weights[0]))
    figure, axis = plt.subplots(figsize=(max(5, 0.5 * len(names) + 3), max(3, 0.25 * len(scopes) + 1.5)))
    image = axis.imshow(weights, aspect="auto", cmap="viridis")
    axis.set_yticks(range(len(scopes)), scopes, fontsize=6)
    axis.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=6)
    axis.set_title(f"gate weights at step {rows[-1]['step']}: {run_label(run_dir)}" + (f" [{unit}]" if unit else ""), fontsize=9)
    figure.colorbar(image, ax=axis, label="weight")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=150)
    plt.close(figure)
    return out
