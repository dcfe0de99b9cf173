"""Simulated users for stage demos: each sends varied prompts, with staggered arrivals and random
lengths, through the same engine thread as real users, until stopped. What a user sends is shaped
by a `LoadConfig` (a demo scenario's: a shared system prompt, n samples, long prompts), built by
the pure `make_request`.

A load belongs to whoever started it (a browser session): it stops when that session ends or when
its time limit runs out, and only its owner (or a holder of the presenter key) can stop or replace
it. The operator's policy decides who may start one at all: anyone, presenter-key holders, or
nobody. The checks are here, behind the UI's handlers, so no call of the Gradio API gets around them.
"""
from __future__ import annotations

import hmac
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from engine.serving.engine_thread import ChatPrompt, EngineThread
from engine.serving.request_stream import EngineDeadError, RequestRejected, RequestStream
from engine.core.sampling_params import SamplingParams


class Submitter(Protocol):
    """Where simulated users send: the engine thread, or remote engines (server.remote_client)."""

    def submit(self, prompt: ChatPrompt, params: SamplingParams, request_id: str) -> Any:
        """A stream: iterable to the end, and `close()`-able from another thread (an abort)."""
        ...


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
    system_prompt: str | None = None  # the system message of every request (a shared prefix)
    n: int = 1  # samples per request (parallel sampling)
    long_prompt_tokens: int = 0  # pad each prompt to about this many tokens with other questions

    def __post_init__(self) -> None:
        if not 1 <= self.max_tokens[0] <= self.max_tokens[1]:
            raise ValueError(f"max_tokens must be a range (low, high) with 1 <= low <= high, got {self.max_tokens}")
        if not 0 <= self.think_s[0] <= self.think_s[1] or self.arrival_spread_s < 0:
            raise ValueError("think_s must be a range of seconds >= 0, and arrival_spread_s >= 0")
        if self.n < 1 or self.long_prompt_tokens < 0:
            raise ValueError("n must be >= 1 and long_prompt_tokens >= 0")


CHARS_PER_TOKEN = 3.7  # English text through SmolLM2's BPE: what long_prompt_tokens is estimated with


def filler(rng: random.Random, prompts: list[str], tokens: int) -> str:
    """About `tokens` tokens of earlier questions, drawn (with repeats) in a random order: each
    request's differs from its first line on, so only the chat template's head hits the prefix cache."""
    lines = ["Earlier questions in this thread, for context only:"]
    size = len(lines[0])
    while size < tokens * CHARS_PER_TOKEN:
        lines.append(f"{len(lines)}. {rng.choice(prompts)}")
        size += len(lines[-1]) + 1
    return "\n".join(lines)


def make_request(rng: random.Random, prompts: list[str], config: LoadConfig) -> tuple[ChatPrompt, SamplingParams]:
    """One simulated user's next request: a random prompt (after a filler when long prompts are
    asked for), under the shared system prompt if any, with a random max_tokens in the range."""
    params = SamplingParams(n=config.n, temperature=config.temperature, top_p=config.top_p,
                            max_tokens=rng.randint(*config.max_tokens))
    question = rng.choice(prompts)
    if config.long_prompt_tokens:
        question = f"{filler(rng, prompts, config.long_prompt_tokens)}\n\nNow answer only this one: {question}"
    system = ({"role": "system", "content": config.system_prompt},) if config.system_prompt else ()
    return ChatPrompt(system + ({"role": "user", "content": question},)), params


OPERATOR = "operator"  # the owner name of calls from the server itself (shutdown, tests)


class LoadRefused(Exception):
    """Not allowed: the message says why, for the screen."""


@dataclass(frozen=True)
class LoadPolicy:
    mode: str = "open"  # open: anyone may start a load | key: presenter-key holders | off
    key: str | None = None
    time_limit_s: float = 300.0  # a load stops by itself after this long

    def __post_init__(self) -> None:
        if self.mode not in ("open", "key", "off"):
            raise ValueError(f"unknown load generator mode {self.mode!r}")
        if self.mode == "key" and not self.key:
            raise ValueError("the key mode needs a presenter key")
        if self.time_limit_s <= 0:
            raise ValueError("the load generator's time limit must be positive")


@dataclass(frozen=True)
class LoadStatus:
    users: int
    in_flight: int
    completed: int
    failed: int
    owner: str | None = None  # the session that started the running load
    seconds_left: float = 0.0
    label: str | None = None  # the scenario the load runs, if any

    def describe(self) -> str:
        if not self.users:
            return f"load generator stopped · {self.completed} answers completed"
        left = int(self.seconds_left)
        what = f"scenario “{self.label}”: " if self.label else ""
        return (f"{what}{self.users} simulated users (started by {owner_label(self.owner)}, stops in {left // 60}:{left % 60:02d})"
                f" · {self.in_flight} requests in flight · {self.completed} completed · {self.failed} failed")


def owner_label(owner: str | None) -> str:
    """A short public name for a session: enough to tell two apart, useless to impersonate one."""
    if owner in (None, OPERATOR):
        return "the operator"
    return "visitor " + hmac.new(b"pagedchat", owner.encode(), "sha256").hexdigest()[:4]


