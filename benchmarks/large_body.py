"""How much a large request body delays everyone else: a small chat request's latency while another
client posts large bodies back to back, against the same small request with nobody else (the peer,
in the same run).

`python app.py` on the embedded model is started as a subprocess on a free port (defaults: 2 MiB
body limit, tokenization off the engine thread). A foreground client sends small streamed chat
requests one after another (greedy, 16 new tokens) and times the first token and the whole answer;
a background client meanwhile posts, back to back, one of:
- 600 KB of chat text: tokenized (in a worker thread) and refused as longer than the context;
- 1.9 MB of chat text: refused as far past the context before it is scanned or tokenized;
- 20 MB: refused with 413 from its Content-Length, never read.

    python benchmarks/large_body.py [--requests 12]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.cpu_throughput import cpu_name  # noqa: E402
from server.uvicorn_thread import free_port  # noqa: E402

LARGE = {"600 KB (tokenized, then refused)": 600_000, "1.9 MB (refused untokenized)": 1_900_000,
         "20 MB (413 from Content-Length)": 20_000_000}


def start_app(port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the app did not start:\n{log.read_text()}")


def small_request(url: str) -> tuple[float, float]:
    """(time to first token, whole answer) in seconds, of one small streamed chat request."""
    body = {"messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 16, "temperature": 0,
            "ignore_eos": True, "stream": True}
    start, first = time.perf_counter(), None
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if first is None and line.startswith("data: {") and '"content": ""' not in line:
                first = time.perf_counter()
    return (first or time.perf_counter()) - start, time.perf_counter() - start


def flood(url: str, size: int, stop: threading.Event, statuses: list[int]) -> None:
    """Post bodies of `size` bytes back to back until `stop`."""
    text = "word " * (size // 5)
    raw = json.dumps({"messages": [{"role": "user", "content": text}], "max_tokens": 4}).encode()
    with httpx.Client(timeout=300) as client:
        while not stop.is_set():
            try:
                statuses.append(client.post(url + "/v1/chat/completions", content=raw,
                                            headers={"content-type": "application/json"}).status_code)
            except httpx.HTTPError:  # the server may close a 413's connection early
                statuses.append(413)


def measure(url: str, requests: int, size: int | None) -> tuple[list[tuple[float, float]], list[int]]:
    stop, statuses = threading.Event(), []
    thread = threading.Thread(target=flood, args=(url, size, stop, statuses)) if size else None
    if thread:
        thread.start()
        time.sleep(1.0)  # the flood is under way
    times = [small_request(url) for _ in range(requests)]
    stop.set()
    if thread:
        thread.join()
    return times, statuses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--requests", type=int, default=12, help="small requests per scenario")
    args = p.parse_args()
    port, log = free_port(), Path("/tmp/pagedchat-large-body.log")
    proc = start_app(port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(3):
            small_request(url)  # warm-up
        rows = [("nobody else (the peer)", *measure(url, args.requests, None))]
        rows += [(name, *measure(url, args.requests, size)) for name, size in LARGE.items()]
        rows.append(("nobody else, again", *measure(url, args.requests, None)))
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"\n{cpu_name()}, 2 cores; SmolLM2-135M-Instruct (embedded), fp32; `python app.py` defaults")
    print(f"small request: streamed chat, 16 new tokens, greedy; {args.requests} in a row per scenario\n")
    print("| meanwhile, another client posts | bodies sent (statuses) | TTFT p50 | TTFT max | answer p50 | answer max |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, times, statuses in rows:
        ttft, total = [t for t, _ in times], [t for _, t in times]
        seen = ", ".join(f"{s}: {statuses.count(s)}" for s in sorted(set(statuses))) or "-"
        print(f"| {name} | {len(statuses)} ({seen}) | {statistics.median(ttft) * 1e3:.0f} ms | {max(ttft) * 1e3:.0f} ms "
              f"| {statistics.median(total) * 1e3:.0f} ms | {max(total) * 1e3:.0f} ms |")


if __name__ == "__main__":
    main()
