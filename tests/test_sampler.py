"""Sampler behaviour a user would notice: greedy is argmax, filters hold, seeds reproduce."""
from __future__ import annotations

import math

import pytest
import torch

from engine.runner.sampler import INVALID_TOKEN, MIN_TEMPERATURE, Sampler, SampleRow, apply_top_p
from engine.core.sampling_params import MAX_N, SamplingParams

# A crafted 10-token distribution with clear gaps, so each filter's kept set is unambiguous.
PROBS = [0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.01, 0.005, 0.003, 0.002]
LOGITS = torch.tensor(PROBS).log()  # [10]


def rows_of(params: SamplingParams, count: int, token_ids: list[int] | None = None) -> list[SampleRow]:
    return [SampleRow(params, token_ids or [], sample_index=0, step=i) for i in range(count)]


def draw(params: SamplingParams, count: int = 2000, seed: int = 0) -> torch.Tensor:
    """`count` independent draws from LOGITS under `params`, as one batch."""
    return Sampler(seed).sample(LOGITS.expand(count, -1).contiguous(), rows_of(params, count))


def test_greedy_is_argmax() -> None:
    logits = torch.randn(16, 257, generator=torch.Generator().manual_seed(1))
    rows = rows_of(SamplingParams(temperature=0.0), 16)
    assert torch.equal(Sampler().sample(logits, rows), logits.argmax(-1))


def test_all_greedy_batch_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("an all-greedy batch must not softmax, sort or draw noise")

    monkeypatch.setattr(Sampler, "_sample_random", fail)
    logits = torch.randn(4, 50)
    assert Sampler().sample(logits, rows_of(SamplingParams(temperature=0.0), 4)).shape == (4,)


def test_result_is_int64_and_logits_untouched() -> None:
    logits = torch.randn(6, 40)
    before = logits.clone()
    params = [
        SamplingParams(temperature=0.0, repetition_penalty=1.3),
        SamplingParams(top_k=5, top_p=0.8, min_p=0.05, repetition_penalty=1.3),
    ]
    rows = [SampleRow(params[i % 2], [1, 2, 3], 0, 0) for i in range(6)]
    out = Sampler().sample(logits, rows)
    assert out.dtype == torch.int64 and out.shape == (6,)
    assert torch.equal(logits, before)


@pytest.mark.parametrize("temperature", [1e-3, MIN_TEMPERATURE / 2])
def test_temperature_to_zero_is_greedy(temperature: float) -> None:
    out = draw(SamplingParams(temperature=temperature), count=500)
    assert torch.all(out == 0)


def test_top_k_one_is_greedy() -> None:
    logits = torch.randn(64, 300, generator=torch.Generator().manual_seed(2))
    rows = rows_of(SamplingParams(temperature=1.5, top_k=1), 64)
    assert torch.equal(Sampler().sample(logits, rows), logits.argmax(-1))


@pytest.mark.parametrize(
    ("params", "allowed"),
    [
        (SamplingParams(top_k=3), {0, 1, 2}),
        (SamplingParams(top_p=0.7), {0, 1, 2}),  # mass before token 3 is 0.8 >= 0.7
        (SamplingParams(top_p=0.3), {0}),
        (SamplingParams(min_p=0.2), {0, 1, 2, 3}),  # keeps p >= 0.08
        (SamplingParams(top_k=5, top_p=0.9, min_p=0.1), {0, 1, 2, 3}),  # after top-k: .42 .26 .16 .11 .05
        (SamplingParams(temperature=2.0, min_p=0.45), {0, 1, 2, 3}),  # flatter: sqrt(p / 0.4) >= 0.45
    ],
)
def test_filters_never_pick_a_filtered_token(params: SamplingParams, allowed: set[int]) -> None:
    picked = set(draw(params).tolist())
    assert picked == allowed  # nothing outside, and (over 2000 draws) everything inside


