"""The running app through its real clients: gradio_client chats, the official openai client,
a Prometheus parser on /metrics, /health; all against one server on a free loopback port."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from gradio_client import Client
from gradio_client.client import Job
from prometheus_client.parser import text_string_to_metric_families

from app import engine_config, parse_args
from engine.core.config import SchedulerConfig
from engine.core.controls import Controls
from engine.core.sampling_params import SamplingParams
from live_server import MODEL_NAME, LiveServer, start_live_server

SYSTEM = "You are a helpful assistant."
PROMPTS = ["What is the capital of France?", "Name three fruits.", "Write a haiku about the sea.",
           "What is 12 times 3?", "Give me a tip for sleeping well.", "What color is the sky?",
           "Say hello in Spanish.", "Name a famous painter."]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def live(embedded_model_dir: str):
    server = start_live_server(embedded_model_dir)
    yield server
    server.stop()


@pytest.fixture
def new_client(live: LiveServer):
    """Each call: a new gradio_client session, i.e. another user with an empty conversation."""
    clients: list[Client] = []

    def make() -> Client:
        clients.append(Client(live.url, verbose=False, max_workers=80))  # its default, 40, caps concurrency
        return clients[-1]

    yield make
    with ThreadPoolExecutor(8) as pool:  # closing one takes most of a second
        list(pool.map(Client.close, clients))


@pytest.fixture(scope="module")
def oai(live: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=60)


def wait_for(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        time.sleep(0.02)


def holding_blocks(live: LiveServer) -> bool:
    return live.engine.block_map.stats.used > 0


def wait_until_idle(live: LiveServer) -> None:
    bm = lambda: live.engine.block_map  # noqa: E731
    wait_for(lambda: not bm().seqs and not bm().stats.used, "blocks freed")


def ask(client: Client, prompt: str, max_tokens: int = MAX_TOKENS, temperature: float = 0.0) -> Job:
    return client.submit(prompt, SYSTEM, temperature, 1.0, max_tokens, api_name="/chat")


# ---- the command line ----------------------------------------------------------------------------
def test_max_waiting_flag_sets_the_schedulers_queue_bound() -> None:
    assert engine_config(parse_args([])).scheduler.max_waiting == SchedulerConfig().max_waiting
    assert engine_config(parse_args(["--max-waiting", "3"])).scheduler.max_waiting == 3
    with pytest.raises(ValueError, match="max_waiting"):
        engine_config(parse_args(["--max-waiting", "0"]))


# ---- gradio_client --------------------------------------------------------------------------------
def test_eight_concurrent_chats_each_equal_their_greedy_answer_alone(live: LiveServer, new_client) -> None:
    users = [new_client() for _ in PROMPTS]
    alone = []
    for user, prompt in zip(users, PROMPTS):
        alone.append(ask(user, prompt).result())
        user.reset_session()  # forget that conversation
    jobs = [ask(user, prompt) for user, prompt in zip(users, PROMPTS)]
    together = [job.result(timeout=120) for job in jobs]
    assert together == alone
    assert all(isinstance(a, str) and a for a in alone)
    assert max(p.max_batch_size for p in live.engine.history.view().points) >= 4  # they were batched
    assert any(len(job.outputs()) > 2 for job in jobs)  # and streamed, not sent in one piece
    wait_until_idle(live)


def test_stop_mid_stream_frees_the_requests_blocks(live: LiveServer, new_client) -> None:
    job = ask(new_client(), "Tell me a long story about a dragon and a knight.", max_tokens=1000, temperature=0.8)
    deadline = time.monotonic() + 30
    while len(job.outputs()) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    wait_for(lambda: holding_blocks(live), "blocks held")
    job.cancel()
    wait_until_idle(live)
    assert len(job.outputs()[-1]) < 1000 * 3  # it did stop early


# ---- the OpenAI-compatible API --------------------------------------------------------------------
def test_openai_models(oai: openai.OpenAI) -> None:
    assert [m.id for m in oai.models.list().data] == [MODEL_NAME]


def test_openai_chat_completion_streaming_and_not(oai: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPTS[0]}]
    full = oai.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=MAX_TOKENS, temperature=0)
    answer = full.choices[0].message.content
    assert answer and full.choices[0].finish_reason in ("stop", "length")
    assert full.usage.completion_tokens <= MAX_TOKENS and full.usage.prompt_tokens > 10
    chunks = list(oai.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=MAX_TOKENS,
                                              temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_openai_completions_streaming_and_not(oai: openai.OpenAI) -> None:
    full = oai.completions.create(model=MODEL_NAME, prompt="The capital of France is", max_tokens=6, temperature=0)
    assert full.choices[0].text and full.usage.completion_tokens == 6 and full.choices[0].finish_reason == "length"
    parts = list(oai.completions.create(model=MODEL_NAME, prompt="The capital of France is", max_tokens=6,
                                        temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in parts) == full.choices[0].text
    two = oai.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=4, n=2, seed=3)
    assert sorted(c.index for c in two.choices) == [0, 1] and two.usage.completion_tokens == 8


def test_openai_bad_requests_get_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="at most"):
        oai.completions.create(model=MODEL_NAME, prompt=[1] * 5000, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        oai.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], temperature=-1)


def test_a_client_gone_mid_stream_frees_its_blocks(live: LiveServer) -> None:
    body = {"model": MODEL_NAME, "prompt": "Write a long essay about the history of Rome.", "max_tokens": 1000,
            "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{live.url}/v1/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
        wait_for(lambda: holding_blocks(live), "blocks held")
    wait_until_idle(live)


# ---- /health and /metrics -------------------------------------------------------------------------
def scrape(live: LiveServer) -> dict[str, float]:
    response = httpx.get(f"{live.url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def test_metrics_parse_as_prometheus_text_and_move(live: LiveServer, oai: openai.OpenAI) -> None:
    before = scrape(live)
    for name in ("pagedchat_time_to_first_token_seconds_count", "pagedchat_inter_token_latency_seconds_count",
                 "pagedchat_kv_cache_usage_ratio", "pagedchat_num_requests_running",
                 "pagedchat_num_requests_waiting", "pagedchat_generation_tokens_total",
                 "pagedchat_kv_cache_blocks{state=used}", "pagedchat_engine_up"):
        assert name in before, name
    assert before["pagedchat_engine_up"] == 1
    oai.completions.create(model=MODEL_NAME, prompt="Count to five:", max_tokens=5, temperature=0)
    after = scrape(live)
    assert after["pagedchat_generation_tokens_total"] == before["pagedchat_generation_tokens_total"] + 5
    assert after["pagedchat_time_to_first_token_seconds_count"] == before["pagedchat_time_to_first_token_seconds_count"] + 1
    assert after["pagedchat_inter_token_latency_seconds_count"] == before["pagedchat_inter_token_latency_seconds_count"] + 4
    assert after['pagedchat_time_to_first_token_seconds_bucket{le=+Inf}'] == after["pagedchat_time_to_first_token_seconds_count"]


def test_metrics_show_running_requests_and_kv_usage(live: LiveServer) -> None:
    stream = live.engine.submit("Tell me everything about the ocean.", SamplingParams(max_tokens=400, ignore_eos=True))
    try:
        next(iter(stream))
        time.sleep(0.3)
        during = scrape(live)
        assert during["pagedchat_num_requests_running"] == 1 and during["pagedchat_kv_cache_usage_ratio"] > 0
        # under a block cap (memory pressure) usage is against what may be used, as the KV tile shows it
        live.engine.set_controls(Controls(block_cap=live.engine.info.num_blocks // 4))
        time.sleep(0.5)
        capped = scrape(live)
        assert capped["pagedchat_kv_cache_usable_blocks"] == live.engine.info.num_blocks // 4
        assert capped["pagedchat_kv_cache_usage_ratio"] == pytest.approx(
            capped["pagedchat_kv_cache_blocks{state=used}"] / capped["pagedchat_kv_cache_usable_blocks"])
    finally:
        live.engine.set_controls(Controls())
        stream.close()
    wait_until_idle(live)
    assert scrape(live)["pagedchat_kv_cache_usage_ratio"] == 0


def test_health(live: LiveServer) -> None:
    response = httpx.get(f"{live.url}/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_sixty_four_chats_stream_at_once(live: LiveServer, new_client) -> None:
    """Gradio's default of one event at a time is raised: 64 chats end up in one engine batch."""
    client = new_client()
    jobs = [ask(client, f"Say the number {i}.", max_tokens=24) for i in range(64)]
    answers = [job.result(timeout=120) for job in jobs]
    assert all(isinstance(a, str) and a for a in answers)
    biggest = max(p.max_batch_size for p in live.engine.history.view().points)
    assert biggest >= 48, biggest
    wait_until_idle(live)
