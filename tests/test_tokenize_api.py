"""vLLM's /tokenize, /detokenize and /version: the ids a request would get, back to text."""
from __future__ import annotations

import httpx
import pytest

from live_server import MODEL_NAME, LiveServer, start_live_server


@pytest.fixture(scope="module")
def live(embedded_model_dir: str):
    server = start_live_server(embedded_model_dir, num_blocks=64)
    yield server
    server.stop()


def test_tokenize_gives_the_ids_a_request_gets_and_detokenize_reverses_them(live: LiveServer) -> None:
    raw = httpx.post(live.url + "/tokenize", json={"model": MODEL_NAME, "prompt": "Hello, paged world!"}).json()
    assert raw["count"] == len(raw["tokens"]) > 0 and raw["max_model_len"] == live.engine.info.max_model_len
    assert raw["tokens"] == live.engine.tokenize("Hello, paged world!")
    text = httpx.post(live.url + "/detokenize", json={"tokens": raw["tokens"]}).json()["prompt"]
    assert text == "Hello, paged world!"
    messages = [{"role": "user", "content": "Hi!"}]
    chat = httpx.post(live.url + "/tokenize", json={"messages": messages}).json()
    completion = httpx.post(live.url + "/v1/chat/completions",
                            json={"messages": messages, "max_tokens": 1, "temperature": 0}).json()
    assert chat["count"] == completion["usage"]["prompt_tokens"]  # the template, ready for the answer
    assert httpx.get(live.url + "/version").json()["version"]


@pytest.mark.parametrize("path, body, needle", [
    ("/tokenize", {}, "either a prompt or messages"),
    ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "either"),
    ("/tokenize", {"prompt": "x", "add_special_tokens": False}, "add_special_tokens"),
    ("/tokenize", {"prompt": "bad\x00text"}, "control characters"),
    ("/tokenize", {"prompt": [1, 2, 10**9]}, "out of vocabulary"),
    ("/tokenize", {"prompt": "x" * 3_000_000}, ""),  # over the body limit: 413
    ("/detokenize", {"tokens": [-1]}, "out of vocabulary"),
    ("/detokenize", {"tokens": "12"}, "tokens"),
    ("/tokenize", {"model": "gpt-9", "prompt": "x"}, "does not exist"),
])
def test_bad_input_is_refused_in_openai_shape(live: LiveServer, path: str, body: dict, needle: str) -> None:
    response = httpx.post(live.url + path, json=body, timeout=30)
    assert response.status_code in (400, 404, 413)
    assert needle in response.json()["error"]["message"]
    assert httpx.post(live.url + "/tokenize", json={"prompt": "still here"}).status_code == 200
