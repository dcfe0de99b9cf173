"""The whole engine on a GPU (Triton attention, CUDA graphs) against HF transformers, on a
random-weight model of Qwen3-0.6B's shape. Skipped where there is no CUDA device."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.synthetic_model import QWEN3_0_6B, make_model_dir  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402

NEW = 32
BF16_LOGIT_TOL = 0.15  # bf16 logits of this model differ from HF's by a few 1e-2; ties within this are fair


def prompts() -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(QWEN3_0_6B["vocab_size"] - 2) for _ in range(n)] for n in (5, 130, 517, 33)]


def hf_model(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map="cuda").eval()


@pytest.fixture(scope="module")
def fp32_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("q3fp32"), dtype=torch.float32, seed=1)


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("q3bf16"), dtype=torch.bfloat16, seed=2)


def test_fp32_greedy_equals_hf_token_for_token(fp32_dir: Path) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    model = hf_model(fp32_dir, torch.float32)
    expected = []
    with torch.inference_mode():
        for p in prompts():
            out = model.generate(torch.tensor([p], device="cuda"), max_new_tokens=NEW, min_new_tokens=NEW,
                                 do_sample=False)
            expected.append(out[0, len(p):].tolist())
    del model
    llm = LLM(str(fp32_dir), dtype="float32", num_blocks=512, max_model_len=1024, check_integrity=True)
    runner = llm.engine.runner
    assert runner.backend.name == "triton" and runner.graphs is not None and runner.prefill_graphs is not None
    replayed = spy_prefill_graphs(runner)
    params = SamplingParams(temperature=0.0, max_tokens=NEW, ignore_eos=True)
    batched = [r.outputs[0].token_ids for r in llm.generate(prompts(), params)]
    assert not replayed  # four prompts in one step: eager
    alone = [llm.generate([p], params)[0].outputs[0].token_ids for p in prompts()]
    assert batched == expected
    assert alone == expected
    # each prompt alone was one replayed prefill graph, after the prefix its batched run left cached
    assert [n for _, n in replayed] == [len(p) - start for p, (start, _) in zip(prompts(), replayed)]
    assert any(start > 0 for start, _ in replayed)


def spy_prefill_graphs(runner) -> list[tuple[int, int]]:
    """(cached prefix, new tokens) of every prefill the runner's graphs replay from now on."""
    replayed: list[tuple[int, int]] = []
    run = runner.prefill_graphs.run

    def spy(chunks, meta):
        replayed.append((chunks[0].start_pos, len(chunks[0].token_ids)))
        return run(chunks, meta)

    runner.prefill_graphs.run = spy
    return replayed


def test_chunked_prefill_through_graphs_equals_eager(fp32_dir: Path) -> None:
    """A 1,000-token prompt in chunks of 192: every chunk a replayed graph, same tokens as eager."""
    torch.backends.cuda.matmul.allow_tf32 = False
    prompt = [random.Random(5).randrange(1000, 100000) for _ in range(1000)]
    params = SamplingParams(temperature=0.0, max_tokens=NEW, ignore_eos=True)
    outs = {}
    for eager in (True, False):
        llm = LLM(str(fp32_dir), dtype="float32", num_blocks=256, max_model_len=2048, max_num_batched_tokens=192,
                  enforce_eager=eager, check_integrity=True)
        replayed = [] if eager else spy_prefill_graphs(llm.engine.runner)
        outs[eager] = llm.generate([prompt], params)[0].outputs[0].token_ids
        if not eager:
            assert [s for s, _ in replayed] == list(range(0, 1000, 192))
            assert [n for _, n in replayed] == [192] * 5 + [40]
        del llm
    assert outs[False] == outs[True]


