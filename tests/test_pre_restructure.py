"""Results written before the package restructure still load and match (tests/fixtures/pre_restructure/,
made by its make_fixture.py at commit 41e4a9e).

- The gates checkpoint of a real run (MoLE over 3 tiny PEFT experts) loads into today's model and gives the
  outputs it gave then: the same generations (greedy and 2-beam) token for token, and the same hidden states
  and loss up to float32 rounding (1e-5; bit for bit at the thread count that made them).
- The run's config.yaml hashes to the config hash its metrics.json recorded, and today's config composed
  from the run's overrides hashes the same, so `resume=true` and the mini reproduction still find the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from tests.conftest import TOKENIZER_DIR, compose_cfg, needs_data

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "pre_restructure"
RECORD = json.loads((FIXTURE / "fixture.json").read_text())


def fixture_config():
    return OmegaConf.load(FIXTURE / "config.yaml")


def composed_model(load_checkpoint: bool = True):
    """Today's tiny base, the fixture's expert library and today's MoLE composer with the run's options."""
    from mole_exp.composers.mole import MoLEComposer
    from mole_exp.experts import load_experts
    from mole_exp.models import build_tiny
    from mole_exp.pipeline import load_composer_state

    cfg = fixture_config()
    options = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if k not in ("_target_", "tokenizer_dir")}
    base = build_tiny(str(TOKENIZER_DIR), **options)
    assert base.model_id == RECORD["base_model_id"]
    library = OmegaConf.create({"source": "library", "library_dir": str(FIXTURE / "library"), "count": None,
                                "selection": "first", "pool": "list", "seed": 0, "layer_range": None})
    bank = load_experts(library, base)  # its manifest's base fingerprint is checked against the base built here
    assert bank.names == RECORD["experts"]
    composer = MoLEComposer(**{k: v for k, v in OmegaConf.to_container(cfg.composer).items() if k != "_target_"})
    composer.compose(base, bank)
    if load_checkpoint:
        load_composer_state(composer, FIXTURE / "composer.safetensors")
    composer.prepare_inference()
    return base.model.eval()


def run_model(model, recorded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    inputs = {"input_ids": recorded["input_ids"], "attention_mask": recorded["attention_mask"]}
    with torch.no_grad():
        out = model(**inputs, labels=recorded["labels"], output_hidden_states=True)
        return {
            "encoder_last_hidden_state": out.encoder_last_hidden_state,
            "decoder_last_hidden_state": out.decoder_hidden_states[-1],
            "loss": out.loss.reshape(1),
            "greedy": model.generate(**inputs, max_new_tokens=8, num_beams=1, do_sample=False),
            "beam2": model.generate(**inputs, max_new_tokens=8, num_beams=2, do_sample=False),
        }


@needs_data
def test_the_pre_restructure_gates_checkpoint_gives_identical_outputs():
    from safetensors.torch import load_file

    recorded = load_file(str(FIXTURE / "outputs.safetensors"))
    produced = run_model(composed_model(), recorded)
    for name, tensor in produced.items():
        if tensor.is_floating_point():  # the same up to float32 rounding (the CPU thread count reorders sums: ~5e-7)
            torch.testing.assert_close(tensor, recorded[name], rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
        else:  # token ids: identical
            assert torch.equal(tensor, recorded[name]), f"{name}: {tensor.tolist()} != {recorded[name].tolist()}"
    # the comparison can fail: fresh (uniform) gates give other hidden states than the checkpoint's
    fresh = run_model(composed_model(load_checkpoint=False), recorded)
    assert (fresh["decoder_last_hidden_state"] - recorded["decoder_last_hidden_state"]).abs().max() > 1e-3


def test_the_pre_restructure_config_hashes_to_its_recorded_hash():
    from mole_exp.pipeline import config_hash

    assert config_hash(fixture_config()) == RECORD["config_hash"]


def test_todays_config_from_the_runs_overrides_hashes_the_same():
    from mole_exp.pipeline import config_hash

    paths = [f"paths.data_dir={RECORD['paths']['data_dir']}", f"paths.cache_dir={RECORD['paths']['cache_dir']}"]
    assert config_hash(compose_cfg(RECORD["overrides"] + paths)) == RECORD["config_hash"]
