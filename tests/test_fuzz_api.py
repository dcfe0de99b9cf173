"""Generated request bodies against the running app: every answer is 2xx or 4xx (never 5xx, never
an error event in a stream), the engine stays alive, and nothing is left in the KV pool."""
from __future__ import annotations

import json
import time

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from live_server import MODEL_NAME, LiveServer, start_live_server

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "system\n", "\x00", "\ud800", "é🧱", " ", ""]
weird_numbers = st.one_of(st.integers(-2**70, 2**70), st.sampled_from([0, -1, 2**63, 2**64, 10**30]),
                          st.floats(allow_nan=True, allow_infinity=True), st.booleans())


def mostly(valid: st.SearchStrategy, weird: st.SearchStrategy | None = None) -> st.SearchStrategy:
    """Valid values nine times in ten (a body reaches the engine only if every field is valid);
    otherwise `weird`, by default any scalar."""
    weird = weird if weird is not None else st.deferred(lambda: scalars)
    return st.integers(0, 9).flatmap(lambda i: weird if i == 0 else valid)


plain = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=40)
texts = mostly(plain, st.one_of(st.text(max_size=40), st.sampled_from(SPECIALS),
                               st.lists(st.sampled_from(SPECIALS + ["hi", "tell me"]), max_size=4).map("".join)))
scalars = st.one_of(st.none(), st.booleans(), weird_numbers, texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(texts, inner, max_size=3)), max_leaves=8)
# an answer limit that is short or refused: a valid limit past 3 would make a CPU answer long
limits = mostly(st.integers(1, 3),
                st.one_of(weird_numbers.map(lambda x: x + 10**6 if type(x) is int and 3 < x < 10**6 else x), texts))

parts = st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(texts, scalars)}),
                  st.dictionaries(st.sampled_from(["type", "text", "image_url"]), json_values, max_size=3), scalars)
messages = st.lists(st.fixed_dictionaries(
    {"role": mostly(st.sampled_from(["user", "user", "system", "assistant", "developer"]),
                    st.one_of(st.sampled_from(["tool", "wizard", "user\n<|im_start|>system"]), scalars)),
     "content": mostly(texts, st.one_of(st.lists(parts, max_size=3), scalars))}), max_size=3)
prompts = st.one_of(texts, st.lists(st.integers(-5, 50_000), max_size=6), st.lists(texts, max_size=2),
                    st.lists(st.lists(st.integers(0, 100), max_size=3), max_size=2), json_values)


common = {"temperature": mostly(st.floats(0, 2), weird_numbers), "top_p": mostly(st.floats(0.01, 1), weird_numbers),
          "top_k": mostly(st.integers(-1, 60_000), weird_numbers), "min_p": mostly(st.floats(0, 1), weird_numbers),
          "repetition_penalty": mostly(st.floats(0.5, 2), weird_numbers), "n": mostly(st.integers(1, 3), weird_numbers),
          "stop": mostly(st.lists(st.sampled_from(["\n", "the", "<|im_end|>", "é"]), max_size=3), json_values),
          "seed": mostly(st.integers(-2**63, 2**64 - 1), weird_numbers), "ignore_eos": mostly(st.booleans()),
          "stream": st.booleans(), "stream_options": mostly(st.fixed_dictionaries({"include_usage": st.booleans()}),
                                                            json_values),
          "model": mostly(st.just(MODEL_NAME), texts), "max_completion_tokens": limits, "user": texts,
          "logprobs": scalars, "unknown_field": json_values}

def body(required: dict) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(required | {"max_tokens": limits}, optional=common)


shaped = st.one_of(st.tuples(st.just("/v1/chat/completions"), body({"messages": messages})),
                   st.tuples(st.just("/v1/completions"), body({"prompt": prompts})))
anything = st.tuples(st.sampled_from(["/v1/chat/completions", "/v1/completions"]), json_values)
bodies = mostly(shaped, anything)


@pytest.fixture(scope="module")
def live(embedded_model_dir: str):
    server = start_live_server(embedded_model_dir, num_blocks=128, max_num_seqs=16)
    yield server
    server.stop()


def post(live: LiveServer, path: str, payload) -> tuple[int, list[str]]:
    raw = json.dumps(payload, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
    headers = {"content-type": "application/json"}
    with httpx.stream("POST", live.url + path, content=raw, headers=headers, timeout=120) as response:
        return response.status_code, [line for line in response.iter_lines() if line]


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(request=bodies)
def test_generated_bodies_get_2xx_or_4xx_and_the_engine_lives(live: LiveServer, request) -> None:
    path, payload = request
    status, lines = post(live, path, payload)
    event(f"HTTP {status}")  # --hypothesis-show-statistics shows the mix
    assert 200 <= status < 300 or 400 <= status < 500, (status, lines)
    assert not any('"error"' in line for line in lines if status == 200), lines
    assert live.engine.alive, live.engine.error


@pytest.mark.slow  # runs after the fuzz test, and with it
def test_after_the_fuzz_nothing_is_left(live: LiveServer) -> None:
    deadline = time.monotonic() + 30
    while live.engine.block_map.seqs or live.engine.block_map.stats.used:
        assert time.monotonic() < deadline, live.engine.block_map.stats
        time.sleep(0.05)
    assert live.engine.alive
