"""The peers benchmark (mole_exp/tools/bench/peers.py, `scripts/bench_mole.py --peers`): the bank written as PEFT
adapters is the bank, X-LoRA's training step and Arrow's routed forward are timed beside MoLE's on any model, and a
peer that refuses the family is recorded as skipped with its reason."""

from __future__ import annotations

import json

import pytest
import torch

from mole_exp.composers.single import SingleComposer
from mole_exp.tools.bench.peers import bench_peers, write_adapters
from mole_exp.tools.bench.workload import build_model, make_batch, random_bank, target_module_names
from tests.conftest import needs_tokenizer
from tests.test_composers import logits, peft_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def tiny_t5_setup(num_experts=3):
    base = build_model("tiny", torch.device("cpu"), torch.float32, 0.0, 0)
    bank = random_bank(base, target_module_names(base, ("q", "v")), num_experts, 4, seed=1)
    batch = make_batch(base, 2, 12, 4, base.model.config.vocab_size, torch.device("cpu"), 0)
    return base, bank, batch


def test_written_adapters_are_the_bank_as_peft_reads_them(tmp_path):
    base, bank, batch = tiny_t5_setup()
    library = write_adapters(bank, tmp_path)
    reference = peft_model(base.model, library.sources)
    reference.set_adapter("e1")
    expected = logits(reference, batch)
    SingleComposer(expert=1).compose(base, bank)  # our merge of the bank's expert 1 (s B A from the tensors)
    torch.testing.assert_close(logits(base.model, batch), expected, atol=1e-4, rtol=1e-4)


def test_on_t5_xlora_is_skipped_with_its_reason_and_mole_and_arrow_are_timed():
    base, bank, batch = tiny_t5_setup()
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    result = bench_peers(base, bank, batch, warmup=0, repeats=1, top_k=2)
    peers = result["peers"]
    assert peers["xlora"]["status"] == "skipped" and "composer=xlora does not run on the t5 family" in peers["xlora"]["reason"]
    assert peers["mole"]["train_step_ms_median"] > 0 and peers["mole"]["forward_ms_median"] > 0 and peers["mole"]["losses_finite"]
    assert peers["arrow"]["forward_ms_median"] > 0 and peers["arrow"]["trainable_params"] == 0 and "train_step_ms_median" not in peers["arrow"]
    assert result["shape"]["family"] == "t5" and result["shape"]["experts"] == 3
    assert all(torch.equal(v, before[k]) for k, v in base.model.state_dict().items())  # every peer released
    json.dumps(result)


@needs_tokenizer("llama3")
def test_on_a_causal_model_xlora_trains_its_classifier_and_arrow_routes(cache_dir):
    from tests.test_causal_models import causal_batch, tiny_causal

    base = tiny_causal("llama")
    bank = random_bank(base, [n for n, _ in base.model.named_modules() if n.endswith(("q_proj", "v_proj"))], 3, 4, seed=1)
    result = bench_peers(base, bank, causal_batch(base.tokenizer), peers=("xlora", "arrow"), warmup=0, repeats=1, top_k=2)
    xlora, arrow = result["peers"]["xlora"], result["peers"]["arrow"]
    assert xlora["status"] == "ok" and xlora["train_step_ms_median"] > 0 and xlora["trainable_params"] == 3 * 64 + 3
    assert arrow["status"] == "ok" and arrow["forward_ms_median"] > 0


def test_cli_peers_writes_json(tmp_path):
    from mole_exp.tools.bench.cli import main

    out = tmp_path / "peers.json"
    main(["--model", "tiny", "--device", "cpu", "--peers", "arrow,xlora", "--experts", "2", "--targets", "qv", "--rank", "4",
          "--batch", "2", "--source-len", "8", "--target-len", "4", "--warmup", "0", "--repeats", "1", "--arrow-top-k", "1",
          "--out", str(out)])
    written = json.loads(out.read_text())
    assert [run["targets"] for run in written["runs"]] == ["qv"]
    assert written["runs"][0]["peers"]["arrow"]["status"] == "ok" and written["runs"][0]["peers"]["xlora"]["status"] == "skipped"


def test_cli_refuses_an_unknown_peer():
    from mole_exp.tools.bench.cli import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--peers", "lorahub"])


def test_cli_peers_on_the_causal_family_times_all_three(tmp_path):
    """--peers follows --family: on a decoder-only shape X-LoRA runs (it is skipped on T5) beside MoLE and Arrow."""
    from mole_exp.tools.bench.cli import main

    out = tmp_path / "peers.json"
    main(["--family", "causal", "--model", "tiny-causal", "--device", "cpu", "--peers", "mole,xlora,arrow", "--experts", "2",
          "--targets", "qv", "--rank", "4", "--batch", "2", "--source-len", "8", "--target-len", "4", "--warmup", "0",
          "--repeats", "1", "--arrow-top-k", "1", "--out", str(out)])
    run = json.loads(out.read_text())["runs"][0]
    assert run["shape"]["family"] == "causal-lm"
    assert {name: peer["status"] for name, peer in run["peers"].items()} == {"base": "ok", "mole": "ok", "xlora": "ok", "arrow": "ok"}
    assert run["peers"]["xlora"]["train_step_ms_median"] > 0 and run["peers"]["mole"]["train_step_ms_median"] > 0
