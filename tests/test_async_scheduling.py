"""Overlapped scheduling (EngineConfig.async_scheduling) on the embedded model, on the CPU: the next
step is planned and launched before the previous step's tokens reach the host, its decode rows
reading them where they were sampled. The outputs must be those of the plain engine, for every
kind of request, through chunked prefill, preemption and aborts."""
from __future__ import annotations

import pytest

from engine import LLM, SamplingParams
from engine.core.sequence import PENDING

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain in two sentences why the sky is blue, and mention Rayleigh scattering by name.",
    "List three prime numbers.",
    "Answer with one word: is water wet?",
    "Give me a recipe for a quick tomato pasta sauce with garlic and basil, step by step please.",
]


def requests(llm: LLM) -> tuple[list[list[int]], list[SamplingParams]]:
    chat = [llm.engine.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS]
    period = llm.engine.encode(".")[-1]
    plain = [(ids, SamplingParams(temperature=0.0, max_tokens=20)) for ids in chat]
    special = [
        (chat[4], SamplingParams(temperature=0.0, max_tokens=120)),  # ends on EOS long before max_tokens
        (chat[4], SamplingParams(temperature=0.0, max_tokens=30, min_tokens=12)),
        (chat[2], SamplingParams(temperature=0.0, max_tokens=40, stop=("Rayleigh", "scatter"))),
        (chat[5], SamplingParams(temperature=0.0, max_tokens=40, stop_token_ids=(period,))),
        (chat[1], SamplingParams(temperature=0.8, top_p=0.9, seed=5, max_tokens=16)),
        (chat[3], SamplingParams(temperature=1.0, top_k=20, min_p=0.05, seed=11, max_tokens=16, logprobs=2)),
        (chat[0], SamplingParams(n=2, temperature=0.9, seed=3, max_tokens=12)),  # forks: taken at once
        (chat[2], SamplingParams(temperature=0.0, repetition_penalty=1.3, max_tokens=16)),  # needs its history
        (chat[3], SamplingParams(temperature=0.0, max_tokens=8, prompt_logprobs=1)),
        (chat[5], SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=0)),
    ]
    pairs = plain + special
    return [p for p, _ in pairs], [q for _, q in pairs]


def outcome(results) -> list:
    def lps(entries):
        return None if entries is None else [
            None if e is None else [(c.token_id, round(c.logprob, 3)) for c in (e.token, *e.top)] + [e.rank]
            for e in entries]
    return [[(o.token_ids, o.text, o.finish_reason, lps(o.logprobs), lps(o.prompt_logprobs)) for o in r.outputs]
            for r in results]


def count_fed_steps(llm: LLM) -> list[int]:
    """Wrap the runner's launch: how many rows of each step read their input token on the device."""
    fed: list[int] = []
    launch = llm.engine.runner.launch

    def spy(chunks, copies, rows, feed=None):
        assert all(t != PENDING for c in chunks for t in c.token_ids) or feed is not None
        fed.append(len(feed.rows) if feed is not None else 0)
        return launch(chunks, copies, rows, feed=feed) if feed else launch(chunks, copies, rows)

    llm.engine.runner.launch = spy
    return fed


@pytest.fixture(scope="module")
def engines(embedded_model_dir: str) -> dict[bool, LLM]:
    # 14 blocks of 16 tokens, 4 sequences, 64-token steps: chunked prefills, admissions and preemptions
    return {overlap: LLM(embedded_model_dir, num_blocks=14, max_num_seqs=4, max_num_batched_tokens=64,
                         long_prefill_tokens=32, check_integrity=True, async_scheduling=overlap)
            for overlap in (False, True)}


