"""Each demo scenario's phenomenon happens on the engine (CPU, embedded SmolLM2), with requests built
as its simulated users build them: chunked prefill beside decodes, prefix-cache hits, blocks shared
by four samples and copied on write, static batches that admit nobody mid-batch (and answer as
continuous batching does), preemption under a block cap, and slow motion that still honours aborts.
Plus the request inspection API, the live controls' validation, and run/reset of a scenario."""
from __future__ import annotations

import random
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from engine.core.config import CacheConfig, EngineConfig
from engine.core.controls import Controls
from engine.serving.engine_thread import EngineThread
from engine.serving.llm_engine import LLMEngine
from engine.serving.request_stream import EngineDeadError, RequestRejected
from engine.core.sampling_params import SamplingParams
from ui.load_generator import LoadConfig, LoadGenerator, LoadPolicy, LoadRefused, load_prompts, make_request
from ui.scenarios import SCENARIOS, adjust_controls, controls_for, reset_scenario, run_scenario, scenario

PROMPTS = load_prompts(Path(__file__).resolve().parent.parent / "assets" / "prompts.txt")
NUM_BLOCKS, BLOCK_SIZE = 256, 16


@pytest.fixture(scope="module")
def shared_engine(embedded_model_dir: str) -> LLMEngine:
    config = EngineConfig(model=embedded_model_dir, device="cpu", check_integrity=True,
                          cache=CacheConfig(num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE))
    return LLMEngine(config)


@pytest.fixture
def engine(shared_engine: LLMEngine):
    """The shared engine, idle, with default controls and an empty prefix cache; left the same."""
    shared_engine.set_controls(Controls())
    shared_engine.reset_prefix_cache()
    yield shared_engine
    for seq in list(shared_engine.scheduler.running) + list(shared_engine.scheduler.waiting):
        shared_engine.abort(seq.request_id)
    while shared_engine.has_unfinished_requests():
        shared_engine.step()
    shared_engine.set_controls(Controls())
    assert shared_engine.block_manager.stats().used == 0


def requests(engine: LLMEngine, key: str, count: int, seed: int = 0,
             **overrides) -> list[tuple[list[int], SamplingParams]]:
    """`count` requests of scenario `key`'s CPU load as its simulated users make them (user k's rng)."""
    _, config = scenario(key).workload(cpu=True)
    config = replace(config, **overrides)
    built = [make_request(random.Random(seed * 1000 + k), PROMPTS, config) for k in range(count)]
    return [(engine.encode_chat(list(prompt.messages)), params) for prompt, params in built]


def add(engine: LLMEngine, key: str, reqs: list[tuple[list[int], SamplingParams]], first: int = 0) -> list[str]:
    ids = [f"{key}-{first + i}" for i in range(len(reqs))]
    for rid, (tokens, params) in zip(ids, reqs):
        engine.add_request(rid, tokens, params)
    return ids


def step_until(engine: LLMEngine, condition, max_steps: int) -> int:
    for steps in range(1, max_steps + 1):
        engine.step()
        if condition():
            return steps
    raise AssertionError(f"not within {max_steps} steps")


def has_output(engine: LLMEngine, request_id: str) -> bool:
    return any(s.request_id == request_id and s.num_output_tokens for s in engine.scheduler.running)


def records(engine: LLMEngine, since: int):
    return engine.feed.since(since)[1]


def test_scenarios_are_in_the_order_of_the_concepts() -> None:
    assert [s.key for s in SCENARIOS] == ["long-prompts", "shared-prefix", "parallel-sampling", "static-batching",
                                          "memory-pressure", "slow-motion"]
    assert all(s.title and s.concept and s.explain.endswith(".") for s in SCENARIOS)
    assert controls_for(scenario("static-batching"), NUM_BLOCKS, BLOCK_SIZE) == Controls(batching="static")
    assert controls_for(scenario("slow-motion"), NUM_BLOCKS, BLOCK_SIZE) == Controls(step_delay_s=0.5)
    assert controls_for(scenario("memory-pressure"), NUM_BLOCKS, BLOCK_SIZE).block_cap == 32
    assert controls_for(scenario("memory-pressure"), 10, BLOCK_SIZE).block_cap == 10, "never above the pool"
    assert controls_for(scenario("shared-prefix"), NUM_BLOCKS, BLOCK_SIZE) == Controls()
    with pytest.raises(ValueError, match="unknown scenario"):
        scenario("warp-speed")
    long = scenario("long-prompts")
    assert long.workload(cpu=False)[1].long_prompt_tokens == 2000 > long.workload(cpu=True)[1].long_prompt_tokens
    assert long.workload(cpu=False, max_model_len=1024)[1].long_prompt_tokens == 512, "a small context: shorter"


