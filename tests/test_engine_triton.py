"""The engine with the Triton attention backend gives the same greedy tokens as with the torch one:
mixed prefill + decode steps, chunked prefill, prefix caching, preemption. On the CPU the kernels run
in the Triton interpreter, so the model is tiny."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")
from triton_interpreter import DEVICE  # noqa: E402

from benchmarks.synthetic_model import make_model_dir  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402

TINY_QWEN3 = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  intermediate_size=128, vocab_size=512, tie_word_embeddings=True, max_position_embeddings=256)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny-qwen3"), TINY_QWEN3, dtype=torch.float32)


def test_triton_backend_matches_torch_backend_in_the_engine(tiny_dir: Path) -> None:
    rng = random.Random(0)
    shared = [rng.randrange(500) for _ in range(20)]
    prompts = [[rng.randrange(500) for _ in range(n)] for n in (5, 23, 40)] + [shared + [7, 8], shared + [9]]
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    kw = dict(device=DEVICE, dtype="float32", block_size=8, enforce_eager=True, check_integrity=True)
    ref = LLM(str(tiny_dir), attention_backend="torch", num_blocks=64, **kw).generate(prompts, params)
    # 12 blocks of 8 tokens cannot hold all five at once: preemption; 16-token chunks: chunked prefill
    llm = LLM(str(tiny_dir), attention_backend="triton", num_blocks=12, max_num_batched_tokens=16, **kw)
    out = llm.generate(prompts, params)
    assert [r.outputs[0].token_ids for r in out] == [r.outputs[0].token_ids for r in ref]
    assert llm.engine.runner.backend.name == "triton"
    assert llm.engine.scheduler.num_preemptions > 0
    assert llm.engine.metrics.total_cached_tokens > 0


def test_padded_eager_steps_give_the_same_tokens(tiny_dir: Path) -> None:
    """An eager step padded to a token size and a row size (as a GPU's steps are, to counts cuBLAS
    has seen: StepInputs' token_sizes and row_sizes) gives the tokens, logprobs and prompt logprobs of
    the same step unpadded: the pad tokens write no key or value and belong to no sequence on the device
    (the prefill kernel's tiles past the last sequence's query do nothing), and their rows are not read."""
    rng = random.Random(1)
    prompts = [[rng.randrange(500) for _ in range(n)] for n in (5, 23, 40, 3)]
    params = [SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True, logprobs=2),
              SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, prompt_logprobs=1),
              SamplingParams(temperature=0.8, seed=3, n=2, max_tokens=4, ignore_eos=True),
              SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)]
    kw = dict(device=DEVICE, dtype="float32", block_size=8, enforce_eager=True, num_blocks=32,
              attention_backend="triton", max_num_batched_tokens=16)
    outputs, padded = [], []
    for tokens, rows in (((), ()), ((4, 8, 12, 16), (1, 2, 4, 8, 16))):
        llm = LLM(str(tiny_dir), **kw)
        inputs = llm.engine.runner.inputs
        inputs.token_sizes, inputs.row_sizes = tokens, rows
        build = inputs.build

        def counted(chunks, *a, **k):
            step = build(chunks, *a, **k)
            padded.append(step.meta.num_tokens - sum(len(c.token_ids) for c in chunks))
            return step
        inputs.build = counted
        out = llm.generate(prompts, params)
        outputs.append([(o.token_ids, o.logprobs, o.prompt_logprobs) for r in out for o in r.outputs])
    assert outputs[0] == outputs[1]
    assert any(padded) and min(padded) == 0  # some steps were padded (a pure decode never is)
