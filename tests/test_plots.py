"""Plot builders are pure: a snapshot with known blocks gives those cells and colours; the time
series, latency and utilization figures draw what the history holds. No model, no browser."""
from __future__ import annotations

import math

from engine.block_manager import BlockManager, BlockStats
from engine.block_map import BlockMapSnapshot, KvWaste, SeqInfo, build_block_map
from engine.engine_info import EngineInfo
from engine.metrics import MetricsSnapshot
from engine.metrics_history import MetricsHistory
from ui.kv_formula import kv_formula_markdown
from ui.plots import (block_cells, block_map_figure, grid_columns, kv_memory_figure, latency_figure,
                      latency_summary, percentile, request_color, throughput_figure, utilization_figure)
from ui.plots.block_map import MAX_CELLS, blocks_per_cell
from ui.plots.common import CACHED_FREE_COLOR, FREE_COLOR
from ui.utilization import UtilizationView, UtilSample


def two_requests_sharing_a_prefix() -> BlockMapSnapshot:
    """8 blocks of 4: seq 0 ("alice") holds 0, 1, 2; seq 1 ("bob") shares 0 and 1 and holds 3;
    a finished request left block 4 cached-free; 5-7 were never used."""
    bm = BlockManager(num_blocks=8, block_size=4)
    prompt = list(range(10))
    assert bm.allocate_slots(0, 0, 10)
    bm.cache_full_blocks(0, prompt, 10)
    prefix = bm.match_prefix(prompt[:8] + [99, 98])
    assert prefix == [0, 1]
    assert bm.allocate_slots(1, 8, 2, prefix)
    assert bm.allocate_slots(2, 0, 4)
    bm.cache_full_blocks(2, [7, 7, 7, 7], 4)
    bm.free(2)
    seqs = (SeqInfo(0, "alice", 0, 10, 10, 30, True), SeqInfo(1, "bob", 0, 10, 10, 20, True))
    return build_block_map(bm, seqs, timestamp=1.0)


def heatmap_colors(fig) -> list[str]:
    """The colour the heatmap paints on each block, in block order, read back through its colorscale."""
    heat = fig.data[0]
    palette = [color for _, color in heat.colorscale[::2]]  # two stops per colour
    return [palette[int(z)] for row in heat.z for z in row if z is not None]


def test_block_map_cells_and_colours() -> None:
    bm = two_requests_sharing_a_prefix()
    cells = block_cells(bm)
    alice, bob = request_color("alice"), request_color("bob")
    assert [c.color for c in cells] == [alice, alice, alice, bob, CACHED_FREE_COLOR, FREE_COLOR, FREE_COLOR,
                                        FREE_COLOR]
    assert [c.shared for c in cells] == [True, True, False, False, False, False, False, False]
    assert [c.request_id for c in cells[:5]] == ["alice", "alice", "alice", "bob", None]
    assert "alice" in cells[0].hover and "bob" in cells[0].hover and "10 tokens" in cells[0].hover
    assert "cached" in cells[4].hover

    fig = block_map_figure(bm)
    assert heatmap_colors(fig) == [c.color for c in cells]
    shared = fig.data[1]
    cols = grid_columns(8)
    assert list(zip(shared.x, shared.y)) == [(0 % cols, 0), (1 % cols, 0)]
    legend = {t.name for t in fig.data if t.showlegend}
    assert {"free", "cached, free", "alice", "bob"} <= legend
    assert "4 used (2 shared)" in fig.layout.title.text


def test_block_map_of_an_empty_pool_is_all_free() -> None:
    bm = build_block_map(BlockManager(300, 16), (), 0.0)
    fig = block_map_figure(bm)
    assert set(heatmap_colors(fig)) == {FREE_COLOR}
    assert len(heatmap_colors(fig)) == 300
    assert len(fig.data[0].z[0]) == grid_columns(300)