def test_controls_are_validated() -> None:
    for bad in (dict(batching="dynamic"), dict(block_cap=0), dict(block_cap=2.5), dict(step_delay_s=-0.1),
                dict(step_delay_s=1.5), dict(step_delay_s=float("nan")), dict(step_delay_s=True)):
        with pytest.raises(ValueError):
            Controls(**bad)
    assert Controls(step_delay_s=1).step_delay_s == 1


def test_make_request_shapes_what_a_user_sends() -> None:
    config = LoadConfig(max_tokens=(5, 9), system_prompt="Be brief.", n=3, long_prompt_tokens=500, temperature=1.2)
    prompt, params = make_request(random.Random(1), PROMPTS, config)
    assert prompt.messages[0] == {"role": "system", "content": "Be brief."} and len(prompt.messages) == 2
    assert params.n == 3 and 5 <= params.max_tokens <= 9 and params.temperature == 1.2
    other, _ = make_request(random.Random(2), PROMPTS, config)
    assert prompt.messages[1]["content"][:200] != other.messages[1]["content"][:200], "each user's filler differs"
    plain, _ = make_request(random.Random(1), PROMPTS, LoadConfig())
    assert plain.messages == ({"role": "user", "content": plain.messages[0]["content"]},)
    assert plain.messages[0]["content"] in PROMPTS
    with pytest.raises(ValueError):
        LoadConfig(max_tokens=(9, 5))


def test_long_prompts_are_chunked_beside_decodes(engine: LLMEngine) -> None:
    """A long prompt arriving while another request decodes: steps carry a chunk and a decode."""
    reqs = requests(engine, "long-prompts", 2)
    assert all(600 <= len(tokens) <= 1100 for tokens, _ in reqs)
    since = engine.feed.next_index
    first = add(engine, "long", reqs[:1])[0]
    step_until(engine, lambda: has_output(engine, first), 4)
    add(engine, "long", reqs[1:], first=1)  # the next user arrives while the first one's answer streams
    step_until(engine, lambda: any(r.num_prefill_tokens and r.num_decode_tokens for r in records(engine, since)), 3)
    mixed = [r for r in records(engine, since) if r.num_prefill_tokens and r.num_decode_tokens]
    assert mixed[0].num_prefill_tokens <= engine.config.scheduler.long_prefill_tokens, "a chunk, not the prompt"


def test_a_shared_system_prompt_hits_the_prefix_cache(engine: LLMEngine) -> None:
    reqs = requests(engine, "shared-prefix", 2)
    assert reqs[0][0][:500] == reqs[1][0][:500] and reqs[0][0] != reqs[1][0]
    first = add(engine, "shared", reqs[:1])[0]
    step_until(engine, lambda: has_output(engine, first), 3)
    before = engine.metrics.total_cached_tokens
    add(engine, "shared", reqs[1:], first=1)
    engine.step()
    assert engine.metrics.total_cached_tokens - before >= 512, "the system prompt's full blocks were hits"


def test_four_samples_share_the_prompt_and_copy_the_last_block_on_write(engine: LLMEngine) -> None:
    reqs = requests(engine, "parallel-sampling", 3)
    tokens, params = next((t, p) for t, p in reqs if len(t) % BLOCK_SIZE)  # a partly filled last block
    assert params.n == 4 and params.temperature >= 1.0
    since = engine.feed.next_index
    rid = add(engine, "par", [(tokens, params)])[0]
    step_until(engine, lambda: engine.scheduler.running and engine.scheduler.running[0].forked, 3)
    seen = engine.inspect_request(rid)
    assert len(seen.seqs) == 4
    assert all(rc == 4 for s in seen.seqs for rc in s.ref_counts), "every prompt block held by the four"
    step_until(engine, lambda: any(e.kind == "copied" for r in records(engine, since) for e in r.blocks), 2)
    copies = [e for r in records(engine, since) for e in r.blocks if e.kind == "copied"]
    assert len(copies) == 3, "three samples copy the shared partial block, the last holder writes in place"
    step_until(engine, lambda: len({tuple(s.token_ids) for s in engine.scheduler.running}) > 1, 10)


