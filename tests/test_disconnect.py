"""Every client that goes away is aborted, from the moment its request is accepted: a streaming
one during a long (chunked) prefill, before its first token; a non-streaming one mid-decode; one
still waiting in the queue. Its blocks are free within a step or two."""
from __future__ import annotations

import json
import socket
import time

import pytest

from live_server import LiveServer, start_live_server

LONG_PROMPT = "Describe the sea. " * 250  # about 1,000 tokens: 32 prefill chunks of 32 tokens


@pytest.fixture(scope="module")
def live(embedded_model_dir: str):
    server = start_live_server(embedded_model_dir, num_blocks=256, max_num_seqs=1, max_num_batched_tokens=32)
    yield server
    server.stop()


def send_request(live: LiveServer, body: dict) -> socket.socket:
    """Post `body` on a raw socket (so that the test decides when the client goes away)."""
    data = json.dumps(body).encode()
    sock = socket.create_connection((live.http.host, live.http.port), timeout=10)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return sock


def wait_for(condition, what: str, timeout: float = 30.0) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.01)
    return time.monotonic() - start


def ids(live: LiveServer) -> set[str]:
    return {s.request_id for s in live.engine.block_map.seqs}


def engine_is_empty(live: LiveServer) -> bool:
    bm = live.engine.block_map
    return not bm.seqs and bm.stats.used == 0


def generated(live: LiveServer) -> int:
    latest = live.engine.latest
    return latest.total_generated_tokens if latest else 0


def test_a_stream_left_during_prefill_is_aborted_before_its_first_token(live: LiveServer) -> None:
    before = generated(live)
    sock = send_request(live, {"prompt": LONG_PROMPT, "max_tokens": 500, "stream": True})
    wait_for(lambda: live.engine.block_map.stats.used > 0, "the prefill to start")
    sock.close()
    took = wait_for(lambda: engine_is_empty(live), "the abort")
    assert took < 2.0
    assert generated(live) == before  # it never got to a token


def test_a_non_streaming_client_that_leaves_mid_decode_is_aborted(live: LiveServer) -> None:
    sock = send_request(live, {"prompt": "Tell a story.", "max_tokens": 2000, "ignore_eos": True})
    start = generated(live)
    wait_for(lambda: generated(live) >= start + 5, "decoding to start")
    sock.close()
    took = wait_for(lambda: engine_is_empty(live), "the abort")
    assert took < 2.0 and generated(live) < start + 200


def test_a_client_that_leaves_while_queued_is_aborted(live: LiveServer) -> None:
    """max_num_seqs 1: the second request waits behind the first; its client leaves; it is dropped
    from the queue, and the first request is untouched."""
    first = send_request(live, {"prompt": "Tell a story.", "max_tokens": 2000, "ignore_eos": True})
    wait_for(lambda: len(ids(live)) == 1, "the first request")
    running = ids(live)
    second = send_request(live, {"prompt": "Hello there", "max_tokens": 50})
    wait_for(lambda: len(ids(live)) == 2, "the second request to queue")
    second.close()
    wait_for(lambda: ids(live) == running, "the queued request to go")
    first.close()
    wait_for(lambda: engine_is_empty(live), "the abort")
