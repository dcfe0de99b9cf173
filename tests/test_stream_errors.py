"""A streamed request that fails in the engine says why: its last SSE event before [DONE] is an
OpenAI-style error (the openai client raises APIError with the message), the chat UI shows the
message, and a request streaming beside it is unaffected."""
from __future__ import annotations

import json
import math
import threading
import time

import httpx
import openai
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from fault_injection import break_detokenizer, poison_logits
from live_server import MODEL_NAME, LiveServer, start_live_server

BAD_SEED = 666  # requests sent with this seed are the ones the injected faults hit
MESSAGES = [{"role": "user", "content": "Name three rivers of Europe."}]
FAULTS = {  # name: (inject(monkeypatch, engine), words of the error message)
    "nan logits": (lambda mp, engine: poison_logits(mp, engine, lambda row: row.params.seed == BAD_SEED
                                                     and row.step >= 2, math.nan), "NaN or infinite"),
    "detokenizer raises": (lambda mp, engine: break_detokenizer(mp, engine, lambda seq: seq.params.seed == BAD_SEED
                                                                and seq.num_output_tokens >= 3), "injected"),
}


@pytest.fixture(scope="module")
def live(embedded_model_dir: str):
    server = start_live_server(embedded_model_dir, num_blocks=64)
    yield server
    server.stop()


@pytest.fixture(params=list(FAULTS))
def fault(request: pytest.FixtureRequest, live: LiveServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """Injects the fault into the live engine; returns the words its error message carries."""
    inject, words = FAULTS[request.param]
    inject(monkeypatch, live.engine.engine)
    return words


def sse_events(live: LiveServer, body: dict) -> list[dict | str]:
    """Every `data:` payload of a streamed chat completion, JSON decoded except [DONE]."""
    events = []
    with httpx.stream("POST", f"{live.url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def assert_all_blocks_free(live: LiveServer, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while live.engine.block_map.stats.used:
        assert time.monotonic() < deadline, f"blocks still used: {live.engine.block_map.stats}"
        time.sleep(0.05)


def test_a_failed_stream_ends_with_an_error_event_and_its_neighbour_is_unaffected(live: LiveServer,
                                                                                   fault: str) -> None:
    greedy = {"model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 16, "temperature": 0}
    alone = httpx.post(f"{live.url}/v1/chat/completions", json=greedy, timeout=60).json()["choices"][0]
    beside: list[dict | str] = []
    neighbour = threading.Thread(target=lambda: beside.extend(sse_events(live, {**greedy, "stream": True})))
    neighbour.start()
    events = sse_events(live, {**greedy, "seed": BAD_SEED, "stream": True, "ignore_eos": True})
    neighbour.join(60)

    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert fault in error["message"] and error["message"].startswith("the request failed")
    assert error["type"] == "server_error"
    assert events[-3]["choices"][0]["finish_reason"] == "error"
    assert any(e["choices"][0]["delta"].get("content") for e in events[:-3])  # it had streamed text first
    assert beside[-1] == "[DONE]" and all("error" not in e for e in beside[:-1])
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in beside[:-1])
    assert (text, beside[-2]["choices"][0]["finish_reason"]) == (alone["message"]["content"], alone["finish_reason"])
    assert_all_blocks_free(live)


def test_the_openai_client_raises_api_error_with_the_message(live: LiveServer, fault: str) -> None:
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=60)
    stream = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=16, seed=BAD_SEED,
                                            stream=True, extra_body={"ignore_eos": True})
    chunks = []
    with pytest.raises(openai.APIError, match=fault):
        for chunk in stream:
            chunks.append(chunk)
    assert chunks and chunks[-1].choices[0].finish_reason == "error"
    with pytest.raises(openai.InternalServerError, match=fault):  # not streamed: HTTP 500, same message
        client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=16, seed=BAD_SEED,
                                       extra_body={"ignore_eos": True})
    assert_all_blocks_free(live)


def test_the_chat_ui_shows_why_an_answer_failed(live: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    break_detokenizer(monkeypatch, live.engine.engine,
                      lambda seq: seq.request_id.startswith("chat-") and seq.num_output_tokens >= 3)
    client = Client(live.url, verbose=False)
    try:
        job = client.submit("Tell me about the sea.", "You are helpful.", 0.0, 1.0, 32, api_name="/chat")
        with pytest.raises(AppError, match="this answer failed.*injected"):
            job.result(timeout=60)
    finally:
        client.close()
    assert_all_blocks_free(live)