def test_a_large_pool_is_drawn_in_cells_of_several_blocks_shaded_by_use() -> None:
    """10,000 blocks of 16 (a GPU pool): alice holds blocks 0-11, bob 12-14, carol 15."""
    bm = BlockManager(num_blocks=10_000, block_size=16)
    assert bm.allocate_slots(0, 0, 192) and bm.allocate_slots(1, 0, 40) and bm.allocate_slots(2, 0, 16)
    assert bm.block_table(0) == list(range(12)) and bm.block_table(1) == [12, 13, 14] and bm.block_table(2) == [15]
    seqs = (SeqInfo(0, "alice", 0, 192, 192, 300, True), SeqInfo(1, "bob", 0, 40, 40, 60, True),
            SeqInfo(2, "carol", 0, 16, 16, 20, True))
    snap = build_block_map(bm, seqs, 0.0)
    cells = block_cells(snap)
    assert blocks_per_cell(10_000) == 5 and len(cells) == 2000 <= MAX_CELLS
    assert sum(c.count for c in cells) == 10_000 and [c.block_id for c in cells[:3]] == [0, 5, 10]
    assert cells[0].color == cells[1].color == request_color("alice")  # blocks 0-9: all alice's
    # blocks 10-14: two alice's, three bob's: bob's colour, at full strength (all five used)
    assert cells[2].request_id == "bob" and cells[2].color == request_color("bob")
    assert "5/5 used" in cells[2].hover and "bob: 3 blocks" in cells[2].hover and "alice: 2 blocks" in cells[2].hover
    # blocks 15-19: only carol's block used: her colour at a quarter over the free grey
    carol, free = request_color("carol"), FREE_COLOR
    quarter = "#" + "".join(f"{round(int(carol[i:i + 2], 16) * .25 + int(free[i:i + 2], 16) * .75):02x}"
                            for i in (1, 3, 5))
    assert cells[3].request_id == "carol" and cells[3].color == quarter and "1/5 used" in cells[3].hover
    assert cells[4].color == FREE_COLOR and cells[4].request_id is None
    fig = block_map_figure(snap)
    assert heatmap_colors(fig) == [c.color for c in cells]
    assert "a cell is 5 blocks" in fig.layout.title.text


def snapshot(step: int, t: float, used: int, ttft: tuple = (), itl: tuple = (), decode: int = 0) -> MetricsSnapshot:
    blocks = BlockStats(total=100, used=used, free=100 - used - 5, cached_free=5, cached=5, shared=1,
                        tokens_stored=used * 12, slots_reserved=used * 16, block_size=16)
    return MetricsSnapshot(step, t, 0.02, 2, 1, 2, 0, decode, 0, blocks, ttft, itl, step * 2, 10, 0, 0, 0)


def history_with_steps() -> MetricsHistory:
    history = MetricsHistory(bucket_s=0.5)
    waste = KvWaste(paged_reserved=160, paged_stored=120, contiguous_reserved=1000, contiguous_stored=120)
    for i in range(20):
        history.record(snapshot(i + 1, 100.0 + 0.25 * i, used=10 + i, ttft=(0.2,) if i < 3 else (),
                                itl=(0.03 + 0.001 * i,), decode=2), waste)
    return history


def test_kv_memory_figure_stacks_blocks_and_compares_waste() -> None:
    view = history_with_steps().view(now=105.0)
    fig = kv_memory_figure(view)
    used, cached, free, paged, contiguous = fig.data
    assert used.y[-1] == 29 and cached.y[-1] == 5 and free.y[-1] == 100 - 29 - 5
    assert math.isclose(paged.y[-1], 25.0) and math.isclose(contiguous.y[-1], 88.0)
    assert len(used.x) == 10  # 20 steps over 5 s in 0.5 s buckets
    assert "paged 25.0% vs contiguous 88.0%" in fig.layout.title.text


def test_latency_and_throughput_figures() -> None:
    view = history_with_steps().view(now=105.0)
    summary = latency_summary(view)
    assert math.isclose(summary.ttft_p50, 200.0) and summary.num_ttft == 3 and summary.num_itl == 20
    fig = latency_figure(view)
    assert len(fig.data[0].x) == 3 and len(fig.data[1].x) == 20
    assert "p50 200" in fig.layout.annotations[0].text
    tp = throughput_figure(view)
    decode = next(t for t in tp.data if t.name == "decode tok/s")
    assert decode.y[-1] == 2 * 2 / 0.5  # two steps of two decode tokens in a half-second bucket


def test_empty_history_draws_empty_figures() -> None:
    view = MetricsHistory().view(now=0.0)
    for fig in (kv_memory_figure(view), latency_figure(view), throughput_figure(view)):
        assert any("no " in a.text for a in fig.layout.annotations)


