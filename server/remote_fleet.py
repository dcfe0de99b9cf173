"""Remote engines (`python app.py --engine-url URL ...`): each replica's health, load and prefix
cache, read from what a vLLM-compatible server exports, for the dashboard and the request router.

Each `Replica` has a thread that, once a second, asks `/health`, reads `/metrics` (server.vllm_metrics)
and keeps a few minutes of `ReplicaPoint`s. A refused connection marks it down at once; a timeout
or an error answer, twice in a row. With a KV-event endpoint, a subscriber (server.kv_event_subscriber)
keeps its prefix-cache tree (server.prefix_tree), asking the replay socket for what it missed.
Token text for the tree comes from the replica's own `/detokenize` (vLLM's and ours), cached.

`RemoteFleet.pick` chooses the replica for a new request: an up one with the fewest requests
running, waiting and in flight from here.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterator
from contextlib import contextmanager

import httpx

from server.kv_event_subscriber import KVEventSubscriber
from server.prefix_tree import PrefixTree, Segment, segments
from server.vllm_metrics import ReplicaPoint, Scrape, derive, derive_total, parse_scrape

log = logging.getLogger(__name__)
TEXT_CHARS = 360  # a segment's text is cut to its head and tail beyond this


@dataclass(frozen=True)
class RemoteSpec:
    """One remote engine: its HTTP base URL and, optionally, its KV-event PUB and replay endpoints."""

    url: str
    kv_events: str | None = None
    kv_replay: str | None = None

    @staticmethod
    def parse(url: str, kv: str | None = None) -> "RemoteSpec":
        """`url` (http[s]://host:port, a trailing / or /v1 dropped); `kv`: 'PUB[,REPLAY]' endpoints."""
        base = url.strip().rstrip("/")
        base = base[:-3] if base.endswith("/v1") else base
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"an engine URL starts with http:// or https://, got {url!r}")
        pub, _, replay = (kv or "").partition(",")
        for e in (pub, replay):
            if e and "://" not in e:
                raise ValueError(f"a KV-event endpoint looks like tcp://host:5557, got {e!r}")
        return RemoteSpec(base, pub.strip() or None, replay.strip() or None)


