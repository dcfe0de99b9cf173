"""GPU throughput and latency: our engine against HF transformers on the same GPU, same weights.

W256: a random-weight model of Qwen3-0.6B's shape, bf16; 256 requests, prompt lengths uniform in
[100, 1024] (random token ids, seed 0), 512 new tokens each, EOS ignored, greedy, all at once.
Also: single-stream decode (128-token prompt, 256 new tokens), the TTFT of a lone 1,024-token
prompt (the median of 31, after the other workloads), and nano-vllm's own workload (its bench.py:
256 requests, prompt and output lengths each uniform in [100, 1024], token ids below 10,000,
temperature 0.6, EOS ignored, seed 0). The memory roofline (weights + each step's KV reads at the
measured copy bandwidth, plus the prefill's matmul work at the measured bf16 rate) is printed
beside them.

    python benchmarks/gpu_w256.py [--hf none|padded|all] [--hf-requests 64]
"""
from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.synthetic_model import QWEN3_0_6B, make_model_dir  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402


TTFT_TRIES = 31  # lone prompts, one after another: the host's speed drifts over seconds on the lent machines


def workload(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab - 2) for _ in range(rng.randint(100, 1024))] for _ in range(n)]


def nano_workload(n: int = 256, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """nano-vllm's bench.py, drawn in its order from one seeded generator: the prompts, then each
    request's output length."""
    rng = random.Random(seed)
    prompts = [[rng.randint(0, 10000) for _ in range(rng.randint(100, 1024))] for _ in range(n)]
    return prompts, [rng.randint(100, 1024) for _ in range(n)]


def copy_bandwidth() -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    a = torch.empty(2 * 2**30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    torch.cuda.synchronize()
    return 2 * a.numel() * 10 / (time.perf_counter() - start)


def matmul_rate() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    return 2 * 8192**3 * 10 / (time.perf_counter() - start)


def roofline(prompts: list[list[int]], new: int | list[int], weight_bytes: int, kv_per_token: int,
             params: int) -> float:
    """Output tok/s if every decode step only moved weights + KV and prefill only did its matmuls
    (all requests at once: the weights are read once a step for as many steps as the longest output)."""
    news = new if isinstance(new, list) else [new] * len(prompts)
    kv = sum(len(p) * n + n * (n - 1) // 2 for p, n in zip(prompts, news)) * kv_per_token
    decode = (max(news) * weight_bytes + kv) / copy_bandwidth()
    prefill = 2 * params * sum(len(p) for p in prompts) / matmul_rate()
    return sum(news) / (decode + prefill)


def ours(llm: LLM, prompts: list[list[int]], new: int) -> dict[str, float]:
    engine = llm.engine
    greedy = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
    llm.generate(prompts[:8], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))  # warm-up
    gc.collect()
    gc.freeze()  # as app.py does once started: the collector walks only what serving makes
    llm.reset_prefix_cache()  # every workload starts cold: its prompts prefilled, none found in the cache
    torch.cuda.synchronize()
    start = time.perf_counter()
    results = llm.generate(prompts, greedy)
    w256 = sum(len(r.outputs[0].token_ids) for r in results) / (time.perf_counter() - start)
    out = {"w256": w256}
    if engine.async_scheduling:  # the same run without overlapped scheduling, for its gain
        engine.async_scheduling = False
        llm.reset_prefix_cache()
        torch.cuda.synchronize()
        start = time.perf_counter()
        results = llm.generate(prompts, greedy)
        out["w256_sync"] = sum(len(r.outputs[0].token_ids) for r in results) / (time.perf_counter() - start)
        engine.add_request("single-sync", prompts[0][:128], SamplingParams(temperature=0.0, max_tokens=256,
                                                                           ignore_eos=True))
        stamps = []
        while engine.has_unfinished_requests():
            if engine.step().outputs:
                stamps.append(time.perf_counter())
        out["single_sync"] = (len(stamps) - 1) / (stamps[-1] - stamps[0])
        engine.async_scheduling = True
    # sampled as a chat would: one SamplingParams per request (seeded ones each their own seed)
    for name, make in (("w256_top_p_seeded", lambda i: SamplingParams(temperature=0.7, top_p=0.9, seed=i,
                                                                       max_tokens=new, ignore_eos=True)),
                       ("w256_top_k", lambda i: SamplingParams(temperature=0.7, top_k=50, max_tokens=new,
                                                               ignore_eos=True))):
        llm.reset_prefix_cache()  # the same prompts as W256's: found cached, their prefill would be skipped
        torch.cuda.synchronize()
        start = time.perf_counter()
        results = llm.generate(prompts, [make(i) for i in range(len(prompts))])
        out[name] = sum(len(r.outputs[0].token_ids) for r in results) / (time.perf_counter() - start)
    nano_prompts, nano_new = nano_workload()
    llm.reset_prefix_cache()
    torch.cuda.synchronize()
    start = time.perf_counter()
    results = llm.generate(nano_prompts, [SamplingParams(temperature=0.6, max_tokens=n, ignore_eos=True)
                                          for n in nano_new])
    out["nano"] = sum(len(r.outputs[0].token_ids) for r in results) / (time.perf_counter() - start)
    engine.add_request("single", prompts[0][:128], SamplingParams(temperature=0.0, max_tokens=256, ignore_eos=True))
    stamps = []
    while engine.has_unfinished_requests():
        if engine.step().outputs:
            stamps.append(time.perf_counter())
    out["single"] = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    lone = max(prompts, key=len)[:1024]
    ttfts = []
    vocab = engine.vocab_size
    for i in range(1, TTFT_TRIES + 1):  # shifted ids: no prompt is in the prefix cache (i = 0 is W256's own)
        shifted = [(t + i) % vocab for t in lone]  # the request's ids and parameters exist before it arrives
        params = SamplingParams(temperature=0.0, max_tokens=1)
        start = time.perf_counter()
        engine.add_request(f"ttft{i}", shifted, params)
        while engine.has_unfinished_requests():
            engine.step()
        ttfts.append(time.perf_counter() - start)
    ttfts.sort()
    out["ttft_ms"], out["ttft_range"] = ttfts[len(ttfts) // 2] * 1e3, (ttfts[0] * 1e3, ttfts[-1] * 1e3)
    return out


def feed_on_off(llm: LLM, prompts: list[list[int]], new: int, rounds: int) -> list[tuple[float, float]]:
    """W256 tok/s with the event feed off, then on, for each round (back to back, so drift cancels)."""
    greedy = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
    pairs = []
    for _ in range(rounds):
        pair = []
        for on in (False, True):
            llm.engine.record_events(on)
            llm.reset_prefix_cache()
            torch.cuda.synchronize()
            start = time.perf_counter()
            results = llm.generate(prompts, greedy)
            pair.append(sum(len(r.outputs[0].token_ids) for r in results) / (time.perf_counter() - start))
        pairs.append((pair[0], pair[1]))
    llm.engine.record_events(True)
    return pairs


def hf(model_dir: Path, prompts: list[list[int]], new: int, which: str, hf_requests: int) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map="cuda").eval()
    out: dict[str, float] = {}
    kw = dict(do_sample=False, max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
    with torch.inference_mode():
        one = torch.tensor([prompts[0][:128]], device="cuda")
        model.generate(one, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})
        start = time.perf_counter()
        model.generate(one, **{**kw, "max_new_tokens": 256, "min_new_tokens": 256})
        out["single"] = 256 / (time.perf_counter() - start)
        subset = prompts[:hf_requests]
        start, total = time.perf_counter(), 0
        for i in range(0, len(subset), 64):
            batch = subset[i:i + 64]
            width = max(map(len, batch))
            ids = torch.tensor([[0] * (width - len(p)) + p for p in batch], device="cuda")
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device="cuda")
            gen = model.generate(ids, attention_mask=mask, **kw)
            total += (gen.shape[1] - width) * len(batch)
        out["padded64"] = total / (time.perf_counter() - start)
    if which == "all":
        # outside inference_mode: generate_batch steps on its own thread, where tensors made in
        # inference mode cannot be updated in place
        config = GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=-1)
        try:
            with torch.no_grad():
                start = time.perf_counter()
                res = model.generate_batch(inputs=subset, generation_config=config)
            total = sum(len(r.generated_tokens) for r in res.values())
            out["generate_batch"] = total / (time.perf_counter() - start)
        except Exception as err:  # noqa: BLE001 - report, do not die
            print(f"generate_batch failed: {err!r}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=None, help="default /tmp/qwen3-0.6b-random-TOKENIZER")
    ap.add_argument("--tokenizer", choices=["byte-level", "word"], default="byte-level",
                    help="the synthetic tokenizer: byte-level as Qwen3's own (default), or word-level")
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--hf", choices=["none", "padded", "all"], default="padded")
    ap.add_argument("--hf-requests", type=int, default=64, help="HF runs on the first N requests (a multiple of 64)")
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--feed-ab", type=int, default=0, metavar="ROUNDS",
                    help="also time W256 with the event feed off and on, taking turns for ROUNDS rounds")
    args = ap.parse_args()
    model_dir = make_model_dir(args.model_dir or f"/tmp/qwen3-0.6b-random-{args.tokenizer}", tokenizer=args.tokenizer)
    prompts = workload(args.requests, QWEN3_0_6B["vocab_size"])
    llm = LLM(str(model_dir), dtype="bfloat16", max_num_seqs=args.requests, max_num_batched_tokens=8192,
              max_model_len=2048, enforce_eager=args.enforce_eager)
    engine = llm.engine
    mc = engine.model_config
    params = sum(p.numel() for p in engine.runner.model.parameters())
    ceiling = roofline(prompts, args.new_tokens, params * 2, mc.kv_bytes_per_token(2), params)
    nano_ceiling = roofline(*nano_workload(), params * 2, mc.kv_bytes_per_token(2), params)
    mine = ours(llm, prompts, args.new_tokens)
    feed_ab = feed_on_off(llm, prompts, args.new_tokens, args.feed_ab)
    del llm, engine
    torch.cuda.empty_cache()
    theirs = hf(model_dir, prompts, args.new_tokens, args.hf, args.hf_requests) if args.hf != "none" else {}
    import transformers

    na = "n/a"
    print(f"hardware: {torch.cuda.get_device_name()}, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"model: random-weight Qwen3-0.6B shape ({params / 1e6:.0f}M parameters), bf16; "
          f"CUDA graphs {'off' if args.enforce_eager else 'on'}; synthetic {args.tokenizer} tokenizer")
    print(f"workload W{args.requests}: {args.requests} requests, prompts 100-1024 tokens (seed 0), "
          f"{args.new_tokens} new tokens, EOS ignored, greedy, all at once; HF on the first {args.hf_requests}")
    print()
    print("| | W256 output tok/s | single-stream decode tok/s | TTFT, lone 1,024-token prompt |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| memory roofline | {ceiling:,.0f} | | |")
    low, high = mine["ttft_range"]
    print(f"| PagedChat | {mine['w256']:,.0f} | {mine['single']:,.0f} | {mine['ttft_ms']:.1f} ms "
          f"(median of {TTFT_TRIES}; {low:.1f}-{high:.1f}) |")
    if "w256_sync" in mine:
        print(f"| PagedChat without overlapped scheduling | {mine['w256_sync']:,.0f} | {mine['single_sync']:,.0f} | |")
    print(f"| PagedChat, temperature 0.7, top-p 0.9, seeded | {mine['w256_top_p_seeded']:,.0f} | | |")
    print(f"| PagedChat, temperature 0.7, top-k 50 | {mine['w256_top_k']:,.0f} | | |")
    print(f"| PagedChat, nano-vllm's workload (prompts and outputs 100-1024, temperature 0.6) | {mine['nano']:,.0f} "
          f"(roofline {nano_ceiling:,.0f}) | | |")
    for k, (off, on) in enumerate(feed_ab, start=1):
        print(f"| PagedChat, event feed off / on, round {k} | {off:,.0f} / {on:,.0f} ({on / off - 1:+.1%}) | | |")
    if theirs:
        gb = theirs.get("generate_batch")
        print(f"| HF generate, padded batches of 64 | {theirs['padded64']:,.0f} | {theirs['single']:,.1f} | |")
        print(f"| HF generate_batch (continuous batching) | {f'{gb:,.0f}' if gb else na} | | |")
        print(f"| PagedChat / HF padded | {mine['w256'] / theirs['padded64']:.1f}x | "
              f"{mine['single'] / theirs['single']:.1f}x | |")


if __name__ == "__main__":
    main()
