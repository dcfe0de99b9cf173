"""Follows one engine's KV-event stream (vLLM's, or ours: server.kv_event_publisher) on a thread.

It subscribes to the live PUB socket and, given the replay endpoint, first asks it for every batch it
still buffers: a late joiner rebuilds the cache from there. A gap in the sequence numbers (a slow
subscription, a full queue somewhere) is asked of the replay socket too; what replay cannot return
any more is counted in `lost`. Batches reach `on_batch(seq, batch)` decoded (server.kv_events), in
order, each once.

A publisher that restarts counts from 0 again: a sequence number already seen, whose batch is not the
one seen under it, calls `on_restart()` (the cache the engine had is gone) and the stream is followed
anew. ZeroMQ reconnects the live socket by itself, and a subscription misses what is published before
it reaches the new publisher: a restarted one's batch 2 can be the first to arrive and look like the
next of the old stream. So each reconnection is checked with the replay socket: the publisher is the
same one only if it still sends, under the newest sequence number seen, the batch seen under it.
A replay socket that does not answer within `replay_timeout` is closed and opened afresh at the next
request (the check is then made again at the next batch).

For the same reason a batch published while a subscription is still on its way is not received live:
when nothing has arrived for `idle_check` seconds, the replay socket is asked for anything newer.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Callable

import zmq
import zmq.utils.monitor

from server.kv_events import EventBatch, decode_batch

log = logging.getLogger(__name__)
END_SEQ = (-1).to_bytes(8, "big", signed=True)
_RECENT = 4096  # (seq -> ts) kept to tell a replayed duplicate from a restarted publisher


class KVEventSubscriber:
    def __init__(self, endpoint: str, on_batch: Callable[[int, EventBatch], None],
                 replay_endpoint: str | None = None, topic: str = "",
                 on_restart: Callable[[], None] | None = None, replay_timeout: float = 1.0,
                 idle_check: float = 0.5) -> None:
        self.endpoint, self.replay_endpoint, self.topic = endpoint, replay_endpoint, topic
        self.on_batch, self.on_restart = on_batch, on_restart
        self.replay_timeout_ms = int(replay_timeout * 1000)
        self.idle_check = idle_check
        self.last_seq = -1  # the newest batch delivered
        self.lost = 0  # batches never delivered: gone from the replay buffer, or no replay socket
        self.undecodable = 0
        self.restarts = 0
        self._connections = 0  # the live socket's connections so far: from the second on, a check
        self._unverified = False  # a reconnection not yet checked with the replay socket
        self._recent: OrderedDict[int, float] = OrderedDict()
        self._ctx = zmq.Context.instance()
        self._dealer: zmq.Socket | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kv-event-subscriber", daemon=True)

    def start(self) -> "KVEventSubscriber":
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    # ---- the subscriber's thread ---------------------------------------------------------------
    def _run(self) -> None:
        sub = self._ctx.socket(zmq.SUB)
        try:
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt_string(zmq.SUBSCRIBE, self.topic)
            monitor = sub.get_monitor_socket(zmq.EVENT_CONNECTED)
            sub.connect(self.endpoint)
            self._catch_up(0)  # a late joiner: whatever the publisher still has
            poller = zmq.Poller()
            poller.register(monitor, zmq.POLLIN)
            poller.register(sub, zmq.POLLIN)
            heard = time.monotonic()
            while not self._stop.is_set():
                ready = dict(poller.poll(50))
                if monitor in ready:  # before the batches: a new connection's first one must be checked
                    self._connected(monitor)
                if sub in ready:
                    self._live(sub.recv_multipart())
                    heard = time.monotonic()
                elif time.monotonic() - heard > self.idle_check:
                    self._catch_up(self.last_seq + 1)  # quiet: anything the subscription missed?
                    heard = time.monotonic()
        except Exception:  # noqa: BLE001 - a broken stream must not take the app down
            log.exception("following KV events from %s failed", self.endpoint)
        finally:
            sub.disable_monitor()
            sub.close(linger=0)
            self._close_dealer()

    def _connected(self, monitor: zmq.Socket) -> None:
        while monitor.poll(0):
            event = zmq.utils.monitor.recv_monitor_message(monitor)
            if event["event"] == zmq.EVENT_CONNECTED:
                self._connections += 1
                if self._connections > 1:
                    self._unverified = True
        if self._unverified:
            self._verify()

    def _verify(self) -> None:
        """After a reconnection: is the publisher the one followed so far? (See the module's note.)"""
        if self._catch_up(self.last_seq + 1):
            self._unverified = False  # else no answer: asked again at the next batch

    def _live(self, frames: list[bytes]) -> None:
        if self._unverified:
            self._verify()
        if len(frames) != 3:
            self.undecodable += 1
            return
        seq = int.from_bytes(frames[1], "big")
        batch = self._decode(seq, frames[2])
        if batch is None:
            return
        if seq <= self.last_seq and self._recent.get(seq) != batch.ts:
            self._restarted()
        if seq > self.last_seq + 1:
            self._catch_up(self.last_seq + 1)
        self._accept(seq, batch)

    def _decode(self, seq: int, payload: bytes) -> EventBatch | None:
        try:
            return decode_batch(payload)
        except ValueError as exc:
            self.undecodable += 1
            log.warning("an undecodable KV-event batch %d: %s", seq, exc)
            return None

    def _accept(self, seq: int, batch: EventBatch) -> None:
        if seq <= self.last_seq:
            return  # seen already: replayed, then received live
        self.lost += seq - self.last_seq - 1
        self.last_seq = seq
        self._recent[seq] = batch.ts
        if len(self._recent) > _RECENT:
            self._recent.popitem(last=False)
        self.on_batch(seq, batch)

    def _restarted(self) -> None:
        log.info("the KV-event publisher at %s restarted", self.endpoint)
        self.restarts += 1
        self.last_seq = -1
        self._recent.clear()
        if self.on_restart is not None:
            self.on_restart()

    def _catch_up(self, start: int) -> bool:
        """Deliver what the replay socket still has from `start` on (nothing without one); False if
        it did not answer.

        It asks from the batch before `start` when it has seen that one: the same batch again means
        the same publisher; another one, or none at all (a publisher's numbers only grow), means it
        restarted, and its new stream is read from 0. A reply that starts later means that batch left
        the buffer: the same publisher as far as can be told, the gap counted lost."""
        if self.replay_endpoint is None:
            return True
        probe = start - 1 if start - 1 in self._recent else start
        replies = self._replay(probe)
        if replies is None:
            return False
        if probe < start:
            if replies and replies[0][0] == probe and replies[0][1].ts == self._recent[probe]:
                replies.pop(0)
            elif not replies or replies[0][0] == probe:
                self._restarted()
                replies = self._replay(0) or []
        for seq, batch in replies:
            self._accept(seq, batch)
        return True

    def _replay(self, start: int) -> list[tuple[int, EventBatch]] | None:
        """The batches the replay socket sends from `start` on, up to its end marker (None: no answer)."""
        dealer = self._replay_socket()
        dealer.send_multipart([b"", start.to_bytes(8, "big")])
        replies: list[tuple[int, EventBatch]] = []
        while not self._stop.is_set():
            if not dealer.poll(self.replay_timeout_ms):
                log.warning("no KV-event replay from %s within %d ms", self.replay_endpoint, self.replay_timeout_ms)
                self._close_dealer()  # a late answer must not be read as the next one's
                return None
            frames = dealer.recv_multipart()
            if frames and frames[0] == b"":
                frames = frames[1:]  # the delimiter
            if len(frames) not in (2, 3):  # [topic,] seq, payload: the topic from vLLM v0.26.0 on
                continue
            seq_bytes, payload = frames[-2], frames[-1]
            if seq_bytes == END_SEQ or not payload:
                break
            seq = int.from_bytes(seq_bytes, "big")
            batch = self._decode(seq, payload)
            if batch is not None:
                replies.append((seq, batch))
        return replies

    def _replay_socket(self) -> zmq.Socket:
        if self._dealer is None:
            self._dealer = self._ctx.socket(zmq.DEALER)
            self._dealer.setsockopt(zmq.LINGER, 0)
            self._dealer.connect(self.replay_endpoint)
        return self._dealer

    def _close_dealer(self) -> None:
        if self._dealer is not None:
            self._dealer.close(linger=0)
            self._dealer = None
