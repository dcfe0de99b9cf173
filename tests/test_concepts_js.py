"""ui/live/concepts.js in a real browser, no server: the contiguous allocator and its wastes, the
static-batching counterfactual, and one step's roofline figures, each on a case worked by hand."""
from __future__ import annotations

from pathlib import Path

import pytest

CONCEPTS_JS = Path(__file__).resolve().parent.parent / "ui" / "live" / "concepts.js"
@pytest.fixture(scope="module")
def page(browser):
    page = browser.new_page()
    page.add_script_tag(content=CONCEPTS_JS.read_text(encoding="utf-8"))
    yield page
    page.close()


def run(page, body: str):
    """Evaluate `body` (statements ending in a return) with C = window.PagedChatConcepts."""
    return page.evaluate(f"() => {{ const C = window.PagedChatConcepts; {body} }}")


def test_first_fit_takes_the_lowest_hole(page) -> None:
    # pool 10: A4 [0,4), B2 [4,6), C3 [6,9), hole [9,10). A leaves: holes [0,4) size 4 and [9,10) size 1.
    # D1 fits both; first fit takes the lowest start, 0 (best fit would take 9). E3 then fits [1,4).
    layout = run(page, """
        const a = new C.ContiguousAllocator(10);
        a.arrive("A", 4); a.arrive("B", 2); a.arrive("C", 3); a.leave("A");
        a.arrive("D", 1); a.arrive("E", 3);
        a.arrive("C", 1);  // already held: ignored
        return a.layout();""")
    assert layout["regions"] == [{"id": "D", "start": 0, "size": 1}, {"id": "E", "start": 1, "size": 3},
                                 {"id": "B", "start": 4, "size": 2}, {"id": "C", "start": 6, "size": 3}]
    assert layout["holes"] == [{"start": 9, "size": 1}]
    assert layout["queued"] == []


def test_external_fragmentation_refuses_what_the_free_total_would_hold(page) -> None:
    # pool 10: A4 [0,4), B2 [4,6), C4 [6,10); A and C leave: holes [0,4) and [6,10), 8 slots free.
    # E asks 5: 8 >= 5 free, but the largest hole is 4 < 5, so it is refused; both holes are too
    # small for it: external = 4 + 4 = 8.
    w = run(page, """
        const a = new C.ContiguousAllocator(10);
        a.arrive("A", 4); a.arrive("B", 2); a.arrive("C", 4); a.leave("A"); a.leave("C");
        a.arrive("E", 5);
        const live = new Map([["B", {tokens: 1, limit: 2}], ["E", {tokens: 3, limit: 5}]]);
        return {w: C.contiguousWaste(a, live), queued: a.layout().queued};""")
    assert w["queued"] == ["E"]
    w = w["w"]
    assert (w["held"], w["refused"], w["free"], w["largestHole"], w["external"]) == (1, 1, 8, 4, 8)
    assert w["threshold"] == 5


def test_external_fragmentation_with_nothing_queued(page) -> None:
    # pool 10: A4 [0,4), B1 [4,5), C4 [5,9), hole [9,10); B leaves: holes [4,5) and [9,10), not adjacent.
    # Nothing queued: "too small" means smaller than the smallest held reservation, 4: external = 1 + 1.
    w = run(page, """
        const a = new C.ContiguousAllocator(10);
        a.arrive("A", 4); a.arrive("B", 1); a.arrive("C", 4); a.leave("B");
        return C.contiguousWaste(a, {A: {tokens: 4, limit: 4}, C: {tokens: 2, limit: 4}});""")
    assert (w["held"], w["refused"], w["free"], w["largestHole"], w["external"], w["threshold"]) == (2, 0, 2, 1, 2, 4)
    empty = run(page, "return C.contiguousWaste(new C.ContiguousAllocator(10), new Map());")
    assert (empty["held"], empty["external"], empty["free"], empty["largestHole"]) == (0, 0, 10, 10)


