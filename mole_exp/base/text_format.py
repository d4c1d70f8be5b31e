"""How a model family reads and writes text: training features, batches, generation prompts, completions.

Two formats, one interface, chosen by the model's kind (`ModelFamily.kind`):

- `Seq2SeqFormat` (T5): the source is the encoder's input, the target the labels (transformers'
  DataCollatorForSeq2Seq); generation returns only new tokens.
- `CausalFormat` (Llama, Qwen2, Mistral, Phi-3): one sequence, prompt then target then end-of-sequence,

      input_ids = [prompt (P tokens)] + [target (T tokens)] + [eos]
      labels    = [-100] * P          + [target]           + [eos]      (the loss on the completion only)

  where the prompt is the FLAN source as the tokenizer encodes it, BOS first where the model has one (added
  where the tokenizer's own post-processing does not, as in the first Llama 3 tokenizer.json), or,
  with `chat_template=True`, the tokenizer's chat template around it as one user turn with the
  generation prompt. Training batches are padded on the right (labels -100); generation prompts on the
  left, so that every row's completion starts at the same position, and only the tokens after the
  prompt are decoded (the completion is scored, never the prompt).

The loader binds the format to the tokenizer (`bind_format`), so every path that tokenises (training,
search losses, generation in the evaluator, expert training) reads text the way its model does.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

IGNORE_INDEX = -100
FORMAT_ATTRIBUTE = "mole_exp_text_format"


class Seq2SeqFormat:
    causal = False
    chat_template = False

    def features(self, tokenizer, examples: list[dict[str, Any]], max_source_length: int, max_target_length: int) -> list[dict[str, list[int]]]:
        sources = tokenizer([e["source"] for e in examples], max_length=max_source_length, truncation=True)
        targets = tokenizer(text_target=[e["target"] for e in examples], max_length=max_target_length, truncation=True)
        return [
            {"input_ids": ids, "attention_mask": mask, "labels": labels}
            for ids, mask, labels in zip(sources["input_ids"], sources["attention_mask"], targets["input_ids"], strict=True)
        ]

    def collator(self, tokenizer):
        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True, return_tensors="pt")

    def encode_prompts(self, tokenizer, sources: list[str], max_source_length: int) -> dict[str, torch.Tensor]:
        return dict(tokenizer(sources, return_tensors="pt", padding=True, truncation=True, max_length=max_source_length))

    def completions(self, tokenizer, output: torch.Tensor, prompts: dict[str, torch.Tensor]) -> list[str]:
        return tokenizer.batch_decode(output, skip_special_tokens=True)  # the decoder's output holds only new tokens


class CausalFormat:
    causal = True

    def __init__(self, chat_template: bool = False):
        self.chat_template = bool(chat_template)

    def prompt_ids(self, tokenizer, source: str, max_source_length: int) -> list[int]:
        if self.chat_template:  # one user turn and the assistant's generation prompt, as the model was tuned to read
            ids = tokenizer.apply_chat_template([{"role": "user", "content": source}], add_generation_prompt=True, tokenize=True)
            ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
            return ids[-max_source_length:]  # an over-long prompt keeps its end: the question and the generation prompt
        ids = tokenizer(source, max_length=max_source_length, truncation=True)["input_ids"]
        bos = tokenizer.bos_token_id
        if bos is not None and (not ids or ids[0] != bos):  # a tokenizer.json without BOS post-processing (the first
            ids = [bos] + ids[: max_source_length - 1]  # Llama 3 release): the model was trained with BOS first
        return ids

    def features(self, tokenizer, examples: list[dict[str, Any]], max_source_length: int, max_target_length: int) -> list[dict[str, list[int]]]:
        eos = eos_id(tokenizer)
        rows = []
        for example in examples:
            prompt = self.prompt_ids(tokenizer, example["source"], max_source_length)
            target = tokenizer(example["target"], add_special_tokens=False)["input_ids"][: max_target_length - 1] + [eos]
            rows.append({"input_ids": prompt + target, "attention_mask": [1] * (len(prompt) + len(target)),
                         "labels": [IGNORE_INDEX] * len(prompt) + target})
        return rows

    def collator(self, tokenizer):
        pad = pad_id(tokenizer)

        def collate(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
            width = max(len(f["input_ids"]) for f in features)  # padded on the right: training sees whole sequences
            batch = {key: [] for key in ("input_ids", "attention_mask", "labels")}
            for f in features:
                extra = width - len(f["input_ids"])
                batch["input_ids"].append(f["input_ids"] + [pad] * extra)
                batch["attention_mask"].append(f["attention_mask"] + [0] * extra)
                batch["labels"].append(f["labels"] + [IGNORE_INDEX] * extra)
            return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}  # each (B, L)

        return collate

    def encode_prompts(self, tokenizer, sources: list[str], max_source_length: int) -> dict[str, torch.Tensor]:
        """Prompts padded on the left: (B, P) input_ids and attention_mask, every prompt ending at column P-1."""
        prompts = [self.prompt_ids(tokenizer, s, max_source_length) for s in sources]
        width, pad = max(len(p) for p in prompts), pad_id(tokenizer)
        input_ids = [[pad] * (width - len(p)) + p for p in prompts]
        mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
        return {"input_ids": torch.tensor(input_ids, dtype=torch.long), "attention_mask": torch.tensor(mask, dtype=torch.long)}

    def completions(self, tokenizer, output: torch.Tensor, prompts: dict[str, torch.Tensor]) -> list[str]:
        return tokenizer.batch_decode(output[:, prompts["input_ids"].shape[1] :], skip_special_tokens=True)


def eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no end-of-sequence token; a causal LM needs one to end targets")
    return int(tokenizer.eos_token_id)


def pad_id(tokenizer) -> int:
    """The pad id; a tokenizer without one (Llama 3) pads with its end-of-sequence token (masked out everywhere)."""
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else eos_id(tokenizer)


def bind_format(tokenizer: PreTrainedTokenizerBase, causal: bool, chat_template: bool = False) -> PreTrainedTokenizerBase:
    """Bind the model's text format to its tokenizer; `chat_template` is refused where it cannot apply."""
    if chat_template and not causal:
        raise ValueError("model.chat_template=true applies to decoder-only models; a T5 reads the FLAN prompt as it is")
    if chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"model.chat_template=true, but tokenizer {type(tokenizer).__name__} has no chat template; set it to false")
    setattr(tokenizer, FORMAT_ATTRIBUTE, CausalFormat(chat_template) if causal else Seq2SeqFormat())
    return tokenizer


def text_format(tokenizer: PreTrainedTokenizerBase) -> Seq2SeqFormat | CausalFormat:
    """The format bound to the tokenizer (T5's where none was bound: tokenizers made outside the loaders)."""
    return getattr(tokenizer, FORMAT_ATTRIBUTE, None) or Seq2SeqFormat()
