"""Faults and overload inside the engine: a request that raises while served, or whose logits turn
NaN or infinite, fails alone (its blocks freed, the others' greedy output unchanged); a full waiting
queue and a prompt the KV pool can never hold are refused up front."""
from __future__ import annotations

import dataclasses
import math

import pytest

from engine.core.config import CacheConfig, EngineConfig
from engine.serving.llm_engine import LLMEngine
from engine.core.outputs import RequestOutput
from engine.serving.request_stream import DeviceFailure, EngineOverloaded
from engine.core.sampling_params import SamplingParams
from fault_injection import poison_logits

PROMPTS = ["What is the capital of France?", "List three prime numbers.", "Write a haiku about rain.",
           "Why is the sky blue?"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=8)


@pytest.fixture(scope="module")
def engine(embedded_model_dir: str) -> LLMEngine:
    return LLMEngine(EngineConfig(model=embedded_model_dir, device="cpu", cache=CacheConfig(num_blocks=32),
                                  check_integrity=True))


def run(engine: LLMEngine, requests: dict[str, str],
        params: dict[str, SamplingParams] | None = None) -> dict[str, list[RequestOutput]]:
    for rid, prompt in requests.items():
        engine.add_request(rid, engine.encode_chat([{"role": "user", "content": prompt}]),
                           (params or {}).get(rid, GREEDY))
    outputs: dict[str, list[RequestOutput]] = {rid: [] for rid in requests}
    while engine.has_unfinished_requests():
        for out in engine.step().outputs:
            outputs[out.request_id].append(out)
    return outputs


def assert_all_blocks_free(engine: LLMEngine) -> None:
    engine.block_manager.check_integrity()
    stats = engine.block_manager.stats()
    assert stats.used == 0 and stats.free + stats.cached_free == stats.total


