"""End to end on the tiny T5 over the real NLI data: train gates, evaluate, write results, reload."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mole_exp.files import RunExistsError
from mole_exp.training.pipeline import run
from tests.conftest import compose_cfg, needs_data

pytestmark = needs_data

NLI = ["anli_r1", "anli_r2", "anli_r3", "qnli", "wnli"]


def test_mole_trains_only_gates_and_writes_results(tmp_path, smoke_overrides, monkeypatch):
    from mole_exp.training import pipeline

    captured = {}
    original_fit = pipeline.fit

    def spy_fit(cfg, base, composer, examples, run_dir, *rest):
        captured["before"] = {k: v.clone() for k, v in base.model.state_dict().items() if "mole_gate" not in k}
        captured["experts_before"] = {n: (m.lora_A.clone(), m.lora_B.clone()) for n, m in base.model.named_modules() if hasattr(m, "lora_A")}
        captured["trainable"] = sorted(n for n, p in base.model.named_parameters() if p.requires_grad)
        captured["gates_before"] = {n: p.detach().clone() for n, p in base.model.named_parameters() if p.requires_grad}
        report = original_fit(cfg, base, composer, examples, run_dir, *rest)
        captured["after"] = {k: v for k, v in base.model.state_dict().items() if "mole_gate" not in k}
        captured["experts_after"] = {n: (m.lora_A, m.lora_B) for n, m in base.model.named_modules() if hasattr(m, "lora_A")}
        captured["gates_after"] = {n: p.detach() for n, p in base.model.named_parameters() if p.requires_grad}
        return report

    monkeypatch.setattr(pipeline, "fit", spy_fit)
    run_dir = tmp_path / "run"
    cfg = compose_cfg(smoke_overrides + ["task=nli", "composer=mole", "composer/gate=block", "optimizer.lr=0.05"], output_dir=run_dir)
    metrics = run(cfg)

    # the trainable set is exactly the gates' projections and temperatures
    assert captured["trainable"], "nothing trained"
    assert all(n.startswith("mole_gate.gates.") for n in captured["trainable"])
    assert {n.rsplit(".", 1)[-1] for n in captured["trainable"]} == {"projection", "log_tau"}
    assert len(captured["trainable"]) == 2 * 6  # block granularity on 2+2 blocks with q,v: 6 gates
    # base and expert weights bit-identical after training; the gates moved
    assert captured["before"].keys() == captured["after"].keys()
    for key, before in captured["before"].items():
        assert torch.equal(before, captured["after"][key]), key
    for name, (a, b) in captured["experts_before"].items():
        assert torch.equal(a, captured["experts_after"][name][0]) and torch.equal(b, captured["experts_after"][name][1])
    assert any(not torch.equal(captured["gates_before"][n], captured["gates_after"][n]) for n in captured["trainable"])

    # results: EM per NLI dataset and the suite average, predictions, gates-only checkpoint
    for dataset in NLI:
        assert f"test/{dataset}/em" in metrics["metrics"]
        assert metrics["higher_is_better"][f"test/{dataset}/em"] is True
        assert metrics["num_examples"][dataset] == 4
    assert "test/nli/avg" in metrics["metrics"]
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["metrics"] == metrics["metrics"] and on_disk["status"] == "completed"
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 5 * 4 and {"input", "prediction", "references", "dataset"} <= set(predictions[0])
    assert (run_dir / "config.yaml").exists()
    stats = [json.loads(line) for line in (run_dir / "gate_stats.jsonl").read_text().splitlines()]
    assert len(stats) == 2 and "gate_entropy" in stats[0] and "balance_loss" in stats[0]
    checkpoint = load_file(str(run_dir / "checkpoints" / "composer.safetensors"))
    assert set(checkpoint) == {n.removeprefix("mole_gate.") for n in captured["trainable"]}
    assert metrics["split_notes"]["qnli"].startswith("local")


def test_eval_mode_reloads_the_gates_and_reproduces_the_metrics(tmp_path, smoke_overrides):
    train_dir = tmp_path / "train"
    trained = run(compose_cfg(smoke_overrides + ["task=nli", "task.only=[wnli]", "optimizer.lr=0.05"], output_dir=train_dir))
    evaluated = run(compose_cfg(smoke_overrides + ["task=nli", "task.only=[wnli]", "mode=eval", f"checkpoint={train_dir}"], output_dir=tmp_path / "eval"))
    assert evaluated["metrics"] == trained["metrics"]
    assert evaluated["checkpoint"].endswith("composer.safetensors")
    trained_temperatures = trained["composer"]["temperatures"]
    assert any(abs(t - 1.0) > 1e-4 for t in trained_temperatures.values())  # training moved them from init
    assert evaluated["composer"]["temperatures"] == trained_temperatures  # ... and eval loaded them
    train_predictions = (train_dir / "predictions.jsonl").read_text()
    assert (tmp_path / "eval" / "predictions.jsonl").read_text() == train_predictions


def test_a_finished_run_is_never_overwritten(tmp_path, smoke_overrides):
    run_dir = tmp_path / "run"
    run(compose_cfg(smoke_overrides + ["task=nli", "task.only=[wnli]"], output_dir=run_dir))
    before = (run_dir / "metrics.json").read_bytes()
    with pytest.raises(RunExistsError, match="finished run"):
        run(compose_cfg(smoke_overrides + ["task=nli", "task.only=[wnli]"], output_dir=run_dir))
    assert (run_dir / "metrics.json").read_bytes() == before


def test_masked_experts_at_inference(tmp_path, smoke_overrides):
    metrics = run(compose_cfg(smoke_overrides + ["task=nli", "task.only=[wnli]", "composer.mask=[tiny_expert_00,3]"], output_dir=tmp_path / "r"))
    assert metrics["composer"]["mask"] == ["tiny_expert_00", 3]


@pytest.mark.parametrize("logger,produced", [("csv", "logs/metrics.csv"), ("tensorboard", "logs"), ("wandb", "wandb")])
def test_each_logger_works_offline(tmp_path, smoke_overrides, monkeypatch, logger, produced):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    cfg = compose_cfg([*smoke_overrides, "task=nli", "task.only=[wnli]", f"logger={logger}", "trainer.log_every_n_steps=1"], output_dir=run_dir)
    run(cfg)
    assert (run_dir / produced).exists()
    assert (run_dir / "metrics.json").exists()
