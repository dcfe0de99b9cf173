"""A real browser (Playwright driving Debian's chromium) chats with the app and sees the dashboard."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from live_server import LiveServer, start_live_server


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(embedded_model_dir: str):
    server = start_live_server(embedded_model_dir, num_blocks=128)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _load_stopped(request):
    """The simulated users stop after every test, one that failed too: a load left running would fail
    the tests after it (their own loads could not stop)."""
    yield
    if "live" in request.fixturenames:
        request.getfixturevalue("live").load.stop()


def screenshot_path(tmp_path: Path) -> Path:
    """$PAGEDCHAT_SCREENSHOT when set (how assets/dashboard.png is made), else a temporary file."""
    return Path(os.environ.get("PAGEDCHAT_SCREENSHOT") or tmp_path / "dashboard.png")


def open_chat(browser, live: LiveServer, width: int, height: int):
    """A page on the app, and its message box."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(30_000)
    page.goto(live.url)
    return page, page.locator("#chat-input textarea")


def wait_for_live_view(page, selector: str) -> None:
    """Until the view in `selector` has its snapshot and has drawn."""
    page.wait_for_function(f"() => {{ const v = (window.PagedChatLive?.instances || []).find(v => "
                           f"v.element.closest('{selector}')); return v && v.connected && v.firstDrawAt !== null; }}")


def view_probe(page) -> dict:
    return page.evaluate("() => window.PagedChatLive.shown().probe()")