def test_leave_merges_holes_and_admits_the_queue_in_order_skipping_misfits(page) -> None:
    # pool 10: A3 [0,3), B3 [3,6), C4 [6,10): full, so D5 then E1 queue.
    # A leaves: hole [0,3). Retry in order: D5 does not fit (skipped, not blocking), E1 goes to 0;
    #   hole [1,3) of 2 is left, D still queued.
    # B leaves: [3,6) merges with [1,3) into [1,6), 5 slots: D5 goes to 1, no hole left.
    # G3 arrives (no hole: queued) and leaves while queued: it only drops out of the queue.
    steps = run(page, """
        const a = new C.ContiguousAllocator(10);
        a.arrive("A", 3); a.arrive("B", 3); a.arrive("C", 4); a.arrive("D", 5); a.arrive("E", 1);
        const full = a.layout();
        a.leave("A");
        const afterA = a.layout();
        a.leave("B");
        const afterB = a.layout();
        a.arrive("G", 3);
        const withG = a.layout().queued;
        a.leave("G");
        return {full, afterA, afterB, withG, end: a.layout()};""")
    assert steps["full"]["queued"] == ["D", "E"] and steps["full"]["holes"] == []
    assert steps["afterA"]["regions"][0] == {"id": "E", "start": 0, "size": 1}
    assert steps["afterA"]["holes"] == [{"start": 1, "size": 2}]
    assert steps["afterA"]["queued"] == ["D"]
    assert steps["afterB"]["regions"] == [{"id": "E", "start": 0, "size": 1}, {"id": "D", "start": 1, "size": 5},
                                          {"id": "C", "start": 6, "size": 4}]
    assert steps["afterB"]["holes"] == [] and steps["afterB"]["queued"] == []
    assert steps["withG"] == ["G"]
    assert steps["end"] == steps["afterB"]


def test_reserved_unused_and_internal_waste(page) -> None:
    # pool 100: A reserves 40 [0,40), B 30 [40,70); hole [70,100) of 30.
    # A: 10 tokens, limit 25: stored 10, reservedUnused min(25,40) - 10 = 15, internal 40 - 25 = 15.
    # B: 12 tokens, limit 50: stored 12, reservedUnused min(50,30) - 12 = 18, internal 30 - 30 = 0.
    # Totals: reserved 70 = stored 22 + reservedUnused 33 + internal 15; free 30; the hole (30) is
    # not smaller than the smallest held reservation (30): external 0.
    w = run(page, """
        const a = new C.ContiguousAllocator(100);
        a.arrive(1, 40); a.arrive(2, 30);
        return C.contiguousWaste(a, new Map([[1, {tokens: 10, limit: 25}], [2, {tokens: 12, limit: 50}]]));""")
    assert w == {"held": 2, "refused": 0, "reserved": 70, "stored": 22, "reservedUnused": 33, "internal": 15,
                 "external": 0, "free": 30, "largestHole": 30, "threshold": 30}
    # paged: 3 blocks of 16 = 48 slots hold 40 tokens: 8 empty in last blocks
    assert run(page, "return C.pagedWaste({used: 3, blockSize: 16, stored: 40});") == \
        {"reserved": 48, "stored": 40, "lastBlockEmpty": 8}


