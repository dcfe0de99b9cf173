"""Greedy output of the whole engine equals HF transformers `generate` on tiny random Llama and Qwen3
models, each prompt alone and all batched with different lengths."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from benchmarks.synthetic_model import make_model_dir
from engine import LLM, SamplingParams

SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             intermediate_size=128, vocab_size=512, tie_word_embeddings=False, max_position_embeddings=512)
NEW = 16


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_tiny_random_model_greedy_equals_hf(model_type: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    # std 0.3 instead of HF's 0.02: logits far apart enough that greedy is not decided by rounding
    path = make_model_dir(tmp_path / model_type, {**SHAPE, "initializer_range": 0.3}, dtype=torch.float32,
                          seed=3, model_type=model_type)
    rng = random.Random(1)
    prompts = [[rng.randrange(500) for _ in range(n)] for n in (3, 17, 40, 9)]
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    expected = []
    with torch.inference_mode():
        for p in prompts:
            out = hf.generate(torch.tensor([p]), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
            expected.append(out[0, len(p):].tolist())
    llm = LLM(str(path), device="cpu", num_blocks=64, block_size=8, check_integrity=True)
    params = SamplingParams(temperature=0.0, max_tokens=NEW, ignore_eos=True)
    assert [r.outputs[0].token_ids for r in llm.generate(prompts, params)] == expected
    assert [llm.generate([p], params)[0].outputs[0].token_ids for p in prompts] == expected