def test_each_row_gets_its_own_filters_in_one_batch() -> None:
    cases = [
        (SamplingParams(top_k=2), {0, 1}),
        (SamplingParams(top_p=0.5), {0, 1}),
        (SamplingParams(min_p=0.3), {0, 1, 2}),
        (SamplingParams(), set(range(10))),
        (SamplingParams(temperature=0.0), {0}),
    ]
    count = 400
    rows = [SampleRow(cases[i % len(cases)][0], [], 0, i) for i in range(count * len(cases))]
    out = Sampler(3).sample(LOGITS.expand(len(rows), -1).contiguous(), rows).tolist()
    for c, (_, allowed) in enumerate(cases):
        assert set(out[c :: len(cases)]) <= allowed


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_empirical_distribution_matches_softmax(temperature: float) -> None:
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, -1.0, 2.0])
    count = 6000
    rows = rows_of(SamplingParams(temperature=temperature), count)
    out = Sampler(4).sample(logits.expand(count, -1).contiguous(), rows)
    counts = torch.bincount(out, minlength=6).double()
    # 5 degrees of freedom: P(chi2 > 20.5) = 0.001; the seed is fixed, so this never flakes.
    assert chi_square(counts, (logits.double() / temperature).softmax(-1)) < 20.5


def test_top_k_renormalises_what_it_keeps() -> None:
    counts = torch.bincount(draw(SamplingParams(top_k=3), count=6000, seed=5), minlength=10)
    kept = torch.tensor(PROBS[:3], dtype=torch.float64)
    assert chi_square(counts[:3].double(), kept / kept.sum()) < 13.8  # 2 dof, P = 0.001


def test_repetition_penalty_divides_positive_logits() -> None:
    logits = torch.tensor([[2.0, 1.9, -1.0, -1.2]])
    greedy = SamplingParams(temperature=0.0, repetition_penalty=1.5)
    assert Sampler().sample(logits, [SampleRow(greedy, [0], 0, 0)]).item() == 1  # 2.0 / 1.5 < 1.9
    plain = SamplingParams(temperature=0.0)
    assert Sampler().sample(logits, [SampleRow(plain, [0], 0, 0)]).item() == 0


def test_repetition_penalty_multiplies_negative_logits() -> None:
    logits = torch.tensor([[-1.0, -1.1, -5.0]])
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    assert Sampler().sample(logits, [SampleRow(params, [0, 0, 0], 0, 0)]).item() == 1  # -2 < -1.1


def test_repetition_penalty_below_one_rewards_seen_tokens() -> None:
    logits = torch.tensor([[1.0, 0.9, 0.6]])
    params = SamplingParams(temperature=0.0, repetition_penalty=0.5)
    assert Sampler().sample(logits, [SampleRow(params, [2], 0, 0)]).item() == 2  # 0.6 / 0.5


def test_repetition_penalty_only_for_rows_that_ask() -> None:
    logits = torch.tensor([[2.0, 1.9], [2.0, 1.9]])
    rows = [
        SampleRow(SamplingParams(temperature=0.0, repetition_penalty=1.5), [0], 0, 0),
        SampleRow(SamplingParams(temperature=0.0), [0], 0, 0),
    ]
    assert Sampler().sample(logits, rows).tolist() == [1, 0]


def seeded_row(step: int, sample_index: int = 0, seed: int = 1234) -> SampleRow:
    params = SamplingParams(seed=seed, temperature=0.9, top_p=0.95, repetition_penalty=1.1)
    return SampleRow(params, [3, 4, 5], sample_index, step)


def test_seeded_row_is_the_same_alone_and_in_any_batch() -> None:
    vocab = 1000
    gen = torch.Generator().manual_seed(7)
    target = torch.randn(vocab, generator=gen)  # [V], the seeded row's logits
    others = torch.randn(5, vocab, generator=gen)
    other_rows = [
        SampleRow(SamplingParams(), [], 0, 0),
        SampleRow(SamplingParams(temperature=0.0), [], 0, 0),
        SampleRow(SamplingParams(seed=99, top_k=20), [1], 1, 3),
        SampleRow(SamplingParams(min_p=0.1, repetition_penalty=1.3), [2, 2], 0, 8),
        SampleRow(SamplingParams(top_p=0.5, temperature=1.3), [], 0, 2),
    ]
    for step in range(20):
        alone = Sampler(0).sample(target[None], [seeded_row(step)]).item()
        for position in (0, 2, 5):
            logits = torch.cat([others[:position], target[None], others[position:]])
            rows = other_rows[:position] + [seeded_row(step)] + other_rows[position:]
            batched = Sampler(step + 100).sample(logits, rows)  # a different engine seed, too
            assert batched[position].item() == alone


