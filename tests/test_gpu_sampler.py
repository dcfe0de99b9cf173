"""The sampler never waits for the GPU: a mixed batch (greedy, temperature, top-k, top-p, min-p,
penalties, logit bias, bans, seeds, logprobs) samples under torch.cuda.set_sync_debug_mode("error"),
which raises on any synchronising call. Skipped where there is no CUDA device."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from engine.runner.forward_metadata import ScheduledChunk  # noqa: E402
from engine.runner.logprobs import sampled_logprobs  # noqa: E402
from engine.runner.sampler import SampleRow, Sampler  # noqa: E402
from engine.core.sampling_params import SamplingParams  # noqa: E402
from engine.runner.step_inputs import StepInputs, StepLimits  # noqa: E402

VOCAB = 49152
MIXED = [
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=0.7),
    SamplingParams(temperature=0.7, top_k=50),
    SamplingParams(temperature=0.7, top_p=0.9, seed=1),
    SamplingParams(temperature=1.0, min_p=0.05, seed=2),
    SamplingParams(temperature=0.8, repetition_penalty=1.2, presence_penalty=0.5, frequency_penalty=0.3),
    SamplingParams(temperature=0.9, logit_bias={5: 10.0, 7: -100.0}, logprobs=5),
    SamplingParams(temperature=0.0, logprobs=0),
]


def rows() -> list[SampleRow]:
    out = []
    for i, p in enumerate(MIXED * 32):  # 256 rows
        out.append(SampleRow(p, list(range(i, i + 40)), sample_index=i % 3, step=i % 7,
                             banned=(2, 3) if i % 5 == 0 else ()))
    return out


def sampled_without_a_sync(sampler: Sampler, logits: torch.Tensor, batch: list[SampleRow]) -> torch.Tensor:
    """sampler.sample(logits, batch) once warm (its kernels compiled and loaded), under
    set_sync_debug_mode("error"), which raises on any synchronising call."""
    sampler.sample(logits, batch)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        return sampler.sample(logits, batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_a_mixed_batch_samples_without_a_sync() -> None:
    sampler = Sampler(0)
    batch = rows()
    logits = torch.randn(len(batch), VOCAB, device="cuda")
    sampler.sample(logits, batch)  # warm: kernels loaded, pinned blocks cached
    torch.cuda.synchronize()
    busy = torch.randn(4096, 4096, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(20):  # queue work the host would otherwise wait for
            busy = busy @ busy / 64
        tokens = sampler.sample(logits, batch)
        sampled_logprobs(logits, [r.params.logprobs for r in batch], tokens)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    tokens = tokens.tolist()
    assert all(0 <= t < VOCAB for t in tokens)
    assert tokens[0] == int(logits[0].argmax())
    assert all(t != 7 for t in tokens[6::len(MIXED)])  # -100 bias


def test_the_engine_path_stages_the_rows_with_the_step_and_waits_for_nothing() -> None:
    """As the model runner does: StepInputs stages the rows' tensors in the step's one copy, then
    the sampler reads them. The same tokens as a sampler copying its own (unseeded rows too: the
    host seeds are drawn in the same order), and neither the build nor the sampling syncs."""
    batch = rows()
    chunks = [ScheduledChunk([1], 40, [i, i + 1, i + 2], 1) for i in range(len(batch))]
    logits = torch.randn(len(batch), VOCAB, device="cuda")
    staged, plain = Sampler(0), Sampler(0)
    inputs = StepInputs(StepLimits(len(batch), len(batch), 3, len(batch)), 16, torch.device("cuda"),
                        sampler=staged, vocab_size=VOCAB)
    for _ in range(2):  # warm, then compare again with the generators moved on
        step = inputs.build(chunks, batch)
        assert staged.sample(logits, batch, step.sampling).tolist() == plain.sample(logits, batch).tolist()
    torch.cuda.synchronize()
    busy = torch.randn(4096, 4096, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(20):
            busy = busy @ busy / 64
        for _ in range(3):  # the host buffers take turns: the third build refills the first
            step = inputs.build(chunks, batch)
            tokens = staged.sample(logits, batch, step.sampling)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for _ in range(3):  # the plain sampler's host seeds to the same point
        expected = plain.sample(logits, batch).tolist()
    assert tokens.tolist() == expected


def test_seeded_rows_are_batch_independent_on_the_gpu() -> None:
    sampler = Sampler(0)
    logits = torch.randn(16, VOCAB, device="cuda")
    seeded = [SampleRow(SamplingParams(temperature=1.0, seed=11), [1, 2], step=s) for s in range(16)]
    together = sampler.sample(logits, seeded).tolist()
    alone = [sampler.sample(logits[i:i + 1], [seeded[i]]).item() for i in range(16)]
    assert together == alone


def test_the_gpu_draws_follow_top_p_and_min_p() -> None:
    """The sort-free kernel against the nucleus: many seeded rows of one distribution."""
    sampler = Sampler(0)
    row = torch.randn(VOCAB, device="cuda") * 3
    n = 4096
    params = [SamplingParams(temperature=1.0, top_p=0.8, min_p=0.02, seed=s) for s in range(n)]
    draws = sampler.sample(row.expand(n, -1).contiguous(), [SampleRow(p, [1]) for p in params])
    probs = row.softmax(-1)
    order = probs.argsort(descending=True)
    before = probs[order].cumsum(0) - probs[order]
    nucleus = order[before < 0.8]
    allowed = torch.zeros(VOCAB, dtype=torch.bool, device="cuda")
    allowed[nucleus[probs[nucleus] >= 0.02 * probs.max()]] = True
    assert bool(allowed[draws].all())
    top = int(order[0])
    share = float((draws == top).float().mean())
    expected = float(probs[top] / probs[allowed].sum())
    assert abs(share - expected) < 0.03


def test_a_greedy_step_reads_the_heads_bf16_logits_in_one_pass() -> None:
    """An all-greedy step on bf16 logits (the engine's head output) goes through the one-pass kernel,
    without a sync, and picks what the float32 path picks; a poisoned row gets the invalid token."""
    from engine.runner.sampler import INVALID_TOKEN, ref_greedy

    batch = [SampleRow(SamplingParams(temperature=0.0), [1, 2, 3]) for _ in range(256)]
    logits = torch.randn(256, 151936, device="cuda").to(torch.bfloat16)
    logits[17, 3] = float("nan")
    tokens = sampled_without_a_sync(Sampler(0), logits, batch)
    want = ref_greedy(logits.float(), INVALID_TOKEN)
    assert torch.equal(tokens, want) and int(tokens[17]) == INVALID_TOKEN


def test_a_sampled_step_reads_the_heads_bf16_logits_as_they_are() -> None:
    """Sampled rows on bf16 logits (the engine's head output) go to the kernel unwidened, without a
    sync: the same tokens as on the same logits widened to float32 (the kernel divides by the
    temperature as it reads, and takes top-k as a k-th largest value), for every kind of row, greedy
    ones among them; a poisoned row gets the invalid token."""
    from engine.runner.sampler import INVALID_TOKEN

    kinds = [SamplingParams(temperature=0.7, top_p=0.9, seed=1), SamplingParams(temperature=0.7),
             SamplingParams(temperature=0.7, top_k=50), SamplingParams(temperature=1.3, min_p=0.05, seed=2),
             SamplingParams(temperature=0.7, top_k=20, top_p=0.8), SamplingParams(temperature=0.0)]
    logits = (torch.randn(256, 151936, device="cuda") * 3).to(torch.bfloat16)
    logits[17, 3] = float("nan")
    logits[18, 5] = float("inf")
    for mixed in (False, True):  # the kinds in blocks of rows, then interleaved row by row
        batch = [SampleRow(kinds[i % len(kinds) if mixed else i * len(kinds) // 256], [1, 2, 3], step=i)
                 for i in range(256)]
        tokens = sampled_without_a_sync(Sampler(0), logits, batch)
        wide = Sampler(0)
        wide.sample(logits.float(), batch)  # as many draws of the host's seeds as the one above made
        assert tokens.tolist() == wide.sample(logits.float(), batch).tolist()
        assert int(tokens[17]) == int(tokens[18]) == INVALID_TOKEN and INVALID_TOKEN not in tokens[19:].tolist()
