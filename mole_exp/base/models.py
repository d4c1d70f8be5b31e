"""Frozen base models: a Hub id or local path (T5 or a causal LM), or tiny T5 / Llama / Qwen2 models built
in-process with the real vocabularies (T5's from the shared data, Llama 3's and Qwen2.5's fetched once)."""

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
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    T5Config,
)

from mole_exp.base.family import ModelFamily, family_for
from mole_exp.base.hub import from_hub
from mole_exp.base.text_format import bind_format, eos_id, pad_id
from mole_exp.base.tokenizer_fetch import require_tokenizer

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@dataclass
class BaseModel:
    """A frozen seq2seq or causal LM with its tokenizer (its text format bound) and an id adapters are checked against."""

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


def load_pretrained(name_or_path: str, dtype: str = "float32", tokenizer: str | None = None, chat_template: bool = False) -> BaseModel:
    """Any T5 / FLAN-T5 checkpoint or causal LM of a supported family (Llama, Qwen2, Mistral, Phi-3) by Hub id
    (resolved through the HF cache) or local folder. `chat_template`: causal LMs read prompts through their
    tokenizer's chat template."""
    torch_dtype = _dtype(dtype)
    config = from_hub("model", name_or_path, lambda: AutoConfig.from_pretrained(name_or_path))
    family = family_for(config)  # an unsupported model type fails here, before any weights load
    auto = AutoModelForCausalLM if family.causal else AutoModelForSeq2SeqLM
    model = from_hub("model", name_or_path, lambda: auto.from_pretrained(name_or_path, dtype=torch_dtype))
    tokenizer_id = tokenizer or name_or_path
    tok = from_hub("tokenizer", tokenizer_id, lambda: AutoTokenizer.from_pretrained(tokenizer_id))
    bind_format(tok, family.causal, chat_template)
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
    bind_format(tokenizer, causal=False)
    model_id = (
        f"tiny-t5-d{d_model}-ff{d_ff}-l{num_layers}x{num_decoder_layers}-h{num_heads}-v{len(tokenizer)}-untied-seed{seed}"
    )
    return BaseModel(model=freeze(model), tokenizer=tokenizer, model_id=model_id, family=family_for(model))


TINY_CAUSAL = {"llama": "llama3", "qwen2": "qwen2.5"}  # architecture -> its real tokenizer (base/tokenizer_fetch.py)


def build_tiny_causal(
    architecture: str,
    tokenizer_dir: str | None = None,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    seed: int = 0,
    dtype: str = "float32",
    chat_template: bool = False,
) -> BaseModel:
    """A tiny Llama- or Qwen2-shaped causal LM with random weights (seeded), grouped-query attention and an
    untied head, with that family's real tokenizer (Llama 3's or Qwen2.5's; `tokenizer_dir`: the folder
    holding the fetched tokenizers, default the cache)."""
    if architecture not in TINY_CAUSAL:
        raise ValueError(f"model.architecture={architecture!r} is not one of {sorted(TINY_CAUSAL)}")
    tokenizer = AutoTokenizer.from_pretrained(str(require_tokenizer(TINY_CAUSAL[architecture], tokenizer_dir)))
    if architecture == "llama":
        from transformers import LlamaConfig as Config
        from transformers import LlamaForCausalLM as Model
    else:
        from transformers import Qwen2Config as Config
        from transformers import Qwen2ForCausalLM as Model
    config = Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_id(tokenizer),
        pad_token_id=pad_id(tokenizer),
        attention_dropout=0.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Model(config).to(_dtype(dtype))
    model.generation_config.max_length = None
    model.generation_config.pad_token_id = pad_id(tokenizer)
    model.eval()
    bind_format(tokenizer, causal=True, chat_template=chat_template)
    model_id = (
        f"tiny-{architecture}-h{hidden_size}-ff{intermediate_size}-l{num_hidden_layers}-h{num_attention_heads}"
        f"kv{num_key_value_heads}-v{len(tokenizer)}-untied-seed{seed}"
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