def run_batches(engine: LLMEngine, batching: str, reqs) -> tuple[dict[str, list[int]], list]:
    """Half the requests at once, the rest two steps later; greedy outputs by request, and the feed."""
    engine.reset_prefix_cache()
    engine.set_controls(Controls(batching=batching))
    since = engine.feed.next_index
    outputs: dict[str, list[int]] = {}
    add(engine, batching, reqs[:2])
    for steps in range(200):
        if steps == 2:
            add(engine, batching, reqs[2:], first=2)
        for out in engine.step().outputs:
            outputs.setdefault(out.request_id.split("-")[1], []).extend(out.delta_token_ids)
        if steps > 2 and not engine.has_unfinished_requests():
            return outputs, records(engine, since)
    raise AssertionError("the requests did not finish")


def admissions(feed_records) -> list[tuple[set[int], set[int]]]:
    """Per step: (sequences fed their first prefill chunk, every sequence the step fed)."""
    seen: set[int] = set()
    steps = []
    for record in feed_records:
        fed = {e.seq_id for e in record.requests if e.phase in ("prefill", "decode")}
        first = {e.seq_id for e in record.requests if e.phase == "prefill" and e.seq_id not in seen}
        seen |= first
        steps.append((first, fed))
    return steps


def test_static_batching_admits_nobody_mid_batch_and_answers_alike(engine: LLMEngine) -> None:
    reqs = requests(engine, "static-batching", 4, temperature=0.0, max_tokens=(4, 16))
    static, static_feed = run_batches(engine, "static", reqs)
    continuous, continuous_feed = run_batches(engine, "continuous", reqs)
    assert static == continuous and len(static) == 4
    assert all(r.batching == "static" for r in static_feed)
    for first, fed in admissions(static_feed):
        assert not first or fed == first, "static: a new sequence starts only with a new batch"
    assert any(first and fed - first for first, fed in admissions(continuous_feed)), "continuous: newcomers join"


def test_a_block_cap_causes_preemptions(engine: LLMEngine) -> None:
    s = scenario("memory-pressure")
    users, _ = s.workload(cpu=True)
    controls = controls_for(s, NUM_BLOCKS, BLOCK_SIZE)
    reqs = requests(engine, s.key, users)
    longest = max(len(t) + p.max_tokens for t, p in reqs)
    assert -(-longest // BLOCK_SIZE) < controls.block_cap, "any one request fits under the cap: all progress"
    engine.set_controls(controls)
    before = engine.scheduler.num_preemptions
    add(engine, "mem", reqs)
    step_until(engine, lambda: engine.scheduler.num_preemptions > before, 120)
    assert engine.block_manager.stats().used <= controls.block_cap
    assert engine.step().metrics.total_preemptions > before


def test_inspect_request_shows_tokens_and_blocks(engine: LLMEngine) -> None:
    tokens = engine.encode_chat([{"role": "user", "content": "Name a colour."}])
    engine.add_request("inspected", tokens, SamplingParams(n=2, temperature=1.0, max_tokens=20))
    engine.add_request("queued", tokens, SamplingParams(max_tokens=20))
    engine.step()
    engine.step()
    seen = engine.inspect_request("inspected")
    live = sorted((s for s in engine.scheduler.running if s.request_id == "inspected"), key=lambda s: s.sample_index)
    assert [s.seq_id for s in seen.seqs] == [s.seq_id for s in live] and len(live) == 2
    for info, seq in zip(seen.seqs, live):
        assert info.block_table == tuple(engine.block_manager.block_table(seq.seq_id))
        assert info.token_ids == tuple(seq.token_ids) and info.status == "running"
        assert info.ref_counts == tuple(engine.block_manager.blocks[b].ref_count for b in info.block_table)
        assert info.cached == tuple(engine.block_manager.blocks[b].hash is not None for b in info.block_table)
        assert info.num_prompt_tokens == len(tokens) and info.num_tokens == len(seq.token_ids)
    assert seen.seqs[0].ref_counts[0] >= 2 and seen.seqs[0].cached[0], "the first prompt block: shared, cached"
    assert engine.inspect_request("no-such-request") is None
    engine.abort("inspected")
    assert engine.inspect_request("inspected") is None


def test_slow_motion_pauses_each_step_yet_honours_aborts_at_once(engine: LLMEngine) -> None:
    delay = 0.2
    thread = EngineThread(engine, block_map_interval=0.05).start()
    try:
        thread.set_controls(replace(controls_for(scenario("slow-motion"), NUM_BLOCKS, BLOCK_SIZE), step_delay_s=delay))
        assert thread.controls.step_delay_s == delay
        [(tokens, _)] = requests(engine, "slow-motion", 1)
        long = thread.submit(tokens, SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True))
        arrivals = []
        for _, out in zip(range(4), long):
            arrivals.append(time.monotonic())
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        assert min(gaps) >= delay * 0.95, gaps
        seen = thread.inspect(long.request_id)
        assert engine.tokenizer.decode(list(seen.seqs[0].token_ids)) == "".join(seen.seqs[0].token_texts)
        assert thread.inspect("no-such-request") is None
        short = thread.submit(tokens, SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))
        assert [out.finish_reason for out in short][-1] == "length", "a submit in slow motion completes"
        while not long._sync.empty():  # outputs queued while the short one ran
            next(long)
        next(long)  # a fresh one: a step just ended, the engine is pausing now
        start = time.monotonic()
        thread.abort(long.request_id)
        last = [out for out in long][-1]
        assert last.finish_reason == "abort" and time.monotonic() - start < delay, "the abort waited out the pause"
    finally:
        thread.set_controls(Controls())
        thread.stop()
    assert engine.controls == Controls()


