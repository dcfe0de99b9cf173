"""Remote mode end to end: two PagedChat engine servers (`python app.py`, CPU, the embedded model,
KV events on), each its own process, and the UI over both (`build_remote`, what `--engine-url`
runs): the chat streams through it, the load generator and a scenario run over the API and spread
over both replicas, each replica's prefix-cache tree follows its KV events (a shared system prompt
is one stored chain), a late-joining UI rebuilds the trees from the replay sockets, and a replica
killed mid-run is shown down within seconds while the chat goes on with the other."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import httpx
import pytest

from app import build_remote
from engine.serving.engine_thread import ChatPrompt
from engine.serving.request_stream import RequestRejected
from engine.core.sampling_params import SamplingParams
from server.remote_client import RemoteEngine
from server.remote_fleet import RemoteFleet, RemoteSpec
from server.uvicorn_thread import ServerThread, free_port
from server.vllm_metrics import KV_USAGE, RUNNING, WAITING, parse_scrape
from ui.load_generator import LoadPolicy
from ui.scenarios import run_scenario

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "SmolLM2-135M-Instruct"


@dataclass
class EngineProcess:
    proc: subprocess.Popen
    spec: RemoteSpec
    log: Path

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def start_engine(model_dir: str, log: Path) -> EngineProcess:
    port, kv, replay = free_port(), free_port(), free_port()
    cmd = [sys.executable, "app.py", "--model", model_dir, "--served-model-name", MODEL_NAME, "--device", "cpu",
           "--port", str(port), "--num-blocks", "1024", "--max-num-seqs", "16", "--no-load-generator",
           "--kv-events-endpoint", f"tcp://127.0.0.1:{kv}", "--kv-events-replay-endpoint", f"tcp://127.0.0.1:{replay}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    spec = RemoteSpec.parse(f"http://127.0.0.1:{port}", f"tcp://127.0.0.1:{kv},tcp://127.0.0.1:{replay}")
    return EngineProcess(proc, spec, log)


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def healthy(e: EngineProcess) -> bool:
    assert e.proc.poll() is None, f"the engine server exited:\n{e.log.read_text()[-3000:]}"
    try:
        return httpx.get(f"{e.spec.url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def engines(embedded_model_dir: str, tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("engines")
    started = [start_engine(embedded_model_dir, logs / f"engine-{i}.log") for i in range(2)]
    try:
        wait_for(lambda: all(healthy(e) for e in started), 240, "both engine servers answer /health", every=1.0)
        yield started
    finally:
        for e in started:
            e.kill()


@pytest.fixture(scope="module")
def ui(engines: list[EngineProcess]):
    app, fleet, load = build_remote([e.spec for e in engines], policy=LoadPolicy("open"))
    http = ServerThread(app).start()
    yield SimpleNamespace(url=http.url, fleet=fleet, load=load)
    load.stop()
    http.stop()
    fleet.stop()


def chat_text(fleet: RemoteFleet, question: str, max_tokens: int = 12) -> str:
    async def run() -> str:
        prompt = ChatPrompt(({"role": "user", "content": question},))
        return "".join([d async for d in RemoteEngine(fleet).chat(prompt, SamplingParams(max_tokens=max_tokens,
                                                                                          temperature=0.0), "t")])
    with ThreadPoolExecutor(1) as pool:  # off this thread: Playwright's sync API runs an event loop here
        return pool.submit(asyncio.run, run()).result()


def root_chain(tree: dict[str, Any], needle: str) -> dict[str, Any] | None:
    """The root segment whose text has `needle`, with its children counted."""
    for s in tree["segments"]:
        if s["parent"] is None and needle in (s["text"] or ""):
            return {**s, "children": sum(c["parent"] == s["id"] for c in tree["segments"])}
    return None


def test_the_chat_streams_from_the_remote_engines(browser, ui: SimpleNamespace, tmp_path: Path) -> None:
    assert all(r.up and r.model == MODEL_NAME for r in ui.fleet.replicas)
    assert len(chat_text(ui.fleet, "Name a colour.").split()) >= 2
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(ui.url)
    box = page.locator("#chat-input textarea")
    box.fill("Name three colors of the rainbow.")
    box.press("Enter")
    page.wait_for_function(
        "() => { const m = document.querySelectorAll('#chatbot [data-testid=\"bot\"]');"
        " return m.length && m[m.length - 1].innerText.trim().split(/\\s+/).length >= 3; }")
    assert "remote engines" in page.locator("#intro").inner_text()
    page.close()


def test_a_scenario_over_the_api_loads_both_replicas_and_grows_one_chain_each(
        browser, ui: SimpleNamespace, tmp_path: Path) -> None:
    finished = [r.points[-1].finished or 0 for r in ui.fleet.replicas]
    run_scenario(None, ui.load, "shared-prefix", max_model_len=ui.fleet.max_model_len)
    try:
        def chains() -> list[dict[str, Any]] | None:
            found = [root_chain(ui.fleet.tree_json(i), "Riverside Public Library") for i in range(2)]
            return found if all(c and c["children"] >= 2 for c in found) else None

        found = wait_for(chains, 180, "each replica's tree holds the shared system prompt as one chain, branching")
        for chain in found:  # about 700 tokens of one system prompt: one run of full blocks, no branch inside
            assert chain["alive"] and chain["blocks"] >= 30, chain
        wait_for(lambda: all((r.points[-1].finished or 0) > f for r, f in zip(ui.fleet.replicas, finished)), 120,
                 "both replicas finish requests of the load")
        assert all(max((p.output_tps or 0) for p in r.points) > 0 for r in ui.fleet.replicas)

        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(ui.url)
        page.get_by_role("tab", name="Dashboard").click()
        page.wait_for_function("() => { const v = window.PagedChatFleet && window.PagedChatFleet.shown();"
                               " const p = v && v.probe(); return p && p.connected && p.tree && p.tree.segments > 2; }")
        rows = page.locator("#live-view tr[data-replica]")
        assert rows.count() == 2 and all(rows.nth(i).get_attribute("data-state") == "up" for i in range(2))
        assert page.locator("#live-view [data-tile=up] .pc-v").inner_text() == "2 / 2"
        wait_for(lambda: page.locator("#live-view .pc-seg").count() > 2, 30, "the tree drawn")
        first = page.locator("#live-view .pc-seg").filter(has_text="Riverside").first
        assert int(first.get_attribute("data-blocks")) >= 30 and first.get_attribute("data-depth") == "0"
        page.screenshot(path=str(tmp_path / "remote-dashboard.png"), full_page=True)
        page.close()
    finally:
        ui.load.stop()


def structure(tree: dict[str, Any]) -> list[tuple]:
    return [(x["id"], x["parent"], x["blocks"], x["alive"]) for x in tree["segments"]]


def test_a_late_joining_ui_rebuilds_the_trees_from_the_replay_sockets(ui: SimpleNamespace,
                                                                      engines: list[EngineProcess],
                                                                      tmp_path: Path) -> None:
    """`python app.py --engine-url ... --engine-kv-events ...`, started after the events: its trees
    equal the first UI's, block for block."""
    time.sleep(2.0)  # the load is stopped: the caches hold still
    before = [ui.fleet.tree_json(i) for i in range(2)]
    assert all(t["alive"] > 30 and t["lost"] == 0 for t in before)
    port = free_port()
    cmd = [sys.executable, "app.py", "--port", str(port)]
    for e in engines:
        cmd += ["--engine-url", e.spec.url, "--engine-kv-events", f"{e.spec.kv_events},{e.spec.kv_replay}"]
    log = tmp_path / "late-ui.log"
    late = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def trees() -> list[dict[str, Any]] | None:
            assert late.poll() is None, log.read_text()[-3000:]
            try:
                return [httpx.get(f"{url}/api/fleet/tree/{i}", timeout=5).json() for i in range(2)]
            except httpx.HTTPError:
                return None

        wait_for(lambda: (t := trees()) and [structure(x) for x in t] == [structure(b) for b in before], 90,
                 "the late UI's trees equal the first UI's")
        health = httpx.get(f"{url}/health").json()
        assert health["status"] == "ok" and [r["state"] for r in health["replicas"]] == ["up", "up"]
        assert all(t["lost"] == 0 and t["batches"] > 0 for t in trees())
    finally:
        late.send_signal(signal.SIGTERM)
        late.wait(20)