class LoadGenerator:
    """`start(n)` runs n user threads; `stop()` ends them and aborts their requests."""

    def __init__(self, engine: EngineThread | Submitter, prompts: list[str], config: LoadConfig = LoadConfig(),
                 seed: int | None = None, policy: LoadPolicy = LoadPolicy()) -> None:
        if not prompts:
            raise ValueError("the load generator needs at least one prompt")
        self.engine, self.prompts, self.config, self.policy = engine, prompts, config, policy
        self._owner: str | None = None
        self._deadline = 0.0
        self._timer: threading.Timer | None = None
        self._control = threading.RLock()  # one start, stop or release at a time: checks and changes together
        self._seed = seed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._streams: dict[int, RequestStream] = {}
        self._completed = self._failed = 0
        self._generation = 0
        self._on_stop: Callable[[], None] | None = None
        self._label: str | None = None

    MAX_USERS = 64

    def start(self, users: int, owner: str = OPERATOR, key: str | None = None, config: LoadConfig | None = None,
              on_stop: Callable[[], None] | None = None, label: str | None = None) -> None:
        """Replace whatever runs (if `owner` may) by `users` simulated users for the time limit,
        sending what `config` (default: the generator's) shapes. `on_stop` is called once when this
        load ends, however it ends (stopped, replaced, expired, its owner gone); `label` names it (a
        scenario) in the status. Raises LoadRefused
        when the policy or another owner's running load says no."""
        if not 1 <= users <= self.MAX_USERS:
            raise LoadRefused(f"between 1 and {self.MAX_USERS} simulated users, please")
        config = config or self.config
        with self._control:
            self._authorize(owner, key, "start")
            self.stop(owner, key)
            with self._lock:
                stop = self._stop = threading.Event()
                self._generation += 1
                self._owner, self._deadline = owner, time.monotonic() + self.policy.time_limit_s
                self._on_stop, self._label = on_stop, label
                timer = self._timer = threading.Timer(self.policy.time_limit_s, self._expire, args=(self._generation,))
                timer.daemon = True
                threads = self._threads = [
                    threading.Thread(target=self._user, args=(k, stop, self._generation, config),
                                     name=f"sim-user-{k}", daemon=True) for k in range(users)]
            timer.start()
            for t in threads:
                t.start()

    def stop(self, owner: str = OPERATOR, key: str | None = None) -> None:
        """End the running load and abort its requests (LoadRefused unless `owner` may)."""
        with self._control:
            self._authorize(owner, key, "stop")
            self._stop.set()
            with self._lock:
                streams, self._streams = list(self._streams.values()), {}
                threads, self._threads = self._threads, []
                timer, self._timer, self._owner = self._timer, None, None
                on_stop, self._on_stop, self._label = self._on_stop, None, None
            if timer is not None:
                timer.cancel()
            for stream in streams:
                stream.close()
            for t in threads:
                t.join(timeout=5)
            if on_stop is not None:
                on_stop()

    def while_running(self, owner: str, key: str | None, change: Callable[[], None]) -> None:
        """Make `change` (of the engine's controls) if a load runs and `owner` may stop it: the
        controls last as long as the load, whose `on_stop` restores them. LoadRefused otherwise."""
        with self._control:
            self._authorize(owner, key, "change the engine's controls while")
            if not self.status().users:
                raise LoadRefused("start a scenario or a load first: the engine's controls last as long as a load")
            change()

    def release(self, owner: str) -> None:
        """The session `owner` ended (its browser tab closed): its load, if one runs, stops (with no
        key needed: the load was that session's)."""
        with self._control:
            if owner != OPERATOR and self._owner == owner:
                self.stop()

    def _expire(self, generation: int) -> None:
        with self._control:
            if self._generation == generation:
                self.stop()

    def _authorize(self, owner: str, key: str | None, action: str) -> None:
        if owner == OPERATOR:
            return
        if self.policy.mode == "off":
            raise LoadRefused("the load generator is turned off on this server")
        has_key = bool(self.policy.key and key and hmac.compare_digest(key.encode(), self.policy.key.encode()))
        if self.policy.mode == "key" and not has_key:
            raise LoadRefused(f"a presenter key is needed to {action} the load generator")
        running = self._owner is not None and any(t.is_alive() for t in self._threads)
        if running and self._owner != owner and not has_key:
            raise LoadRefused(f"a load started by {owner_label(self._owner)} is running; only that session (or the "
                              f"presenter key) can {action} it before it ends")

    def status(self) -> LoadStatus:
        with self._lock:
            users = sum(t.is_alive() for t in self._threads)
            left = max(0.0, self._deadline - time.monotonic()) if users else 0.0
            return LoadStatus(users, len(self._streams), self._completed, self._failed,
                              self._owner if users else None, left, self._label if users else None)

    def _user(self, k: int, stop: threading.Event, generation: int, cfg: LoadConfig) -> None:
        rng = random.Random(None if self._seed is None else self._seed * 1000 + k)
        stop.wait(rng.uniform(0, cfg.arrival_spread_s))
        turn = 0
        while not stop.is_set():
            prompt, params = make_request(rng, self.prompts, cfg)
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