def test_inspect_is_answered_between_steps_or_times_out(engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    stepping = threading.Event()
    step = engine.step

    def slow_step():
        stepping.set()
        time.sleep(0.5)
        return step()

    monkeypatch.setattr(engine, "step", slow_step)
    thread = EngineThread(engine).start()
    try:
        stream = thread.submit("Hello", SamplingParams(max_tokens=2))
        assert stepping.wait(5)
        with pytest.raises(TimeoutError):
            thread.inspect(stream.request_id, timeout=0.05)
        assert thread.inspect(stream.request_id).seqs[0].num_prompt_tokens == len(engine.encode("Hello"))
        assert [out for out in stream][-1].finished
    finally:
        thread.stop()
    with pytest.raises(EngineDeadError):
        thread.inspect("anything")


class _Thread:
    """Stands in for the engine thread: records the controls set."""

    info = type("Info", (), {"device": "cpu", "num_blocks": NUM_BLOCKS, "block_size": BLOCK_SIZE,
                             "max_model_len": NUM_BLOCKS * BLOCK_SIZE})()

    def __init__(self) -> None:
        self.set: list[Controls] = []

    def set_controls(self, controls: Controls) -> None:
        self.set.append(controls)

    def submit(self, prompt, params, request_id=None):
        raise EngineDeadError("nothing serves here")  # the simulated users quit at once


def test_run_scenario_applies_controls_until_its_load_ends() -> None:
    engine = _Thread()
    load = LoadGenerator(engine, PROMPTS, policy=LoadPolicy("key", "secret"))
    s = run_scenario(engine, load, "slow-motion")
    assert s.key == "slow-motion" and engine.set[-1] == Controls(step_delay_s=0.5)
    with pytest.raises(LoadRefused):
        run_scenario(engine, load, "static-batching", owner="visitor")
    assert engine.set[-1] == Controls(step_delay_s=0.5), "a refused start changes no control"
    run_scenario(engine, load, "memory-pressure", owner="visitor", key_="secret")
    assert engine.set[-2:] == [Controls(), Controls(block_cap=32)], "the old load's end reset, then the new"
    reset_scenario(engine, load, owner="visitor", key_="secret")
    assert engine.set[-1] == Controls() and load.status().users == 0


class _Refusing(_Thread):
    """Refuses every request: the simulated users keep trying (and stay alive) until stopped."""

    controls = Controls()

    def set_controls(self, controls: Controls) -> None:
        super().set_controls(controls)
        self.controls = controls

    def submit(self, prompt, params, request_id=None):
        raise RequestRejected("not today")


def test_batching_and_slow_motion_change_live_only_during_a_load_its_caller_may_stop() -> None:
    engine = _Refusing()
    load = LoadGenerator(engine, PROMPTS, policy=LoadPolicy("open"))
    with pytest.raises(LoadRefused, match="start a scenario or a load first"):
        adjust_controls(engine, load, owner="a", batching="static")
    run_scenario(engine, load, "memory-pressure", owner="a")
    assert load.status().label == "Memory pressure" and "Memory pressure" in load.status().describe()
    assert adjust_controls(engine, load, owner="a", batching="static", step_delay_s=0.3) == \
        Controls(batching="static", block_cap=32, step_delay_s=0.3), "the scenario's cap stays"
    with pytest.raises(LoadRefused, match="only that session"):
        adjust_controls(engine, load, owner="b", step_delay_s=0.0)
    with pytest.raises(ValueError):
        adjust_controls(engine, load, owner="a", step_delay_s=5.0)
    assert engine.controls.step_delay_s == 0.3
    load.release("a")  # the tab closed: the load ends, and the controls with it
    assert engine.controls == Controls() and load.status().label is None
