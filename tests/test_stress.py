"""A live demo going wrong, in about 30 s: 64 clients stream at once through the HTTP API on loopback,
with random prompt and answer lengths; a quarter of them hang up at random moments; attackers send
inputs that once killed the engine (token ids outside the vocabulary, NaN, bad roles and parts) in
among them; the KV pool is so small that the engine must preempt. Afterwards every attacker got its
400, every client that stayed got a whole answer (the greedy and seeded ones exactly their answer
alone), every block is back in the free pool, and the integrity check held after every step."""
from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field

import httpx
import pytest

from engine.serving.llm import LLM
from engine.core.sampling_params import SamplingParams
from live_server import MODEL_NAME, LiveServer, start_live_server

CLIENTS, LEAVERS = 64, 16
NUM_BLOCKS = 32  # 512 token slots for 64 x about 60: admission fills the pool, decodes then preempt
WORDS = ("river mountain engine paper light garden story music number window bread winter city robot "
         "ocean planet friend market silver forest question answer dragon castle tea train cloud").split()
TIME_LIMIT = 180.0  # seconds for the storm, a bound against hangs; it takes 11-14 on an idle 2-core machine


@dataclass
class Client:
    chat: bool  # /v1/chat/completions, else /v1/completions
    prompt: str
    params: SamplingParams
    leave_after: int | None  # hang up after this many events (0: right after the headers)
    text: str = ""
    finish_reason: str | None = None
    done: bool = False  # saw [DONE]
    events: list[dict] = field(default_factory=list)

    @property
    def checked(self) -> bool:
        """Its answer alone is known: greedy, or sampled with a seed (batch-independent too)."""
        return self.params.temperature == 0.0 or self.params.seed is not None

    def body(self) -> dict:
        p = self.params
        body = {"model": MODEL_NAME, "max_tokens": p.max_tokens, "temperature": p.temperature, "top_p": p.top_p,
                "seed": p.seed, "ignore_eos": p.ignore_eos, "stream": True}
        if self.chat:
            return body | {"messages": [{"role": "user", "content": self.prompt}]}
        return body | {"prompt": self.prompt}


def make_clients(rng: random.Random) -> list[Client]:
    clients = []
    for i in range(CLIENTS):
        prompt = " ".join(rng.choices(WORDS, k=rng.randint(1, 40)))
        if i < LEAVERS:  # long enough (24 events) to still be streaming when they leave
            params, leave = SamplingParams(temperature=0.8, max_tokens=24, ignore_eos=True), rng.randint(0, 8)
        elif i % 3:
            params, leave = SamplingParams(temperature=0.0, max_tokens=rng.randint(1, 24)), None
        else:
            params = SamplingParams(temperature=0.8, top_p=0.9, seed=rng.randrange(10**6), max_tokens=rng.randint(1, 24))
            leave = None
        clients.append(Client(chat=bool(i % 2), prompt=prompt, params=params, leave_after=leave))
    rng.shuffle(clients)
    return clients


async def run_client(http: httpx.AsyncClient, url: str, client: Client) -> None:
    path = "/v1/chat/completions" if client.chat else "/v1/completions"
    async with http.stream("POST", url + path, json=client.body()) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if client.leave_after is not None and len(client.events) >= client.leave_after:
                return  # leaving the block closes the connection mid-stream
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                client.done = True
                return
            event = json.loads(data)
            client.events.append(event)
            choice = event["choices"][0]
            client.text += (choice["delta"].get("content") or "") if client.chat else choice["text"]
            client.finish_reason = choice["finish_reason"] or client.finish_reason


# (path, raw JSON body): each is refused with a 400; the first three killed the engine thread once
ATTACKS = [
    ("/v1/completions", b'{"prompt": [1, 2, 49152], "max_tokens": 4, "stream": true}'),
    ("/v1/completions", b'{"prompt": [5, -7], "max_tokens": 4}'),
    ("/v1/completions", b'{"prompt": [1, 18446744073709551621], "max_tokens": 4, "stream": true}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN, "stream": true}'),
    ("/v1/completions", b'{"prompt": "hi", "repetition_penalty": Infinity}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "hi"}], "stream": true}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0}'),
]