def test_seeded_stream_is_reproducible_and_depends_on_sample_index() -> None:
    logits = torch.zeros(1, 500)  # uniform, so streams differ visibly

    def stream(sample_index: int, seed: int = 1234) -> list[int]:
        sampler = Sampler()
        return [sampler.sample(logits, [seeded_row(s, sample_index, seed)]).item() for s in range(16)]

    assert stream(0) == stream(0)
    assert stream(0) != stream(1)
    assert stream(0) != stream(0, seed=1235)
    assert len(set(stream(0))) > 8  # the step moves the stream on


def test_unseeded_rows_use_the_engine_generator() -> None:
    logits = torch.zeros(8, 500)
    rows = rows_of(SamplingParams(), 8)
    assert torch.equal(Sampler(5).sample(logits, rows), Sampler(5).sample(logits, rows))
    assert not torch.equal(Sampler(5).sample(logits, rows), Sampler(6).sample(logits, rows))


def test_masked_logits_are_never_picked() -> None:
    logits = torch.full((200, 8), -math.inf)
    logits[:, 5] = 0.0
    logits[:, 6] = 0.5
    out = Sampler().sample(logits, rows_of(SamplingParams(top_p=0.99), 200))
    assert set(out.tolist()) <= {5, 6}


def poisoned(kind: str, vocab: int) -> torch.Tensor:
    """[V] logits a faulty forward pass might give: one NaN, one +inf, or all -inf."""
    row = torch.randn(vocab)
    if kind == "all -inf":
        return row.fill_(-math.inf)
    row[vocab // 3] = math.nan if kind == "nan" else math.inf
    return row


@pytest.mark.parametrize("kind", ["nan", "+inf", "all -inf"])
@pytest.mark.parametrize("bad_params", [SamplingParams(temperature=0.0), SamplingParams(top_p=0.9, top_k=40),
                                        SamplingParams(seed=5, min_p=0.1, repetition_penalty=1.2)],
                         ids=["greedy", "top-p-k", "seeded-min-p"])
def test_a_poisoned_row_gets_invalid_token_and_no_other_row_changes(kind: str, bad_params: SamplingParams) -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 300, generator=gen)
    logits[1, :50] = -math.inf  # masked entries are fine
    rows = [SampleRow(SamplingParams(temperature=0.0), [1], 0, 0),
            SampleRow(SamplingParams(temperature=0.0, repetition_penalty=1.2), [4, 5], 0, 1),
            SampleRow(SamplingParams(seed=1, top_k=20), [], 0, 2),
            SampleRow(SamplingParams(seed=2, top_p=0.9), [], 0, 3),
            SampleRow(SamplingParams(seed=3, min_p=0.05, temperature=1.3), [7], 0, 4)]
    alone = Sampler().sample(logits, rows).tolist()  # greedy and seeded rows: batch-independent
    assert INVALID_TOKEN not in alone
    for at in (0, 2, 5):
        batch = torch.cat([logits[:at], poisoned(kind, 300)[None], logits[at:]])
        out = Sampler().sample(batch, rows[:at] + [SampleRow(bad_params, [2, 3], 0, 1)] + rows[at:]).tolist()
        assert out[at] == INVALID_TOKEN
        assert out[:at] + out[at + 1:] == alone


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -0.1},
        {"top_p": 1.5},
        {"top_p": 0.0},
        {"top_k": -2},
        {"min_p": 1.5},
        {"repetition_penalty": 0.0},
        {"max_tokens": 0},
        {"n": 0},
        {"n": MAX_N + 1},
        {"stop": ("",)},
    ],
)
def test_sampling_params_reject_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def reference_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """[V] bool, the tokens a plain full-sort nucleus filter keeps."""
    sorted_logits, order = logits.double().sort(descending=True)
    probs = sorted_logits.softmax(-1)
    keep_sorted = probs.cumsum(-1) - probs < p
    return torch.zeros_like(keep_sorted).scatter(0, order, keep_sorted)


@pytest.mark.parametrize("scale", [0.05, 1.0, 4.0])  # 0.05 needs more than the 1024 candidates
def test_top_p_matches_a_full_sort(scale: float) -> None:
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(6, 5000, generator=gen) * scale
    top_p = [0.3, 0.5, 0.9, 0.95, 0.99, 1.0]
    filtered = logits.clone()
    apply_top_p(filtered, top_p)
    for row, p in enumerate(top_p):
        expected = reference_top_p(logits[row], p) if p < 1 else torch.ones(5000, dtype=torch.bool)
        assert torch.equal(filtered[row] > -math.inf, expected), (scale, p)
        kept = filtered[row] > -math.inf
        assert torch.equal(filtered[row][kept], logits[row][kept])  # survivors unchanged


