"""Frozen base models: a Hub id or local path, or a tiny T5 built in-process with the real vocabulary."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedTokenizerBase, T5Config

from mole_exp.base.family import ModelFamily, family_for
from mole_exp.base.hub import from_hub

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@dataclass
class BaseModel:
    """A frozen seq2seq model with its tokenizer and an id that adapters are checked against."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    model_id: str
    family: ModelFamily


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"model.dtype={name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def freeze(model: nn.Module) -> nn.Module:
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def load_pretrained(name_or_path: str, dtype: str = "float32", tokenizer: str | None = None) -> BaseModel:
    """Any T5 / FLAN-T5 checkpoint by Hub id (resolved through the HF cache) or local folder."""
    torch_dtype = _dtype(dtype)
    model = from_hub(
        "model", name_or_path, lambda: AutoModelForSeq2SeqLM.from_pretrained(name_or_path, dtype=torch_dtype)
    )
    tokenizer_id = tokenizer or name_or_path
    tok = from_hub("tokenizer", tokenizer_id, lambda: AutoTokenizer.from_pretrained(tokenizer_id))
    family = family_for(model)
    model.eval()
    return BaseModel(model=freeze(model), tokenizer=tok, model_id=str(name_or_path), family=family)


def load_t5_tokenizer(tokenizer_dir: str | None) -> PreTrainedTokenizerBase:
    """The real T5 SentencePiece vocabulary, or (with a warning) a small one trained on the fly."""
    from transformers import T5Tokenizer

    if tokenizer_dir and (Path(tokenizer_dir) / "spiece.model").exists():
        return T5Tokenizer.from_pretrained(str(tokenizer_dir))
    warnings.warn(
        f"no T5 vocabulary at {tokenizer_dir!r}/spiece.model (the shared data folder is absent); "
        "training a small SentencePiece vocabulary on the fly: token ids will not match FLAN-T5's",
        stacklevel=2,
    )
    return _train_fallback_tokenizer()


def _train_fallback_tokenizer() -> PreTrainedTokenizerBase:
    import sentencepiece as spm
    from transformers import T5Tokenizer

    corpus = []
    for path in sorted(Path(__file__).resolve().parents[1].rglob("*.py")):  # this package's sources
        corpus.extend(line.strip() for line in path.read_text().splitlines() if line.strip())
    corpus += ["Yes", "No", "It's impossible to say", "yes", "no", "OPTIONS:", "- yes", "- no"]
    folder = Path(tempfile.mkdtemp(prefix="mole_exp_spm_"))
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_prefix=str(folder / "spiece"),
        vocab_size=800,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
    )
    return T5Tokenizer.from_pretrained(str(folder), extra_ids=0)


def build_tiny(
    tokenizer_dir: str | None,
    d_model: int = 64,
    d_kv: int = 16,
    d_ff: int = 128,
    num_layers: int = 2,
    num_decoder_layers: int = 2,
    num_heads: int = 4,
    feed_forward_proj: str = "gated-gelu",
    seed: int = 0,
    dtype: str = "float32",
) -> BaseModel:
    """A tiny FLAN-T5-shaped model with random weights (seeded) and the real T5 vocabulary."""
    tokenizer = load_t5_tokenizer(tokenizer_dir)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_kv,
        d_ff=d_ff,
        num_layers=num_layers,
        num_decoder_layers=num_decoder_layers,
        num_heads=num_heads,
        feed_forward_proj=feed_forward_proj,
        tie_word_embeddings=False,  # as FLAN-T5
        decoder_start_token_id=tokenizer.pad_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dropout_rate=0.0,
    )
    from transformers import T5ForConditionalGeneration

    with torch.random.fork_rng(devices=[]):  # the weights depend on `seed` alone; the caller's generator is left as it was
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(config)
        if model.lm_head.weight is model.shared.weight:
            # transformers 5 always ties T5's head to the embedding at construction; FLAN-T5's head is untied
            # (and tie_word_embeddings=False above keeps its decoder output unscaled), so give it its own weights
            model.lm_head.weight = nn.Parameter(torch.randn_like(model.shared.weight) * config.initializer_factor)
        model = model.to(_dtype(dtype))
    model.generation_config.max_length = None
    model.eval()
    model_id = (
        f"tiny-t5-d{d_model}-ff{d_ff}-l{num_layers}x{num_decoder_layers}-h{num_heads}-v{len(tokenizer)}-untied-seed{seed}"
    )
    return BaseModel(model=freeze(model), tokenizer=tokenizer, model_id=model_id, family=family_for(model))


def weights_fingerprint(model: nn.Module) -> str:
    """A short hash of the model's weights (for library manifests: which base an adapter was made on)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).cpu().numpy().tobytes()[:4096])
        digest.update(str(tuple(tensor.shape)).encode())
    return digest.hexdigest()[:16]


def mole_exp_cache_dir() -> str:
    """This package's own cache (tiny libraries, small bases): $MOLE_EXP_CACHE or ~/.cache/mole_exp, as conf/paths."""
    return os.environ.get("MOLE_EXP_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "mole_exp"))
