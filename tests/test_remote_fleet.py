"""The remote mode's parts that need no engine: URLs and endpoints as given on the command line, a
replica that cannot be reached, a server that is not a vLLM, routing by load."""
from __future__ import annotations

import asyncio
import time

import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from app import parse_args, remote_specs
from engine.serving.engine_thread import ChatPrompt
from engine.serving.request_stream import EngineDeadError, RequestRejected
from engine.core.sampling_params import SamplingParams
from server.remote_client import RemoteEngine, chat_body, sse_chunk
from server.remote_fleet import RemoteFleet, RemoteSpec
from server.uvicorn_thread import ServerThread, free_port


def test_urls_and_kv_endpoints_pair_by_rank() -> None:
    args = parse_args(["--engine-url", "http://a:8000/v1/", "--engine-kv-events", "tcp://a:5557,tcp://a:5558",
                       "--engine-url", "https://b:8000"])
    a, b = remote_specs(args)
    assert a == RemoteSpec("http://a:8000", "tcp://a:5557", "tcp://a:5558")
    assert b == RemoteSpec("https://b:8000", None, None)
    with pytest.raises(ValueError, match="same rank"):
        remote_specs(parse_args(["--engine-url", "http://a", "--engine-kv-events", "tcp://a:1",
                                 "--engine-kv-events", "tcp://a:2"]))
    for bad in ("a:8000", "ftp://a"):
        with pytest.raises(ValueError, match="http"):
            RemoteSpec.parse(bad)
    with pytest.raises(ValueError, match="tcp://"):
        RemoteSpec.parse("http://a", "a:5557")


def test_an_unreachable_replica_is_down_at_once_and_requests_say_so() -> None:
    fleet = RemoteFleet([RemoteSpec.parse(f"http://127.0.0.1:{free_port()}")], interval=0.2).start()
    try:
        deadline = time.monotonic() + 3
        while fleet.replicas[0].state != "down" and time.monotonic() < deadline:
            time.sleep(0.05)
        r = fleet.replicas[0]
        assert r.state == "down" and r.error == "connection refused" and not fleet.alive
        assert fleet.pick() is None
        state = fleet.state_json()
        assert state["replicas"][0]["state"] == "down" and state["total"] is None
        prompt, params = ChatPrompt(({"role": "user", "content": "hi"},)), SamplingParams(max_tokens=4)
        with pytest.raises(EngineDeadError, match="no remote engine"):
            RemoteEngine(fleet).submit(prompt, params, "x")

        async def chat() -> None:
            async for _ in RemoteEngine(fleet).chat(prompt, params, "y"):
                pass

        with pytest.raises(EngineDeadError):
            asyncio.run(chat())
    finally:
        fleet.stop()


def test_a_server_without_vllm_metrics_is_up_but_says_so() -> None:
    app = FastAPI()
    app.get("/health")(lambda: {"status": "ok"})
    app.get("/v1/models")(lambda: {"data": [{"id": "m", "max_model_len": 512}]})
    app.get("/metrics", response_class=PlainTextResponse)(lambda: "# TYPE up gauge\nup 1\n")
    http = ServerThread(app).start()
    fleet = RemoteFleet([RemoteSpec.parse(http.url)], interval=0.2).start()
    try:
        deadline = time.monotonic() + 5
        while not fleet.replicas[0].points and time.monotonic() < deadline:
            time.sleep(0.05)
        r = fleet.replicas[0]
        assert r.up and r.model == "m" and fleet.max_model_len == 512 and not r.has_metrics
        assert r.points[-1].running is None  # not exported: unknown, never a zero
        assert fleet.tree_json(0)["segments"] == [] and fleet.tree_json(5) is None
    finally:
        fleet.stop()
        http.stop()


def test_requests_go_to_the_least_busy_replica_up() -> None:
    fleet = RemoteFleet([RemoteSpec.parse("http://127.0.0.1:1"), RemoteSpec.parse("http://127.0.0.1:2")])
    a, b = fleet.replicas  # never started: set by hand
    a.state = b.state = "up"
    with a.request():
        assert fleet.pick() is b
        assert fleet.pick({b.index}) is a
    b.state = "down"
    assert fleet.pick() is a and fleet.pick({a.index}) is None


def test_the_stream_format_of_vllm() -> None:
    body = chat_body("m", ChatPrompt(({"role": "user", "content": "hi"},)),
                     SamplingParams(n=2, max_tokens=5, seed=3, ignore_eos=True))
    assert body["stream"] and body["n"] == 2 and body["seed"] == 3 and body["ignore_eos"] is True
    assert "min_tokens" not in chat_body("m", ChatPrompt(()), SamplingParams())  # vLLM's extras only when set
    assert sse_chunk("data: [DONE]") is None and sse_chunk(": keep-alive") is None
    assert sse_chunk('data: {"choices": [{"index": 0, "delta": {"content": "x"}}]}')["choices"]
    with pytest.raises(RequestRejected, match="boom"):
        sse_chunk('data: {"error": {"message": "boom"}}')
