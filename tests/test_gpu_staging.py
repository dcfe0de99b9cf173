"""Staging on the GPU: a host buffer is never refilled while its copy may still be queued, whether
the copy's event was recorded at send() or left for record() (the runner's order: the event after
the whole step is queued, off a lone prompt's time to first token). And the way back: the ring of
host buffers that sampled tokens come back through (TokenReturn)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from engine.runner.staging import Staging  # noqa: E402
from engine.runner.token_return import SLOTS, TokenReturn  # noqa: E402

CUDA = torch.device("cuda")


def _sent(staging: Staging, values: list[int], record: bool) -> torch.Tensor:
    """Stage `values`, send them, and queue a snapshot of what the copy put on the device."""
    staging.begin()
    host, device = staging.take((len(values),), np.int64)
    host[:] = values
    staging.send(record=record)
    return device.clone()  # runs after the copy, in stream order


@pytest.mark.parametrize("how", ["at send", "by record()", "never: begin() records it"])
def test_a_host_buffer_waits_for_its_copy_before_it_is_refilled(how: str) -> None:
    staging = Staging(1024, CUDA)
    torch.cuda._sleep(200_000_000)  # the copies queue behind ~0.1 s of device work
    first = _sent(staging, [1, 2, 3, 4], record=how == "at send")
    if how == "by record()":
        staging.record()
    second = _sent(staging, [5, 6, 7, 8], record=True)
    staging.begin()  # the first buffer again: returns only once its copy has run
    host, _ = staging.take((4,), np.int64)
    host[:] = [9, 9, 9, 9]
    torch.cuda.synchronize()
    assert first.tolist() == [1, 2, 3, 4], "the first buffer was refilled before its copy ran"
    assert second.tolist() == [5, 6, 7, 8]


def test_the_engine_records_each_step_copy_once_the_step_is_queued(tmp_path) -> None:
    """A lone prompt's step leaves no copy unrecorded behind it (the runner's record_copy)."""
    from benchmarks.synthetic_model import make_model_dir
    from engine import LLM, SamplingParams

    tiny = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                intermediate_size=128, vocab_size=512, tie_word_embeddings=True, max_position_embeddings=512)
    llm = LLM(str(make_model_dir(tmp_path / "tiny", tiny, dtype=torch.bfloat16, seed=0)), dtype="bfloat16",
              max_num_seqs=4, max_num_batched_tokens=256, max_model_len=256, num_blocks=64)
    staging = llm.engine.runner.inputs.staging
    out = llm.generate([list(range(1, 100))], SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 3
    assert staging._unrecorded == [False, False]


def test_tokens_come_back_through_the_ring_behind_queued_work_in_any_order() -> None:
    """Every slot lent at once (the next send is refused: the caller's own way back), read in any
    order once their copies have run; a slot given up with its copy still queued is lent again and
    read with the new copy's values."""
    ring = TokenReturn(8, CUDA)
    torch.cuda._sleep(200_000_000)  # the copies queue behind ~0.1 s of device work
    sent = [torch.arange(k, k + 3, device=CUDA) * (k + 1) for k in range(SLOTS)]
    slots = [ring.send(t) for t in sent]
    assert sorted(slots) == list(range(SLOTS)) and ring.num_lent == SLOTS
    assert ring.send(torch.zeros(2, dtype=torch.int64, device=CUDA)) is None
    for k in reversed(range(SLOTS)):
        assert ring.read(slots[k], 3) == sent[k].tolist()
    assert ring.num_lent == 0
    assert ring.send(torch.zeros(9, dtype=torch.int64, device=CUDA)) is None  # more rows than it holds
    assert ring.send(torch.zeros(2, dtype=torch.int32, device=CUDA)) is None  # not int64
    assert ring.num_lent == 0
    torch.cuda._sleep(200_000_000)
    given_up = ring.send(torch.full((4,), 7, dtype=torch.int64, device=CUDA))
    ring.release(given_up)
    again = [ring.send(torch.full((4,), 100 + k, dtype=torch.int64, device=CUDA)) for k in range(SLOTS)]
    assert given_up in again
    assert [ring.read(slot, 4) for slot in again] == [[100 + k] * 4 for k in range(SLOTS)]


def test_the_engine_s_tokens_come_back_through_the_ring_and_give_their_slots_back(tmp_path) -> None:
    """Greedy and sampled steps alike (not those asking logprobs) bring their tokens back through
    the runner's ring, every slot free once the requests are done; a step whose tokens are never
    taken (a fault) gives its slot back when dropped."""
    import gc

    from benchmarks.synthetic_model import make_model_dir
    from engine import LLM, SamplingParams
    from engine.runner.model_runner import PendingTokens

    tiny = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                intermediate_size=128, vocab_size=512, tie_word_embeddings=True, max_position_embeddings=512)
    llm = LLM(str(make_model_dir(tmp_path / "tiny", tiny, dtype=torch.bfloat16, seed=0)), dtype="bfloat16",
              max_num_seqs=4, max_num_batched_tokens=256, max_model_len=256, num_blocks=64)
    runner = llm.engine.runner
    sends = []
    send = runner.returns.send
    runner.returns.send = lambda tokens: sends.append(send(tokens)) or sends[-1]
    params = [SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True),
              SamplingParams(temperature=0.8, seed=1, max_tokens=5, ignore_eos=True)]
    prompts = [list(range(1, 40)), list(range(3, 30))]
    out = llm.generate(prompts, params)
    assert [len(o.outputs[0].token_ids) for o in out] == [5, 5]
    assert sends and None not in sends and runner.returns.num_lent == 0
    ring, runner.returns = runner.returns, None  # the same steps, each with a pinned tensor of its own
    llm.engine.reset_prefix_cache()  # computed as the first time, not after a cached prefix
    plain = llm.generate(prompts, params)
    assert [o.outputs[0].token_ids for o in plain] == [o.outputs[0].token_ids for o in out]
    runner.returns, count = ring, len(sends)
    asked = llm.generate([prompts[0]], SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True, logprobs=2))
    assert len(asked[0].outputs[0].logprobs) == 5 and len(sends) == count  # logprobs: their own way back
    dropped = PendingTokens(torch.arange(3, device=CUDA), returns=runner.returns)
    assert runner.returns.num_lent == 1
    del dropped
    gc.collect()
    assert runner.returns.num_lent == 0
