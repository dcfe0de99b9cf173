"""Staging on the GPU: a host buffer is never refilled while its copy may still be queued, whether
the copy's event was recorded at send() or left for record() (the runner's order: the event after
the whole step is queued, off a lone prompt's time to first token)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from engine.runner.staging import Staging  # noqa: E402

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
