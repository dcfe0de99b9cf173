"""The whole app on a GPU, started as a user starts it, and driven as users drive it.

    python benchmarks/gpu_app_smoke.py [--model-dir /tmp/qwen3-0.6b-random] [--users 32]

On a random-weight Qwen3-0.6B-shaped model (benchmarks/synthetic_model.py; the embedded GGUF is too
large to carry to the GPU machine):
1. `python app.py --model DIR` as a subprocess, until /health answers;
2. one chat through the Gradio UI (gradio_client, api /chat) and one streamed OpenAI chat completion;
3. N users at once through the OpenAI API (prompts of 100-1,024 random words, 256 new tokens each,
   streamed): TTFT and inter-token latency as each client sees them, and the aggregate output tok/s;
4. /metrics while they run and after;
5. SIGTERM: the app must exit within 30 s, status 0.
(The dashboard, drawn in the browser, has its own benchmark: benchmarks/browser_budget.py.)
Prints a table; exits 1 if any check failed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.synthetic_model import make_model_dir  # noqa: E402

CHECKS: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    CHECKS.append((name, bool(ok), detail))
    print(f"[{'ok' if ok else 'FAIL'}] {name} {detail}", flush=True)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 300.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode} before serving")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("app.py did not become healthy")


def stream_completion(url: str, model: str, prompt: str, max_tokens: int, out: list[dict]) -> None:
    """One streamed /v1/completions request; appends {ttft, gaps, tokens} as this client saw them."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True}
    start = time.perf_counter()
    stamps: list[float] = []
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0].get("text"):
                stamps.append(time.perf_counter())
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    out.append({"ttft": stamps[0] - start if stamps else float("nan"), "gaps": gaps, "chunks": len(stamps)})


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


def users_through_api(url: str, model: str, users: int, new_tokens: int) -> dict[str, float]:
    rng = random.Random(0)
    prompts = [" ".join(f"t{rng.randrange(100, 150000)}" for _ in range(rng.randint(100, 1024))) for _ in range(users)]
    results: list[dict] = []
    threads = [threading.Thread(target=stream_completion, args=(url, model, p, new_tokens, results)) for p in prompts]
    start = time.perf_counter()
    for t in threads:
        t.start()
    running = 0.0
    while any(t.is_alive() for t in threads):
        running = max(running, metric(httpx.get(f"{url}/metrics", timeout=10).text, "pagedchat_num_requests_running"))
        time.sleep(0.1)
    wall = time.perf_counter() - start
    ttfts = sorted(r["ttft"] for r in results)
    gaps = sorted(g for r in results for g in r["gaps"])
    check(f"{users} API users all streamed {new_tokens} tokens", len(results) == users and
          all(r["chunks"] >= new_tokens - 1 for r in results), f"({len(results)} finished)")
    check("/metrics saw them running", running > 0, f"(at most {running:.0f} running at once)")
    return {"tok_s": sum(r["chunks"] for r in results) / wall, "ttft_p50": statistics.median(ttfts),
            "ttft_max": ttfts[-1], "itl_p50": gaps[len(gaps) // 2], "itl_p99": gaps[int(len(gaps) * 0.99)],
            "wall": wall}


def app_subprocess(model_dir: Path, users: int, new_tokens: int, port: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}"
    log = open(os.environ.get("OUT", "/tmp") + "/app.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py", "--model", str(model_dir), "--port", str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        startup = wait_healthy(url, proc)
        check("python app.py serves /health", True, f"after {startup:.0f} s")
        from gradio_client import Client

        client = Client(url, verbose=False)
        answer = client.predict("t5 t6 t7 hello", "t1", 0.0, 1.0, 16, api_name="/chat")
        check("a chat through the Gradio UI", isinstance(answer, str) and len(answer.split()) >= 8, repr(answer)[:60])
        client.close()
        chat = []
        model = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
        body = {"model": model, "messages": [{"role": "user", "content": "t9 t10 t11"}], "max_tokens": 8,
                "stream": True, "temperature": 0}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
            chat = [line for line in r.iter_lines() if line.startswith("data: ")]
        check("a streamed OpenAI chat completion", r.status_code == 200 and chat[-1] == "data: [DONE]", "")
        figures = users_through_api(url, model, users, new_tokens)
        after = httpx.get(f"{url}/metrics", timeout=10).text
        check("every KV block free afterwards", metric(after, "pagedchat_kv_cache_usage_ratio") == 0.0,
              f"kv usage {metric(after, 'pagedchat_kv_cache_usage_ratio')}")
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        # 0, or uvicorn re-raising the SIGTERM it caught once it has shut down (-15)
        check("SIGTERM: app.py exits cleanly", code in (0, -signal.SIGTERM), f"status {code} in "
              f"{time.monotonic() - start:.1f} s")
        return figures
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="/tmp/qwen3-0.6b-random")
    ap.add_argument("--users", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--port", type=int, default=7861)
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of this script on a tiny model")
    args = ap.parse_args()
    import torch

    tiny = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                intermediate_size=128, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=4096)
    model_dir = make_model_dir(args.model_dir, shape=None if args.device == "cuda" else tiny)
    f = app_subprocess(model_dir, args.users, args.new_tokens, args.port)
    print()
    hardware = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU (dry run, tiny model)"
    print(f"hardware: {hardware}, torch {torch.__version__}")
    print(f"model: random-weight Qwen3-0.6B shape, bf16, `python app.py --model {model_dir}`")
    print(f"workload: {args.users} users at once over HTTP (streamed /v1/completions), prompts 100-1,024 tokens, "
          f"{args.new_tokens} new tokens each, greedy, EOS ignored")
    print()
    print("| output tok/s (all users) | TTFT p50 | TTFT max | inter-token p50 | inter-token p99 |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    print(f"| {f['tok_s']:,.0f} | {f['ttft_p50'] * 1e3:.0f} ms | {f['ttft_max'] * 1e3:.0f} ms | "
          f"{f['itl_p50'] * 1e3:.1f} ms | {f['itl_p99'] * 1e3:.1f} ms |")
    failed = [name for name, ok, _ in CHECKS if not ok]
    print(f"\n{len(CHECKS) - len(failed)}/{len(CHECKS)} checks passed" + (f"; FAILED: {failed}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