def test_chat_streams_and_dashboard_draws(browser, live: LiveServer, tmp_path: Path) -> None:
    page, box = open_chat(browser, live, 1400, 1000)
    box.fill("Name three colors of the rainbow.")
    box.press("Enter")
    bot = page.locator("#chatbot .message.bot, #chatbot [data-testid='bot']").last
    bot.wait_for()
    page.wait_for_function(  # the streamed answer grows to a few words
        "() => { const m = document.querySelectorAll('#chatbot [data-testid=\"bot\"]');"
        " return m.length && m[m.length - 1].innerText.trim().split(/\\s+/).length >= 3; }")
    assert bot.inner_text().strip()

    page.get_by_role("tab", name="Dashboard").click()
    page.locator("#load-start").click()  # simulated users, so the view has something to show
    wait_for_live_view(page, "#live-view")
    page.wait_for_function("() => document.querySelector('#live-view [data-tile=users] .pc-v').innerText !== '0 · 0'")
    page.wait_for_timeout(6_000)  # a few seconds of updates with the load on
    probe = view_probe(page)
    assert probe["connected"] and probe["records"] > 10 and probe["updates"] >= 10
    page.get_by_text("Why a token costs what it costs").click()
    assert "bytes per token" in page.locator("#kv-formula").inner_text()
    path = screenshot_path(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    page.locator("#load-stop").click()
    page.close()
    live.load.stop()  # whether or not the click's event ran yet


def test_closing_the_tab_aborts_the_request_and_frees_its_blocks(browser, live: LiveServer) -> None:
    page = browser.new_page()
    page.goto(live.url)
    generated = live.engine.history.view().latest
    before = generated.total_generated_tokens if generated else 0
    box = page.locator("#chat-input textarea")
    box.fill("Write a very long story about a dragon who learns to cook, at least 1000 words.")
    box.press("Enter")
    page.wait_for_function(  # the answer is streaming
        "() => { const m = document.querySelectorAll('#chatbot [data-testid=\"bot\"]');"
        " return m.length && m[m.length - 1].innerText.trim().length > 0; }", timeout=30_000)
    page.close()
    deadline = time.monotonic() + 10
    while live.engine.block_map.seqs or live.engine.block_map.stats.used:
        assert time.monotonic() < deadline, "the closed tab's request still holds blocks"
        time.sleep(0.05)
    assert live.engine.history.view().latest.total_generated_tokens - before < 200  # of its 256


def test_a_load_stops_when_the_tab_that_started_it_closes(browser, live: LiveServer) -> None:
    """The load belongs to its tab: a second visitor's Stop does nothing, closing the owner's tab
    stops it (Gradio's unload event, on the tab's heartbeat stream ending)."""
    owner, visitor = browser.new_page(), browser.new_page()
    for page in (owner, visitor):
        page.set_default_timeout(30_000)
        page.goto(live.url)
        page.get_by_role("tab", name="Dashboard").click()
    owner.locator("#load-start").click()
    deadline = time.monotonic() + 20
    while live.load.status().users == 0:
        assert time.monotonic() < deadline, "the load did not start"
        time.sleep(0.05)
    visitor.locator("#load-stop").click()
    visitor.wait_for_timeout(1_500)
    assert live.load.status().users > 0  # not the visitor's to stop
    owner.close()
    deadline = time.monotonic() + 20
    while live.load.status().users:
        assert time.monotonic() < deadline, "the load outlived the tab that started it"
        time.sleep(0.05)
    visitor.close()


def test_an_empty_message_an_example_and_a_stop(browser, live: LiveServer) -> None:
    """An empty Enter gets a notice and leaves the chat usable; an example fills the box and keeps
    the user's settings; a stopped answer says it was stopped."""
    page, box = open_chat(browser, live, 1440, 900)
    box.fill("   ")
    box.press("Enter")
    page.get_by_text("Please type a message first.").wait_for()
    assert box.is_enabled() and page.locator("#chatbot [data-testid='user']").count() == 0
    page.get_by_text("Write a haiku about GPUs.").first.click()
    page.wait_for_function("() => document.querySelector('#chat-input textarea').value.includes('haiku')")
    assert page.locator("#chatbot [data-testid='bot']").count() == 0  # filled, not sent
    box.fill("Write a very long story about a dragon, at least 1000 words.")
    box.press("Enter")
    page.wait_for_function(
        "() => { const m = document.querySelectorAll('#chatbot [data-testid=\"bot\"]');"
        " return m.length && m[m.length - 1].innerText.trim().split(/\\s+/).length >= 5; }")
    page.locator("#chat-input .stop-button").first.click()
    page.wait_for_function(
        "() => { const m = document.querySelectorAll('#chatbot [data-testid=\"bot\"]');"
        " return m.length && m[m.length - 1].innerText.includes('(stopped)'); }")
    page.wait_for_function("() => !document.querySelector('#chat-input textarea').disabled", timeout=10_000)
    page.close()


def engine_blocks_of(live: LiveServer, request_id: str) -> list[int]:
    """The blocks the engine's block tables give `request_id` now (all its samples)."""
    bm = live.engine.block_map
    seqs = {s.seq_id for s in bm.seqs if s.request_id == request_id}
    return sorted(b for b, holders in enumerate(bm.owners) if seqs & set(holders))


def wait_for_load(live: LiveServer, users: int) -> None:
    deadline = time.monotonic() + 30
    while live.load.status().users != users or len(live.engine.block_map.seqs) < users // 2:
        assert time.monotonic() < deadline, "the load did not start"
        time.sleep(0.05)


def test_a_pinned_request_shows_its_block_table_and_throughput_matches_the_counter(browser, live: LiveServer,
                                                                                   tmp_path: Path) -> None:
    """With 8 simulated users: the cells the view highlights for a pinned request are the blocks of
    its block table in the engine; the output tok/s it shows is the engine's token counter over the
    same seconds, within 5%."""
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.set_default_timeout(30_000)
    page.goto(live.url)
    page.get_by_role("tab", name="Dashboard").click()
    wait_for_live_view(page, "#live-view")
    page.locator("#load-start").click()
    wait_for_load(live, 8)

    # the engine's output-token counter against wall time, sampled while the view runs
    samples: list[tuple[float, int]] = []

    def counter() -> int:
        latest = live.engine.history.view().latest
        return latest.total_generated_tokens if latest else 0

    def sample_for(seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end:
            samples.append((time.time(), counter()))
            time.sleep(0.02)

    sample_for(7.0)
    probe = view_probe(page)
    sample_for(0.5)
    rates = probe["rates"]

    def at(t: float) -> float:  # the counter at wall time t, between the samples around it
        before = max((s for s in samples if s[0] <= t), default=samples[0])
        after = min((s for s in samples if s[0] >= t), default=samples[-1])
        if after[0] == before[0]:
            return before[1]
        return before[1] + (after[1] - before[1]) * (t - before[0]) / (after[0] - before[0])

    engine_rate = (at(rates["to"]) - at(rates["from"])) / (rates["to"] - rates["from"])
    assert engine_rate > 5, f"the load produced {engine_rate:.1f} tok/s"
    assert abs(rates["output"] - engine_rate) <= 0.05 * engine_rate, (rates, engine_rate)
    shown = float(page.locator("#live-view [data-tile=tps] .pc-v").inner_text().replace(",", ""))
    assert shown > 0

    # pin the request of the first chip; its highlighted cells are its block table
    page.locator("#live-view .pc-chip").last.click()  # the newest request: it lives longest
    deadline, matched = time.monotonic() + 20, 0
    while matched < 3:
        assert time.monotonic() < deadline, f"highlighted {probe['highlighted']} != table {engine}"
        if not view_probe(page)["pinned"]:  # the pinned request ended (the view unpins it): pin the newest
            page.locator("#live-view .pc-chip").last.click()
        before = engine_blocks_of(live, view_probe(page)["pinned"] or "")
        probe = view_probe(page)
        engine = engine_blocks_of(live, probe["pinned"] or "")
        if probe["pinned"] and probe["highlighted"] == engine == before and engine:
            matched += 1
        page.wait_for_timeout(100)
    page.screenshot(path=str(tmp_path / "pinned.png"), full_page=True)
    page.locator("#load-stop").click()
    page.close()
    live.load.stop()


def test_the_views_state_agrees_with_the_engines_counts_in_every_record(browser) -> None:
    """ui/live/feed_state.js, fed the shipped GPU recording record by record in chromium: its pool
    (blocks in use, cached-free, holders) matches the engine's own counts in each record, and the
    output tokens it sums are the records' total."""
    from server.recording import read_recording
    from ui.live_view import LIVE_DIR
    from ui.request_colors import palette

    rec = read_recording(Path(__file__).resolve().parent.parent / "assets" / "recordings" / "h200-64-users.jsonl.gz")
    page = browser.new_page()
    page.add_script_tag(content=(LIVE_DIR / "feed_state.js").read_text())
    mismatches = page.evaluate("""([snapshot, records, palette]) => {
        const st = new PagedChatFeed.FeedState(palette);
        st.snapshot(snapshot);
        const bad = [];
        for (const r of records) {
            st.apply(r, r.wall_time);
            const c = st.counts();
            const refs = new Map(r.blocks.map(b => [b.block_id, b.ref_count]));
            for (const [b, n] of refs) if (st.owners[b].length !== n) bad.push([r.step, 'ref', b]);
            if (c.used !== r.blocks_used || c.cachedFree !== r.blocks_cached_free) bad.push([r.step, c.used, r.blocks_used]);
        }
        return {bad: bad.slice(0, 5), tokens: st.tokensTotal, live: st.seqs.size};
    }""", [rec.snapshot, rec.records, list(palette())])
    assert mismatches["bad"] == []
    assert mismatches["tokens"] == sum(r["num_output_tokens"] for r in rec.records)
    page.close()


def test_presenter_mode_puts_the_chat_beside_a_large_view(browser, live: LiveServer, tmp_path: Path) -> None:
    """One switch: headline tiles of at least 24 px, the chat and the block map side by side on a
    1920x1080 screen, a reset that clears the chat and the charts; still usable on a phone."""
    shots = Path(os.environ.get("PAGEDCHAT_SCREENSHOT_DIR") or tmp_path)
    for width, height in ((1920, 1080), (390, 844)):
        page = browser.new_page(viewport={"width": width, "height": height})
        page.set_default_timeout(30_000)
        page.goto(live.url)
        page.locator("#presenter-mode input").check()
        wait_for_live_view(page, "#stage-live-view")
        page.locator("#stage-load-start").click()
        wait_for_load(live, 8)
        page.wait_for_timeout(3_000)
        tile = page.locator("#stage-live-view [data-tile=users] .pc-v")
        size = float(tile.evaluate("e => parseFloat(getComputedStyle(e).fontSize)"))
        assert size >= 24
        chat, blocks = page.locator("#stage-chatbot"), page.locator("#stage-live-view canvas.pc-map")
        assert chat.is_visible() and blocks.is_visible() and page.locator("#chatbot").is_hidden()
        c, b = chat.bounding_box(), blocks.bounding_box()
        if width >= 1440:  # side by side, both on the first screen
            assert c["x"] + c["width"] <= b["x"] and b["y"] < height and c["y"] < height
        box = page.locator("#stage-chat-input textarea")
        box.fill("Hi!")
        box.press("Enter")
        page.locator("#stage-chatbot [data-testid='bot']").first.wait_for()
        page.screenshot(path=str(shots / f"presenter-{width}.png"), full_page=False)
        # The users stop first: a first token arriving after the reset would rightly be charted again.
        page.locator("#stage-load-stop").click()
        deadline = time.monotonic() + 30
        while live.load.status().users or len(live.engine.block_map.seqs) > 1:  # the chat's own answer may run on
            assert time.monotonic() < deadline, "the load did not stop"
            time.sleep(0.05)
        page.locator("#stage-reset").click()
        page.wait_for_function("() => !document.querySelector('#stage-chatbot [data-testid=\"user\"]')")
        assert page.evaluate("() => window.PagedChatLive.shown().state.ttft.length") == 0
        page.close()
        live.load.stop()


def test_a_replay_of_the_shipped_recording_draws_the_dashboard(browser, tmp_path: Path) -> None:
    from app import build_replay
    from server.uvicorn_thread import ServerThread

    app, source = build_replay(str(Path(__file__).resolve().parent.parent / "assets" / "recordings" /
                                   "h200-64-users.jsonl.gz"))
    http = ServerThread(app).start()
    try:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(30_000)
        page.goto(http.url)
        wait_for_live_view(page, "#live-view")
        page.wait_for_function("() => window.PagedChatLive.shown().state.recordsSeen > 50")
        assert "Recording" in page.locator("#live-view .pc-banner").inner_text()
        assert page.locator("#chat-input").count() == 0  # the chat is off
        page.wait_for_function("() => window.PagedChatLive.shown().probe().rates.output > 100")  # a 5 s window
        probe = view_probe(page)
        assert probe["counts"]["total"] == 32768 and probe["counts"]["used"] > 0
        page.screenshot(path=str(tmp_path / "replay.png"), full_page=True)
        page.close()
    finally:
        http.server.should_exit = True
        source.stop()


def test_copy_on_write_and_eviction_flash_and_keep_the_holders_right(browser) -> None:
    """A copy on write comes as the copy's allocation, the original's release and a `copied`
    event: the view moves the holder once and flashes both blocks; an eviction flashes the block
    and clears its cached mark."""
    from ui.live_view import LIVE_DIR
    from ui.request_colors import palette

    snapshot = {"schema": 2, "feed_index": 0, "block_size": 16, "num_blocks": 4, "owners": [[1, 2], [], [], []],
                "fill": [8, 0, 0, 0], "cached": [False, False, True, False],
                "sequences": [{"seq_id": s, "request_id": "r", "sample": s - 1, "num_tokens": 8,
                               "num_prompt_tokens": 7, "running": True} for s in (1, 2)]}
    record = {"step": 5, "wall_time": 100.0, "duration": 0.01, "num_prefill_tokens": 0, "num_decode_tokens": 2,
              "num_output_tokens": 2, "blocks_used": 2, "blocks_cached_free": 0, "num_blocks": 4,
              "requests": [{"request_id": "r", "sample": s - 1, "seq_id": s, "phase": "decode", "tokens": 1,
                            "reason": None, "samples": 1} for s in (1, 2)],
              "blocks": [{"kind": "evicted", "block_id": 2, "seq_id": 2, "ref_count": 0, "src": -1},
                         {"kind": "allocated", "block_id": 2, "seq_id": 2, "ref_count": 1, "src": -1},
                         {"kind": "released", "block_id": 0, "seq_id": 2, "ref_count": 1, "src": -1},
                         {"kind": "copied", "block_id": 2, "seq_id": 2, "ref_count": 1, "src": 0}]}
    page = browser.new_page()
    page.add_script_tag(content=(LIVE_DIR / "feed_state.js").read_text())
    got = page.evaluate("""([snapshot, record, palette]) => {
        const st = new PagedChatFeed.FeedState(palette);
        st.snapshot(snapshot);
        st.apply(record, 100.0);
        return {owners: st.owners, cached: Array.from(st.cached), flash: [...st.flash.entries()],
                counts: st.counts(), colors: new Set([1, 2].map(s => st.colors.colorOf(st.seqs.get(s).req))).size};
    }""", [snapshot, record, list(palette())])
    assert got["owners"] == [[1], [], [2], []] and got["cached"] == [0, 0, 0, 0]
    assert dict((b, f["kind"]) for b, f in got["flash"]) == {0: "copied", 2: "copied"}  # the eviction's flash, then the copy's
    assert got["counts"]["used"] == record["blocks_used"] and got["colors"] == 1  # one request, one colour
    page.close()
