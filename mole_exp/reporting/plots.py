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


def legend_labels(runs: list[Path]) -> dict[Path, str]:
    """Per run: its short label plus what sets it apart from the other plotted runs (the differing config
    keys, shortened as in the tables; the seed where seeds differ)."""
    from mole_exp.reporting.run_results import differing_keys, read_run
    from mole_exp.reporting.table_columns import short_differences

    read = [read_run(Path(r)) for r in runs]
    with_config = [r for r in read if r.config]
    differences = short_differences(with_config, differing_keys(with_config)) if len(with_config) > 1 else {}
    seeds = {r.seed for r in with_config}
    labels = {}
    for run_dir, run in zip(runs, read, strict=True):
        if not run.config:
            labels[run_dir] = Path(run_dir).name
            continue
        label = run.composer_name + (f" [{differences[str(run.path)]}]" if differences.get(str(run.path)) else "")
        labels[run_dir] = label + (f" (seed {run.seed})" if len(seeds) > 1 else "")
    if len(set(labels.values())) < len(labels):  # still alike (e.g. the same config twice): their folders tell them apart
        labels = {r: f"{label} ({Path(r).name})" for r, label in labels.items()}
    return labels


def entropy_figure(folders: list[Path]):
    """Figure 5: (a) mean gate entropy per step; (b) final mean weight per expert, per run (a matplotlib Figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    runs = find_runs(folders)
    labels = legend_labels(runs)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    fits = [(run_dir, unit) for run_dir in runs for unit in stats_units(run_dir)]  # per-dataset runs: a line per unit
    width = 0.8 / len(fits)
    names: list[str] = []
    for index, (run_dir, unit) in enumerate(fits):
        rows = read_stats(run_dir, unit)
        label = labels[run_dir] + (f" [{unit}]" if unit else "")
        left.plot([r["step"] for r in rows], [r["gate_entropy"] for r in rows], label=label)
        gates = rows[-1].get("gates") or {}
        if gates:
            per_gate = [g["weights"] for g in gates.values()]
            mean_weights = [sum(col) / len(col) for col in zip(*per_gate, strict=True)]
            positions = [i + index * width for i in range(len(mean_weights))]
            right.bar(positions, mean_weights, width=width, label=label)
            run_names = expert_names(run_dir, len(mean_weights))
            names = run_names if not names or names == run_names else [f"expert {i}" for i in range(len(mean_weights))]
    left.set_xlabel("training step")
    left.set_ylabel("mean gate entropy (nats)")
    left.set_title("(a) gate entropy")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.legend(fontsize=7)
    if names:
        right.set_xticks([i + width * (len(fits) - 1) / 2 for i in range(len(names))], names, rotation=45, ha="right", fontsize=7)
    right.set_xlabel("expert")
    right.set_ylabel("mean weight at the last step")
    right.set_title("(b) weight per expert")
    right.legend(fontsize=7)
    figure.tight_layout()
    return figure


def plot_entropy(folders: list[Path], out: Path) -> Path:
    """Figure 5 as an image file."""
    import matplotlib.pyplot as plt

    figure = entropy_figure(folders)
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
