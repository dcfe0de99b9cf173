"""`--replay`: a recording played back as a live feed. The pool the replay keeps matches the
engine's own counts in every record, a joiner mid-run gets the present state, and the loop's
restart shows readers a gap so they start again from the first snapshot."""
from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from engine.serving.event_feed import EventFeed, StepRecord
from server.recording import read_recording
from server.replay import PoolReplica, ReplaySource

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "recordings" / "h200-64-users.jsonl.gz"


@pytest.fixture(scope="module")
def recording():
    return read_recording(SHIPPED)


def test_the_shipped_recording_is_a_gpu_run_of_64_users_under_2_mb(recording) -> None:
    assert SHIPPED.stat().st_size < 2 * 2**20
    assert recording.header["engine"]["device"].startswith("cuda")
    sims = {e["request_id"].split(".")[1] for r in recording.records for e in r["requests"]}
    assert len(sims) == 64  # one id per simulated user: sim-<load>.<user>.<turn>
    assert recording.snapshot["num_blocks"] >= 10_000  # a GPU-sized pool
    engine = recording.header["engine"]  # schema 3: the facts the KV formula and the roofline need
    assert engine["matmul_params"] > 1e8 and engine["peak_bandwidth"] > 1e12 and engine["peak_flops"] > 1e14


def test_the_replica_agrees_with_the_engine_in_every_record(recording) -> None:
    replica = PoolReplica(recording.snapshot)
    for record in recording.records:
        replica.apply(record)
        used = sum(1 for holders in replica.owners if holders)
        cached_free = sum(1 for h, c in zip(replica.owners, replica.cached) if c and not h)
        assert (used, cached_free) == (record["blocks_used"], record["blocks_cached_free"]), record["step"]
        refs = {}
        for b in record["blocks"]:
            refs[b["block_id"]] = b["ref_count"]
        for block, count in refs.items():
            assert len(replica.owners[block]) == count


def test_records_survive_the_json_round_trip(recording) -> None:
    """Read back, a record keeps every value it had (a schema-2 recording's get the defaults of
    schema 3's new fields); written again, it reads back the same."""
    for data in recording.records[:50]:
        record = StepRecord.from_json(data)
        out = record.to_json()
        assert StepRecord.from_json(out) == record
        assert {k: v for k, v in out.items() if k in data and k not in ("requests", "blocks")} == \
            {k: v for k, v in data.items() if k not in ("requests", "blocks")}
        for key in ("requests", "blocks"):
            assert [{k: e[k] for k in old} for e, old in zip(out[key], data[key])] == data[key]


def test_a_skipped_index_is_a_gap() -> None:
    feed = EventFeed(8)
    feed.skip()
    assert feed.since(0) == (1, [])


def test_a_replay_plays_loops_and_serves_the_present(recording) -> None:
    from dataclasses import replace
    short = replace(recording, records=recording.records[:60])
    source = ReplaySource(short, speed=4.0).start()
    try:
        deadline = time.monotonic() + 20
        while source.loops < 1:
            assert time.monotonic() < deadline, "the replay did not loop"
            time.sleep(0.05)
        first, records = source.feed.since(0)
        assert len(records) >= 60 and first == 0
        assert source.feed.next_index > len(records)  # the index skipped at the loop's end
        snap = source.snapshot()
        assert snap["feed_index"] <= source.feed.next_index
        assert len(snap["owners"]) == recording.snapshot["num_blocks"]
        json.dumps(snap)
        # times move to now, durations scale with the speed
        assert abs(records[-1].wall_time - time.time()) < 60
    finally:
        source.stop()


def test_python_app_py_replay_serves_the_dashboard_and_the_feed() -> None:
    from app import build_replay
    from server.uvicorn_thread import ServerThread

    app, source = build_replay(str(SHIPPED))
    http = ServerThread(app).start()
    try:
        health = httpx.get(http.url + "/health").json()
        assert health["status"] == "ok" and "cuda" in health["replay"]
        with httpx.stream("GET", http.url + "/api/feed", timeout=10) as r:
            lines = []
            for line in r.iter_lines():
                lines.append(line)
                if line.startswith("event: steps"):
                    break
        assert lines[0] == "event: snapshot"
        assert httpx.post(http.url + "/v1/chat/completions", json={}).status_code == 404  # no engine, no API
        page = httpx.get(http.url + "/").text
        assert "PagedChat" in page
    finally:
        http.server.should_exit = True
        source.stop()


def test_a_schema_2_recording_still_plays(tmp_path) -> None:
    """Schema 3 only added fields with defaults: a recording of schema 2 (no engine facts in its
    snapshot, no limits or caps in its records) reads back and replays."""
    import gzip

    lines = gzip.open(SHIPPED, "rt").read().splitlines()[:4]
    header, snapshot = json.loads(lines[0]), json.loads(lines[1])
    header["schema"] = 2
    snapshot.pop("engine", None)
    old = tmp_path / "old.jsonl"
    old.write_text("\n".join([json.dumps(header), json.dumps(snapshot)] + lines[2:]) + "\n")
    rec = read_recording(old)
    assert rec.header["schema"] == 2 and rec.records
    source = ReplaySource(rec)
    assert source.snapshot()["engine"] == header["engine"], "the header's engine facts reach the view"
