"""Resource bounds: bodies over the limit get a 413 before they are read, slow clients are cut at
the header and body deadlines (a long answer is not), connections beyond the cap get a 503, and
repeated large bad requests leave the process's memory flat."""
from __future__ import annotations

import gc
import socket
import time

import httpx
import psutil
import pytest

from live_server import LiveServer, start_live_server
from server.limits import ServerLimits

LIMITS = ServerLimits(max_body_bytes=4 * 2**20, header_timeout=1.0, body_timeout=1.0, max_connections=16)
COMPLETIONS = "/v1/completions"


@pytest.fixture(scope="module")
def live(embedded_model_dir: str):
    server = start_live_server(embedded_model_dir, num_blocks=128, limits=LIMITS)
    yield server
    server.stop()


def still_serves(live: LiveServer) -> None:
    ok = httpx.post(live.url + COMPLETIONS, json={"prompt": "Hello", "max_tokens": 2, "temperature": 0}, timeout=60)
    assert ok.status_code == 200 and ok.json()["choices"][0]["text"]


def connect(live: LiveServer) -> socket.socket:
    return socket.create_connection((live.http.host, live.http.port), timeout=10)


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closed `sock` (reading returns b'' or a reset), failing after `seconds`."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        pytest.fail(f"the connection was still open after {seconds} s")
    return time.monotonic() - start


def test_a_body_over_the_limit_is_refused_before_it_is_read(live: LiveServer) -> None:
    start = time.monotonic()
    big = b'{"prompt": "' + b"a" * (20 * 2**20) + b'"}'
    response = httpx.post(live.url + COMPLETIONS, content=big, headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 413 and "limit of 4,194,304 bytes" in response.json()["error"]["message"]
    assert time.monotonic() - start < 5
    still_serves(live)


def test_a_chunked_body_over_the_limit_is_cut_off(live: LiveServer) -> None:
    def chunks():
        yield b'{"prompt": "'
        for _ in range(6):
            yield b"a" * 2**20
        yield b'"}'

    response = httpx.post(live.url + COMPLETIONS, content=chunks(), headers={"content-type": "application/json"},
                          timeout=60)
    assert response.status_code == 413
    still_serves(live)


def test_slow_headers_are_cut_at_the_deadline(live: LiveServer) -> None:
    """A byte every 0.2 s: a deadline that restarted with each byte would never end this one."""
    sock, start = connect(live), time.monotonic()
    try:
        for byte in b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
            sock.send(bytes([byte]))
            time.sleep(0.2)
    except (BrokenPipeError, ConnectionResetError):
        pass
    closed_within(sock, 5)
    assert time.monotonic() - start < LIMITS.header_timeout + 2
    idle = connect(live)  # connects and says nothing at all
    assert closed_within(idle, 5) < 3
    still_serves(live)


def test_a_slow_body_is_cut_at_the_deadline(live: LiveServer) -> None:
    sock = connect(live)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"prompt\": ")
    assert closed_within(sock, 5) < 3
    still_serves(live)


def test_a_long_answer_outlives_the_deadlines(live: LiveServer) -> None:
    body = {"prompt": "Tell a story.", "max_tokens": 160, "ignore_eos": True, "temperature": 0, "stream": True}
    start, lines = time.monotonic(), []
    with httpx.stream("POST", live.url + COMPLETIONS, json=body, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line]
        headers = response.headers
    assert time.monotonic() - start > LIMITS.header_timeout + LIMITS.body_timeout  # outlived both
    assert headers["cache-control"] == "no-cache" and headers["x-accel-buffering"] == "no"  # proxies pass it on
    assert lines[-1] == "data: [DONE]" and len(lines) > 150


def test_connections_beyond_the_cap_get_503(live: LiveServer) -> None:
    held = [connect(live) for _ in range(LIMITS.max_connections)]
    try:
        time.sleep(0.1)
        refused = httpx.get(live.url + "/health", timeout=10)
        assert refused.status_code == 503
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(live.url + "/health", timeout=10).status_code == 200


def test_repeated_large_bad_requests_leave_memory_flat(live: LiveServer) -> None:
    """3 MB prompts, each refused (far past the context) without being tokenized."""
    body = {"prompt": "word " * 600_000, "max_tokens": 2}
    process = psutil.Process()

    def send(count: int) -> None:
        for _ in range(count):
            response = httpx.post(live.url + COMPLETIONS, json=body, timeout=60)
            assert response.status_code == 400 and "longer than the context" in response.json()["error"]["message"]

    send(5)  # allocator pools and caches settle
    gc.collect()
    before = process.memory_info().rss
    send(30)
    gc.collect()
    grown = process.memory_info().rss - before
    assert grown < 40 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB over 30 requests of 3 MB"
    still_serves(live)


def test_a_slow_first_token_gets_headers_and_keep_alive_comments(live: LiveServer,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream whose first token waits (a long prefill here) sends its headers once the engine has
    had time to refuse it, then a keep-alive comment every KEEP_ALIVE_S until the first token, so
    that no proxy times it out; the tokens and [DONE] follow as ever."""
    import server.openai_api as api

    monkeypatch.setattr(api, "ACCEPT_WAIT_S", 0.02)
    monkeypatch.setattr(api, "KEEP_ALIVE_S", 0.05)
    prompt = " ".join(f"word{k}" for k in range(450))  # 1,700 tokens, prefilled 128 a step on a CPU
    body = {"prompt": prompt, "max_tokens": 3, "temperature": 0, "stream": True}
    start = time.monotonic()
    with httpx.stream("POST", live.url + COMPLETIONS, json=body, timeout=60) as response:
        headers_after = time.monotonic() - start
        lines = [line for line in response.iter_lines() if line]
    assert any(line.startswith("data: ") for line in lines), (response.status_code, lines[:5])
    first_data = lines.index(next(line for line in lines if line.startswith("data: ")))
    assert response.status_code == 200 and headers_after < 1.0
    assert first_data >= 1 and all(line == ": keep-alive" for line in lines[:first_data])
    assert lines[-1] == "data: [DONE]"
