"""W256 in one checkout, for an A/B of two commits on one GPU machine: greedy, temperature 0.7 with
top-p 0.9 seeded, greedy again (gpu_w256.py's workload, each run with an empty prefix cache), on a
model folder both checkouts share. Run it in each checkout in turn, twice or more: the lent
machines drift over minutes.

    git worktree add /tmp/base <commit>
    python benchmarks/gpu_w256.py --hf none                    # once: makes /tmp/qwen3-0.6b-random-byte-level
    python benchmarks/w256_ab.py /tmp/base /tmp/qwen3-0.6b-random-byte-level
    python benchmarks/w256_ab.py . /tmp/qwen3-0.6b-random-byte-level
"""
from __future__ import annotations

import gc
import sys
import time

tree, model_dir = sys.argv[1], sys.argv[2]
sys.path.insert(0, tree)  # the engine and workload of the checkout under test

import torch  # noqa: E402

from benchmarks.gpu_w256 import workload  # noqa: E402
from benchmarks.synthetic_model import QWEN3_0_6B  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402

llm = LLM(model_dir, dtype="bfloat16", max_num_seqs=256, max_num_batched_tokens=8192, max_model_len=2048)
prompts = workload(256, QWEN3_0_6B["vocab_size"])
llm.generate(prompts[:8], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
gc.collect()
gc.freeze()  # as app.py and gpu_w256.py do once started (a checkout whose feed is not yet cheap to collect still pays)
results: dict[str, list[float]] = {}
for name, params in [("greedy", SamplingParams(temperature=0.0, max_tokens=512, ignore_eos=True)),
                     ("top-p seeded", SamplingParams(temperature=0.7, top_p=0.9, seed=1, max_tokens=512,
                                                     ignore_eos=True)),
                     ("greedy", SamplingParams(temperature=0.0, max_tokens=512, ignore_eos=True))]:
    llm.reset_prefix_cache()
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = llm.generate(prompts, params)
    tok_s = sum(len(o.outputs[0].token_ids) for o in out) / (time.perf_counter() - start)
    results.setdefault(name, []).append(tok_s)
print(tree, "W256 tok/s:", {k: [f"{x:,.0f}" for x in v] for k, v in results.items()})
