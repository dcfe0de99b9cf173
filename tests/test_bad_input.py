"""Every bad input through the HTTP API gets its status and a clear OpenAI-style error, and a normal
request right after it still succeeds; a full waiting queue answers 429 and nothing leaks."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from live_server import MODEL_NAME, LiveServer, start_live_server

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


def chat(content: object, **extra: object) -> dict:
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


# (name, path, body: a dict sent as JSON or raw bytes, status, words of the error message)
CASES = [
    ("empty message", CHAT, chat(""), 400, "empty"),
    ("whitespace message", CHAT, chat("  \n\t "), 400, "empty"),
    ("no messages", CHAT, {"model": MODEL_NAME, "messages": []}, 400, "empty"),
    ("empty prompt", COMPLETIONS, {"model": MODEL_NAME, "prompt": ""}, 400, "empty"),
    ("prompt too long", COMPLETIONS, {"model": MODEL_NAME, "prompt": [1] * 5000, "max_tokens": 4}, 400, "at most"),
    ("temperature < 0", CHAT, chat("hi", temperature=-0.5), 400, "temperature"),
    ("top_p > 1", CHAT, chat("hi", top_p=1.5), 400, "top_p"),
    ("max_tokens 0", CHAT, chat("hi", max_tokens=0), 400, "max_tokens"),
    ("max_tokens absurd", COMPLETIONS, {"model": MODEL_NAME, "prompt": "hi", "max_tokens": 10**9}, 400, "max_tokens"),
    ("n too large", CHAT, chat("hi", n=1000), 400, "n must be"),
    ("malformed JSON", CHAT, b'{"model": "x", "messages": [', 400, "invalid request body"),
    ("wrong type", CHAT, {"model": MODEL_NAME, "messages": "hello"}, 400, "messages"),
    ("wrong type of temperature", CHAT, chat("hi", temperature="hot"), 400, "temperature"),
    ("unknown model", CHAT, {**chat("hi"), "model": "gpt-9"}, 404, "does not exist"),
    ("invalid UTF-8", CHAT, b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "invalid request body"),
    ("lone surrogate", CHAT, b'{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, "UTF-8"),
    ("control characters", CHAT, chat("hi\x00there\x1b[2J"), 400, "control characters"),
]


@pytest.fixture(scope="module")
def live(embedded_model_dir: str):
    server = start_live_server(embedded_model_dir, num_blocks=64, max_num_seqs=2, max_waiting=2)
    yield server
    server.stop()


def post(live: LiveServer, path: str, body: dict | bytes) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(live.url + path, content=body, headers={"content-type": "application/json"}, timeout=60)
    return httpx.post(live.url + path, json=body, timeout=60)


def wait_for(condition, what, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting: {what() if callable(what) else what}"
        time.sleep(0.02)


def assert_still_serves(live: LiveServer) -> None:
    ok = post(live, CHAT, chat("Say hi.", temperature=0))
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]
    wait_for(lambda: not live.engine.block_map.stats.used, "blocks freed")


@pytest.mark.parametrize("name,path,body,status,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(live: LiveServer, name, path, body, status, words) -> None:
    response = post(live, path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"] and error["type"]
    assert_still_serves(live)


def test_a_full_queue_answers_429_then_recovers(live: LiveServer) -> None:
    """max_num_seqs=2 run, max_waiting=2 wait: the fifth request is refused at once."""
    long = {"model": MODEL_NAME, "prompt": "Tell a long story.", "max_tokens": 400, "ignore_eos": True,
            "stream": True}
    stop = threading.Event()

    def hold() -> None:
        try:
            with httpx.stream("POST", live.url + COMPLETIONS, json=long, timeout=60) as response:
                for _ in response.iter_lines():
                    if stop.is_set():
                        return
        except httpx.HTTPError:  # the server shut the stream of a client that left
            pass

    holders = [threading.Thread(target=hold) for _ in range(4)]
    scheduler = live.engine.engine.scheduler
    for k, t in enumerate(holders, start=1):  # one at a time: two arriving together may find the queue full
        t.start()
        wait_for(lambda: len(scheduler.running) + len(scheduler.waiting) == k, f"{k} requests in the engine")
    wait_for(lambda: len(scheduler.running) == 2 and len(scheduler.waiting) == 2,
             lambda: f"2 running, 2 waiting: {len(scheduler.running)}, {len(scheduler.waiting)}")
    refused = post(live, CHAT, chat("hi"))
    assert refused.status_code == 429 and "busy" in refused.json()["error"]["message"]
    assert refused.json()["error"]["type"] == "rate_limit_error"
    stop.set()  # the runners leave at their next line; then the waiting ones run and leave too
    for t in holders:
        t.join(60)
    wait_for(lambda: not live.engine.block_map.stats.used, "blocks freed", timeout=60)
    assert_still_serves(live)
