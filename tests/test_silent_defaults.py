"""Defaults that used to pass silently are errors or recorded choices: an empty task.only, adapters of
different ranks (zero-padded: logged and recorded), adapter configs whose target_modules do not describe
their weights, gates that collapse in the first steps (optimizer.lr=1e30). Interrupted sweep members and
dry runs: tests/test_run_folder.py."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from mole_exp.experts.loading import load_experts
from mole_exp.experts.tiny_library import ensure_tiny_library
from tests.conftest import compose_cfg, needs_data
from tests.test_bad_inputs import library_cfg, library_copy


def test_an_empty_task_only_is_an_error():
    from mole_exp.tasks import Task

    datasets = {"wnli": {"loader": "wnli", "metric": "exact_match", "template": "wnli"},
                "qnli": {"loader": "qnli", "metric": "exact_match", "template": "qnli"}}
    with pytest.raises(ValueError, match=r"task.only=\[\] selects no dataset of suite 'nli'; name some of \['wnli', 'qnli'\], or null for all"):
        Task("nli", datasets, only=[])
    assert list(Task("nli", datasets, only=None).specs) == ["wnli", "qnli"]


def test_adapters_of_different_ranks_are_padded_with_a_warning_and_recorded(tmp_path, cache_dir, tiny_base, caplog):
    folder = library_copy(tmp_path, cache_dir, tiny_base)  # rank 4
    low = ensure_tiny_library(tiny_base, str(cache_dir / "tiny_experts_r2"), num_adapters=1, rank=2, alpha=4, targets=["q", "v"], seed=5)
    shutil.copytree(low / "tiny_expert_00", folder / "zz_low_rank")
    (folder / "manifest.json").unlink()  # a plain folder of adapters
    with caplog.at_level(logging.WARNING, logger="mole_exp.experts"):
        bank = load_experts(library_cfg(folder), tiny_base)
    assert bank.rank_padding == {"zz_low_rank": {"rank": 2, "padded_to": 4}}
    assert "experts of different ranks: zero-padded to rank 4" in caplog.text and "'zz_low_rank': 2" in caplog.text
    assert bank.select([bank.names.index("zz_low_rank"), 0]).rank_padding == {"zz_low_rank": {"rank": 2, "padded_to": 4}}
    assert load_experts(library_cfg(folder, count=2), tiny_base).rank_padding == {}  # same ranks: nothing padded


@pytest.mark.parametrize("targets,message", [
    (["q", "v", "nonexistent"], r"target_modules names \['nonexistent'\], which match no module of its weights \(the weights adapt \['q', 'v'\]\)"),
    (["q"], r"its weights adapt \['decoder.block.0.layer.0.SelfAttention.v'.*which adapter_config.json target_modules=\['q'\] does not name"),
    (r".*\.(q|k)", r"target_modules names \['.*\\\\.\(q\|k\)'\]|its weights adapt .*SelfAttention.v"),
])
def test_target_modules_are_checked_against_the_weights(tmp_path, cache_dir, tiny_base, targets, message):
    folder = library_copy(tmp_path, cache_dir, tiny_base)
    config_path = folder / "tiny_expert_01" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["target_modules"] = targets
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"adapter .*tiny_expert_01: .*{message}"):
        load_experts(library_cfg(folder), tiny_base)


@needs_data
def test_exploding_gates_stop_in_the_first_steps_with_their_statistics(tmp_path, smoke_overrides):
    from mole_exp.training.gate_guard import GateCollapseError
    from mole_exp.training.pipeline import run

    run_dir = tmp_path / "run"
    cfg = compose_cfg(smoke_overrides + ["task=nli", "task.only=[wnli]", "trainer.max_steps=20", "optimizer.lr=1e30"], output_dir=run_dir)
    with pytest.raises(GateCollapseError, match=r"the gates collapsed at training step 1 .*mean gate entropy fell to 0 nats "
                                                r"\(<= gate_guard.min_entropy=0.001\).*largest \|parameter\| \d(\.\d+)?e\+30 .*optimizer lr 1e\+30"):
        run(cfg)
    stats = [json.loads(line) for line in (run_dir / "gate_stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [0, 1]  # step 0 is the forward at the initial (uniform) gates
    assert stats[0]["gate_entropy"] > 2.0 and stats[1]["gate_entropy"] == 0.0  # log 8 = 2.08, then one-hot
    state = json.loads((run_dir / "run_state.json").read_text())
    assert state["status"] == "failed" and state["error"].startswith("GateCollapseError")
    assert not (run_dir / "metrics.json").exists()


def test_the_gate_guard_settings_are_checked():
    from mole_exp.training.gate_guard import check_settings

    check_settings(None)
    check_settings({"within_steps": 10, "min_entropy": 0.001})
    with pytest.raises(ValueError, match=r"gate_guard.within_steps=0 must be a positive integer"):
        check_settings({"within_steps": 0, "min_entropy": 0.001})
    with pytest.raises(ValueError, match=r"gate_guard.min_entropy=-1 must be a number >= 0"):
        check_settings({"within_steps": 3, "min_entropy": -1})
