"""A real browser (Playwright driving Debian's chromium) chats with the app and sees the dashboard."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from live_server import LiveServer, start_live_server

CHROMIUM = os.environ.get("PAGEDCHAT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--headless", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
PLOT_IDS = ["plot-block-map", "plot-kv-memory", "plot-utilization", "plot-latency", "plot-throughput"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(embedded_model_dir: str):
    server = start_live_server(embedded_model_dir, num_blocks=128)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    missing = None
    try:
        from playwright import sync_api
    except ImportError:
        missing = "playwright is not installed (pip install playwright; never `playwright install`)"
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).is_file():
        missing = f"no chromium at {CHROMIUM} (apt-get install chromium)"
    if missing:  # CI installs both: there a missing one is a broken install step, not a reason to skip
        (pytest.fail if os.environ.get("CI") else pytest.skip)(missing)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def screenshot_path(tmp_path: Path) -> Path:
    """$PAGEDCHAT_SCREENSHOT when set (how assets/dashboard.png is made), else a temporary file."""
    return Path(os.environ.get("PAGEDCHAT_SCREENSHOT") or tmp_path / "dashboard.png")


def open_chat(browser, live: LiveServer, width: int, height: int):
    """A page on the app, and its message box."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(30_000)
    page.goto(live.url)
    return page, page.locator("#chat-input textarea")


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
    page.locator("#load-start").click()  # simulated users, so the plots have something to show
    for plot_id in PLOT_IDS:
        page.locator(f"#{plot_id} .js-plotly-plot .main-svg").first.wait_for()
    page.wait_for_function("() => document.querySelector('#headline')?.innerText.includes('running')")
    page.wait_for_timeout(6_000)  # a few refreshes with the load on
    assert page.locator("#plot-block-map .js-plotly-plot").count() == 1
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
