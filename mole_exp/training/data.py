"""Tokenised batches for training and scoring, in the model's text format (base/text_format.py: T5's
DataCollatorForSeq2Seq, or a causal LM's prompt + target with the loss on the target)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler
from transformers import PreTrainedTokenizerBase

from mole_exp.base.text_format import IGNORE_INDEX, text_format

__all__ = ["IGNORE_INDEX", "collator", "tokenize", "train_loader"]


def tokenize(
    tokenizer: PreTrainedTokenizerBase, examples: list[dict[str, Any]], max_source_length: int, max_target_length: int
) -> list[dict[str, list[int]]]:
    return text_format(tokenizer).features(tokenizer, examples, max_source_length, max_target_length)


def collator(tokenizer: PreTrainedTokenizerBase):
    return text_format(tokenizer).collator(tokenizer)


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochShuffleSampler(Sampler[int]):
    """A fresh seeded permutation each epoch: the order is a function of (seed, epoch) only.

    Under DDP (world size W, per-rank batch b) rank r takes the r-th b-slice of every W*b-slice of the
    same permutation, so the W ranks together train on exactly the global batches one process with batch
    W*b would see (set `use_distributed_sampler: false` in the trainer, as conf/trainer/ddp.yaml does).
    """

    def __init__(self, size: int, seed: int, batch_size: int = 1):
        self.size, self.seed, self.batch_size, self.epoch = size, int(seed), int(batch_size), 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = int(epoch)

    def _indices(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        rank, world = _world()
        if world == 1:
            return order
        return [index for position, index in enumerate(order) if (position // self.batch_size) % world == rank]

    def __iter__(self):
        yield from self._indices()

    def __len__(self) -> int:
        return len(self._indices())


class ResumableDataLoader(DataLoader):
    """A DataLoader that resumes mid-epoch: its state is the sampler's epoch and the batches served in it.

    Lightning saves `state_dict()` in checkpoints and calls `load_state_dict()` on resume; the next
    iteration then skips the batches the interrupted run had already trained on, if it is that same epoch.

    Why the epoch: a checkpoint saved in on_train_batch_end at an epoch's last batch holds every batch of
    that epoch as served, and on resume Lightning (FitLoop.reset, the `restarted_on_train_batch_end ...
    is_last_batch` case) counts the epoch as done and starts the next one. Skipping the saved count there
    would empty the next epoch, which Lightning then ends without a step: a whole epoch's data order lost.
    The skip therefore applies only when the sampler (set by Lightning before each epoch's first batch) is
    at the epoch the count was saved in. The sampler needs an `epoch` attribute (EpochShuffleSampler).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not hasattr(self.sampler, "epoch"):
            raise TypeError(
                f"ResumableDataLoader needs a sampler with an `epoch` attribute (set_epoch), such as EpochShuffleSampler; "
                f"got {type(self.sampler).__name__}"
            )
        self._served = 0
        self._resume_at: tuple[int | None, int] | None = None  # (epoch, batches served) from a checkpoint

    def __iter__(self):
        # the body runs at the first batch, after Lightning's set_epoch for this epoch
        epoch, skip = self._resume_at or (None, 0)
        self._resume_at = None
        if epoch is None and skip >= len(self):  # a checkpoint without its epoch (older code), taken at an epoch's end
            skip = 0
        elif epoch is not None and epoch != self.sampler.epoch:  # Lightning moved on to the next epoch
            skip = 0
        self._served = 0
        for index, batch in enumerate(super().__iter__()):
            self._served += 1
            if index >= skip:
                yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "served": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = (int(state["epoch"]) if "epoch" in state else None, int(state["served"]))


def train_loader(
    tokenizer: PreTrainedTokenizerBase,
    examples: list[dict[str, Any]],
    batch_size: int,
    max_source_length: int,
    max_target_length: int,
    seed: int,
    num_workers: int = 0,
) -> DataLoader:
    features = tokenize(tokenizer, examples, max_source_length, max_target_length)
    return ResumableDataLoader(
        features,
        batch_size=batch_size,
        sampler=EpochShuffleSampler(len(features), seed, batch_size),
        collate_fn=collator(tokenizer),
        num_workers=num_workers,
    )