def test_prefill_graphs_attend_densely_only_when_captured_fresh(bf16_dir: Path) -> None:
    """Each prefill size is captured twice: the fresh prompt's graph attends densely (SDPA), the graph
    of a chunk after a cached prefix through the paged kernel, even at the size where the padded
    step's host lists coincide (1,024 tokens = the table's 64 blocks of 16). Then a prompt alone, and
    one whose first 320 tokens are cached (its 680-token chunk padded to 1,024), each replay theirs."""
    llm = LLM(str(bf16_dir), dtype="bfloat16", num_blocks=512, max_model_len=1024)
    graphs = llm.engine.runner.prefill_graphs
    assert 1024 in graphs.sizes and graphs.max_blocks * 16 == 1024
    for (size, fresh), captured in graphs.graphs.items():
        assert captured.meta.fresh_prompt == fresh and captured.meta.plan.dense == fresh, (size, fresh)
    replayed = spy_prefill_graphs(llm.engine.runner)
    prompt = [random.Random(8).randrange(1000, 100000) for _ in range(1000)]
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    llm.generate([prompt[:320]], params)
    llm.generate([prompt], params)
    assert replayed == [(0, 320), (320, 680)]


def test_bf16_greedy_tokens_are_hf_argmax_within_tolerance(bf16_dir: Path) -> None:
    llm = LLM(str(bf16_dir), dtype="bfloat16", num_blocks=512, max_model_len=1024)
    params = SamplingParams(temperature=0.0, max_tokens=NEW, ignore_eos=True)
    ours = [r.outputs[0].token_ids for r in llm.generate(prompts(), params)]
    del llm
    model = hf_model(bf16_dir, torch.bfloat16)
    exact = total = 0
    with torch.inference_mode():
        for p, gen in zip(prompts(), ours):
            # teacher-forced: HF's logits at every position of our own continuation
            logits = model(torch.tensor([p + gen], device="cuda")).logits[0, len(p) - 1:-1].float()
            chosen = logits.gather(1, torch.tensor(gen, device="cuda")[:, None])[:, 0]
            gap = logits.max(dim=1).values - chosen
            assert gap.max().item() <= BF16_LOGIT_TOL, f"a token {gap.max().item():.3f} below HF's argmax"
            exact += int((gap == 0).sum())
            total += len(gen)
    assert exact / total >= 0.9, f"only {exact}/{total} tokens are HF's exact argmax"