def test_a_request_that_raises_fails_alone(engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    alone = {p: run(engine, {"alone": p})["alone"][-1] for p in PROMPTS}
    detokenize, account = engine._detokenize, engine._account

    def broken_detokenizer(seq, *rest):
        if seq.request_id == "bad-detok" and seq.num_output_tokens >= 3:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected")
        return detokenize(seq, *rest)

    def broken_stop_check(seq, now):
        if seq.request_id == "bad-stop":
            raise RuntimeError("injected stop-check failure")
        account(seq, now)

    monkeypatch.setattr(engine, "_detokenize", broken_detokenizer)
    monkeypatch.setattr(engine, "_account", broken_stop_check)
    requests = {f"ok-{i}": p for i, p in enumerate(PROMPTS)} | {"bad-detok": PROMPTS[0], "bad-stop": PROMPTS[1]}
    outputs = run(engine, requests)

    for rid in ("bad-detok", "bad-stop"):
        last = outputs[rid][-1]
        assert last.finished and last.finish_reason == "error" and "injected" in last.error
        assert sum(o.finished for o in outputs[rid]) == 1
    assert_bystanders_unharmed(engine, outputs, alone)


def assert_bystanders_unharmed(engine: LLMEngine, outputs: dict, alone: dict) -> None:
    """Every ok-i request finished as it does alone; no block, request or detokenizer is left."""
    for i, prompt in enumerate(PROMPTS):
        last = outputs[f"ok-{i}"][-1]
        assert last.finished and last.error is None
        assert (last.text, last.finish_reason) == (alone[prompt].text, alone[prompt].finish_reason)
    assert_all_blocks_free(engine)
    assert not engine._live and not engine._detokenizers


def test_nan_or_inf_logits_fail_that_request_alone(engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    alone = {p: run(engine, {"alone": p})["alone"][-1] for p in PROMPTS}
    params = {"nan": dataclasses.replace(GREEDY),  # own objects, so that the fault can find their rows
              "inf": SamplingParams(temperature=0.8, top_p=0.9, max_tokens=8),  # the random draw must not crash
              "fork": SamplingParams(temperature=0.8, n=2, max_tokens=8)}  # fails at its prompt's end
    poison_logits(monkeypatch, engine, lambda row: row.params is params["nan"] and row.step >= 2, math.nan)
    poison_logits(monkeypatch, engine, lambda row: row.params is params["inf"] and row.step >= 1, math.inf)
    poison_logits(monkeypatch, engine, lambda row: row.params is params["fork"], math.nan)
    requests = {f"ok-{i}": p for i, p in enumerate(PROMPTS)} | {rid: PROMPTS[2] for rid in params}
    outputs = run(engine, requests, params)

    for rid, samples in (("nan", 1), ("inf", 1), ("fork", 2)):
        finals = [o for o in outputs[rid] if o.finished]
        assert len(finals) == samples and {o.index for o in finals} == set(range(samples))
        for last in finals:
            assert last.finish_reason == "error" and "NaN or infinite" in last.error
    assert [o.num_output_tokens for o in outputs["nan"] if o.finished] == [2]  # the bad one is not counted
    assert_bystanders_unharmed(engine, outputs, alone)


def test_a_full_waiting_queue_refuses_new_requests(engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    limited = dataclasses.replace(engine.config.scheduler, max_waiting=2)
    monkeypatch.setattr(engine, "config", dataclasses.replace(engine.config, scheduler=limited))
    engine.add_request("w0", "Hello", GREEDY)
    engine.add_request("w1", "Hello", GREEDY)
    with pytest.raises(EngineOverloaded, match="busy"):
        engine.add_request("w2", "Hello", GREEDY)
    engine.step()  # both admitted: the queue has room again
    engine.add_request("w2", "Hello", GREEDY)
    while engine.has_unfinished_requests():
        engine.step()
    assert_all_blocks_free(engine)


def test_a_prompt_the_kv_pool_can_never_hold_is_refused(engine: LLMEngine) -> None:
    # max_model_len is capped at what the pool holds, so a prompt it admits can always run alone
    too_long = [1] * (engine.block_manager.num_blocks * engine.block_manager.block_size)
    assert engine.max_model_len <= len(too_long)
    with pytest.raises(ValueError, match="at most"):
        engine.add_request("huge", too_long, GREEDY)
    assert not engine.has_unfinished_requests() and not engine._live


def fail_launch_once(monkeypatch: pytest.MonkeyPatch, engine: LLMEngine, when, where: str = "launch") -> list[int]:
    """The first step for which `when(chunks)` is true raises inside the model runner: in `launch`
    (the forward pass) or in the result (sampling). Returns the step's batch sizes as it fails."""
    launch, failed = engine.runner.launch, []

    def faulty(chunks, copies, rows, *rest, **feed):
        if failed or not when(chunks):
            return launch(chunks, copies, rows, *rest, **feed)
        failed.append(len(chunks))
        if where == "launch":
            raise RuntimeError("injected forward-pass fault")
        pending = launch(chunks, copies, rows, *rest, **feed)
        pending.result = lambda: (_ for _ in ()).throw(RuntimeError("injected sampling fault"))
        return pending

    monkeypatch.setattr(engine.runner, "launch", faulty)
    return failed


@pytest.mark.parametrize("where", ["launch", "result"])
def test_a_fault_in_the_model_runner_fails_that_steps_requests_only(
        engine: LLMEngine, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Two run and two wait (max_num_seqs 2); the runner fails mid-decode: the two in that step
    fail with an error each, the two waiting ones then run and answer as they do alone."""
    alone = {p: run(engine, {"alone": p})["alone"][-1] for p in PROMPTS}
    limited = dataclasses.replace(engine.config.scheduler, max_num_seqs=2)
    monkeypatch.setattr(engine.scheduler, "config", limited)
    steps = iter(range(100))
    failed = fail_launch_once(monkeypatch, engine, lambda chunks: next(steps) == 3, where)  # the 4th step
    requests = {"bad-0": PROMPTS[0], "bad-1": PROMPTS[1]} | {f"ok-{i}": p for i, p in enumerate(PROMPTS)}
    outputs = run(engine, requests)
    assert failed == [2]
    for rid in ("bad-0", "bad-1"):
        finals = [o for o in outputs[rid] if o.finished]
        assert len(finals) == 1 and finals[0].finish_reason == "error" and "failed" in finals[0].error
        assert 1 <= finals[0].num_output_tokens < GREEDY.max_tokens  # it did run before the fault
    assert_bystanders_unharmed(engine, outputs, alone)
    assert run(engine, {"after": PROMPTS[3]})["after"][-1].text == alone[PROMPTS[3]].text


def test_a_fault_during_an_n4_prefill_fails_all_its_samples(engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    fail_launch_once(monkeypatch, engine, lambda chunks: True)
    outputs = run(engine, {"fork": PROMPTS[2]}, {"fork": SamplingParams(temperature=0.8, n=4, max_tokens=4)})
    finals = [o for o in outputs["fork"] if o.finished]
    assert sorted(o.index for o in finals) == [0, 1, 2, 3] and {o.finish_reason for o in finals} == {"error"}
    assert_all_blocks_free(engine)
    assert not engine._live


def test_a_lost_device_stops_the_engine(engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault after which the device runs nothing (a CUDA device-side assert) is not survivable:
    step raises DeviceFailure, so the engine thread dies and the app exits for a restart."""
    fail_launch_once(monkeypatch, engine, lambda chunks: True)
    monkeypatch.setattr(engine.runner, "device_usable", lambda: False)
    engine.add_request("doomed", "Hello", GREEDY)
    with pytest.raises(DeviceFailure, match="device failed"):
        engine.step()
    engine.abort("doomed")
    assert_all_blocks_free(engine)


@pytest.mark.parametrize("bad", [-1, 49152, 2**63, 2**70, True, 1.0, "7"])
def test_token_ids_outside_the_vocabulary_are_refused(engine: LLMEngine, bad) -> None:
    with pytest.raises(ValueError, match="out of vocabulary|integers"):
        engine.add_request("oov", [1, 2, bad, 3], GREEDY)
    if type(bad) is int:
        with pytest.raises(ValueError, match="out of vocabulary"):
            engine.add_request("oov-stop", [1, 2, 3], dataclasses.replace(GREEDY, stop_token_ids=(bad,)))
    assert not engine.has_unfinished_requests() and not engine._live
