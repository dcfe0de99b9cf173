"""The whole engine on the embedded SmolLM2-135M-Instruct: same tokens as HF transformers, batched,
chunked, prefix-cached and preempted alike; n > 1, seeds, stop strings, abort."""
from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain in two sentences why the sky is blue, and mention Rayleigh scattering by name.",
    "List three prime numbers.",
    "Give me a recipe for a quick tomato pasta sauce with garlic and basil, step by step please.",
]
MAX_TOKENS = 24
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)


@pytest.fixture(scope="module")
def llm(embedded_model_dir: str) -> LLM:
    return LLM(embedded_model_dir, num_blocks=256, check_integrity=True)


@pytest.fixture(scope="module")
def chat_ids(llm: LLM) -> list[list[int]]:
    return [llm.engine.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS]


@pytest.fixture(scope="module")
def hf_greedy(embedded_model_dir: str, chat_ids: list[list[int]]) -> list[list[int]]:
    """HF transformers' own greedy continuation of each prompt, alone."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32).eval()
    outs = []
    for ids in chat_ids:
        with torch.inference_mode():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=MAX_TOKENS, do_sample=False,
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long))
        outs.append(gen[0, len(ids):].tolist())
    return outs


def tokens(results) -> list[list[int]]:
    return [r.outputs[0].token_ids for r in results]


def test_greedy_alone_equals_hf(llm: LLM, chat_ids, hf_greedy) -> None:
    for ids, expected in zip(chat_ids, hf_greedy):
        assert tokens(llm.generate([ids], GREEDY)) == [expected]


def test_greedy_batched_equals_hf(llm: LLM, chat_ids, hf_greedy) -> None:
    results = llm.generate(chat_ids, GREEDY)
    assert tokens(results) == hf_greedy
    assert all(r.outputs[0].text == llm.tokenizer.decode(r.outputs[0].token_ids, skip_special_tokens=True)
               for r in results)


def test_cpu_fp32_decode_products_run_on_blocked_weights(llm: LLM) -> None:
    """The greedy-equals-HF tests above ran with these: every projection and the tied LM head packed."""
    model = llm.engine.runner.model
    layer = model.model.layers[0]
    packed = [layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj]
    assert all(p.blocked is not None for p in packed)
    assert model.lm_head is None and model._head_blocked is not None


def test_chunked_prefill_and_preemption_keep_greedy_output(embedded_model_dir: str, chat_ids, hf_greedy) -> None:
    # 10 blocks of 16 tokens: the five requests cannot all hold their KV at once; chunks of 16 tokens
    small = LLM(embedded_model_dir, num_blocks=10, max_num_batched_tokens=16, check_integrity=True)
    results = small.generate(chat_ids, GREEDY)
    assert tokens(results) == hf_greedy
    assert small.engine.scheduler.num_preemptions > 0
    assert small.engine.block_manager.stats().used == 0


def test_prefix_cache_prefills_only_new_tokens(llm: LLM, embedded_model_dir: str) -> None:
    system = "You are a meticulous assistant who answers briefly and precisely. " * 8
    first, second = (llm.engine.encode_chat([{"role": "system", "content": system}, {"role": "user", "content": q}])
                     for q in (PROMPTS[0], PROMPTS[3]))
    common = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
    assert common > 64
    llm.generate([first], GREEDY)
    before = llm.engine.metrics.total_prompt_tokens
    warm = llm.generate([second], GREEDY)[0]
    assert warm.num_cached_tokens == common // 16 * 16
    assert llm.engine.metrics.total_prompt_tokens - before == len(second) - warm.num_cached_tokens
    uncached = LLM(embedded_model_dir, num_blocks=64, enable_prefix_caching=False).generate([second], GREEDY)[0]
    assert uncached.num_cached_tokens == 0
    assert warm.outputs[0].token_ids == uncached.outputs[0].token_ids
    assert llm.reset_prefix_cache() > 0
    cold = llm.generate([second], GREEDY)[0]
    assert cold.num_cached_tokens == 0, "after reset_prefix_cache the prompt prefills from scratch"
    assert cold.outputs[0].token_ids == uncached.outputs[0].token_ids


def test_n_samples_share_the_prompt_and_are_reproducible(llm: LLM, chat_ids) -> None:
    params = SamplingParams(n=3, temperature=1.0, top_p=0.95, seed=7, max_tokens=16)
    a = llm.generate([chat_ids[1]], params)[0]
    b = llm.generate([chat_ids[1], chat_ids[0]], [params, SamplingParams(seed=1, max_tokens=5)])[0]
    assert [o.token_ids for o in a.outputs] == [o.token_ids for o in b.outputs], "seeded: same alone or batched"
    assert len({tuple(o.token_ids) for o in a.outputs}) > 1, "three samples are not all the same"
    greedy = llm.generate([chat_ids[2]], SamplingParams(n=2, temperature=0.0, max_tokens=MAX_TOKENS))[0]
    assert greedy.outputs[0].token_ids == greedy.outputs[1].token_ids
    assert llm.engine.block_manager.stats().used == 0


def test_stop_string_ends_the_text_before_it(llm: LLM, chat_ids, hf_greedy) -> None:
    full = llm.tokenizer.decode(hf_greedy[2], skip_special_tokens=True)
    stop = full[10:14]
    out = llm.generate([chat_ids[2]], SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, stop=(stop,)))[0]
    assert out.outputs[0].finish_reason == "stop"
    assert out.outputs[0].text == full[:full.index(stop)]


def test_abort_mid_generation_frees_every_block(llm: LLM, chat_ids) -> None:
    engine = llm.engine
    engine.add_request("victim", chat_ids[4], SamplingParams(temperature=0.0, max_tokens=200))
    engine.add_request("bystander", chat_ids[0], GREEDY)
    for _ in range(5):
        engine.step()
    assert engine.block_manager.stats().used > 0
    final = engine.abort("victim")
    assert final and final[0].finished and final[0].finish_reason == "abort"
    while engine.has_unfinished_requests():
        engine.step()
    stats = engine.block_manager.stats()
    assert stats.used == 0 and stats.free + stats.cached_free == stats.total


def test_step_reports_metrics(llm: LLM, chat_ids) -> None:
    engine = llm.engine
    engine.add_request("m", chat_ids[0], SamplingParams(temperature=0.0, max_tokens=3))
    first = engine.step()
    assert first.metrics.num_prefill_tokens > 0 and len(first.metrics.ttft) == 1
    second = engine.step()
    assert second.metrics.num_decode_tokens == 1 and len(second.metrics.itl) == 1
    while engine.has_unfinished_requests():
        engine.step()