def test_static_batching_finish_times_and_throughput(page) -> None:
    # cost: a = 0.01, b = 0.001, p = 0.0001; batches of 2 in arrival order (given out of order).
    # batch 0 = R1 (t 0, prompt 100, out 3), R2 (t 0.5, prompt 50, out 5): starts at R2's arrival 0.5;
    #   prefill 0.01 + 0.0001 * 150 = 0.025 -> first tokens at 0.525; decode step 0.01 + 0.001 * 2 = 0.012;
    #   R1 ends 0.525 + 2 * 0.012 = 0.549, R2 0.525 + 4 * 0.012 = 0.573 = the batch's end.
    # batch 1 = R3 (t 0.52, prompt 200, out 2), R4 (t 0.55, prompt 10, out 1): starts at batch 0's end
    #   0.573 (after R4's 0.55); prefill 0.01 + 0.0001 * 210 = 0.031 -> 0.604; R4 ends there (1 token),
    #   R3 at 0.604 + 0.012 = 0.616.
    # makespan 0.616 - 0 = 0.616; tokens 3 + 5 + 2 + 1 = 11; throughput 11 / 0.616.
    sim = run(page, """
        const cost = {decodeStep: (n) => 0.01 + 0.001 * n, prefillStep: (t) => 0.01 + 0.0001 * t};
        const reqs = [{id: "R3", arrival: 0.52, prompt: 200, output: 2}, {id: "R1", arrival: 0, prompt: 100, output: 3},
                      {id: "R4", arrival: 0.55, prompt: 10, output: 1}, {id: "R2", arrival: 0.5, prompt: 50, output: 5}];
        return C.staticBatching(reqs, 2, cost);""")
    by = {r["id"]: r for r in sim["requests"]}
    assert [by[k]["batch"] for k in ("R1", "R2", "R3", "R4")] == [0, 0, 1, 1]
    assert by["R1"]["start"] == pytest.approx(0.5) and by["R3"]["start"] == pytest.approx(0.573)
    assert by["R1"]["firstToken"] == pytest.approx(0.525) and by["R2"]["firstToken"] == pytest.approx(0.525)
    assert [by[k]["finish"] for k in ("R1", "R2", "R3", "R4")] == pytest.approx([0.549, 0.573, 0.616, 0.604])
    assert [b["members"] for b in sim["batches"]] == [["R1", "R2"], ["R3", "R4"]]
    assert [b["end"] for b in sim["batches"]] == pytest.approx([0.573, 0.616])
    assert sim["makespan"] == pytest.approx(0.616) and sim["tokens"] == 11
    assert sim["throughput"] == pytest.approx(11 / 0.616)


def test_fit_step_cost_recovers_a_b_p(page) -> None:
    # steps made with a = 0.004 s, b = 0.0002 s a decode token, p = 0.00005 s a prompt token:
    # decode-only at batch 1, 2, 4, 8, 16: 0.004 + 0.0002 n, exactly on the line;
    # prefill-bearing (100 + 3 decode), (500 + 0), (37 + 10): a + b * decode + p * prefill, so each one's
    # excess over the line per prompt token is p, and so is their median.
    fit = run(page, """
        const a = 0.004, b = 0.0002, p = 0.00005, steps = [];
        for (const n of [1, 2, 4, 8, 16]) steps.push({duration: a + b * n, prefill: 0, decode: n});
        for (const [pf, d] of [[100, 3], [500, 0], [37, 10]]) steps.push({duration: a + b * d + p * pf, prefill: pf, decode: d});
        steps.push({duration: 0, prefill: 0, decode: 4});  // an idle record: ignored
        const c = C.fitStepCost(steps);
        return {a: c.a, b: c.b, p: c.p, d10: c.decodeStep(10), p1000: c.prefillStep(1000)};""")
    assert (fit["a"], fit["b"], fit["p"]) == pytest.approx((0.004, 0.0002, 0.00005))
    assert fit["d10"] == pytest.approx(0.004 + 0.002)  # a + 10 b
    assert fit["p1000"] == pytest.approx(0.004 + 0.05)  # a + 1000 p
    # one decode size only: b = 0, a = mean(0.010, 0.012) = 0.011; no prefill step: p falls back (> 0)
    one = run(page, """
        const c = C.fitStepCost([{duration: 0.010, prefill: 0, decode: 4}, {duration: 0.012, prefill: 0, decode: 4}]);
        return {a: c.a, b: c.b, p: c.p};""")
    assert one["a"] == pytest.approx(0.011) and one["b"] == 0 and one["p"] > 0


