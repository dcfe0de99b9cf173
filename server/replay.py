"""A recorded run played back as a live feed (`python app.py --replay FILE`): a Space without a GPU
shows a real GPU run on the same dashboard.

`ReplaySource` plays the recording's step records into an `EventFeed` at the pace they were
recorded, with wall times moved to now, and loops. It keeps the pool's state as the records move
it (holders, prefix-cache flags, live sequences), so a viewer who joins mid-run gets a snapshot of
the present, as from the engine. At each loop's end the feed skips an index: readers see a gap,
reopen, and start again from the recording's first snapshot.
"""
from __future__ import annotations

import copy
import threading
import time
from typing import Any

from engine.serving.event_feed import EventFeed, StepRecord
from server.recording import Recording

_RUNNING = {"prefill", "decode", "forked"}


class PoolReplica:
    """The pool's state rebuilt from a snapshot and the step records after it."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = copy.deepcopy(snapshot)
        self.owners: list[list[int]] = self.snapshot["owners"]
        self.cached: list[bool] = self.snapshot["cached"]
        self.seqs: dict[int, dict[str, Any]] = {s["seq_id"]: s for s in self.snapshot["sequences"]}

    def apply(self, record: dict[str, Any]) -> None:
        for e in record["requests"]:
            seq = self.seqs.get(e["seq_id"])
            if e["phase"] == "finished":
                self.seqs.pop(e["seq_id"], None)
                continue
            if seq is None:
                tokens = e["tokens"] if e["phase"] == "waiting" else 0
                seq = self.seqs[e["seq_id"]] = {"seq_id": e["seq_id"], "request_id": e["request_id"],
                                                "sample": e["sample"], "num_tokens": tokens,
                                                "num_prompt_tokens": tokens, "limit": e.get("limit", 0),
                                                "running": False}
            seq["running"] = e["phase"] in _RUNNING
            if e.get("samples"):
                seq["num_tokens"] += 1
        for b in record["blocks"]:
            holders = self.owners[b["block_id"]]
            kind = b["kind"]
            if kind in ("allocated", "reused", "shared"):  # ("copied" follows the copy's own allocation)
                holders.append(b["seq_id"])
            elif kind in ("released", "freed"):
                if b["seq_id"] in holders:
                    holders.remove(b["seq_id"])
            elif kind in ("cached", "evicted"):
                self.cached[b["block_id"]] = kind == "cached"

    def to_json(self, feed_index: int) -> dict[str, Any]:
        fill = [self.snapshot["block_size"] if h else 0 for h in self.owners]
        return {**self.snapshot, "feed_index": feed_index, "owners": [list(h) for h in self.owners],
                "cached": list(self.cached), "fill": fill, "sequences": list(self.seqs.values())}


class ReplaySource:
    """What the feed API reads (`feed`, `alive`, `snapshot()`), from a recording played in a loop."""

    def __init__(self, recording: Recording, capacity: int = 4096, speed: float = 1.0) -> None:
        if not recording.records:
            raise ValueError("the recording has no step records")
        self.recording, self.speed = recording, speed
        self.feed = EventFeed(capacity)
        self._lock = threading.Lock()  # the replica and the feed's index move together
        self._replica = PoolReplica(recording.snapshot)
        self._engine = recording.header.get("engine")  # the recorded engine's facts
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feed-replay", daemon=True)
        self.loops = 0

    @property
    def alive(self) -> bool:
        return not self._stop.is_set()

    def start(self) -> "ReplaySource":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def device(self) -> None:
        """A recording holds no device readings."""
        return None

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {**self._replica.to_json(self.feed.next_index), "engine": self._engine}

    def _run(self) -> None:
        records = self.recording.records
        while not self._stop.is_set():
            start_wall, start_clock = records[0]["wall_time"], time.time()
            for record in records:
                due = start_clock + (record["wall_time"] + record["duration"] - start_wall) / self.speed
                if self._stop.wait(max(0.0, due - time.time())):
                    return
                shifted = {**record, "wall_time": start_clock + (record["wall_time"] - start_wall) / self.speed,
                           "duration": record["duration"] / self.speed}
                with self._lock:
                    self._replica.apply(record)
                    self.feed.append(StepRecord.from_json(shifted))
            if self._stop.wait(1.0):
                return
            with self._lock:  # start again: readers see a gap, reopen, and get the first snapshot
                self._replica = PoolReplica(self.recording.snapshot)
                self.feed.skip()
            self.loops += 1
