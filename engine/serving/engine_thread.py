"""The engine on its own background thread: the only thread that ever touches engine state.

Callers post commands to a thread-safe inbox and read each request's outputs from its own
`RequestStream`. The loop: take every pending command, step while anything is unfinished,
hand the deltas out, publish metrics; with nothing to do it blocks on the inbox (no CPU).
In slow motion (`Controls.step_delay_s`) it pauses after each step, still handling commands meanwhile.
A step whose batch raises fails only its own requests (see `LLMEngine.step`). If the thread dies
anyway (a lost device, a bug in the bookkeeping), every open request gets `EngineDeadError`, and
so does every later submit, at once, and `on_death` is called; the app (which watches `error`)
then exits non-zero so that a supervisor starts it again.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from engine.serving.block_map import BlockMapSnapshot, kv_waste
from engine.core.controls import Controls
from engine.serving.engine_info import EngineInfo, engine_info
from engine.serving.event_feed import EventFeed
from engine.core.metrics import MetricsSnapshot
from engine.serving.metrics_history import MetricsHistory
from engine.serving.request_inspection import RequestInspection, with_token_texts
from engine.serving.request_stream import EngineDeadError, RequestRejected, RequestStream
from engine.core.sampling_params import SamplingParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatPrompt:
    """A conversation in messages format, put through the model's chat template by the engine."""

    messages: tuple[dict[str, Any], ...]


Prompt = str | list[int] | ChatPrompt


@dataclass(frozen=True)
class _Add:
    stream: RequestStream
    token_ids: list[int]
    params: SamplingParams


@dataclass(frozen=True)
class _Abort:
    request_id: str


@dataclass(frozen=True)
class _SetControls:
    controls: Controls


@dataclass(frozen=True)
class _Inspect:
    request_id: str
    answer: concurrent.futures.Future


_STOP = object()


