"""The event feed served: the SSE stream starts with a snapshot and then carries every step of a
request (arrival, prefill, decodes, finish) in order; the trace export is valid trace-event JSON
with one track per request and its phases in order."""
from __future__ import annotations

import json
import threading

import httpx
import pytest
import torch

from benchmarks.synthetic_model import make_model_dir
from engine import LLM, SamplingParams
from engine.serving.event_feed import SCHEMA_VERSION
from live_server import LiveServer, start_live_server
from server.trace_events import REQUESTS, trace_events

SHAPE = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
             intermediate_size=64, vocab_size=128, tie_word_embeddings=True, max_position_embeddings=256)


def test_the_trace_has_a_track_per_request_with_its_phases_in_order(tmp_path) -> None:
    path = make_model_dir(tmp_path / "tiny", SHAPE, dtype=torch.float32, seed=5)
    llm = LLM(str(path), device="cpu", num_blocks=10, block_size=4, max_num_seqs=4, max_num_batched_tokens=8)
    prompts = [[3 + i] * (5 + 7 * i) for i in range(5)]  # chunked prefills, a queue, preemptions
    llm.generate(prompts, [SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, n=1 + (i == 2))
                           for i in range(5)])
    trace = json.loads(json.dumps(trace_events(llm.engine.feed.since(0)[1])))
    events = trace["traceEvents"]
    assert all({"name", "ph", "pid", "tid"} <= e.keys() for e in events)
    names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["pid"] == REQUESTS and e["tid"]}
    assert len(names) == 6  # five requests, one of them with two samples
    for tid, name in names.items():
        slices = sorted((e for e in events if e["pid"] == REQUESTS and e["tid"] == tid and e["ph"] == "X"),
                        key=lambda e: e["ts"])
        assert all(e["dur"] > 0 for e in slices)
        assert all(a["ts"] + a["dur"] <= b["ts"] + 1e-3 for a, b in zip(slices, slices[1:])), name
        phases = [e["name"] for e in slices]
        if "#" not in name:  # (a forked sample starts decoding) a request admitted at once never waits
            assert phases[0] in ("waiting", "prefill") and "prefill" in phases
            assert phases.index("prefill") < phases.index("decode")
        finished = [e for e in events if e["ph"] == "i" and e["tid"] == tid and e["pid"] == REQUESTS]
        assert [e["name"] for e in finished] == ["finished: length"]
        assert finished[0]["ts"] >= slices[-1]["ts"] + slices[-1]["dur"] - 1e-3
    steps = [e for e in events if e["ph"] == "X" and e["pid"] == 1]
    assert len(steps) == llm.engine.metrics.steps and any(e["name"] == "KV blocks" for e in events)
    assert "preempted" in {e["name"] for e in events if e["pid"] == REQUESTS and e["ph"] == "X"}
    assert "waiting" in {e["name"] for e in events if e["pid"] == REQUESTS and e["ph"] == "X"}


@pytest.fixture(scope="module")
def live(embedded_model_dir: str):
    server = start_live_server(embedded_model_dir, num_blocks=64)
    yield server
    server.stop()


def read_events(live: LiveServer, until, out: list, ready: threading.Event) -> None:
    with httpx.stream("GET", live.url + "/api/feed", timeout=30) as response:
        assert response.headers["cache-control"] == "no-cache"
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                out.append((kind, json.loads(line.removeprefix("data: "))))
                ready.set()
                if until(out):
                    return


def test_the_stream_starts_with_a_snapshot_and_carries_every_step(live: LiveServer) -> None:
    got, ready = [], threading.Event()

    def finished(events) -> bool:
        return any(r["phase"] == "finished" for kind, data in events if kind == "steps"
                   for record in data for r in record["requests"])

    reader = threading.Thread(target=read_events, args=(live, finished, got, ready))
    reader.start()
    assert ready.wait(30)
    body = {"prompt": "Hello there", "max_tokens": 5, "temperature": 0, "ignore_eos": True}
    assert httpx.post(live.url + "/v1/completions", json=body, timeout=60).status_code == 200
    reader.join(30)
    kind, snapshot = got[0]
    assert kind == "snapshot" and snapshot["schema"] == SCHEMA_VERSION and snapshot["num_blocks"] == 64
    records = [r for kind, data in got[1:] if kind == "steps" for r in data]
    steps = [r["step"] for r in records]
    assert steps == list(range(steps[0], steps[0] + len(steps)))  # none missing, in order
    phases = [e["phase"] for r in records for e in r["requests"]]
    assert phases[0] == "waiting" and phases[1] == "prefill" and phases[-1] == "finished"
    assert phases.count("decode") == 4  # 5 tokens: the prefill's, then four decodes
    assert sum(r["num_decode_tokens"] for r in records) == 4
    assert sum(r["num_output_tokens"] for r in records) == 5
    devices = [data for kind, data in got if kind == "device"]  # the first comes with the snapshot
    assert devices and devices[0]["kind"] == "cpu" and 0 <= devices[0]["compute_pct"] <= 100


def test_the_trace_downloads(live: LiveServer) -> None:
    response = httpx.get(live.url + "/api/feed/trace", timeout=30)
    assert response.status_code == 200 and "attachment" in response.headers["content-disposition"]
    assert any(e["ph"] == "X" for e in response.json()["traceEvents"])