async def attack(http: httpx.AsyncClient, url: str, path: str, body: bytes, delay: float) -> int:
    await asyncio.sleep(delay)
    response = await http.post(url + path, content=body, headers={"content-type": "application/json"})
    return response.status_code


async def storm(url: str, clients: list[Client], rng: random.Random) -> list[int]:
    """Run every client, with the attacks sent at random moments among them; the attacks' statuses."""
    limits = httpx.Limits(max_connections=CLIENTS * 2, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        attacks = [attack(http, url, path, body, rng.uniform(0, 3)) for path, body in ATTACKS * 2]
        results = await asyncio.wait_for(asyncio.gather(*attacks, *(run_client(http, url, c) for c in clients)),
                                         TIME_LIMIT)
    return results[:len(attacks)]


def answers_alone(model_dir: str, clients: list[Client]) -> list[tuple[str, str]]:
    """(text, finish_reason) of each checked client from the offline engine, in one batch (greedy and
    seeded answers do not depend on the batch: tests/test_engine.py and test_sampler.py)."""
    llm = LLM(model_dir, device="cpu", num_blocks=1024, max_num_seqs=CLIENTS)
    prompts = [llm.engine.encode_chat([{"role": "user", "content": c.prompt}]) if c.chat else c.prompt
               for c in clients]
    results = llm.generate(prompts, [c.params for c in clients])
    return [(r.outputs[0].text, r.outputs[0].finish_reason) for r in results]


@pytest.fixture
def live(embedded_model_dir: str):
    server = start_live_server(embedded_model_dir, num_blocks=NUM_BLOCKS, max_num_seqs=CLIENTS)
    yield server
    server.stop()


def wait_until_idle(live: LiveServer, timeout: float = 30.0) -> None:
    scheduler, deadline = live.engine.engine.scheduler, time.monotonic() + timeout
    while scheduler.running or scheduler.waiting or live.engine.block_map.stats.used:
        assert time.monotonic() < deadline, f"not idle: {live.engine.block_map.stats}"
        time.sleep(0.05)


@pytest.mark.slow
def test_sixty_four_clients_with_hang_ups_and_preemption(live: LiveServer, embedded_model_dir: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    clients = make_clients(random.Random(5))
    checked = [c for c in clients if c.checked and c.leave_after is None]
    alone = answers_alone(embedded_model_dir, checked)
    engine = live.engine.engine
    checks, check, aborted, abort = [0], engine.block_manager.check_integrity, [], engine.abort

    def counted_check() -> None:
        checks[0] += 1
        check()

    def counted_abort(request_id: str) -> list:
        outputs = abort(request_id)
        aborted.extend(outputs)  # empty for a request that had already finished
        return outputs

    monkeypatch.setattr(engine.block_manager, "check_integrity", counted_check)
    monkeypatch.setattr(engine, "abort", counted_abort)
    steps, preemptions = engine.metrics.steps, engine.scheduler.num_preemptions
    statuses = asyncio.run(storm(live.url, clients, random.Random(6)))
    wait_until_idle(live)
    assert statuses == [400] * len(ATTACKS) * 2

    assert live.engine.alive and live.engine.error is None  # a failed integrity check kills the thread
    assert engine.scheduler.num_preemptions > preemptions
    assert checks[0] == engine.metrics.steps - steps > 0  # the check ran after every step
    for client in clients:
        if client.leave_after is None:
            assert client.done and client.finish_reason in ("stop", "length"), client
            assert len(client.events) <= client.params.max_tokens + 1
        else:
            assert not client.done and len(client.events) == client.leave_after
    assert len(aborted) == LEAVERS  # each hang-up stopped its request in the engine
    assert [(c.text, c.finish_reason) for c in checked] == alone
    stats = live.engine.block_map.stats
    assert stats.used == 0 and stats.free + stats.cached_free == stats.total == NUM_BLOCKS
    check()
