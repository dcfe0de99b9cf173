"""StepInputs on the CPU: the metadata it builds equals the plain per-chunk construction it replaced,
for real engine steps (mixed prefill and decode, chunked prefill, prefix-cache hits, n > 1 forks,
prompt logprobs) and for a graph's padded shapes; its buffers are the same storage every step."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.synthetic_model import make_model_dir
from engine import LLM, SamplingParams
from engine.attention import TorchAttentionBackend
from engine.attention.backend import AttentionShape
from engine.runner.forward_metadata import ForwardMetadata, ScheduledChunk
from engine.runner.sampler import SampleRow, Sampler
from engine.runner.staging import Staging
from engine.core.sequence import PENDING
from engine.runner.step_inputs import Feed, Padding, StepInputs, StepLimits, build_metadata

CPU = torch.device("cpu")
BS = 4
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=128, vocab_size=512, tie_word_embeddings=True, max_position_embeddings=512)


def reference(chunks: list[ScheduledChunk], block_size: int) -> dict[str, list]:
    """The construction StepInputs replaced: one Python pass over the chunks, token by token."""
    ids, positions, slots, query_lens, context_lens, sampled, prompt_rows = [], [], [], [], [], [], []
    width = max((len(c.block_table) for c in chunks), default=0)
    tables = [c.block_table + [0] * (width - len(c.block_table)) for c in chunks]
    for c in chunks:
        n, start = len(c.token_ids), c.start_pos
        ids.extend(c.token_ids)
        positions.extend(range(start, start + n))
        slots.extend(c.block_table[p // block_size] * block_size + p % block_size for p in range(start, start + n))
        query_lens.append(n)
        context_lens.append(start + n)
        sampled.extend([len(ids) - 1] * c.num_samples)
        prompt_rows.extend(range(len(ids) - n, len(ids) - n + len(c.prompt_targets)))
    starts = [sum(query_lens[:i]) for i in range(len(chunks) + 1)]
    return dict(input_ids=ids, positions=positions, slot_mapping=slots, block_tables=tables,
                context_lens=context_lens, query_start_loc=starts, logits_indices=sampled + prompt_rows,
                query_lens_cpu=query_lens, context_lens_cpu=context_lens)


DTYPES = dict(input_ids=torch.int64, positions=torch.int64, slot_mapping=torch.int64, block_tables=torch.int32,
              context_lens=torch.int32, query_start_loc=torch.int32, logits_indices=torch.int64)


def assert_equals_reference(meta: ForwardMetadata, chunks: list[ScheduledChunk], block_size: int) -> None:
    ref = reference(chunks, block_size)
    for name, dtype in DTYPES.items():
        got = getattr(meta, name)
        assert got.dtype == dtype and got.tolist() == ref[name], name
    assert meta.block_tables.shape == (len(chunks), max((len(c.block_table) for c in chunks), default=0))
    assert meta.query_lens_cpu == ref["query_lens_cpu"] and meta.context_lens_cpu == ref["context_lens_cpu"]
    assert meta.block_size == block_size


def make_inputs(**limits: int) -> StepInputs:
    shape = AttentionShape(num_heads=4, num_kv_heads=2, num_slots=64 * BS, device=CPU)
    bounds = dict(max_tokens=64, max_seqs=8, max_blocks=16, max_samples=8) | limits
    return StepInputs(StepLimits(**bounds), BS, CPU, TorchAttentionBackend(), shape, Sampler(0), vocab_size=50)


MIXED = [
    ScheduledChunk([5], 9, [3, 1, 7], 1),  # a decode
    ScheduledChunk([1, 2, 3, 4, 5, 6], 0, [8, 9], 3),  # a whole prompt, n = 3 samples
    ScheduledChunk([7, 8, 9], 8, [3, 1, 10], 1),  # after a cached prefix in shared blocks 3 and 1
    ScheduledChunk([4, 4, 4, 4, 4], 2, [11, 12], 0, (4, 4, 4), 2),  # a non-final chunk asking prompt logprobs
    ScheduledChunk([6], 0, [13], 1),  # a one-token prompt
]


def test_mixed_steps_equal_the_reference_in_the_same_buffers() -> None:
    inputs = make_inputs()
    steps = [MIXED, MIXED[:1], MIXED[3:], [MIXED[1]], MIXED[::-1]]
    device_buffer = inputs.staging.device_buffer.data_ptr()
    for chunks in steps:
        meta = inputs.build(chunks).meta
        assert_equals_reference(meta, chunks, BS)
        for name in DTYPES:  # every field a view of the one persistent device buffer
            assert getattr(meta, name).untyped_storage().data_ptr() == device_buffer, name
    assert inputs.staging.device_buffer.data_ptr() == device_buffer


def test_build_metadata_alone_equals_the_reference() -> None:
    for chunks in (MIXED, MIXED[2:3], []):
        assert_equals_reference(build_metadata(chunks, BS, "cpu"), chunks, BS)
    with pytest.raises(ValueError, match="does not fit its block table"):
        build_metadata([ScheduledChunk([1] * 5, 0, [0], 1)], BS, "cpu")


def test_the_host_buffers_alternate_and_the_device_buffer_stays() -> None:
    """Refilling a host buffer waits for its last copy (an event on CUDA): two buffers take turns,
    so the one being filled is never the one whose copy was just queued."""
    staging = Staging(1024, CPU)
    hosts, devices = [], []
    for step in range(4):
        staging.begin()
        host, device = staging.take((3,), np.int64)
        host[:] = step
        staging.send()
        assert device.tolist() == [step] * 3
        hosts.append(host.__array_interface__["data"][0])
        devices.append(device.data_ptr())
    assert hosts[0] == hosts[2] != hosts[1] == hosts[3]
    assert len(set(devices)) == 1


def test_a_fed_decode_row_reads_its_token_where_the_step_before_sampled_it() -> None:
    """Overlapped scheduling: rows holding PENDING on the host get the previous step's sampled
    token at the given row, on the device after the copy (an unsampleable row's -1 is fed as 0)."""
    chunks = [ScheduledChunk([PENDING], 9, [3, 1, 7], 1), MIXED[1], ScheduledChunk([PENDING], 4, [2, 5], 1)]
    before = torch.tensor([31, -1, 17, 44])
    for pad in (None, Padding(4, 12, 4)):
        meta = make_inputs().build(chunks, pad=pad, feed=Feed(before, [(0, 2), (7, 1)])).meta
        ids = meta.input_ids.tolist()
        assert ids[:8] == [17, 1, 2, 3, 4, 5, 6, 0]
        assert meta.positions.tolist()[:8] == [9, 0, 1, 2, 3, 4, 5, 4]


def test_a_step_over_the_limits_gets_one_off_buffers() -> None:
    inputs = make_inputs(max_tokens=4, max_seqs=2, max_blocks=2, max_samples=2)
    big = inputs.build(MIXED).meta
    assert_equals_reference(big, MIXED, BS)
    assert big.input_ids.untyped_storage().data_ptr() != inputs.staging.device_buffer.data_ptr()
    small = inputs.build(MIXED[:1]).meta
    assert small.input_ids.untyped_storage().data_ptr() == inputs.staging.device_buffer.data_ptr()


def test_graph_paddings_are_the_captured_layouts() -> None:
    """A decode graph's batch and a prefill graph's tokens padded as the graphs were captured: pad
    rows write nowhere (slot -1) and attend one slot; the same regions for every step of a shape."""
    inputs = make_inputs()
    decodes = [ScheduledChunk([5], 9, [3, 1, 7], 1), ScheduledChunk([6], 0, [13], 1)]
    meta = inputs.build(decodes, pad=Padding(4, 4, 6)).meta
    layout = inputs.layout
    assert meta.input_ids.tolist() == [5, 6, 0, 0] and meta.positions.tolist() == [9, 0, 0, 0]
    assert meta.slot_mapping.tolist() == [7 * BS + 1, 13 * BS, -1, -1]
    assert meta.block_tables.tolist() == [[3, 1, 7, 0, 0, 0], [13, 0, 0, 0, 0, 0]] + [[0] * 6] * 2
    assert meta.context_lens.tolist() == [10, 1, 1, 1] and meta.query_start_loc.tolist() == [0, 1, 2, 3, 4]
    assert meta.logits_indices.tolist() == [0, 1, 2, 3] and meta.query_lens_cpu == [1] * 4
    inputs.build(MIXED)  # an eager step in between
    inputs.build([decodes[1]], pad=Padding(4, 4, 6))
    assert inputs.layout == layout

    chunk = ScheduledChunk([7, 8, 9], 5, [3, 1], 0)  # a chunk after a cached prefix, sampling nothing
    meta = inputs.build([chunk], pad=Padding(1, 8, 6)).meta
    assert meta.input_ids.tolist() == [7, 8, 9] + [0] * 5
    assert meta.slot_mapping.tolist() == [1 * BS + 1, 1 * BS + 2, 1 * BS + 3] + [-1] * 5
    assert meta.query_start_loc.tolist() == [0, 3] and meta.context_lens.tolist() == [8]
    assert meta.logits_indices.tolist() == [2]  # the last real token's row, sampled or not
    assert meta.query_lens_cpu == [8] and meta.context_lens_cpu == [6 * BS] and not meta.fresh_prompt
    layout = inputs.layout
    capture = inputs.build([], pad=Padding(1, 8, 6)).meta  # what the graph was captured on: all padding
    assert capture.slot_mapping.tolist() == [-1] * 8 and capture.query_start_loc.tolist() == [0, 1]
    assert capture.context_lens.tolist() == [1] and capture.logits_indices.tolist() == [0]
    assert inputs.layout == layout


def test_a_fresh_prompt_is_marked_eager_and_padded() -> None:
    """ForwardMetadata.fresh_prompt: one sequence's several tokens from position 0, from the chunks
    in an eager step, from Padding(fresh=True) in a prefill graph's (as captured and as replayed),
    where the host lists stay the capture's and the device's are the real ones."""
    inputs = make_inputs()
    fresh = ScheduledChunk([7, 8, 9], 0, [3], 1)
    assert inputs.build([fresh]).meta.fresh_prompt
    assert not inputs.build([ScheduledChunk([7, 8, 9], 4, [3, 5], 1)]).meta.fresh_prompt  # after a prefix
    assert not inputs.build([fresh, ScheduledChunk([6, 5], 0, [4], 1)]).meta.fresh_prompt  # two prompts
    assert not inputs.build([ScheduledChunk([7], 0, [3], 1)]).meta.fresh_prompt  # one token: a decode
    meta = inputs.build([fresh], pad=Padding(1, 8, 6, fresh=True)).meta
    assert meta.query_lens_cpu == [8] and meta.context_lens_cpu == [6 * BS] and meta.fresh_prompt
    assert meta.context_lens.tolist() == [3]
    assert meta.slot_mapping.tolist() == [3 * BS, 3 * BS + 1, 3 * BS + 2] + [-1] * 5
    layout = inputs.layout
    capture = inputs.build([], pad=Padding(1, 8, 6, fresh=True)).meta
    assert capture.fresh_prompt and inputs.layout == layout


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_lone_chunk_equals_the_reference_padded_or_not(data: st.DataObject) -> None:
    """A lone sequence's step has a path of its own (a prompt's time to first token): any chunk,
    after any prefix, sampling any rows, asking prompt logprobs or not, equals the reference; padded
    for a graph (pad sequences too, as a decode graph's), its real rows are the reference's and the
    rest is padding."""
    start = data.draw(st.integers(0, 40))
    n = data.draw(st.integers(1, 24))
    table = data.draw(st.lists(st.integers(0, 63), min_size=-(-(start + n) // BS), max_size=16, unique=True))
    samples = data.draw(st.integers(0, 3))
    targets = tuple(data.draw(st.lists(st.integers(0, 49), max_size=n)))
    chunk = ScheduledChunk(data.draw(st.lists(st.integers(0, 49), min_size=n, max_size=n)), start, table, samples,
                           targets, 2 if targets else 0)
    inputs = make_inputs()
    meta = inputs.build([chunk]).meta
    assert_equals_reference(meta, [chunk], BS)
    assert meta.fresh_prompt == (start == 0 and n > 1)
    extra = data.draw(st.integers(0, 3))
    tokens, width = n + extra + data.draw(st.integers(0, 5)), len(table) + data.draw(st.integers(0, 3))
    fresh = data.draw(st.booleans())
    meta = inputs.build([ScheduledChunk(chunk.token_ids, start, table, min(samples, 1))],
                        pad=Padding(1 + extra, tokens, width, fresh)).meta
    ref = reference([chunk], BS)
    assert meta.input_ids.tolist() == ref["input_ids"] + [0] * (tokens - n)
    assert meta.positions.tolist() == ref["positions"] + [0] * (tokens - n)
    assert meta.slot_mapping.tolist() == ref["slot_mapping"] + [-1] * (tokens - n)
    assert meta.block_tables.tolist() == [table + [0] * (width - len(table))] + [[0] * width] * extra
    assert meta.context_lens.tolist() == [start + n] + [1] * extra
    assert meta.query_start_loc.tolist() == [0, n] + list(range(n + 1, n + extra + 1))
    assert meta.logits_indices.tolist() == [n - 1] + list(range(n, n + extra))
    captured = [n] + [1] * extra  # the host lists as the graph was captured: the pad tokens in the last query
    captured[-1] += tokens - n - extra
    assert meta.query_lens_cpu == captured
    assert meta.context_lens_cpu == [width * BS] * (1 + extra)
    assert meta.fresh_prompt == (fresh and not extra)


def test_a_lone_chunk_past_the_cached_positions_equals_the_reference() -> None:
    """Positions past the lone path's precomputed range (65,536) are made on the spot; the step,
    larger than the persistent buffers, gets one-off ones."""
    start = 70_000
    table = list(range(start // BS + 1))
    chunk = ScheduledChunk([3, 1, 4], start, table, 1)
    assert_equals_reference(make_inputs().build([chunk]).meta, [chunk], BS)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_table_rows_kept_between_steps_equal_the_reference(data: st.DataObject) -> None:
    """A wide step's tables are kept row by row under their stamps: over steps whose sequences come
    and go, change places, gain blocks or have one copied (a new stamp each time), or carry no stamp
    (0), every step's tables equal the reference, padded for a graph or not."""
    inputs = make_inputs()
    tables = {k: [k] for k in range(12)}  # sequence -> its table (block ids: any, here)
    stamps = {k: k + 1 for k in range(12)}
    next_stamp = 100
    for _ in range(data.draw(st.integers(1, 8))):
        for k in data.draw(st.lists(st.sampled_from(sorted(tables)), max_size=4)):  # tables that change
            if data.draw(st.booleans()) or len(tables[k]) >= 6:
                tables[k] = tables[k][:-1] + [50 + next_stamp % 13]  # a block copied on write
            else:
                tables[k] = tables[k] + [20 + len(tables[k])]  # one more block
            stamps[k], next_stamp = next_stamp, next_stamp + 1
        seqs = data.draw(st.lists(st.sampled_from(sorted(tables)), min_size=2, max_size=8, unique=True))
        chunks = [ScheduledChunk([k], len(tables[k]) * BS - 1, list(tables[k]), 1, (), 0,
                                 data.draw(st.sampled_from([stamps[k], stamps[k], 0])))
                  for k in seqs]
        pad = Padding(8, 8, 16) if data.draw(st.booleans()) else None
        meta = inputs.build(chunks, pad=pad).meta
        width = 16 if pad else max(len(c.block_table) for c in chunks)
        expected = [c.block_table + [0] * (width - len(c.block_table)) for c in chunks]
        assert meta.block_tables.tolist() == expected + [[0] * width] * (8 - len(chunks) if pad else 0)


@pytest.mark.parametrize("seed", range(12))
def test_kept_table_rows_follow_the_scheduler_through_forks_preemptions_and_aborts(seed: int) -> None:
    """The real scheduler and block manager, their stamps as the engine passes them: requests come
    (n up to 3, shared prompts: prefix hits), finish, are aborted and preempted in a small pool; every
    step's tables, padded for a graph or not, are the live ones."""
    from test_scheduler import add, make

    from engine.core.sequence import FinishReason

    rng = random.Random(seed)
    s = make(num_blocks=rng.choice([12, 20, 40]), block_size=BS, budget=rng.choice([8, 16, 32]), max_seqs=8,
             long_prefill=rng.choice([0, 4]))
    inputs = make_inputs(max_blocks=16, max_seqs=8, max_tokens=64)
    requests = steps = 0
    for _ in range(120):
        if rng.random() < 0.4 and requests < 30:
            requests += 1
            add(s, rng.randint(1, 20), max_tokens=rng.randint(1, 12), n=rng.choice([1, 1, 2, 3]), first=rng.choice([1, 2]))
        if rng.random() < 0.05 and s.running:
            s.abort(rng.choice(s.running).request_id)
        out = s.schedule()
        if out.is_empty:
            continue
        chunks = []
        for item in out.scheduled:
            seq, start = item.seq, item.seq.num_computed_tokens
            table, stamp = s.blocks.stamped_table(seq.seq_id)
            chunks.append(ScheduledChunk(seq.token_ids[start:start + item.num_new_tokens], start, table,
                                         item.num_samples, table_stamp=stamp))
        pad = Padding(8, 8, 16) if all(len(c.token_ids) == 1 for c in chunks) and rng.random() < 0.5 else None
        meta = inputs.build(chunks, pad=pad).meta
        width = 16 if pad else max(len(c.block_table) for c in chunks)
        expected = [c.block_table + [0] * (width - len(c.block_table)) for c in chunks]
        assert meta.block_tables.tolist() == expected + ([[0] * width] * (8 - len(chunks)) if pad else [])
        steps += 1
        for seq in s.update(out, [[rng.randint(3, 9)] * item.num_samples for item in out.scheduled]):
            if seq.num_output_tokens >= seq.params.max_tokens:
                s.finish(seq, FinishReason.LENGTH)
    assert steps > 20


def test_the_plan_and_the_sampling_tensors_ride_in_the_copy() -> None:
    inputs = make_inputs()
    rows = [SampleRow(SamplingParams(temperature=0.0), [1]),
            SampleRow(SamplingParams(temperature=0.8, top_k=5, top_p=0.9, seed=3), [1], step=2),
            SampleRow(SamplingParams(temperature=1.2, min_p=0.1, seed=4), [1])]
    batch = rows + rows  # MIXED samples six rows
    step = inputs.build(MIXED, batch, copies=[(9, 14), (8, 15)])
    buffer = inputs.staging.device_buffer.data_ptr()
    plan = step.meta.plan
    assert [p.start for p in plan.prefills] == [1, 7, 10]
    assert plan.decode.rows.tolist() == [0, 15]  # not consecutive: an index tensor, staged
    assert plan.decode.rows.untyped_storage().data_ptr() == buffer
    assert step.block_copies.tolist() == [[9, 8], [14, 15]]
    sampling = step.sampling
    assert sampling.random_rows.tolist() == [1, 2, 4, 5] and sampling.top_k.tolist() == [5, 50, 5, 50]
    assert torch.equal(sampling.params, torch.tensor([[0.8, 0.9, 0.0], [1.2, 1.0, 0.1]] * 2))
    assert sampling.params.untyped_storage().data_ptr() == buffer
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(Sampler(0).sample(logits, batch, sampling), Sampler(0).sample(logits, batch))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny-step-inputs"), TINY, dtype=torch.float32)


def test_every_engine_step_equals_the_reference(tiny_dir: Path) -> None:
    """Real scheduled steps: chunked prefill (16-token budget), prefix-cache hits, n = 3 forks with
    their block copies, prompt logprobs; each built metadata is the reference's, planned once."""
    llm = LLM(str(tiny_dir), device="cpu", block_size=BS, num_blocks=96, max_num_batched_tokens=16,
              check_integrity=True)
    runner = llm.engine.runner
    seen = {"chunked": 0, "forks": 0, "copies": 0, "prompt": 0, "mixed": 0}
    build = runner.inputs.build

    def checked(chunks, rows=(), copies=(), pad=None, feed=None):
        assert feed is None  # the plain engine (overlapped scheduling is off on a CPU)
        step = build(chunks, rows, copies, pad, feed)
        assert_equals_reference(step.meta, chunks, BS)
        q = torch.zeros(step.meta.num_tokens, TINY["num_attention_heads"], TINY["head_dim"])
        assert runner.backend.fits(step.meta.plan, q, runner.kv_caches[0])  # planned once, for every layer
        assert (step.block_copies.tolist() if copies else None) == ([list(c) for c in zip(*copies)] or None)
        seen["chunked"] += any(c.num_samples == 0 for c in chunks)
        seen["forks"] += any(c.num_samples > 1 for c in chunks)
        seen["copies"] += bool(copies)
        seen["prompt"] += any(c.prompt_targets for c in chunks)
        seen["mixed"] += len({len(c.token_ids) == 1 for c in chunks}) == 2
        return step

    runner.inputs.build = checked
    rng = random.Random(0)
    shared = [rng.randrange(500) for _ in range(24)]
    prompts = [shared + [rng.randrange(500) for _ in range(n)] for n in (3, 30, 7)] + [[9, 8, 7], shared[:13]]
    params = [SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True),
              SamplingParams(temperature=0.9, seed=5, n=3, max_tokens=5, ignore_eos=True),
              SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, prompt_logprobs=2),
              SamplingParams(temperature=0.7, top_k=20, max_tokens=6, ignore_eos=True),
              SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)]
    llm.generate(prompts[:1], params[:1])  # the shared prefix, cached
    llm.generate(prompts, params)
    assert all(seen.values()), seen
    assert llm.engine.metrics.total_cached_tokens > 0  # prefix-cache hits



def test_an_eager_steps_rows_pad_to_a_row_size_and_the_engine_reads_the_real_ones(tiny_dir: Path) -> None:
    """row_sizes (a GPU's decode graph sizes, which cuBLAS has seen): an unpadded step's logits rows
    are padded up to the first size that holds them, the last real row repeated, the real rows as
    the reference's; past the largest size, or with none, no padding. An engine whose steps are
    padded so gives the same tokens, logprobs and prompt logprobs as one whose are not."""
    inputs = make_inputs()
    inputs.row_sizes = (1, 2, 4, 8)
    for chunks in ([MIXED[0]], MIXED[:2], MIXED, MIXED[3:4], [MIXED[1]]):
        real = reference(chunks, BS)["logits_indices"]
        rows = inputs.build(chunks).meta.logits_indices.tolist()
        want = next((s for s in inputs.row_sizes if s >= len(real)), len(real)) if real else 0
        assert rows == real + real[-1:] * (want - len(real)), chunks
    assert len(real) == 3 and len(rows) == 4  # a lone chunk of n = 3: padded too
    inputs.row_sizes = (1, 2)
    assert len(inputs.build(MIXED).meta.logits_indices) == len(reference(MIXED, BS)["logits_indices"])

    rng = random.Random(1)
    prompts = [[rng.randrange(500) for _ in range(n)] for n in (3, 30, 7, 12, 5)]
    params = [SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=2),
              SamplingParams(temperature=0.9, seed=5, n=3, max_tokens=5, ignore_eos=True),
              SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, prompt_logprobs=2),
              SamplingParams(temperature=0.7, top_k=20, seed=2, max_tokens=6, ignore_eos=True),
              SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)]
    outputs = []
    for sizes in ((), (1, 2, 4, 8, 16, 32)):
        llm = LLM(str(tiny_dir), device="cpu", block_size=BS, num_blocks=96, max_num_batched_tokens=16)
        llm.engine.runner.inputs.row_sizes = sizes
        outs = llm.generate(prompts, params)
        outputs.append([(o.token_ids, o.logprobs, o.prompt_logprobs) for r in outs for o in r.outputs])
    assert outputs[0] == outputs[1]
    assert any(p for _, _, p in outputs[0])  # prompt logprobs were read past the sampled rows


