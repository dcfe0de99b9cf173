"""The engine on its background thread: many readers at once, abort frees blocks, bad input is
refused without harm, a dead engine fails requests fast (and /health says so), an idle engine costs no CPU, and the
load generator's simulated users come and go."""
from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from engine.core.config import CacheConfig, EngineConfig
from engine.serving.engine_thread import ChatPrompt, EngineThread
from engine.serving.llm_engine import LLMEngine
from engine.serving.request_stream import EngineDeadError, RequestRejected
from engine.core.sampling_params import SamplingParams
from server.http_app import build_http_app
from ui.load_generator import LoadConfig, LoadGenerator, load_prompts

PROMPTS = ["What is the capital of France?", "List three prime numbers.", "Write a haiku about rain.",
           "Why is the sky blue?"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=10)


@pytest.fixture(scope="module")
def engine(embedded_model_dir: str) -> LLMEngine:
    return LLMEngine(EngineConfig(model=embedded_model_dir, cache=CacheConfig(num_blocks=64), check_integrity=True))


@pytest.fixture
def thread(engine: LLMEngine):
    t = EngineThread(engine, block_map_interval=0.05).start()
    yield t
    t.stop()


def chat(text: str) -> ChatPrompt:
    return ChatPrompt(({"role": "user", "content": text},))


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def read_all(stream) -> tuple[list[int], str, str]:
    tokens, text, reason = [], "", None
    for out in stream:
        tokens += out.delta_token_ids
        text += out.delta_text
        reason = out.finish_reason
    return tokens, text, reason


def test_concurrent_readers_get_what_each_would_get_alone(thread: EngineThread) -> None:
    alone = [read_all(thread.submit(chat(p), GREEDY)) for p in PROMPTS]
    results: dict[int, tuple] = {}

    def reader(i: int) -> None:
        results[i] = read_all(thread.submit(chat(PROMPTS[i]), GREEDY))

    async def async_reader() -> tuple:
        tokens, text = [], ""
        async for out in await thread.submit_async(chat(PROMPTS[0]), GREEDY):
            tokens += out.delta_token_ids
            text += out.delta_text
        return tokens, text

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    async_result = asyncio.run(async_reader())
    for t in threads:
        t.join(60)
    assert [results[i] for i in range(len(PROMPTS))] == alone
    assert async_result == alone[0][:2]
    assert all(len(tokens) <= GREEDY.max_tokens and text for tokens, text, _ in alone)
    assert max(p.max_batch_size for p in thread.history.view().points) >= 2  # batched together


def test_close_mid_stream_aborts_and_frees_blocks(thread: EngineThread) -> None:
    stream = thread.submit(chat("Tell me a very long story about dragons."), SamplingParams(max_tokens=500))
    for _, _ in zip(stream, range(3)):
        pass
    assert thread.block_map.stats.used > 0
    stream.close()
    wait_for(lambda: not thread.block_map.seqs and thread.block_map.stats.used == 0)
    assert thread.history.view().latest_waste.paged_reserved == 0


def test_bad_requests_are_refused_and_the_engine_keeps_serving(thread: EngineThread) -> None:
    with pytest.raises(RequestRejected, match="empty"):
        read_all(thread.submit("", GREEDY))
    with pytest.raises(RequestRejected, match="tokens"):
        read_all(thread.submit(list(range(5000)), GREEDY))
    assert read_all(thread.submit(chat(PROMPTS[0]), GREEDY))[1]


def test_an_idle_engine_thread_uses_no_cpu(thread: EngineThread) -> None:
    read_all(thread.submit(chat(PROMPTS[1]), GREEDY))
    time.sleep(0.2)
    start = time.process_time()
    time.sleep(1.0)
    assert time.process_time() - start < 0.05


def test_a_dead_engine_fails_requests_fast(engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise RuntimeError("the device fell off")

    monkeypatch.setattr(engine, "step", boom)
    died: list[BaseException] = []
    thread = EngineThread(engine, on_death=died.append).start()
    stream = thread.submit(chat(PROMPTS[0]), GREEDY, request_id="doomed")
    with pytest.raises(EngineDeadError, match="fell off"):
        read_all(stream)
    assert not thread.alive and "fell off" in str(thread.error)
    assert died == [thread.error]
    start = time.monotonic()
    with pytest.raises(EngineDeadError):
        thread.submit(chat(PROMPTS[1]), GREEDY)
    assert time.monotonic() - start < 0.1
    http = TestClient(build_http_app(thread, "m"))
    assert http.get("/health").status_code == 503 and "fell off" in http.get("/health").json()["error"]
    assert "pagedchat_engine_up 0" in http.get("/metrics").text
    reply = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
    assert reply.status_code == 503 and "not running" in reply.json()["error"]["message"]
    engine.abort("doomed")  # leave the shared engine clean for the next test


def test_load_generator_users_come_and_go(thread: EngineThread) -> None:
    prompts = load_prompts(Path(__file__).resolve().parent.parent / "assets" / "prompts.txt")
    assert len(prompts) >= 20
    config = LoadConfig(max_tokens=(2, 6), arrival_spread_s=0.3, think_s=(0.0, 0.1))
    load = LoadGenerator(thread, prompts, config, seed=1)
    load.start(3)
    seen: set[str] = set()

    def progressed() -> bool:
        seen.update(s.request_id for s in thread.block_map.seqs)
        return load.status().completed >= 4

    wait_for(progressed, timeout=60)
    assert any(r.startswith("sim-") for r in seen)
    load.stop()
    status = load.status()
    assert status.users == 0 and status.in_flight == 0 and status.failed == 0
    wait_for(lambda: not thread.block_map.seqs and thread.block_map.stats.used == 0)


def test_a_stream_closed_before_the_engine_took_it_still_ends(engine: LLMEngine) -> None:
    """A client gone between submit and the engine's next look at its inbox: the reader waiting for
    the first output wakes (with nothing), instead of waiting forever."""
    from engine.serving.engine_thread import _Add
    from engine.serving.request_stream import _END, RequestStream

    thread = EngineThread(engine)
    stream = RequestStream("gone", thread.abort)
    stream.close()
    thread._add(_Add(stream, [1, 2, 3], GREEDY))
    assert stream._sync.get(timeout=1) is _END  # what a reader blocked before the close receives
    assert not engine.has_unfinished_requests()


def test_a_costly_block_map_is_rebuilt_rarely_while_requests_run(engine: LLMEngine) -> None:
    """The block map is O(pool): on a GPU's pool it costs tens of ms. While requests run it is rebuilt
    at most BLOCK_MAP_SHARE of the time; going idle rebuilds it at once."""
    thread = EngineThread(engine)  # not started: its publishing rule is called directly
    built = thread.block_map
    thread._block_map_cost = 1.0  # as if a build took a second
    thread._block_map_dirty = True
    thread._block_map_shape = (-1, -1)  # the live sequences changed
    thread._publish_block_map(idle=False)
    assert thread.block_map is built, "rebuilt within 1 s / BLOCK_MAP_SHARE of the last build"
    thread._publish_block_map(idle=True)
    assert thread.block_map is not built
    thread._block_map_cost, thread._block_map_dirty, thread._block_map_shape = 0.0, True, (-1, -1)
    again = thread.block_map
    thread._publish_block_map(idle=False)
    assert thread.block_map is not again, "a cheap map is rebuilt when the live sequences change"
