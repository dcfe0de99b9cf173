"""How long one long prompt holds back another user: a short streamed completion sent 0.5 s after a
long prompt, under each setting of the scheduler's prefill cap (`long_prefill_tokens`).

The app (engine, HTTP API) runs in this process on the embedded model, on the CPU; one client posts
a prompt of --tokens random token ids (1 new token), the other streams a 40-token greedy completion.

    python benchmarks/long_prompt.py [--tokens 4000]
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import build_app  # noqa: E402
from benchmarks.cpu_throughput import cpu_name  # noqa: E402
from engine.core.config import CacheConfig, EngineConfig, SchedulerConfig  # noqa: E402
from engine.runner.model_loader import resolve_model  # noqa: E402
from server.uvicorn_thread import ServerThread  # noqa: E402

SETTINGS = {"0 (no cap)": 0, "512": 512, "default (128 on a CPU)": None}


def run(model_dir: str, cap: int | None, tokens: int) -> tuple[float, float, float, float]:
    """(victim TTFT, victim's longest gap, victim's whole answer, the long prompt's own time), seconds."""
    config = EngineConfig(model=model_dir, device="cpu", cache=CacheConfig(num_blocks=1024),
                          scheduler=SchedulerConfig(long_prefill_tokens=cap))
    app, engine, _ = build_app(config, "m")
    http = ServerThread(app).start()
    try:
        rng = random.Random(0)
        attack = {"prompt": [rng.randrange(100, 49000) for _ in range(tokens)], "max_tokens": 1}
        took: list[float] = []

        def attacker() -> None:
            start = time.perf_counter()
            httpx.post(http.url + "/v1/completions", json=attack, timeout=900)
            took.append(time.perf_counter() - start)

        thread = threading.Thread(target=attacker)
        thread.start()
        time.sleep(0.5)
        body = {"prompt": "Tell a story.", "max_tokens": 40, "temperature": 0, "ignore_eos": True, "stream": True}
        start = last = time.perf_counter()
        gaps = []
        with httpx.stream("POST", http.url + "/v1/completions", json=body, timeout=900) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now
        total = time.perf_counter() - start
        thread.join()
        return gaps[0], max(gaps[1:]), total, took[0]
    finally:
        http.stop()
        engine.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tokens", type=int, default=4000, help="the long prompt's length")
    args = p.parse_args()
    cache = os.environ.get("PAGEDCHAT_CACHE", str(Path.home() / ".cache" / "pagedchat"))
    model_dir = resolve_model("embedded", cache_dir=cache)
    rows = [(name, *run(model_dir, cap, args.tokens)) for name, cap in SETTINGS.items()]
    print(f"\n{cpu_name()}, 2 cores; SmolLM2-135M-Instruct (embedded), fp32; step budget 2048 tokens")
    print(f"a {args.tokens:,}-token prompt, then 0.5 s later a streamed 40-token greedy completion\n")
    print("| long_prefill_tokens | victim's TTFT | victim's longest gap | victim's answer | the long prompt's time |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, ttft, gap, total, own in rows:
        print(f"| {name} | {ttft:.1f} s | {gap:.1f} s | {total:.1f} s | {own:.1f} s |")


if __name__ == "__main__":
    main()
