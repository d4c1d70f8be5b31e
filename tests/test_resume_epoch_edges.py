"""Resume at an epoch's edges: a run resumed from a checkpoint taken at an epoch's last step, or at the first
step of a later epoch, ends bit for bit like the uninterrupted run (gates, final statistics, metrics)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import DATA_DIR, SMOKE, compose_cfg, needs_data

pytestmark = needs_data

# 8 rows in batches of 4: two steps an epoch, six steps = three epochs
OVERRIDES = [*SMOKE, "composer=mole", "task=nli", "task.only=[wnli]", "data.train_limit=8", "data.eval_limit=2",
             "trainer.max_steps=6", "optimizer.lr=0.05", f"paths.data_dir={DATA_DIR}"]


@pytest.mark.parametrize(
    ("every", "crash", "where"),
    [
        (2, 3, "step 2: epoch 0's last step"),
        (3, 4, "step 3: epoch 1's first step"),
        pytest.param(4, 5, "step 4: epoch 1's last step", marks=pytest.mark.slow),
    ],
)
def test_a_run_resumed_at_an_epoch_edge_ends_like_the_uninterrupted_run(tmp_path, every, crash, where):
    from mole_exp.training.pipeline import run

    outputs = tmp_path / "outputs"
    overrides = [*OVERRIDES, f"paths.outputs_dir={outputs}", f"checkpoint_every_n_steps={every}"]
    reference = run(compose_cfg(overrides, output_dir=outputs / "reference"))
    # the checkpoint callback runs after this one, so the crash at `crash` leaves the checkpoint of `crash - 1`
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(compose_cfg([*overrides, f"callbacks=[{{_target_:tests.helpers.RaiseAtStep,step:{crash}}}]"], output_dir=outputs / "crashed"))
    checkpoint = torch.load(outputs / "crashed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == crash - 1, where
    resumed = run(compose_cfg([*overrides, "resume=true"], output_dir=outputs / "resume_cmd"))
    assert resumed["train"]["resumed_from"] == str(outputs / "crashed" / "checkpoints" / "last.ckpt")
    assert resumed["train"]["steps"] == reference["train"]["steps"] == 6
    gates = [load_file(str(outputs / name / "checkpoints" / "composer.safetensors")) for name in ("reference", "crashed")]
    assert gates[0].keys() == gates[1].keys()
    for name in gates[0]:
        assert torch.equal(gates[0][name], gates[1][name]), (where, name)
    assert resumed["train"]["final"] == reference["train"]["final"], where
    assert resumed["metrics"] == reference["metrics"], where


def loader(epoch: int):
    """16 rows in batches of 4 (four batches an epoch), the sampler set to `epoch` as Lightning does."""
    from mole_exp.training.data import EpochShuffleSampler, ResumableDataLoader

    data = ResumableDataLoader(list(range(16)), batch_size=4, sampler=EpochShuffleSampler(16, seed=3, batch_size=4))
    data.sampler.set_epoch(epoch)
    return data


def epoch_batches(epoch: int) -> list[list[int]]:
    """The reference: a fresh loader's whole epoch."""
    return [batch.tolist() for batch in loader(epoch)]


def served_then_state(epoch: int, count: int) -> dict[str, int]:
    data = loader(epoch)
    for served, _ in enumerate(data, start=1):
        if served == count:
            return data.state_dict()  # as ModelCheckpoint saves it in on_train_batch_end
    raise AssertionError(f"epoch has fewer than {count} batches")


@pytest.mark.parametrize("served", [1, 3])
def test_a_mid_epoch_state_skips_the_batches_served_in_that_epoch(served):
    resumed = loader(1)
    resumed.load_state_dict(served_then_state(1, served))
    assert [batch.tolist() for batch in resumed] == epoch_batches(1)[served:]
    assert [batch.tolist() for batch in resumed] == epoch_batches(1)  # the skip is spent: the next pass is whole


def test_a_state_from_an_epochs_last_batch_skips_nothing_of_the_next_epoch():
    state = served_then_state(1, 4)
    assert state == {"epoch": 1, "served": 4}
    resumed = loader(2)  # Lightning resumes such a checkpoint in the next epoch
    resumed.load_state_dict(state)
    assert [batch.tolist() for batch in resumed] == epoch_batches(2)
    assert epoch_batches(2) != epoch_batches(1)


def test_a_state_without_its_epoch_from_older_checkpoints():
    at_end = loader(2)
    at_end.load_state_dict({"served": 4})  # an epoch's end: nothing to skip
    assert [batch.tolist() for batch in at_end] == epoch_batches(2)
    mid = loader(2)
    mid.load_state_dict({"served": 1})
    assert [batch.tolist() for batch in mid] == epoch_batches(2)[1:]


def test_a_sampler_without_an_epoch_is_refused():
    from torch.utils.data import SequentialSampler

    from mole_exp.training.data import ResumableDataLoader

    with pytest.raises(TypeError, match="SequentialSampler"):
        ResumableDataLoader(list(range(4)), batch_size=2, sampler=SequentialSampler(range(4)))
