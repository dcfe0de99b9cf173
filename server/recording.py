"""A run's event feed kept in a file (`python app.py --record FILE`), and read back.

The file is JSON Lines, gzip-compressed when its name ends in .gz:
  {"type": "header", "schema": 3, "model": ..., "engine": {EngineInfo's fields}, "started": unix time}
  {"type": "snapshot", ...}          the pool when recording began (see server.feed_api.snapshot_json)
  {"type": "steps", "records": [...]} step records in order (StepRecord.to_json), many lines
The same shapes as GET /api/feed sends, so a recording can drive the same dashboard.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from engine.serving.engine_thread import EngineThread
from engine.serving.event_feed import SCHEMA_VERSION
from server.feed_api import snapshot_json

log = logging.getLogger(__name__)


def _open(path: Path, mode: str) -> IO[str]:
    return gzip.open(path, mode + "t", encoding="utf-8") if path.suffix == ".gz" else path.open(mode, encoding="utf-8")


class FeedRecorder:
    """Appends the engine's feed to a file from a background thread, every `interval` seconds."""

    def __init__(self, engine: EngineThread, path: str | Path, model_name: str, interval: float = 0.5) -> None:
        if engine.feed is None:
            raise ValueError("the engine records no event feed")
        self.engine, self.path, self.interval = engine, Path(path), interval
        self._file = _open(self.path, "w")
        bm = engine.block_map
        try:
            self._write({"type": "header", "schema": SCHEMA_VERSION, "model": model_name,
                         "engine": dataclasses.asdict(engine.info), "started": time.time()})
            self._write({"type": "snapshot", **snapshot_json(bm, engine.info)})
        except BaseException:
            self._file.close()
            raise
        self._cursor = bm.feed_index
        self.missed = 0  # records dropped from the ring before they were written (a too slow disk)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feed-recorder", daemon=True)

    def start(self) -> "FeedRecorder":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Write what is left and close the file."""
        self._stop.set()
        self._thread.join(10)
        try:
            if not self._thread.is_alive():  # else it still writes: one writer at a time
                self._drain()
        finally:
            self._file.close()

    def _write(self, line: dict[str, Any]) -> None:
        self._file.write(json.dumps(line, separators=(",", ":")) + "\n")

    def _drain(self) -> None:
        first, records = self.engine.feed.since(self._cursor)
        self.missed += first - self._cursor
        if records:
            self._write({"type": "steps", "records": [r.to_json() for r in records]})
            self._file.flush()
        self._cursor = first + len(records)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._drain()
            except (OSError, ValueError):  # a full disk: say so, stop recording, serve on
                log.exception("recording the event feed to %s failed", self.path)
                return


@dataclass(frozen=True)
class Recording:
    header: dict[str, Any]
    snapshot: dict[str, Any]
    records: list[dict[str, Any]]


# schema 3 only added fields, each with a default (engine.serving.event_feed): a schema-2 recording still plays
READABLE_SCHEMAS = (2, SCHEMA_VERSION)


def read_recording(path: str | Path) -> Recording:
    """ValueError for a file that is not a recording of this schema."""
    with _open(Path(path), "r") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    if len(lines) < 2 or lines[0].get("type") != "header" or lines[1].get("type") != "snapshot":
        raise ValueError(f"{path} is not a PagedChat recording")
    if lines[0].get("schema") not in READABLE_SCHEMAS:
        raise ValueError(f"{path} has feed schema {lines[0].get('schema')}; this version reads {READABLE_SCHEMAS}")
    records = [r for line in lines[2:] if line.get("type") == "steps" for r in line["records"]]
    return Recording(lines[0], lines[1], records)