def test_logprobs_on_the_gpu_match_hf(fp32_dir: Path) -> None:
    """The logprobs copied back from the device (pinned, non-blocking) are HF's log_softmax, for a
    batch where only some requests ask (CUDA graphs on)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    llm = LLM(str(fp32_dir), dtype="float32", num_blocks=512, max_model_len=1024)
    asks = [SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=k) for k in (3, None, 0, 5)]
    results = llm.generate(prompts(), asks)
    model = hf_model(fp32_dir, torch.float32)
    for prompt, params, result in zip(prompts(), asks, results):
        out = result.outputs[0]
        if params.logprobs is None:
            assert out.logprobs is None
            continue
        with torch.inference_mode():
            ref = model(torch.tensor([prompt + out.token_ids], device="cuda")).logits[0].float().log_softmax(-1)
        for i, (token, lp) in enumerate(zip(out.token_ids, out.logprobs)):
            assert lp.token.token_id == token and len(lp.top) == params.logprobs
            assert lp.token.logprob == pytest.approx(ref[len(prompt) - 1 + i, token].item(), abs=2e-3)


def test_overlapped_scheduling_on_the_gpu_gives_the_plain_engine_s_tokens(fp32_dir: Path) -> None:
    """async_scheduling (on by default on a GPU): decode rows read their input tokens where the step
    before sampled them, through the CUDA graphs; the outputs equal the plain engine's for greedy,
    seeded and early-stopping requests, with more requests than seats and a pool that preempts."""
    torch.backends.cuda.matmul.allow_tf32 = False
    rng = random.Random(9)
    many = [[rng.randrange(1000, 100000) for _ in range(rng.randrange(5, 300))] for _ in range(24)]
    asks = []
    for i, _ in enumerate(many):
        kind = i % 4
        if kind == 0:
            asks.append(SamplingParams(temperature=0.0, max_tokens=NEW, ignore_eos=True))
        elif kind == 1:  # stops early on some token it draws: the step after it has a row to drop
            asks.append(SamplingParams(temperature=0.0, max_tokens=NEW, stop_token_ids=tuple(range(0, 100000, 7))))
        elif kind == 2:
            asks.append(SamplingParams(temperature=0.8, top_p=0.9, seed=i, max_tokens=NEW, ignore_eos=True,
                                       logprobs=2))
        else:
            asks.append(SamplingParams(temperature=1.0, top_k=40, seed=i, max_tokens=NEW // 2, ignore_eos=True))
    outs = {}
    for overlap in (False, True):
        llm = LLM(str(fp32_dir), dtype="float32", num_blocks=96, max_model_len=1024, max_num_seqs=8,
                  async_scheduling=overlap, check_integrity=True)
        assert llm.engine.runner.graphs is not None
        fed = []
        launch = llm.engine.runner.launch

        def spy(chunks, copies, rows, feed=None, launch=launch, fed=fed):
            fed.append(len(feed.rows) if feed is not None else 0)
            return launch(chunks, copies, rows, feed=feed)

        llm.engine.runner.launch = spy
        results = llm.generate(many, asks)
        outs[overlap] = [(o.token_ids, o.finish_reason, [round(lp.token.logprob, 3) for lp in o.logprobs or []])
                         for r in results for o in r.outputs]
        assert (sum(fed) > 0) == overlap
        assert llm.engine.block_manager.stats().used == 0
        del llm
        torch.cuda.empty_cache()
    assert any(reason == "stop" for _, reason, _ in outs[True])
    assert outs[True] == outs[False]


def test_sampled_requests_compile_nothing_while_serving(bf16_dir: Path) -> None:
    """The engine's start-up compiles the sampling kernels: no request (greedy, temperature alone,
    top-p, min-p, top-k, seeded or not, a lone row or many) waits for a compile in the middle of
    serving, as the first top-p request on a fresh machine did (a second and more)."""
    from engine.runner.triton_greedy import _greedy_kernel
    from engine.runner.triton_sample import _sample_kernel

    _sample_kernel.device_caches.clear()  # forget what earlier tests compiled: this engine's start-up must
    _greedy_kernel.device_caches.clear()
    llm = LLM(str(bf16_dir), dtype="bfloat16", max_num_seqs=16, max_model_len=1024)
    variants = _sample_kernel.device_caches[torch.cuda.current_device()][0]  # Triton's compiled variants
    greedy_variants = _greedy_kernel.device_caches[torch.cuda.current_device()][0]
    compiled, greedy_compiled = len(variants), len(greedy_variants)
    assert compiled >= 1 and greedy_compiled >= 1
    llm.generate(prompts(), SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))  # greedy rows
    llm.generate([prompts()[0]], SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))
    assert len(greedy_variants) == greedy_compiled
    kinds = [SamplingParams(temperature=0.7, max_tokens=6, ignore_eos=True),
             SamplingParams(temperature=0.7, top_p=0.9, seed=3, max_tokens=6, ignore_eos=True),
             SamplingParams(temperature=1.0, min_p=0.1, max_tokens=6, ignore_eos=True),
             SamplingParams(temperature=0.7, top_k=20, top_p=0.8, max_tokens=6, ignore_eos=True),
             SamplingParams(temperature=0.7, repetition_penalty=1.2, max_tokens=6, ignore_eos=True),  # widened
             SamplingParams(temperature=0.0, presence_penalty=0.5, max_tokens=6, ignore_eos=True),
             SamplingParams(temperature=0.8, top_k=30, frequency_penalty=0.5, seed=4, max_tokens=6, ignore_eos=True)]
    for params in kinds:  # each alone (one row: its parameters a view into [1, 3]), then all at once
        llm.generate([prompts()[0]], params)
    llm.generate(prompts() * 3, [kinds[i % len(kinds)] for i in range(12)])
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    llm.generate(prompts() * 2, [greedy if i % 2 else kinds[0] for i in range(8)])  # greedy and sampled rows mixed
    assert len(variants) == compiled and len(greedy_variants) == greedy_compiled
