"""Publishes KV-event batches over ZeroMQ with vLLM's wire protocol, on a thread of its own.

  live    a PUB socket sends each batch as three frames: topic, sequence number (8 bytes,
          big-endian, from 0), payload (server.kv_events.encode_batch)
  replay  a ROUTER socket: a client (REQ, or DEALER with an empty delimiter frame) sends a start
          sequence number (8 bytes, big-endian) and gets every batch still buffered from there on,
          one message each, [topic, seq, payload] (vLLM from v0.26.0, vllm#45177; before, without
          the topic), then [topic, -1 as 8 signed bytes, empty payload] to end

Unlike vLLM, which connects instead of binding unless the address has a wildcard, both sockets
always bind: the engine owns its endpoints and subscribers connect. A port of `*`
(tcp://127.0.0.1:*) binds a free one; `endpoint` and `replay_endpoint` then say which.

`publish` never blocks the engine thread: batches go through a bounded queue, and a full queue drops
the batch. Sequence numbers are given out in `publish`, so a dropped batch is a gap subscribers see.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from itertools import count
from typing import Callable

import zmq

from engine.core.kv_cache_events import KVCacheChange
from server.kv_events import EventBatch, batch_from_changes, encode_batch

log = logging.getLogger(__name__)
END_SEQ = (-1).to_bytes(8, "big", signed=True)
_STOP = object()


class KVEventPublisher:
    def __init__(self, endpoint: str, replay_endpoint: str | None = None, topic: str = "",
                 buffer_steps: int = 10_000, max_queue_size: int = 100_000, hwm: int = 100_000) -> None:
        self.topic = topic.encode()
        self._queue: queue.Queue = queue.Queue(max_queue_size)
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)  # (seq, payload) for replay
        self._seq = count()
        self._seq_lock = threading.Lock()  # seq order == queue order, whichever thread publishes
        self.dropped = 0  # batches refused by a full queue
        self._ctx = zmq.Context.instance()
        self._pub = self._ctx.socket(zmq.PUB)
        self._replay: zmq.Socket | None = None
        try:
            self._pub.setsockopt(zmq.SNDHWM, hwm)
            self._pub.setsockopt(zmq.LINGER, 0)
            self._pub.bind(endpoint)
            if replay_endpoint:
                self._replay = self._ctx.socket(zmq.ROUTER)
                self._replay.setsockopt(zmq.LINGER, 0)
                self._replay.bind(replay_endpoint)
        except zmq.ZMQError:
            self._close_sockets()
            raise
        self.endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.replay_endpoint = self._replay.getsockopt_string(zmq.LAST_ENDPOINT) if self._replay else None
        # the sockets move to this thread, which alone touches them from now on
        self._thread = threading.Thread(target=self._run, name="kv-event-publisher", daemon=True)
        self._stopped = False

    def start(self) -> "KVEventPublisher":
        self._thread.start()
        return self

    def publish(self, batch: EventBatch) -> bool:
        """Queue a batch (any thread, never blocks); False if the queue was full or we stopped."""
        if self._stopped:
            return False
        with self._seq_lock:
            seq = next(self._seq)
            try:
                self._queue.put_nowait((seq, batch))
            except queue.Full:
                self.dropped += 1
                return False
        return True

    def stop(self, timeout: float = 2.0) -> None:
        """Send what is queued, then close the sockets."""
        if self._stopped:
            return
        self._stopped = True
        if not self._thread.is_alive():
            self._close_sockets()
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the KV-event publisher did not stop within %.1f s", timeout)

    def _run(self) -> None:
        try:
            while True:
                if self._replay is not None:
                    while self._replay.poll(0):
                        self._serve_replay()
                try:
                    item = self._queue.get(timeout=0.02)
                except queue.Empty:
                    continue
                if item is _STOP:
                    return
                self._send(*item)
        except Exception:  # noqa: BLE001 - the engine goes on without its events
            log.exception("the KV-event publisher stopped")
        finally:
            self._close_sockets()

    def _send(self, seq: int, batch: EventBatch) -> None:
        payload = encode_batch(batch)
        seq_bytes = seq.to_bytes(8, "big")
        self._pub.send_multipart((self.topic, seq_bytes, payload))
        self._buffer.append((seq, payload))

    def _serve_replay(self) -> None:
        frames = self._replay.recv_multipart()
        if len(frames) == 3 and frames[1] == b"":  # REQ, or DEALER with a delimiter
            head = [frames[0], b""]
        elif len(frames) == 2:  # DEALER without one
            head = [frames[0]]
        else:
            log.warning("an invalid KV-event replay request of %d frames", len(frames))
            return
        start = int.from_bytes(frames[-1], "big")
        for seq, payload in list(self._buffer):
            if seq >= start:
                self._replay.send_multipart(head + [self.topic, seq.to_bytes(8, "big"), payload])
        self._replay.send_multipart(head + [self.topic, END_SEQ, b""])

    def _close_sockets(self) -> None:
        self._pub.close(linger=500)  # ms to hand the last batches to connected subscribers
        if self._replay is not None:
            self._replay.close(linger=0)


def engine_sink(publisher: KVEventPublisher, block_size: int) -> Callable[[list[KVCacheChange]], None]:
    """What `EngineThread(kv_events=...)` calls after each step: one batch per step, as vLLM sends."""
    return lambda changes: publisher.publish(batch_from_changes(changes, block_size))
