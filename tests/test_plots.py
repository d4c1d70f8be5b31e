"""Figures 5 and 7 from gate_stats.jsonl files shaped as the training loop writes them."""

from __future__ import annotations

import json

import pytest

from mole_exp.reporting.plots import plot_entropy, plot_heatmap


def write_run(folder, alpha, steps=5):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"composer:\n  name: mole\n  alpha: {alpha}\ngate:\n  temperature:\n    learnable: true\nseed: 0\n")
    rows = [
        {"step": s, "loss": 1.0, "gate_entropy": 1.0 - 0.1 * s,
         "gates": {"encoder.block.0.layer.0": {"weights": [0.7, 0.2, 0.1], "entropy": 0.8},
                   "decoder.block.0.layer.0": {"weights": [0.1, 0.1, 0.8], "entropy": 0.6}}}
        for s in range(steps)
    ]
    (folder / "gate_stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_entropy_and_heatmap_figures_are_written(tmp_path):
    write_run(tmp_path / "sweep" / "0_with", 0.5)
    write_run(tmp_path / "sweep" / "1_without", 0.0)
    fig5 = plot_entropy([tmp_path / "sweep"], tmp_path / "fig5.png")
    fig7 = plot_heatmap(tmp_path / "sweep" / "0_with", tmp_path / "fig7.png")
    for figure in (fig5, fig7):
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000


def test_a_run_without_gate_statistics_is_a_clear_error(tmp_path):
    (tmp_path / "nla_run").mkdir()
    with pytest.raises(FileNotFoundError, match="only gate composers"):
        plot_heatmap(tmp_path / "nla_run", tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="no gate_stats.jsonl under"):
        plot_entropy([tmp_path / "nla_run"], tmp_path / "x.png")


def test_a_run_fitted_per_dataset_plots_one_line_per_unit_and_one_heatmap_per_chosen_unit(tmp_path):
    from mole_exp.reporting.plots import read_stats

    folder = tmp_path / "per_dataset"
    write_run(folder, 0.5)
    rows = [json.loads(line) for line in (folder / "gate_stats.jsonl").read_text().splitlines()]
    tagged = [{"unit": unit, "dataset": unit, **row} for unit in ("qnli", "wnli") for row in rows]
    (folder / "gate_stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tagged))
    assert [r["unit"] for r in read_stats(folder, "wnli")] == ["wnli"] * len(rows)
    with pytest.raises(ValueError, match=r"holds the gates of 2 fit units \['qnli', 'wnli'\] \(fitted per dataset\); choose one"):
        plot_heatmap(folder, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"no rows of fit unit 'anli_r1'; its units are \['qnli', 'wnli'\]"):
        plot_heatmap(folder, tmp_path / "x.png", unit="anli_r1")
    assert plot_heatmap(folder, tmp_path / "fig7.png", unit="qnli").stat().st_size > 10_000
    assert plot_entropy([folder], tmp_path / "fig5.png").stat().st_size > 10_000


def write_sweep_member(folder, granularity, names=("nli_a", "nli_b", "nli_c"), steps=3):
    write_run(folder, 0.5, steps=steps)
    (folder / "config.yaml").write_text(
        f"composer:\n  name: mole\n  alpha: 0.5\n  gate:\n    granularity: {granularity}\ngate:\n  granularity: {granularity}\n"
        f"model:\n  _target_: mole_exp.base.models.build_tiny\n  d_ff: 128\nseed: 0\n"
    )
    (folder / "metrics.json").write_text(json.dumps({"status": "completed", "experts": {"names": list(names), "count": len(names)}}))


def test_figure5_legends_carry_what_differs_ticks_are_integers_experts_are_named(tmp_path):
    from mole_exp.reporting.plots import entropy_figure

    write_sweep_member(tmp_path / "sweep" / "0_gate=layer", "layer")
    write_sweep_member(tmp_path / "sweep" / "1_gate=block", "block")
    figure = entropy_figure([tmp_path / "sweep"])
    left, right = figure.axes
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["mole [granularity=layer]", "mole [granularity=block]"]
    assert [t.get_text() for t in right.get_legend().get_texts()] == ["mole [granularity=layer]", "mole [granularity=block]"]
    steps = [tick for tick in left.get_xticks() if left.get_xlim()[0] <= tick <= left.get_xlim()[1]]
    assert steps and all(float(tick).is_integer() for tick in steps)  # 3 steps: no 0.25 ticks
    assert [t.get_text() for t in right.get_xticklabels()] == ["nli_a", "nli_b", "nli_c"]