class EngineThread:
    """Owns an `LLMEngine` (any object with its add_request / step / abort API) on a daemon thread."""

    def __init__(self, engine: Any, block_map_interval: float = 0.25, history: MetricsHistory | None = None,
                 on_death: Callable[[BaseException], None] | None = None,
                 kv_events: Callable[[list[Any]], None] | None = None) -> None:
        self.engine = engine  # touched by the engine thread only, once started
        self.info: EngineInfo = engine_info(engine)
        self.history = history or MetricsHistory(max_model_len=self.info.max_model_len)
        self.block_map_interval = block_map_interval
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, tuple[RequestStream, int]] = {}  # request id -> (stream, samples left)
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._error: BaseException | None = None
        self.on_death = on_death  # called on the engine thread with what killed it
        # given the prefix cache's changes (engine.core.kv_cache_events) after each step, on the engine
        # thread: it must not block (the KV-event publisher queues them)
        self._kv_events = kv_events
        if kv_events is not None:
            engine.record_kv_cache_events(True)
        self._stopping = False
        self._lock = threading.Lock()  # orders submits against the thread's death
        self._block_map_shape = (0, 0)  # (running, waiting) when the block map was built
        self._block_map: BlockMapSnapshot = self._build_block_map()
        self._block_map_dirty = False
        self._controls = Controls()  # the latest set, read by any thread
        self._step_delay_s = 0.0  # the engine thread's copy of the slow-motion pause
        self._step_end = 0.0  # monotonic time of the last step's end
        self._resume_at = 0.0  # the next step waits until then (slow motion); 0: no pause

    # ---- any thread ----------------------------------------------------------------------------
    def start(self) -> "EngineThread":
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Abort what runs, end the thread and wait for it."""
        with self._lock:
            self._stopping = True
        self._inbox.put(_STOP)
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    @property
    def error(self) -> BaseException | None:
        """What killed the engine thread, if it died."""
        return self._error

    @property
    def block_map(self) -> BlockMapSnapshot:
        return self._block_map

    @property
    def feed(self) -> EventFeed | None:
        """The engine's event feed (thread-safe to read), None when it records none."""
        return self.engine.feed

    @property
    def latest(self) -> MetricsSnapshot | None:
        """The metrics of the last step (None before the first)."""
        return self.history.latest

    def submit(self, prompt: Prompt, params: SamplingParams, request_id: str | None = None,
               loop: asyncio.AbstractEventLoop | None = None) -> RequestStream:
        """Queue a request; read its outputs from the returned stream (async if `loop` is given).

        The prompt is tokenized here, on the calling thread, never on the engine's. Raises
        RequestRejected for a prompt that cannot be encoded, and EngineDeadError at once when the
        engine thread is not running.
        """
        self._check_alive()
        return self._queue(self._encode(prompt), params, request_id, loop)

    async def submit_async(self, prompt: Prompt, params: SamplingParams,
                           request_id: str | None = None) -> RequestStream:
        """`submit` for a coroutine: the prompt is tokenized in a worker thread (the event loop
        stays free), and the stream is read with `async for` on the running loop."""
        self._check_alive()
        token_ids = await asyncio.to_thread(self._encode, prompt)
        return self._queue(token_ids, params, request_id, asyncio.get_running_loop())

    def tokenize(self, prompt: Prompt) -> list[int]:
        """The token ids a request with `prompt` would get (a chat through the template);
        RequestRejected if it cannot be encoded. Runs on the calling thread."""
        return self._encode(prompt)

    def detokenize(self, token_ids: list[int]) -> str:
        """The text of `token_ids`; RequestRejected for an id outside the vocabulary."""
        try:
            return self.engine.decode(token_ids)
        except ValueError as exc:
            raise RequestRejected(str(exc)) from exc

    def _encode(self, prompt: Prompt) -> list[int]:
        """Token ids of `prompt` (the engine's encoders are thread-safe); RequestRejected if bad."""
        try:
            if isinstance(prompt, ChatPrompt):
                return self.engine.encode_chat(list(prompt.messages))
            return self.engine.encode(prompt)
        except Exception as exc:  # noqa: BLE001 - a template or tokenizer error is the request's fault
            raise RequestRejected(str(exc) or type(exc).__name__) from exc

    def _queue(self, token_ids: list[int], params: SamplingParams, request_id: str | None,
               loop: asyncio.AbstractEventLoop | None) -> RequestStream:
        request_id = request_id or f"req-{next(self._ids)}"
        stream = RequestStream(request_id, self.abort, loop)
        with self._lock:
            self._check_alive()
            self._inbox.put(_Add(stream, token_ids, params))
        return stream

    def _check_alive(self) -> None:
        if not self.alive:
            raise EngineDeadError(f"the engine is not running ({self._error or 'stopped'})")

    def abort(self, request_id: str) -> None:
        """Stop a request and free its blocks (no-op if it already finished)."""
        self._inbox.put(_Abort(request_id))

    @property
    def controls(self) -> Controls:
        """The controls last set (the engine thread applies them before its next step)."""
        return self._controls

    def set_controls(self, controls: Controls) -> None:
        """Change batching, the block cap and slow motion live; a pause under way is cut short or
        lengthened to the new delay."""
        with self._lock:  # the last posted is the one `controls` returns
            self._controls = controls
            self._inbox.put(_SetControls(controls))

    def inspect(self, request_id: str, timeout: float = 2.0) -> RequestInspection | None:
        """A request's live sequences, tokens and blocks (None if unknown or finished), each token's
        text decoded here, on the calling thread. The engine thread answers at once when idle or
        pausing, else between steps: TimeoutError if not within `timeout`."""
        answer: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._check_alive()
            self._inbox.put(_Inspect(request_id, answer))
        try:
            found = answer.result(timeout)
        except concurrent.futures.TimeoutError:
            answer.cancel()
            raise TimeoutError(f"the engine did not answer within {timeout:g} s") from None
        return None if found is None else with_token_texts(found, self._token_text)

    def _token_text(self, token_id: int) -> str:
        return self.engine.tokenizer.decode([token_id])

    # ---- the engine thread ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self._take_commands(block=not self.engine.has_unfinished_requests()):
                if self.engine.has_unfinished_requests():
                    self._step()
                else:
                    self.engine.flush_events()  # an abort of the last request reaches the feed now
                self._hand_out_kv_events()
                self._publish_block_map(idle=not self.engine.has_unfinished_requests())
        except BaseException as exc:  # noqa: BLE001 - whatever it was, every reader must hear of it
            log.exception("the engine thread died")
            self._error = exc
        with self._lock:
            self._stopping = True
        self._fail_all(EngineDeadError(f"the engine stopped: {self._error or 'the server is shutting down'}"))
        if self._error is None:
            log.info("the engine thread stopped")
        elif self.on_death is not None:
            self.on_death(self._error)

    def _take_commands(self, block: bool) -> bool:
        """Handle every queued command (waiting for the first one if `block`), and in slow motion
        every one that comes until the pause after the last step ends; False on stop."""
        if block:
            self._resume_at = 0.0  # nothing to step: no pause to keep
        try:
            command = self._inbox.get() if block else self._next_command()
            while True:
                if command is _STOP:
                    return False
                self._handle(command)
                if self._resume_at:  # pausing: show what the command changed now
                    self._publish_block_map(idle=not self.engine.has_unfinished_requests())
                command = self._next_command()
        except queue.Empty:
            return True

    def _next_command(self) -> Any:
        """The next command, waiting only for what is left of a pause; queue.Empty if none."""
        left = self._resume_at - time.monotonic()
        if left > 0:
            return self._inbox.get(timeout=left)
        self._resume_at = 0.0
        return self._inbox.get_nowait()

    def _handle(self, command: _Add | _Abort | _SetControls | _Inspect) -> None:
        if isinstance(command, _Inspect):
            if command.answer.set_running_or_notify_cancel():  # False: the caller gave up
                try:
                    command.answer.set_result(self.engine.inspect_request(command.request_id))
                except Exception as exc:  # noqa: BLE001 - the caller hears of it, the engine goes on
                    command.answer.set_exception(exc)
            return
        self._block_map_dirty = True
        if isinstance(command, _SetControls):
            self._set_controls(command.controls)
        elif isinstance(command, _Abort):
            self._abort(command.request_id)
        else:
            self._add(command)

    def _set_controls(self, controls: Controls) -> None:
        try:
            self.engine.set_controls(controls)
        except Exception:  # noqa: BLE001 - a demo control must not stop the engine
            log.exception("could not apply the controls %s", controls)
            return
        self._step_delay_s = controls.step_delay_s
        if self._resume_at:
            self._resume_at = self._step_end + controls.step_delay_s

    def _add(self, command: _Add) -> None:
        stream = command.stream
        if stream.finished:  # closed by its reader before the engine saw it: wake a reader still waiting
            stream.end()
            return
        try:
            seq = self.engine.add_request(stream.request_id, command.token_ids, command.params)
        except Exception as exc:  # noqa: BLE001 - a bad request must not kill the engine
            stream.push(exc if isinstance(exc, RequestRejected) else RequestRejected(str(exc)))
            return
        stream.num_prompt_tokens = seq.num_prompt_tokens
        self._streams[stream.request_id] = (stream, command.params.n)

    def _abort(self, request_id: str) -> None:
        entry = self._streams.pop(request_id, None)
        outputs = self.engine.abort(request_id)
        if entry is not None:
            for out in outputs:
                entry[0].push(out)
            entry[0].end()

    def _step(self) -> None:
        result = self.engine.step()
        for out in result.outputs:
            entry = self._streams.get(out.request_id)
            if entry is None:
                continue
            stream, left = entry
            if not stream.push(out):  # the reader's loop is gone: nobody will read the rest
                self._abort(out.request_id)
                continue
            if out.finished:
                left -= 1
                self._streams[out.request_id] = (stream, left)
                if left == 0:
                    del self._streams[out.request_id]
                    stream.end()
        snap = result.metrics
        self.history.record(snap, kv_waste(snap.blocks, self.engine.live_sequences()))
        self._block_map_dirty = True
        self._step_end = time.monotonic()
        self._resume_at = self._step_end + self._step_delay_s if self._step_delay_s else 0.0

    # a block map costs O(pool): on a GPU's pool of hundreds of thousands of blocks, tens of ms.
    # While requests run it is rebuilt at most this share of the engine thread's time.
    BLOCK_MAP_SHARE = 0.05

    def _build_block_map(self) -> BlockMapSnapshot:
        self._block_map_shape = self.engine.queue_lengths()
        start = time.perf_counter()
        bm = self.engine.block_map()
        self._block_map_cost = time.perf_counter() - start
        return bm

    def _publish_block_map(self, idle: bool) -> None:
        """Rebuild when the set of live sequences changed (admitted, finished, preempted, aborted),
        on going idle, and otherwise at most every `block_map_interval` seconds; but while requests
        run, never so often that building it takes more than `BLOCK_MAP_SHARE` of the thread."""
        if not self._block_map_dirty:
            return
        since = time.perf_counter() - self._block_map.timestamp
        if not idle and since < self._block_map_cost / self.BLOCK_MAP_SHARE:
            return  # too soon for a pool this large; readers of the feed catch up from its records
        changed = self.engine.queue_lengths() != self._block_map_shape
        if idle or changed or since >= self.block_map_interval:
            self._block_map = bm = self._build_block_map()
            self._block_map_dirty = False
            if idle:
                self.history.record_idle(bm.timestamp, bm.stats, kv_waste(bm.stats, bm.seqs))

    def _hand_out_kv_events(self) -> None:
        if self._kv_events is None:
            return
        changes = self.engine.take_kv_cache_events()
        if changes:
            try:
                self._kv_events(changes)
            except Exception:  # noqa: BLE001 - a broken listener must not stop the engine
                log.exception("handing out KV-cache events failed")

    def _fail_all(self, exc: EngineDeadError) -> None:
        for stream, _ in self._streams.values():
            stream.push(exc)
        self._streams.clear()
        while True:  # requests still in the inbox fail too
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, _Add):
                command.stream.push(exc)
            elif isinstance(command, _Inspect) and command.answer.set_running_or_notify_cancel():
                command.answer.set_exception(exc)
