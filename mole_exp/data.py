"""Tokenised seq2seq batches for training and scoring (transformers' DataCollatorForSeq2Seq)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

IGNORE_INDEX = -100


def tokenize(
    tokenizer: PreTrainedTokenizerBase, examples: list[dict[str, Any]], max_source_length: int, max_target_length: int
) -> list[dict[str, list[int]]]:
    sources = tokenizer([e["source"] for e in examples], max_length=max_source_length, truncation=True)
    targets = tokenizer(text_target=[e["target"] for e in examples], max_length=max_target_length, truncation=True)
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": labels}
        for ids, mask, labels in zip(sources["input_ids"], sources["attention_mask"], targets["input_ids"])
    ]


def collator(tokenizer: PreTrainedTokenizerBase) -> DataCollatorForSeq2Seq:
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True, return_tensors="pt")


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
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        features, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collator(tokenizer), num_workers=num_workers
    )