def test_a_step_with_a_prompt_chunk_pads_its_tokens_to_a_token_size() -> None:
    """token_sizes: a step feeding a prompt's chunk is padded up to the first size that holds its
    tokens (id 0, position 0, slot -1), the pad in the last sequence's query on the host (the tiles
    cover it) and in none on the device (query_start_loc as the real step's); a pure decode is not."""
    inputs = make_inputs()
    inputs.token_sizes = (4, 16, 32)
    steps = [MIXED, MIXED[1:2], MIXED[2:4]]  # 16 tokens (a size: no pad); a lone 6 and 8: padded to 16
    for chunks in steps:
        ref = reference(chunks, BS)
        meta = inputs.build(chunks).meta
        t = len(ref["input_ids"])
        size = next(s for s in inputs.token_sizes if s >= t)
        assert meta.input_ids.tolist() == ref["input_ids"] + [0] * (size - t)
        assert meta.positions.tolist() == ref["positions"] + [0] * (size - t)
        assert meta.slot_mapping.tolist() == ref["slot_mapping"] + [-1] * (size - t)
        assert meta.query_start_loc.tolist() == ref["query_start_loc"]
        assert meta.logits_indices.tolist() == ref["logits_indices"]
        assert meta.query_lens_cpu == ref["query_lens_cpu"][:-1] + [ref["query_lens_cpu"][-1] + size - t]
        assert (size > t) == (chunks is not steps[0])
    decodes = [ScheduledChunk([5], 9, [3, 1, 7], 1), ScheduledChunk([6], 0, [13], 1)]
    assert inputs.build(decodes).meta.num_tokens == 2


@pytest.mark.parametrize("max_seqs,max_tokens", [(256, 8192), (16, 2048), (64, 1000)])
def test_eager_token_sizes_hold_the_captured_counts_and_pad_little(max_seqs: int, max_tokens: int) -> None:
    """A GPU's eager token sizes: every count the graphs' captures ran (cuBLAS has seen those), the
    budget, nothing past it, and above 256 no step padded by more than an eighth."""
    from engine.runner.cuda_graphs import graph_sizes
    from engine.runner.model_runner import eager_token_sizes
    from engine.runner.prefill_graphs import prefill_sizes

    sizes = eager_token_sizes(max_seqs, max_tokens)
    assert sizes == sorted(set(sizes)) and sizes[-1] == max_tokens
    captured = {n for n in (*graph_sizes(max_seqs), *prefill_sizes(max_tokens)) if n <= max_tokens}
    assert captured <= set(sizes)
    assert all(b <= a * 9 / 8 for a, b in zip(sizes, sizes[1:]) if a >= 256)
