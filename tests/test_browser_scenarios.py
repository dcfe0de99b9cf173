"""The concept panels and the scenario buttons, in a real browser on the real engine: each button
makes its idea appear on screen, and the block table of a pinned request is the engine's.

Screenshots go to $PAGEDCHAT_SCREENSHOT_DIR when set (how the README's are made), else to a
temporary folder."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from engine.core.controls import Controls
from live_server import start_live_server
from test_browser import wait_for_live_view
from ui.scenarios import SCENARIOS

pytestmark = pytest.mark.slow

VIEW = "() => window.PagedChatLive.shown()"


@pytest.fixture(scope="module")
def live(embedded_model_dir: str):
    server = start_live_server(embedded_model_dir, num_blocks=384)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def no_load_left(live):
    """Whatever a test leaves running (a failure midway) stops before the next one starts."""
    yield
    live.load.stop()
    live.engine.set_controls(Controls())


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("PAGEDCHAT_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def dashboard(browser, live, width: int = 1440, height: int = 900):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(60_000)
    page.goto(live.url)
    page.get_by_role("tab", name="Dashboard").click()
    wait_for_live_view(page, "#live-view")
    return page


def until(page, predicate: str, timeout_s: float = 60) -> None:
    """Wait until `predicate(view)` (JS, the view on screen) is true."""
    page.wait_for_function(f"() => {{ const v = ({VIEW})(); return v && ({predicate})(v); }}", timeout=timeout_s * 1000)


def dom_table(page) -> list[dict]:
    """The block table as drawn: per sample row, the physical block of each logical block and the
    token ids in its slots (a block shared by every sample is drawn once and counts for each)."""
    return page.evaluate("""() => {
        const box = window.PagedChatLive.shown().panels.tableBox;
        const cells = [...box.querySelectorAll('.pc-bt-block')];
        const rows = Math.max(1, box.querySelectorAll('.pc-bt-label').length);
        const out = Array.from({length: rows}, () => ({blocks: [], ids: []}));
        for (const c of cells) {
          const r = c.style.gridRow || '1';
          const span = r.includes('span') ? Array.from({length: rows}, (_, k) => k) : [Number(r) - 1];
          for (const k of span) {
            out[k].blocks[Number(c.dataset.logical)] = Number(c.dataset.block);
            const ids = [...c.querySelectorAll('.pc-bt-slot[data-id]')].map(t => Number(t.dataset.id));
            out[k].ids[Number(c.dataset.logical)] = ids;
          }
        }
        return out.map(o => ({blocks: o.blocks, ids: o.ids.flat()}));
    }""")


def engine_table(live, request_id: str) -> list[dict] | None:
    found = live.engine.inspect(request_id)
    if found is None:
        return None
    return [{"blocks": list(s.block_table), "ids": list(s.token_ids)} for s in found.seqs]


def test_the_block_table_of_a_pinned_request_is_the_engines(browser, live, shots) -> None:
    """Shared system prompt: the view pins a request by itself; its drawn block table (physical
    block of each logical block, token ids in the slots) equals the engine's at that moment, and
    its first blocks are marked as prefix-cache hits."""
    page = dashboard(browser, live)
    page.locator("#scenario-shared-prefix").click()
    until(page, "v => v.panels.current === 'table' && v.pinned && v.panels.tableData && v.panels.tableData.text")
    # slow motion (a second's pause after each step) holds the engine still long enough to compare
    live.engine.set_controls(Controls(step_delay_s=1.0))
    # The view draws what it fetched a moment ago: on a loaded 2-core machine that can be a step or
    # two behind. So the drawn table must equal, exactly, the engine's table at some moment of the
    # last few seconds (sampled around each look), never a mixture or a table the engine never had.
    deadline, matched, drawn, recent = time.monotonic() + 60, 0, None, []
    while matched < 2:
        assert time.monotonic() < deadline, f"the drawn block table never matched the engine's: {drawn} {recent[-1:]}"
        pinned = page.evaluate(f"() => ({VIEW})().pinned")
        before = engine_table(live, pinned)
        drawn = dom_table(page)
        after = engine_table(live, pinned)
        recent = [t for t in (recent + [before, after]) if t][-16:]  # 300 ms apart: about 5 s of the engine
        if drawn and drawn in recent:
            matched += 1
        page.wait_for_timeout(300)
    until(page, "v => v.state.prefixHits().cached > 0 && v.panels.root.querySelector('.pc-bt-hit')")
    assert "prefix hits" in page.locator("#live-view [data-tile=kv] .pc-s").inner_text()
    page.locator("#live-view .pc-panels").screenshot(path=str(shots / "scenario-shared-prefix.png"))
    page.locator("#load-stop").click()
    page.close()


# the phenomenon each scenario must put on screen, as a predicate on the view (JS)
PHENOMENA = {
    "long-prompts": "v => v.panels.current === 'timeline' && v.panels.log.columns.filter(c => c.prefill > 0 && c.decode > 0)"
                    ".length >= 5",
    "shared-prefix": "v => v.state.prefixHits().cached > 0 && v.panels.tableData && v.panels.tableData.text"
                     " && v.panels.root.querySelector('.pc-bt-hit')",
    "parallel-sampling": "v => v.state.seen.copied > 0 && [...v.panels.root.querySelectorAll('.pc-bt-ref')]"
                         ".some(e => Number(e.textContent.replace('ref ', '')) >= 4)"
                         " && v.panels.root.querySelector('.pc-bt-cow')",
    "static-batching": "v => v.panels.log.columns.filter(c => c.batching === 'static' && c.duration > 0).length > 10"
                       " && /the model of static batching .* gives [0-9.,]+ tok.s/.test(v.panels.cfLine.textContent)",
    "memory-pressure": "v => v.state.seen.preempted > 0 && v.panels.log.columns.some(c => [...c.cells.values()]"
                       ".includes('x')) && Number(v.tiles.preempt.v.textContent) > 0",
    "slow-motion": "v => { const c = v.panels.log.columns.filter(c => c.duration > 0).slice(-6);"
                   " return c.length === 6 && c.slice(1).every((x, i) => x.t - c[i].t >= 0.45); }",
}


def test_each_scenario_button_makes_its_idea_appear(browser, live, shots) -> None:
    assert [s.key for s in SCENARIOS] == list(PHENOMENA)
    page = dashboard(browser, live, 1920, 1080)
    for s in SCENARIOS:
        page.locator(f"#scenario-{s.key}").click()
        page.wait_for_function("(t) => document.querySelector('#load-status').innerText.includes(t)", arg=s.title)
        until(page, PHENOMENA[s.key], timeout_s=90)
        expected = "static" if s.key == "static-batching" else "continuous"
        assert page.locator(f"#batching input[value={expected}]").is_checked()
        assert s.explain[:40] in page.locator("#scenario-note").inner_text()
        page.wait_for_timeout(1200)  # the panel redraws once a second
        until(page, PHENOMENA[s.key], timeout_s=90)  # still (a pinned request may have ended meanwhile)
        page.locator("#live-view .pc-panels").screenshot(path=str(shots / f"scenario-{s.key}.png"))
    # the controls end with the load
    page.locator("#load-stop").click()
    deadline = time.monotonic() + 10
    while live.engine.controls.step_delay_s and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live.engine.controls.step_delay_s == 0 and live.engine.controls.batching == "continuous"
    page.close()


def test_the_panels_draw_the_three_wastes_the_kv_formula_and_prefill_vs_decode(browser, live, shots) -> None:
    """Under a plain load: the contiguous cache holds fewer of the live sequences than the paged one
    (each reserves the model's context), the KV formula multiplies the tokens the engine stores, and
    both step charts have decode-only and prefill points."""
    page = dashboard(browser, live)
    page.locator("#load-start").click()
    until(page, "v => v.state.counts().running >= 4 && v.panels.log.columns.filter(c => c.prefill > 0).length >= 2"
                " && v.panels.log.columns.filter(c => c.prefill === 0 && c.decode > 0).length >= 5")
    page.locator("#live-view .pc-tab[data-panel=wastes]").click()
    until(page, "v => v.panels.wasteFigures && v.panels.wasteFigures.live >= 4")
    f = page.evaluate(f"() => ({VIEW})().panels.wasteFigures")
    pool = 384 * 16
    assert f["pool"] == pool and f["cont"]["held"] == pool // live.engine.info.max_model_len < f["pagedHeld"]
    assert f["cont"]["reserved"] == f["cont"]["held"] * live.engine.info.max_model_len
    assert f"Users that fit now: contiguous {f['cont']['held']}, paged" in page.locator("#live-view .pc-fit").first.inner_text()
    page.locator("#live-view .pc-panels").screenshot(path=str(shots / "panel-wastes.png"))
    page.locator("#live-view .pc-tab[data-panel=kv]").click()
    text = page.locator("#live-view .pc-kv").inner_text()
    info = live.engine.info
    assert f"× {info.num_layers} layers × {info.num_kv_heads} KV heads × {info.head_dim} head dim" in text
    assert f"= {info.kv_bytes_per_token:,} B" in text and "in the cache now:" in text
    page.locator("#live-view .pc-tab[data-panel=steps]").click()
    until(page, "v => /median decode-only step [0-9.]+ ms/.test(v.panels.sLine.textContent)")
    page.locator("#live-view .pc-panels").screenshot(path=str(shots / "panel-steps.png"))
    page.locator("#load-stop").click()
    page.close()