@pytest.mark.parametrize("name", ["run.jsonl", "run.jsonl.gz"])
def test_a_recording_holds_every_step_of_the_run(live: LiveServer, tmp_path, name: str) -> None:
    from server.recording import FeedRecorder, read_recording

    recorder = FeedRecorder(live.engine, tmp_path / name, "SmolLM2-135M-Instruct", interval=0.05).start()
    body = {"prompt": "Hello there", "max_tokens": 4, "temperature": 0, "ignore_eos": True, "n": 2}
    assert httpx.post(live.url + "/v1/completions", json=body, timeout=60).status_code == 200
    recorder.stop()
    recording = read_recording(tmp_path / name)
    assert recording.header["model"] == "SmolLM2-135M-Instruct" and recording.header["engine"]["num_blocks"] == 64
    assert recording.snapshot["num_blocks"] == 64 and recorder.missed == 0
    steps = [r["step"] for r in recording.records]
    assert steps and steps == list(range(steps[0], steps[0] + len(steps)))
    phases = [e["phase"] for r in recording.records for e in r["requests"]]
    assert phases.count("forked") == 1 and phases.count("finished") == 2


def test_schema_3_fields_follow_the_engine(tmp_path) -> None:
    """Each record carries the tokens stored, the tokens attended, the batching mode and the block cap;
    a waiting event carries its request's limit; an admission's prefill, the prefix-cache hit."""
    from engine.core.controls import Controls

    path = make_model_dir(tmp_path / "tiny", SHAPE, dtype=torch.float32, seed=5)
    llm = LLM(str(path), device="cpu", num_blocks=32, block_size=4, max_num_seqs=4, max_num_batched_tokens=64)
    engine = llm.engine
    prompt = list(range(3, 20))  # 17 tokens: 4 full blocks
    llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))
    engine.set_controls(Controls(batching="static", block_cap=20))
    llm.generate([prompt + [30]], SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True))
    records = engine.feed.since(0)[1]
    waiting = [e for r in records for e in r.requests if e.phase == "waiting"]
    assert [(e.tokens, e.limit) for e in waiting] == [(17, 20), (18, 20)]
    admissions = [e for r in records for e in r.requests if e.phase == "prefill"]
    assert [e.cached for e in admissions] == [0, 16], "the second prompt found its first 4 blocks cached"
    first = next(r for r in records if r.num_prefill_tokens)
    assert first.num_context_tokens == 17 and first.tokens_stored == 17 and first.batching == "continuous"
    decode = next(r for r in records if r.num_decode_tokens and not r.num_prefill_tokens)
    assert decode.num_context_tokens == 18 and decode.tokens_stored == 18  # its newest token fed, then stored
    last = records[-1]
    assert (last.batching, last.block_cap, last.num_blocks) == ("static", 20, 32)
    assert round_trips(last)


def round_trips(record) -> bool:
    from engine.serving.event_feed import StepRecord
    return StepRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


def test_a_live_requests_block_table_and_tokens_are_served(live: LiveServer) -> None:
    """GET /api/request/ID: the engine's block table, reference counts and token ids of a live
    request, with each token's text; 404 for one that is not live."""
    stream = live.engine.submit("Tell me a long story about the sea.",
                                SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True), request_id="peek-1")
    try:
        next(iter(stream))  # it runs
        got = httpx.get(live.url + "/api/request/peek-1", timeout=10).json()
        found = live.engine.inspect("peek-1")
        assert got["text"] and got["request_id"] == "peek-1" and len(got["samples"]) == 1
        sample, seq = got["samples"][0], found.seqs[0]
        assert sample["block_table"] == list(seq.block_table)[:len(sample["block_table"])]
        assert sample["token_ids"] == list(seq.token_ids)[:len(sample["token_ids"])]
        assert len(sample["token_texts"]) == len(sample["token_ids"]) and sample["num_prompt_tokens"] > 0
        assert "".join(sample["token_texts"][:sample["num_prompt_tokens"]]).count("sea") == 1
        assert all(b["ref_count"] >= 1 for b in sample["blocks"])
    finally:
        stream.close()
    missing = httpx.get(live.url + "/api/request/nobody", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_a_public_server_shows_only_the_simulated_users_text() -> None:
    from types import SimpleNamespace

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from engine.serving.request_inspection import RequestInspection, SeqInspection
    from server.feed_api import build_feed_router

    seq = SeqInspection(1, 0, "running", 2, 3, 2, 0, (5, 6, 7), (4,), (1,), (False,), ("a", "b", "c"))
    source = SimpleNamespace(feed=None, alive=True, inspect=lambda rid: RequestInspection(rid, 16, (seq,)))
    app = FastAPI()
    app.include_router(build_feed_router(source, token_text="simulated"))
    client = TestClient(app)
    chat = client.get("/api/request/chat-1").json()["samples"][0]
    assert chat["token_ids"] is None and chat["token_texts"] is None and chat["block_table"] == [4]
    assert client.get("/api/request/sim-1.0.0").json()["samples"][0]["token_texts"] == ["a", "b", "c"]
    with pytest.raises(ValueError):
        build_feed_router(source, token_text="everyone")