def test_throughput_ratio_is_nan_safe(page) -> None:
    checks = run(page, """
        const nan = (x) => Number.isNaN(x);
        return {
          ratio: C.throughputRatio(10, 4),                         // 10 / 4 = 2.5
          missing: [C.throughputRatio(NaN, 5), C.throughputRatio(10, NaN), C.throughputRatio(undefined, 5),
                    C.throughputRatio(10, null), C.throughputRatio(10, 0), C.throughputRatio(10, Infinity)].every(nan),
          // 3 + 5 tokens from arrival 1 to last finish 5: 8 / 4 = 2
          cont: C.continuousThroughput([{arrival: 1, finish: 3, output: 3}, {arrival: 2, finish: 5, output: 5}]),
          contEmpty: nan(C.continuousThroughput([])),
          contZeroSpan: nan(C.continuousThroughput([{arrival: 1, finish: 1, output: 1}])),
          staticEmpty: nan(C.staticBatching([], 4, C.fitStepCost([])).throughput),
        };""")
    assert checks == {"ratio": 2.5, "missing": True, "cont": 2.0, "contEmpty": True, "contZeroSpan": True,
                      "staticEmpty": True}


def test_step_roofline(page) -> None:
    # model: 1e9 matmul params in 2e9 bytes, 1e5 KV bytes a token, 10 layers of hidden 1000.
    # decode step, 4 sequences attending 2000 tokens in all, 10 ms:
    #   bytes = 2e9 + (2000 + 4) * 1e5 = 2.2004e9
    #   flops = 2 * 1e9 * 4 + 4 * 10 * 1000 * 4 * 2000 / 4 = 8e9 + 8e7 = 8.08e9
    # prefill of 100 tokens, one sequence (seqs left out), context 100, 20 ms:
    #   bytes = 2e9 + 200 * 1e5 = 2.02e9; flops = 2e11 + 4 * 10 * 1000 * 100 * 100 / 1 = 2.004e11
    r = run(page, """
        const m = {params: 1e9, paramBytes: 2e9, kvBytesPerToken: 1e5, numLayers: 10, hidden: 1000};
        return [C.stepRoofline({duration: 0.01, prefill: 0, decode: 4, context: 2000, seqs: 4}, m),
                C.stepRoofline({duration: 0.02, prefill: 100, decode: 0, context: 100}, m)];""")
    d, p = r
    assert d["bytes"] == pytest.approx(2.2004e9) and d["flops"] == pytest.approx(8.08e9)
    assert d["intensity"] == pytest.approx(8.08e9 / 2.2004e9)
    assert d["bandwidth"] == pytest.approx(2.2004e11) and d["flopRate"] == pytest.approx(8.08e11)
    assert p["bytes"] == pytest.approx(2.02e9) and p["flops"] == pytest.approx(2.004e11)
    assert p["flopRate"] == pytest.approx(2.004e11 / 0.02)


def test_allocator_invariants_under_random_traffic(page) -> None:
    # 2,000 seeded arrivals and departures: regions never overlap and stay in the pool, regions + holes
    # tile it, every queued request is larger than every hole (else a leave would have placed it), and
    # the wastes add up: reserved = stored + reservedUnused + internal, reserved + free = pool.
    bad = run(page, """
        let seed = 12345;
        const rand = (n) => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n; };
        const pool = 500, a = new C.ContiguousAllocator(pool), live = new Map(), bad = [];
        for (let i = 0; i < 2000; i++) {
          if (live.size && rand(3) === 0) {
            const ids = [...live.keys()], id = ids[rand(ids.length)];
            a.leave(id); live.delete(id);
          } else {
            const limit = 1 + rand(120);
            a.arrive(i, 1 + rand(150)); live.set(i, {tokens: rand(limit + 1), limit});
          }
          const L = a.layout(), pieces = [...L.regions, ...L.holes].sort((x, y) => x.start - y.start);
          let at = 0;
          for (const r of pieces) { if (r.start !== at || r.size <= 0) bad.push(["tiling", i]); at = r.start + r.size; }
          if (at !== pool) bad.push(["end", i, at]);
          const biggest = Math.max(0, ...L.holes.map((h) => h.size));
          for (const q of a.queue) if (q.size <= biggest) bad.push(["fits but queued", i]);
          const w = C.contiguousWaste(a, live);
          if (w.reserved !== w.stored + w.reservedUnused + w.internal || w.reserved + w.free !== pool) bad.push(["sums", i]);
          if (w.held + w.refused !== live.size || w.external > w.free) bad.push(["counts", i]);
        }
        return bad.slice(0, 5);""")
    assert bad == []