class Replica:
    def __init__(self, index: int, spec: RemoteSpec, api_key: str | None = None, topic: str = "",
                 interval: float = 1.0, timeout: float = 2.0, history_s: float = 300.0) -> None:
        self.index, self.spec, self.interval, self.timeout = index, spec, interval, timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.model: str | None = None
        self.max_model_len: int | None = None
        self.state, self.since, self.error = "starting", time.time(), None
        self.has_metrics = True
        self._fails = 0
        self._scrapes: deque[Scrape] = deque()
        self.points: deque[ReplicaPoint] = deque(maxlen=int(history_s / interval))
        self.in_flight = 0
        self._lock = threading.Lock()
        self.tree = PrefixTree()
        self._texts: dict[tuple[str, str], str | None] = {}  # (first, last block) -> text
        self._by_first: dict[str, str] = {}  # first block -> the latest text found for a segment from it
        self._wanted: dict[tuple[str, str], tuple[int, ...]] = {}
        self._text_wake = threading.Event()
        self._detokenize = True
        self.subscriber = None
        if spec.kv_events:
            self.subscriber = KVEventSubscriber(spec.kv_events, self._on_batch, spec.kv_replay, topic,
                                                on_restart=self._on_restart)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"replica-{index}", daemon=True)
        self._text_thread = threading.Thread(target=self._text_run, name=f"replica-{index}-text", daemon=True)

    @property
    def up(self) -> bool:
        return self.state == "up"

    @property
    def load(self) -> float:
        """Requests running and waiting there (as last read) and in flight from here."""
        p = self.points[-1] if self.points else None
        return (p.running or 0) + (p.waiting or 0) + self.in_flight if p else self.in_flight

    def start(self) -> "Replica":
        self._thread.start()
        self._text_thread.start()
        if self.subscriber is not None:
            self.subscriber.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.subscriber is not None:
            self.subscriber.stop()
        self._thread.join(self.timeout + 1)
        self._text_thread.join(self.timeout * 2 + 1)

    def begin(self) -> None:
        """A request to this replica starts: counted in flight (for routing) until `end()`."""
        with self._lock:
            self.in_flight += 1

    def end(self) -> None:
        with self._lock:
            self.in_flight -= 1

    @contextmanager
    def request(self) -> Iterator[None]:
        """Count a request in flight to this replica while it lasts."""
        self.begin()
        try:
            yield
        finally:
            self.end()

    def mark_down(self, error: str) -> None:
        """A request found it unreachable: down now, not at the next poll."""
        with self._lock:
            self._fails = max(self._fails, 2)
            self._set("down", error)

    # ---- polling ----------------------------------------------------------------------------------
    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout, headers=self.headers) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                self.poll(client)
                self._stop.wait(max(0.05, self.interval - (time.monotonic() - started)))

    def poll(self, client: httpx.Client) -> None:
        """One look: /health, then (the first time) /v1/models, then /metrics."""
        try:
            health = client.get(f"{self.spec.url}/health")
            if health.status_code != 200:
                raise _Unwell(f"/health answered HTTP {health.status_code}")
            if self.model is None:
                self._read_model(client)
            metrics = client.get(f"{self.spec.url}/metrics")
            scrape = parse_scrape(metrics.text, time.time()) if metrics.status_code == 200 else None
        except httpx.ConnectError:
            self._failed("connection refused", definite=True)
            return
        except httpx.TimeoutException:
            self._failed(f"no answer within {self.timeout:g} s", definite=False)
            return
        except (_Unwell, httpx.HTTPError, ValueError) as exc:
            self._failed(str(exc)[:200] or type(exc).__name__, definite=False)
            return
        with self._lock:
            self._fails = 0
            self._set("up", None)
            self.has_metrics = scrape is not None and scrape.has_vllm
            if scrape is not None:
                self._scrapes.append(scrape)
                while self._scrapes and self._scrapes[0].t < scrape.t - 65:
                    self._scrapes.popleft()
                self.points.append(derive(list(self._scrapes)))

    def _read_model(self, client: httpx.Client) -> None:
        r = client.get(f"{self.spec.url}/v1/models")
        if r.status_code == 200:
            cards = r.json().get("data") or []
            if cards:
                self.model = str(cards[0].get("id"))
                mml = cards[0].get("max_model_len")
                self.max_model_len = int(mml) if isinstance(mml, int) else None

    def _failed(self, error: str, definite: bool) -> None:
        with self._lock:
            self._fails += 1
            if definite or self._fails >= 2:
                self._set("down", error)

    def _set(self, state: str, error: str | None) -> None:
        if state != self.state:
            self.state, self.since = state, time.time()
            log.info("engine %s is %s%s", self.spec.url, state, f" ({error})" if error else "")
        self.error = error

    # ---- the prefix-cache tree ------------------------------------------------------------------
    def _on_batch(self, seq: int, batch: Any) -> None:
        with self._lock:
            self.tree.apply(batch)

    def _on_restart(self) -> None:
        with self._lock:
            self.tree.clear()

    def tree_json(self, limit: int = 300) -> dict[str, Any]:
        """The tree as joined segments, each with its token text when known: the texts not yet
        known are looked up on the replica's text thread, never while the caller waits."""
        with self._lock:
            snap = self.tree.snapshot()
        segs, hidden = segments(snap, limit)
        out, wanted = [], {}
        for s in segs:
            key = (s.id, s.last)
            if key not in self._texts and self._detokenize:
                wanted[key] = s.token_ids
            # a segment that grew keeps showing its shorter text until the longer one is looked up
            out.append(_segment_json(s, self._texts.get(key) or self._by_first.get(s.id)))
        if wanted:
            with self._lock:
                self._wanted = wanted  # the newest view's wishes replace older ones
            self._text_wake.set()
        sub = self.subscriber
        return {"replica": self.index, "url": self.spec.url, "kv_events": self.spec.kv_events,
                "block_size": snap.block_size, "alive": snap.alive, "evicted": snap.evicted,
                "batches": snap.batches, "stored_blocks": snap.stored_blocks, "removed_blocks": snap.removed_blocks,
                "clears": snap.clears, "last_ts": snap.last_ts, "hidden": hidden,
                "lost": sub.lost if sub else 0, "restarts": sub.restarts if sub else 0, "segments": out}

    def _text_run(self) -> None:
        """Looks up the texts a view asked for, one /detokenize call a segment, the roots first."""
        with httpx.Client(timeout=self.timeout * 2, headers=self.headers) as client:
            while not self._stop.is_set():
                if not self._text_wake.wait(0.5):
                    continue
                self._text_wake.clear()
                with self._lock:
                    wanted, self._wanted = self._wanted, {}
                if len(self._texts) > 20_000:
                    self._texts.clear()
                    self._by_first.clear()
                for key, tokens in wanted.items():
                    if self._stop.is_set() or not self._detokenize or not self.up:
                        break
                    text = self._texts[key] = self._text(client, tokens)
                    if text is not None:
                        self._by_first[key[0]] = text

    def _text(self, client: httpx.Client, tokens: tuple[int, ...]) -> str | None:
        if self.model is None or not tokens:
            return None
        try:
            r = client.post(f"{self.spec.url}/detokenize", json={"model": self.model, "tokens": list(tokens)})
        except httpx.HTTPError:
            return None
        if r.status_code == 404:
            self._detokenize = False  # this server has no /detokenize: token counts only
            return None
        text = r.json().get("prompt") if r.status_code == 200 else None
        if isinstance(text, str) and len(text) > TEXT_CHARS:
            text = text[:TEXT_CHARS * 2 // 3] + " … " + text[-TEXT_CHARS // 3:]
        return text if isinstance(text, str) else None

    # ---- for the view ---------------------------------------------------------------------------
    def recent(self) -> list[Scrape]:
        """Its scrapes of the last minute, oldest first; none while it is down."""
        with self._lock:
            return list(self._scrapes) if self.up else []

    def to_json(self, since: float) -> dict[str, Any]:
        """The replica now, with the points newer than `since`."""
        with self._lock:
            points = [p.to_json() for p in self.points if p.t > since]
            sub = self.subscriber
            tree = None if sub is None else {"alive": len(self.tree), "batches": self.tree.batches,
                                              "lost": sub.lost, "restarts": sub.restarts}
            return {"index": self.index, "url": self.spec.url, "model": self.model, "state": self.state,
                    "since": self.since, "error": self.error, "metrics": self.has_metrics,
                    "in_flight": self.in_flight, "kv_events": self.spec.kv_events, "tree": tree, "points": points}


class _Unwell(Exception):
    pass


def _segment_json(s: Segment, text: str | None) -> dict[str, Any]:
    return {"id": s.id, "parent": s.parent, "depth": s.depth, "start": s.start, "blocks": s.blocks,
            "tokens": len(s.token_ids), "alive": s.alive, "stored": s.stored, "text": text}


class RemoteFleet:
    """The replicas behind `--engine-url`, polled on their own threads."""

    def __init__(self, specs: list[RemoteSpec], api_key: str | None = None, topic: str = "",
                 interval: float = 1.0) -> None:
        if not specs:
            raise ValueError("remote mode needs at least one engine URL")
        self.replicas = [Replica(i, s, api_key, topic, interval) for i, s in enumerate(specs)]
        self.api_key = api_key

    def start(self) -> "RemoteFleet":
        for r in self.replicas:
            r.start()
        return self

    def stop(self) -> None:
        for r in self.replicas:
            r.stop()

    @property
    def alive(self) -> bool:
        return any(r.up for r in self.replicas)

    @property
    def max_model_len(self) -> int:
        """The smallest context among the replicas that said (2048 when none has)."""
        known = [r.max_model_len for r in self.replicas if r.max_model_len]
        return min(known) if known else 2048

    def pick(self, exclude: set[int] = frozenset()) -> Replica | None:
        """The up replica with the least load, else one not yet known to be down, else None."""
        candidates = [r for r in self.replicas if r.index not in exclude]
        up = [r for r in candidates if r.up] or [r for r in candidates if r.state == "starting"]
        return min(up, key=lambda r: (r.load, r.index)) if up else None

    def state_json(self, since: list[float] | None = None) -> dict[str, Any]:
        """Every replica now, with its points newer than `since[i]` (all of them when None)."""
        since = since or [0.0] * len(self.replicas)
        total = derive_total([r.recent() for r in self.replicas])
        return {"t": time.time(), "replicas": [r.to_json(s) for r, s in zip(self.replicas, since)],
                "total": total.to_json() if total is not None else None}

    def tree_json(self, index: int) -> dict[str, Any] | None:
        if not 0 <= index < len(self.replicas):
            return None
        return self.replicas[index].tree_json()
