"""Simulated users for stage demos: each sends varied prompts, with staggered arrivals and random
lengths, through the same engine thread as real users, until stopped."""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from pathlib import Path

from engine.engine_thread import ChatPrompt, EngineThread
from engine.request_stream import EngineDeadError, RequestRejected, RequestStream
from engine.sampling_params import SamplingParams


def load_prompts(path: str | Path) -> list[str]:
    """One prompt a line; blank lines and lines starting with '#' are skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


@dataclass(frozen=True)
class LoadConfig:
    max_tokens: tuple[int, int] = (16, 192)  # each request's length, uniform in this range
    arrival_spread_s: float = 4.0  # users join at uniform times within this span
    think_s: tuple[float, float] = (0.2, 2.0)  # pause between a user's answer and its next prompt
    temperature: float = 0.8
    top_p: float = 0.95


@dataclass(frozen=True)
class LoadStatus:
    users: int
    in_flight: int
    completed: int
    failed: int

    def describe(self) -> str:
        if not self.users:
            return f"load generator stopped · {self.completed} answers completed"
        return (f"{self.users} simulated users · {self.in_flight} requests in flight · "
                f"{self.completed} completed · {self.failed} failed")


class LoadGenerator:
    """`start(n)` runs n user threads; `stop()` ends them and aborts their requests."""

    def __init__(self, engine: EngineThread, prompts: list[str], config: LoadConfig = LoadConfig(),
                 seed: int | None = None) -> None:
        if not prompts:
            raise ValueError("the load generator needs at least one prompt")
        self.engine, self.prompts, self.config = engine, prompts, config
        self._seed = seed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._streams: dict[int, RequestStream] = {}
        self._completed = self._failed = 0
        self._generation = 0

    def start(self, users: int) -> None:
        """Replace whatever runs by `users` simulated users."""
        self.stop()
        with self._lock:
            self._stop = threading.Event()
            self._generation += 1
            self._threads = [threading.Thread(target=self._user, args=(k, self._stop, self._generation),
                                              name=f"sim-user-{k}", daemon=True) for k in range(users)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            streams, self._streams = list(self._streams.values()), {}
            threads, self._threads = self._threads, []
        for stream in streams:
            stream.close()
        for t in threads:
            t.join(timeout=5)

    def status(self) -> LoadStatus:
        with self._lock:
            users = sum(t.is_alive() for t in self._threads)
            return LoadStatus(users, len(self._streams), self._completed, self._failed)

    def _user(self, k: int, stop: threading.Event, generation: int) -> None:
        rng = random.Random(None if self._seed is None else self._seed * 1000 + k)
        cfg = self.config
        stop.wait(rng.uniform(0, cfg.arrival_spread_s))
        turn = 0
        while not stop.is_set():
            params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p,
                                    max_tokens=rng.randint(*cfg.max_tokens))
            prompt = ChatPrompt(({"role": "user", "content": rng.choice(self.prompts)},))
            if not self._ask(k, f"sim-{generation}.{k}.{turn}", prompt, params, stop):
                return
            turn += 1
            stop.wait(rng.uniform(*cfg.think_s))

    def _ask(self, k: int, request_id: str, prompt: ChatPrompt, params: SamplingParams,
             stop: threading.Event) -> bool:
        """One request to completion; False when the user should quit (stopped, engine gone)."""
        try:
            stream = self.engine.submit(prompt, params, request_id)
        except EngineDeadError:
            return False
        except RequestRejected:
            with self._lock:
                self._failed += 1
            return True
        with self._lock:
            if stop.is_set():
                stream.close()
                return False
            self._streams[k] = stream
        error: Exception | None = None
        try:
            for _ in stream:
                pass
        except (RequestRejected, EngineDeadError) as exc:
            error = exc
        with self._lock:
            self._streams.pop(k, None)
            self._completed += error is None and not stop.is_set()
            self._failed += error is not None
        stream.close()
        return not isinstance(error, EngineDeadError)