def test_logit_bias_and_output_penalties_follow_openai_and_vllm() -> None:
    """logit_bias adds to its tokens; presence and frequency penalties subtract
    frequency x count + presence for each token of the output (never the prompt's)."""
    from engine.runner.sampler import apply_logit_bias, apply_output_penalties

    logits = torch.zeros(2, 10)
    params = SamplingParams(temperature=0, presence_penalty=0.5, frequency_penalty=0.25, logit_bias={3: -100, 4: 2})
    # prompt [1, 2], output [5, 5, 7]; the second row asks for nothing
    rows = [SampleRow(params, [1, 2, 5, 5, 7], 0, 3), SampleRow(SamplingParams(temperature=0), [1, 5], 0, 1)]
    biased = apply_logit_bias(logits, rows)
    assert biased[0, 3] == -100 and biased[0, 4] == 2 and biased[1].abs().sum() == 0
    out = apply_output_penalties(logits, rows)
    assert out[0, 5] == pytest.approx(-(0.25 * 2 + 0.5)) and out[0, 7] == pytest.approx(-(0.25 + 0.5))
    assert out[0, 1] == 0 and out[0, 2] == 0 and out[1].abs().sum() == 0  # the prompt, the other row
    assert logits.abs().sum() == 0  # the caller's logits untouched
    greedy = Sampler().sample(torch.tensor([[0.0, 5.0, 4.0]]), [SampleRow(SamplingParams(temperature=0,
                                                                                          logit_bias={1: -100}), [0], 0, 0)])
    assert greedy.tolist() == [2]
    with pytest.raises(ValueError, match="between -2 and 2"):
        SamplingParams(presence_penalty=3)
    with pytest.raises(ValueError, match="between -100 and 100"):
        SamplingParams(logit_bias={1: 101})


def test_a_banned_id_is_never_drawn() -> None:
    """min_tokens bans EOS and the stop ids: greedy or sampled, they are not drawn."""
    logits = torch.tensor([[0.0, 9.0, 1.0, 0.5]] * 2)
    rows = [SampleRow(SamplingParams(temperature=0), [0], 0, 0, banned=(1,)),
            SampleRow(SamplingParams(temperature=1.0, seed=3), [0], 0, 0, banned=(1, 2))]
    for _ in range(20):
        got = Sampler().sample(logits, rows).tolist()
        assert got[0] == 2 and got[1] in (0, 3)
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(max_tokens=4, min_tokens=5)


PINNED_ROW_SEEDS = [11209450874102765256, 16844115562471736969, 12389866730772565118]


def test_row_seeds_depend_on_the_triple_alone_and_tell_triples_apart() -> None:
    """A seeded row's noise seed is a function of (seed, sample_index, step): the same batched or
    alone, in any order; distinct for every triple of one seed; any int seeds it."""
    import random

    from engine.runner.sampling_tensors import gpu_seeds, row_seed, row_seeds

    triples = [(seed, k, step) for seed in (0, 1, -7, 2**70) for k in range(4) for step in range(300)]
    random.Random(0).shuffle(triples)
    batched = row_seeds(*map(list, zip(*triples))).tolist()
    assert batched == [row_seed(*t) for t in triples]  # numpy's, the step's at once, = plain Python's, a row's
    for seed in (0, 1, -7, 2**70):
        mine = {b for t, b in zip(triples, batched) if t[0] == seed}
        assert len(mine) == 4 * 300
    assert len(set(batched)) == len(batched)
    # pinned: a change of the function changes every seeded request's text
    assert [row_seed(0, 0, 0), row_seed(1, 2, 3), row_seed(-7, 1, 2**31)] == PINNED_ROW_SEEDS
    # unseeded rows take the host generator's draws in row order; seeded rows take none
    seeded, free = SamplingParams(temperature=0.7, seed=3), SamplingParams(temperature=0.7)
    rows = [SampleRow(seeded if i % 3 else free, [1], i % 2, i) for i in range(12)]
    host = random.Random(5)
    expected = [row_seed(3, i % 2, i) if i % 3 else host.getrandbits(64) for i in range(12)]
    assert gpu_seeds(rows, random.Random(5)).tolist() == expected
    assert gpu_seeds(rows[1:3], random.Random(5)).tolist() == [row_seed(3, 1, 1), row_seed(3, 0, 2)]
