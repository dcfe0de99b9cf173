"""Reading a vLLM-compatible /metrics back (server.vllm_metrics): names of every vLLM era, sums over
engines, rates and quantiles over windows, several replicas merged; and the prefix tree's segments."""
from __future__ import annotations

import math

import pytest

from server.prefix_tree import NodeView, TreeSnapshot, segments
from server.vllm_metrics import Histogram, Scrape, derive, derive_total, merge_scrapes, parse_scrape

BOUNDS = (0.01, 0.1, 1.0, math.inf)


def exposition(t: int, engines: int = 2, old_names: bool = False, scale: float = 1.0) -> str:
    """What a vLLM with `engines` engine cores (data parallel) exports `t` seconds in: each engine
    has run 2 requests, queued 1, and made 10·t prompt and 4·t generated tokens; TTFT observations
    (4·t of them) fall in the (0.01, 0.1] bucket. `old_names`: the names before vLLM 0.10/0.11."""
    usage = "vllm:gpu_cache_usage_perc" if old_names else "vllm:kv_cache_usage_perc"
    queries = "vllm:gpu_prefix_cache_queries" if old_names else "vllm:prefix_cache_queries"
    hits = "vllm:gpu_prefix_cache_hits" if old_names else "vllm:prefix_cache_hits"
    itl = "vllm:time_per_output_token_seconds" if old_names else "vllm:inter_token_latency_seconds"
    labels = [f'engine="{e}",model_name="m"' for e in range(engines)]
    n = 4 * t * scale
    families = [("vllm:num_requests_running", "gauge", [2.0] * engines),
                ("vllm:num_requests_waiting", "gauge", [1.0] * engines),
                (usage, "gauge", [0.2 + 0.2 * e for e in range(engines)]),
                (queries, "counter", [100 * t * scale] * engines), (hits, "counter", [75 * t * scale] * engines),
                ("vllm:prompt_tokens", "counter", [10 * t * scale] * engines),
                ("vllm:generation_tokens", "counter", [4 * t * scale] * engines),
                ("vllm:num_preemptions", "counter", [t // 10] * engines)]
    lines = []
    for name, kind, values in families:
        lines.append(f"# TYPE {name} {kind}")
        suffix = "_total" if kind == "counter" else ""
        lines += [f"{name}{suffix}{{{lab}}} {v}" for lab, v in zip(labels, values)]
    for name in ("vllm:time_to_first_token_seconds", itl):
        lines.append(f"# TYPE {name} histogram")
        for lab in labels:
            for bound, cum in zip(("0.01", "0.1", "1.0", "+Inf"), (0, n, n, n)):
                lines.append(f'{name}_bucket{{{lab},le="{bound}"}} {cum}')
            lines += [f"{name}_count{{{lab}}} {n}", f"{name}_sum{{{lab}}} {0.05 * n}"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("old_names", [False, True])
def test_a_scrape_sums_the_engines_and_reads_every_era_of_names(old_names: bool) -> None:
    points = [parse_scrape(exposition(t, old_names=old_names), float(t)) for t in range(0, 61)]
    p = derive(points)
    assert (p.running, p.waiting) == (4.0, 2.0)
    assert p.kv_usage == pytest.approx(0.3)  # a share of each engine's pool: the mean, never the sum
    assert p.prompt_tps == pytest.approx(20.0) and p.output_tps == pytest.approx(8.0)  # two engines' rates
    assert p.hit_rate == pytest.approx(0.75)
    assert p.preemptions == pytest.approx(12.0)  # 6 each in the last 60 s
    assert 0.01 < p.ttft_p50 < 0.1 and 0.01 < p.itl_p50 < 0.1 and p.ttft_p95 <= 0.1
    assert p.e2e_p50 is None  # not exported here: not known, never zero


def test_histogram_quantile_reads_as_prometheus_does() -> None:
    h = Histogram(BOUNDS, (10.0, 30.0, 40.0, 40.0), 3.0)
    assert h.quantile(0.25) == pytest.approx(0.01)  # rank 10: the end of the first bucket
    assert h.quantile(0.5) == pytest.approx(0.01 + 0.09 * 0.5)  # rank 20: half-way into (0.01, 0.1]
    assert h.quantile(1.0) == pytest.approx(1.0)
    assert Histogram(BOUNDS, (0.0, 0.0, 0.0, 5.0), 50.0).quantile(0.5) == 1.0  # in +Inf: the largest bound
    assert Histogram(BOUNDS, (0.0,) * 4, 0.0).quantile(0.5) is None
    older = Histogram(BOUNDS, (10.0, 10.0, 10.0, 10.0), 0.05)
    assert h.minus(older).cumulative == (0.0, 20.0, 30.0, 30.0)
    assert h.minus(Histogram(BOUNDS, (50.0,) * 4, 9.0)) is h  # counts went back: a restart, take all


def test_a_restarted_server_reads_as_fresh_counts_not_negative_rates() -> None:
    before = [parse_scrape(exposition(t), float(t)) for t in range(50, 61)]
    after = parse_scrape(exposition(1), 61.0)  # counters back near zero
    p = derive(before + [after])
    assert p.output_tps is not None and p.output_tps >= 0 and p.prompt_tps >= 0
    assert p.preemptions is not None and p.preemptions >= 0


def test_several_replicas_merge_into_one_deployment() -> None:
    a = [parse_scrape(exposition(t, engines=1), float(t)) for t in range(0, 61)]
    b = [parse_scrape(exposition(t, engines=1, scale=3.0), float(t) + 0.4) for t in range(0, 61)]
    total = derive_total([a, b])
    assert total.output_tps == pytest.approx(4.0 + 12.0, rel=0.05)
    assert total.running == 4.0 and total.hit_rate == pytest.approx(0.75)
    assert 0.01 < total.ttft_p50 < 0.1
    merged = merge_scrapes([a[-1], b[-1]], 60.0)
    assert merged.histogram(("vllm:time_to_first_token_seconds",)).count == 4 * 60 + 12 * 60
    assert derive_total([[], []]) is None


def test_text_without_vllm_families_is_not_a_vllm() -> None:
    s = parse_scrape("# TYPE up gauge\nup 1\n", 0.0)
    assert not s.has_vllm and derive([s]).running is None
    with pytest.raises(ValueError):
        parse_scrape("this is not { an exposition", 0.0)
    assert isinstance(parse_scrape(exposition(3), 3.0), Scrape)


def _node(h: str, parent: str | None, depth: int, alive: bool = True, stored: int = 1) -> NodeView:
    return NodeView(h, parent, depth, (int(h, 16),) * 2, alive, stored, 0 if alive else 1)


def _tree(nodes: list[NodeView]) -> TreeSnapshot:
    return TreeSnapshot(tuple(nodes), sum(n.alive for n in nodes), sum(not n.alive for n in nodes), 2,
                        1, len(nodes), 0, 0, 0.0)


def test_segments_join_chains_and_split_at_branches_and_evictions() -> None:
    # a shared prefix a-b-c, then two branches: d-e, and f (evicted) - g (evicted)
    nodes = [_node("a", None, 0), _node("b", "a", 1), _node("c", "b", 2), _node("d", "c", 3), _node("e", "d", 4),
             _node("f", "c", 3, alive=False), _node("9", "f", 4, alive=False, stored=2)]
    segs, hidden = segments(_tree(nodes))
    assert hidden == 0
    assert [(s.id, s.parent, s.depth, s.start, s.blocks, s.alive) for s in segs] == [
        ("a", None, 0, 0, 3, True), ("d", "a", 1, 3, 2, True), ("f", "a", 1, 3, 2, False)]
    assert segs[0].token_ids == (10, 10, 11, 11, 12, 12) and segs[0].last == "c" and segs[2].stored == 2


def test_segments_over_the_limit_keep_whole_paths_and_cached_blocks_first() -> None:
    nodes = [_node("a", None, 0)]
    for i in range(1, 9):  # eight branches under a, alternately cached and evicted
        nodes.append(_node(f"{i:x}0", "a", 1, alive=i % 2 == 0))
    segs, hidden = segments(_tree(nodes), limit=4)
    assert len(segs) == 4 and hidden == 5
    assert segs[0].id == "a" and all(s.alive for s in segs)  # the evicted go first
    assert all(s.parent is None or s.parent in {x.id for x in segs} for s in segs)


def test_a_text_without_type_lines_reads_the_same() -> None:
    """Histograms are told by their buckets: an exposition with no TYPE lines (a proxy that drops
    them) gives the same quantiles."""
    strip = lambda text: "\n".join(x for x in text.splitlines() if not x.startswith("#")) + "\n"  # noqa: E731
    typed = derive([parse_scrape(exposition(t), float(t)) for t in range(0, 31)])
    bare = derive([parse_scrape(strip(exposition(t)), float(t)) for t in range(0, 31)])
    assert bare == typed and bare.ttft_p50 is not None


def test_totals_lie_between_the_replicas_when_one_joined_later() -> None:
    """A replica polled for 10 s and one for 60 s: each total is taken over the same windows as the
    replicas' own figures, so it lies between them (the screen never shows a total outside its rows)."""
    def hist_text(t: int, hits: float, slow: bool) -> str:
        n = 4 * t
        cum = (0, 0, n, n) if slow else (0, n, n, n)  # TTFT in (0.1, 1] or in (0.01, 0.1]
        lines = ["# TYPE vllm:prefix_cache_queries counter", f"vllm:prefix_cache_queries_total {100 * t}",
                 "# TYPE vllm:prefix_cache_hits counter", f"vllm:prefix_cache_hits_total {hits * 100 * t}",
                 "# TYPE vllm:time_to_first_token_seconds histogram"]
        lines += [f'vllm:time_to_first_token_seconds_bucket{{le="{b}"}} {c}'
                  for b, c in zip(("0.01", "0.1", "1.0", "+Inf"), cum)]
        return "\n".join(lines + [f"vllm:time_to_first_token_seconds_count {n}",
                                  f"vllm:time_to_first_token_seconds_sum {0.05 * n}"]) + "\n"

    a = [parse_scrape(hist_text(t, 0.9, False), float(t)) for t in range(0, 61)]
    b = [parse_scrape(hist_text(t, 0.5, True), float(t)) for t in range(51, 61)]
    pa, pb, total = derive(a), derive(b), derive_total([a, b])
    assert min(pa.hit_rate, pb.hit_rate) <= total.hit_rate <= max(pa.hit_rate, pb.hit_rate)
    assert min(pa.ttft_p95, pb.ttft_p95) <= total.ttft_p95 <= max(pa.ttft_p95, pb.ttft_p95)
    assert total.output_tps is None or total.output_tps >= 0
