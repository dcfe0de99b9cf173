"""A random-weight model folder of a given shape, with a tokenizer of its vocabulary.

Benchmarks and GPU tests need real shapes (Qwen3-0.6B's) without downloading weights: the folder
holds config.json, model.safetensors (random, seeded) and a tokenizer, with a chat template that
joins the messages' contents. The tokenizer is word-level by default: token i reads "t{i} " (unknown
words read t0). `tokenizer="byte-level"` gives what Qwen3's (and GPT-2's, Llama 3's) really is, a
byte-level BPE with a ByteLevel decoder: ids 0-255 spell the bytes (any text encodes), and token i
above them reads " t{i}"; the engine streams such a tokenizer's text by lookup, a word-level one's by
decoding windows.
"""
from __future__ import annotations

from pathlib import Path

import torch

QWEN3_0_6B = dict(
    hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
    intermediate_size=3072, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=40960,
    rope_theta=1_000_000.0, rms_norm_eps=1e-6,
)


def word_tokenizer(vocab_size: int, eos_id: int):
    """A fast tokenizer with one word per id, so any id decodes (and detokenizing costs real work)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=f"t{eos_id}", unk_token="t0")
    # a plain template, so the app's chat (and the load generator) run on this model too
    fast.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return fast


def byte_level_tokenizer(vocab_size: int, eos_id: int):
    """A byte-level BPE: the 256 bytes in GPT-2's alphabet, then one word per id, decoded by ByteLevel."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({f"\u0120t{i}": i for i in range(256, vocab_size)})  # U+0120 spells the space byte
    tok = Tokenizer(models.BPE(vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    eos = f"\u0120t{eos_id}"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, clean_up_tokenization_spaces=False)
    fast.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return fast


def make_model_dir(path: str | Path, shape: dict | None = None, dtype: torch.dtype = torch.bfloat16,
                   seed: int = 0, model_type: str = "qwen3", tokenizer: str = "word") -> Path:
    """Write a random `model_type` model of `shape` (default Qwen3-0.6B) to `path`; reuse it if there."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return path
    shape = dict(QWEN3_0_6B if shape is None else shape)
    vocab = shape["vocab_size"]
    config = AutoConfig.for_model(model_type, **shape, eos_token_id=vocab - 1, bos_token_id=vocab - 2)
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(path)
    make_tokenizer = {"word": word_tokenizer, "byte-level": byte_level_tokenizer}[tokenizer]
    make_tokenizer(vocab, vocab - 1).save_pretrained(path)
    return path
