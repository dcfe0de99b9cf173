"""Compiled decode steps on the CPU (engine/runner/compiled_decode.py): the unstored forward it
compiles equals the eager one that stores as it goes, and an engine that compiles its decode steps
generates what the eager engine does, without compiling again after its warm-up."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from benchmarks.synthetic_model import make_model_dir
from engine import LLM, SamplingParams
from engine.runner.compiled_decode import CompiledDecode, store_new_kv
from engine.runner.forward_metadata import ScheduledChunk

SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             intermediate_size=128, vocab_size=512, tie_word_embeddings=False, max_position_embeddings=512,
             initializer_range=0.3)  # logits far apart: greedy is not decided by rounding


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp(request.param), SHAPE, dtype=torch.float32, seed=5,
                          model_type=request.param)


def test_an_unstored_decode_step_equals_one_that_stores(model_dir: Path) -> None:
    llm = LLM(str(model_dir), device="cpu", num_blocks=16, block_size=4)
    runner = llm.engine.runner
    rng = random.Random(0)
    prompts = [[rng.randrange(500) for _ in range(n)] for n in (6, 11, 3)]
    tables = [[0, 1, 2], [3, 4, 5, 6], [7, 8]]  # ragged, and blocks not in order of the sequences
    with torch.inference_mode():
        prefill = [ScheduledChunk(p, 0, t, 1) for p, t in zip(prompts, tables)]
        meta = runner.inputs.build(prefill).meta
        runner.model(meta.input_ids, meta.positions, runner.kv_caches, meta)
        decode = [ScheduledChunk([rng.randrange(500)], len(p), t, 1) for p, t in zip(prompts, tables)]
        meta = runner.inputs.build(decode).meta
        before = runner.kv_pool.clone()
        hidden, new_kv = runner.model.forward_unstored(meta.input_ids, meta.positions, runner.kv_caches, meta)
        assert torch.equal(runner.kv_pool, before), "the unstored step wrote into the cache"
        store_new_kv(runner.kv_pool, new_kv, meta.slot_mapping)
        unstored_pool = runner.kv_pool.clone()
        runner.kv_pool.copy_(before)
        stored = runner.model(meta.input_ids, meta.positions, runner.kv_caches, meta)
    assert new_kv.shape == (SHAPE["num_hidden_layers"], 2, 3, SHAPE["num_key_value_heads"], SHAPE["head_dim"])
    assert torch.equal(hidden, stored)
    assert torch.equal(unstored_pool, runner.kv_pool)
    assert not torch.equal(unstored_pool, before)  # the step's keys and values did go in


def test_a_prefill_step_is_not_taken_unstored(model_dir: Path) -> None:
    llm = LLM(str(model_dir), device="cpu", num_blocks=16, block_size=4)
    runner = llm.engine.runner
    with torch.inference_mode():
        meta = runner.inputs.build([ScheduledChunk([1, 2, 3], 0, [0], 1), ScheduledChunk([4], 5, [1, 2], 1)]).meta
        assert not CompiledDecode.accepts(meta)
        with pytest.raises(ValueError, match="pure-decode"):
            runner.model.forward_unstored(meta.input_ids, meta.positions, runner.kv_caches, meta)


def test_the_compiled_engine_generates_what_the_eager_one_does(model_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(1)
    prompts = [[rng.randrange(500) for _ in range(n)] for n in (3, 17, 40, 9, 25)]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    eager = LLM(str(model_dir), device="cpu", num_blocks=64, block_size=8)
    expected = [r.outputs[0].token_ids for r in eager.generate(prompts, params)]
    compiled = LLM(str(model_dir), device="cpu", num_blocks=64, block_size=8, compile_decode=True,
                   check_integrity=True)
    runs = []
    run = CompiledDecode.run
    monkeypatch.setattr(CompiledDecode, "run", lambda self, meta: runs.append(meta.num_seqs) or run(self, meta))
    twice = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, n=2)
    # the warm-up compiled every shape: batches of 1 to 5 sequences, contexts of 4 to 52 tokens, n > 1
    with torch.compiler.set_stance("fail_on_recompile"):
        together = [r.outputs[0].token_ids for r in compiled.generate(prompts, params)]
        alone = [compiled.generate([p], params)[0].outputs[0].token_ids for p in prompts]
        pair = compiled.generate(prompts[:2], twice)
    assert together == expected and alone == expected
    assert [[o.token_ids for o in r.outputs] for r in pair] == [[e, e] for e in expected[:2]]
    assert max(runs) == len(prompts) and runs.count(1) >= 11 * len(prompts)  # decode steps ran compiled


def test_compiled_decode_is_refused_off_the_cpu_path(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="compile_decode"):
        LLM(str(model_dir), device="cpu", attention_backend="triton", compile_decode=True)


def test_a_quantized_compiled_engine_times_its_products_and_keeps_the_eager_logits(
        model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A quantized model's steps compile with its weights frozen and each product's kernel timed
    (TUNED_PRODUCTS), set only while they run; a compiled step's logits are the eager step's to
    within bf16's rounding of the dequantized weights (inductor's int4 template dequantizes into
    bf16, PyTorch's kernel into fp32: greedy tokens agree until two logits nearly tie)."""
    import torch._inductor.config as inductor_config
    from torch._inductor import compile_fx

    frozen = []
    freeze = compile_fx.fw_compiler_freezing
    def spy(*args, **kwargs):  # inductor compiles a graph with its weights frozen, and times products
        frozen.append(inductor_config.max_autotune_gemm)
        return freeze(*args, **kwargs)
    monkeypatch.setattr(compile_fx, "fw_compiler_freezing", spy)
    llm = LLM(str(model_dir), device="cpu", num_blocks=64, block_size=8, quantization="int4",
              compile_decode=True, max_num_seqs=8)
    compiled, runner = llm.engine.runner.compiled, llm.engine.runner
    assert compiled.tune_products
    assert frozen and all(frozen), frozen  # every graph the warm-up compiled
    assert not inductor_config.freezing and not inductor_config.max_autotune_gemm  # only while it ran
    rng = random.Random(2)
    prompts = [[rng.randrange(500) for _ in range(n)] for n in (5, 21, 12, 30, 9, 17)]
    tables = [[k * 4 + j for j in range(4)] for k in range(len(prompts))]
    with torch.inference_mode(), torch.compiler.set_stance("fail_on_recompile"):
        meta = runner.inputs.build([ScheduledChunk(p, 0, t, 1) for p, t in zip(prompts, tables)]).meta
        runner.model(meta.input_ids, meta.positions, runner.kv_caches, meta)
        for batch in (1, len(prompts)):
            decode = [ScheduledChunk([rng.randrange(500)], len(p), t, 1) for p, t in zip(prompts, tables)][:batch]
            meta = runner.inputs.build(decode).meta
            eager, _ = CompiledDecode._logits_and_kv(compiled, meta.input_ids, meta.positions, runner.kv_pool, meta)
            before = runner.kv_pool.clone()
            logits = compiled.run(meta)
            runner.kv_pool.copy_(before)
            # this model's weights are large (initializer_range 0.3): its logits reach about 9, and the
            # bf16 rounding of its dequantized weights moved a logit by up to 0.24 (of 9.1) in a trial
            scale, diff = eager.abs().max().item(), (logits - eager).abs()
            assert diff.max().item() < 0.05 * scale and diff.mean().item() < 0.01 * scale, (batch, diff.max(), scale)
            assert torch.equal(logits.argmax(-1), eager.argmax(-1))
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    with torch.compiler.set_stance("fail_on_recompile"):  # the warm-up compiled every size it meets
        out = llm.generate(prompts, params)
    assert all(len(r.outputs[0].token_ids) == 6 for r in out)