def test_overlapped_engine_gives_the_plain_engine_s_outputs(engines: dict[bool, LLM]) -> None:
    prompts, params = requests(engines[False])
    fed = {overlap: count_fed_steps(llm) for overlap, llm in engines.items()}
    plain, overlapped = (outcome(engines[o].generate(prompts, params)) for o in (False, True))
    assert overlapped == plain
    assert sum(fed[False]) == 0 and sum(1 for n in fed[True] if n) > 10, "steps really were overlapped"
    for llm in engines.values():
        stats = llm.engine.block_manager.stats()
        assert stats.used == 0 and not llm.engine.has_unfinished_requests()
    assert engines[True].engine.scheduler.num_preemptions > 0, "the pool is small enough to preempt"
    eos_early = overlapped[len(QUESTIONS)][0]
    assert eos_early[2] == "stop" and len(eos_early[0]) < 60, "a sequence ended on EOS with a step in flight"
    # the event feed counts the tokens drawn for sequences: not the rows of sequences that ended
    # on the step before's tokens while this one ran (their tokens are dropped)
    drawn = {}
    for overlap, llm in engines.items():
        records = llm.engine.feed.since(0)[1]
        for r in records:
            assert r.num_output_tokens == sum(e.samples for e in r.requests if e.phase in ("prefill", "decode"))
        drawn[overlap] = sum(r.num_output_tokens for r in records)
    assert drawn[True] == drawn[False]


def test_an_abort_with_a_step_in_flight_frees_every_block(engines: dict[bool, LLM]) -> None:
    engine = engines[True].engine
    prompts, _ = requests(engines[True])
    engine.add_request("victim", prompts[5], SamplingParams(temperature=0.0, max_tokens=200))
    engine.add_request("bystander", prompts[0], SamplingParams(temperature=0.0, max_tokens=20))
    while not any(s.has_pending_token for s in engine.scheduler.running):
        engine.step()
    victim = next(s for s in engine.scheduler.running if s.request_id == "victim")
    final = engine.abort("victim")
    assert final[0].finish_reason == "abort" and PENDING not in victim.token_ids
    assert final[0].num_output_tokens == victim.num_output_tokens
    texts = {}
    while engine.has_unfinished_requests():
        for out in engine.step().outputs:
            assert out.request_id == "bystander", "nothing more comes for an aborted request"
            texts[out.request_id] = out.text
    alone = engines[False].generate([prompts[0]], SamplingParams(temperature=0.0, max_tokens=20))[0]
    assert texts["bystander"] == alone.outputs[0].text
    stats = engine.block_manager.stats()
    assert stats.used == 0 and stats.free + stats.cached_free == stats.total


@pytest.mark.parametrize("ending", [
    SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True),
    SamplingParams(temperature=0.0, max_tokens=10, stop_token_ids=(30,), logprobs=0),  # '.' after '1'
    SamplingParams(temperature=0.0, max_tokens=10, stop=("1.",)),
], ids=["length", "stop-id", "stop-string"])
def test_a_sequence_ending_as_a_step_is_taken_at_once_loses_nothing(engines: dict[bool, LLM],
                                                                     ending: SamplingParams) -> None:
    """A step left on the device, then one taken at once (a newcomer with a penalty needs its
    history): a sequence that gets its last tokens across the two keeps every token, text and logprob."""
    seen = {}
    for overlap, llm in engines.items():
        engine = llm.engine
        prompt = engine.encode_chat([{"role": "user", "content": "List three prime numbers."}])
        seq = engine.add_request("ends", prompt, ending)
        outs = []
        while seq.num_computed_tokens < len(prompt):  # its prompt's last chunk: its first token is drawn
            outs += engine.step().outputs
        engine.add_request("penalised", prompt, SamplingParams(temperature=0.0, max_tokens=3, repetition_penalty=1.3))
        while engine.has_unfinished_requests():
            outs += engine.step().outputs
        seen[overlap] = {rid: [(o.delta_token_ids, o.text, o.finished, o.finish_reason, o.num_output_tokens,
                                None if o.logprobs is None else [lp.token.token_id for lp in o.logprobs])
                               for o in outs if o.request_id == rid] for rid in ("ends", "penalised")}
    assert seen[True] == seen[False]
    assert seen[True]["ends"][-1][2], "it finished"


def test_async_scheduling_is_on_by_default_on_a_gpu_only(embedded_model_dir: str) -> None:
    assert LLM(embedded_model_dir, num_blocks=8).engine.async_scheduling is False