def test_utilization_figure_says_cpu_on_a_cpu_run() -> None:
    samples = tuple(UtilSample(float(t), 50.0, 10.0, 1.5, 80.0) for t in range(5))
    view = UtilizationView("cpu", "process CPU % of all cores", "process memory % of RAM", samples, now=5.0)
    fig = utilization_figure(view)
    assert "CPU" in fig.layout.title.text and "GPU utilization" not in fig.layout.title.text
    assert [t.name for t in fig.data][0].startswith("process CPU")
    assert list(fig.data[2].y) == [80.0] * 5


def test_percentile_interpolates() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 95) == 5
    assert math.isnan(percentile([], 50))


def test_kv_formula_uses_the_models_numbers() -> None:
    info = EngineInfo("embedded", "llama", "cpu", "float32", 4, 30, 3, 64, 46080, 16, 256, 2048, 64, 165888)
    text = kv_formula_markdown(info, "SmolLM2-135M-Instruct")
    assert "2 × 30 × 3 × 64 × 4 = 46,080 bytes" in text
    assert "45.0 KiB per token" in text and "256 blocks = 4,096 token slots" in text


def test_idle_buckets_read_zero_throughput_and_hold_the_state() -> None:
    """Steps for 1 s, 3 s of nothing, steps again: the rate is 0 in the gap (dropping those buckets
    once showed 63 tok/s against the counter's 25), and running/waiting and the waste lines hold
    their last value as steps instead of sloping straight across the gap."""
    history = MetricsHistory(bucket_s=0.5)
    waste = KvWaste(paged_reserved=160, paged_stored=120, contiguous_reserved=1000, contiguous_stored=120)
    times = [100.0 + 0.25 * i for i in range(4)] + [104.0 + 0.25 * i for i in range(4)]
    for k, t in enumerate(times):
        history.record(snapshot(k + 1, t, used=10, ttft=(), itl=(0.03,), decode=2), waste)
    view = history.view(now=106.0)
    tp = throughput_figure(view)
    decode = next(t for t in tp.data if t.name == "decode tok/s")
    running = next(t for t in tp.data if t.name == "running")
    assert list(decode.y) == [8.0, 8.0] + [0.0] * 6 + [8.0, 8.0] + [0.0] * 2  # to the last complete bucket
    assert sum(y * 0.5 for y in decode.y) == 2 * len(times)  # the counter's tokens, all of them
    assert running.y[2] == running.y[1] and running.line.shape == "hv"
    contiguous = kv_memory_figure(view).data[-1]
    assert contiguous.y[3] == contiguous.y[1] and contiguous.line.shape == "hv"


def test_no_nan_in_latency_titles() -> None:
    fig = latency_figure(MetricsHistory().view(now=0.0))
    titles = " ".join(a.text for a in fig.layout.annotations)
    assert "nan" not in titles and "p50 –" in titles and "TPOT" in titles


def test_64_live_requests_get_64_distinct_colours_kept_for_life() -> None:
    from ui.request_colors import PALETTE_SIZE, RequestColors, palette

    colors = palette()
    rgb = [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in colors]
    closest = min(sum((a - b) ** 2 for a, b in zip(p, q)) ** 0.5 for i, p in enumerate(rgb) for q in rgb[i + 1:])
    assert len(set(colors)) == PALETTE_SIZE and closest > 30  # no two alike to the eye
    assert all(max(c) - min(c) > 40 for c in rgb)  # none grey or white, the colours of free blocks
    book = RequestColors()
    first = book.update(f"r{i}" for i in range(64))
    assert len(set(first.values())) == 64
    after = book.update([f"r{i}" for i in range(1, 64)] + ["new"])  # r0 ended, "new" arrived
    assert all(after[f"r{i}"] == first[f"r{i}"] for i in range(1, 64))  # nobody's colour moved
    assert after["new"] == first["r0"]  # the only free colour: the one r0 gave back
    fig = block_map_figure(two_requests_sharing_a_prefix(), {"alice": "#123456", "bob": "#654321"})
    assert "#123456" in str(fig.data[0].colorscale) and "#654321" in str(fig.data[0].colorscale)