def test_a_killed_replica_is_shown_down_and_the_chat_goes_on(browser, ui: SimpleNamespace,
                                                             engines: list[EngineProcess], tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(ui.url)
    page.get_by_role("tab", name="Dashboard").click()
    page.wait_for_function("() => document.querySelectorAll('#live-view tr[data-state=up]').length === 2")
    # idle, the screen's running, waiting and KV use are each replica's own /metrics
    time.sleep(2.5)
    for i, e in enumerate(engines):
        scrape = parse_scrape(httpx.get(f"{e.spec.url}/metrics").text, 0.0)
        row = page.locator(f"#live-view tr[data-replica='{i}']")
        assert row.locator(".pc-c-running").inner_text() == f"{scrape.value(RUNNING):g}"
        assert row.locator(".pc-c-waiting").inner_text() == f"{scrape.value(WAITING):g}"
        kv = scrape.value(KV_USAGE) * 100
        assert row.locator(".pc-c-kv").inner_text() == f"{kv:.{0 if kv >= 10 else 1}f}%"
    # an answer streaming from replica 1 when it dies fails with a message naming it
    streamed: list[str] = []
    outcome: list[BaseException] = []

    async def long_answer() -> None:
        prompt = ChatPrompt(({"role": "user", "content": "Tell me a long story about a lighthouse."},))
        params = SamplingParams(max_tokens=600, temperature=0.0, ignore_eos=True)
        async for delta in RemoteEngine(ui.fleet).chat(prompt, params, "long"):
            streamed.append(delta)

    def run_long() -> None:
        try:
            asyncio.run(long_answer())
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            outcome.append(exc)

    with ui.fleet.replicas[0].request(), ui.fleet.replicas[0].request():  # replica 0 looks the busier
        worker = threading.Thread(target=run_long)
        worker.start()
        wait_for(lambda: len(streamed) >= 3, 60, "the long answer streams from replica 1")
        assert ui.fleet.replicas[1].in_flight == 1
        engines[1].kill()
        killed = time.monotonic()
        worker.join(30)
    assert outcome and isinstance(outcome[0], RequestRejected), outcome
    assert "stopped mid-answer" in str(outcome[0]) and engines[1].spec.url in str(outcome[0])
    # before any poll notices, a request routed to the dead replica goes to the other
    with ui.fleet.replicas[0].request(), ui.fleet.replicas[0].request():
        assert ui.fleet.pick() is ui.fleet.replicas[1] or ui.fleet.replicas[1].state == "down"
        assert chat_text(ui.fleet, "Say hello.").strip()
    wait_for(lambda: ui.fleet.replicas[1].state == "down", 5, "the fleet marks the killed replica down")
    page.wait_for_function("() => document.querySelector('#live-view tr[data-replica=\"1\"]').dataset.state === 'down'",
                           timeout=5_000)
    assert time.monotonic() - killed < 8
    assert page.locator("#live-view [data-tile=up] .pc-v").inner_text() == "1 / 2"
    assert "down" in page.locator("#live-view tr[data-replica='1'] .pc-r-health").inner_text()
    box = page.locator("#chat-input textarea")  # the chat tab still answers, from replica 0
    page.get_by_role("tab", name="Chat").click()
    box.fill("What is a GPU?")
    box.press("Enter")
    page.wait_for_function(
        "() => { const m = document.querySelectorAll('#chatbot [data-testid=\"bot\"]');"
        " return m.length && m[m.length - 1].innerText.trim().split(/\\s+/).length >= 3; }")
    assert ui.fleet.replicas[0].up and httpx.get(f"{ui.url}/health").json()["status"] == "ok"
    page.get_by_role("tab", name="Dashboard").click()
    page.wait_for_timeout(1500)
    page.screenshot(path=str(tmp_path / "remote-replica-down.png"), full_page=True)
    page.close()
