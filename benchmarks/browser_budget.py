"""What the dashboard costs a browser, and what an open dashboard costs the engine.

    python benchmarks/browser_budget.py                      # the app live, 32 simulated users
    python benchmarks/browser_budget.py --replay FILE        # a recorded run (e.g. a GPU's), replayed

Chromium (Debian's, driven by Playwright) opens the app at 1920x1080 and the Dashboard tab, then:
- first draw: from the click on the tab, and from navigation, to the live view's first drawing;
- main thread: the share of wall time the page's main thread ran tasks (Chrome's own TaskDuration,
  through the DevTools protocol), and the long tasks (over 50 ms) a PerformanceObserver saw;
- updates a second: the view's redraws with new data;
- live only: the engine's output tok/s (its /metrics counter) in turns of `--turn` seconds with
  the dashboard open and with it hidden (the view closes its feed), the load running throughout
  (started by a second page that stays on the Chat tab).
Budget (issue 10): main thread busy < 20%, >= 4 updates/s, first draw < 2 s, tok/s within 10%.
Run nothing else meanwhile: on 2 cores the browser, the server and the engine share the CPU.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("PAGEDCHAT_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
LONG_TASKS = """
window.__longTasks = [];
new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__longTasks.push(e.duration); })
  .observe({type: "longtask", buffered: true});
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(f"/tmp/browser_budget_app_{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), *extra], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the app exited: see {log.name}")
        time.sleep(0.5)
    raise SystemExit("the app did not start")


def output_tokens(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    m = re.search(r"^pagedchat_generation_tokens_total (\S+)", text, re.M)
    return float(m.group(1)) if m else float("nan")


def task_seconds(cdp) -> float:
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    return metrics["TaskDuration"]


def probe(page) -> dict:
    return page.evaluate("() => window.PagedChatLive.shown()?.probe() ?? null")


def open_dashboard(browser, url: str) -> tuple[object, object, dict]:
    page = browser.new_page(viewport={"width": 1920, "height": 1080})
    page.add_init_script(LONG_TASKS)
    page.set_default_timeout(60_000)
    page.goto(url)
    tab = page.get_by_role("tab", name="Dashboard")
    if tab.get_attribute("aria-selected") != "true":
        tab.wait_for()
        clicked = page.evaluate("() => performance.now()")
        tab.click()
    else:
        clicked = 0.0
    page.wait_for_function("() => window.PagedChatLive?.shown()?.firstDrawAt != null")
    first = page.evaluate("() => window.PagedChatLive.shown().firstDrawAt")
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable")
    return page, cdp, {"click_to_draw": (first - clicked) / 1000, "nav_to_draw": first / 1000}


def measure(page, cdp, seconds: float) -> dict:
    p0, t0, w0 = probe(page), task_seconds(cdp), time.monotonic()
    n0 = page.evaluate("() => window.__longTasks.length")
    time.sleep(seconds)
    p1, t1, w1 = probe(page), task_seconds(cdp), time.monotonic()
    longs = page.evaluate(f"() => window.__longTasks.slice({n0})")
    wall = w1 - w0
    return {"busy": (t1 - t0) / wall, "updates": (p1["updates"] - p0["updates"]) / wall,
            "long_n": len(longs), "long_s": sum(longs) / 1000 / wall, "long_max": max(longs, default=0.0),
            "records": (p1["records"] - p0["records"]) / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replay", default=None, help="a recording (python app.py --record) to replay instead")
    ap.add_argument("--users", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30.0, help="the main-thread measurement")
    ap.add_argument("--turn", type=float, default=20.0, help="each open/hidden turn of the tok/s comparison")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    proc, url = start_app(["--replay", args.replay] if args.replay else [])
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            version = browser.version
            owner = None
            if not args.replay:  # the load's owner: a page that starts it, then stays on the Chat tab
                owner = browser.new_page()
                owner.set_default_timeout(60_000)
                owner.goto(url)
                owner.get_by_role("tab", name="Dashboard").click()
                owner.locator("#live-view").wait_for()
                users = owner.get_by_label("number input for Simulate N users")
                users.fill(str(args.users))
                users.press("Enter")
                owner.locator("#load-start").click()
                owner.get_by_role("tab", name="Chat").click()
                time.sleep(8)  # users arrive over 4 s; then a steady state
            page, cdp, first = open_dashboard(browser, url)
            time.sleep(3)
            budget = measure(page, cdp, args.seconds)
            turns = {"open": [], "hidden": []}
            if not args.replay:
                tabs = {"open": "Dashboard", "hidden": "Chat"}
                for _ in range(args.rounds):
                    for state in ("hidden", "open"):
                        page.get_by_role("tab", name=tabs[state]).click()
                        time.sleep(3)  # the view opens (or closes) its feed
                        a, ta = output_tokens(url), time.monotonic()
                        time.sleep(args.turn)
                        turns[state].append((output_tokens(url) - a) / (time.monotonic() - ta))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    workload = (f"replay of {args.replay}" if args.replay else
                f"the app live on the embedded model (SmolLM2-135M-Instruct, CPU), {args.users} simulated users")
    print(f"hardware: {cpu}, {os.cpu_count()} cores; chromium {version} headless, 1920x1080")
    print(f"workload: {workload}")
    print()
    print("| figure | value | budget |")
    print("| --- | ---: | --- |")
    print(f"| main thread busy (TaskDuration / wall, {args.seconds:.0f} s) | {100 * budget['busy']:.1f}% | < 20% |")
    print(f"| long tasks (> 50 ms) | {budget['long_n']} ({100 * budget['long_s']:.1f}% of the time, longest "
          f"{budget['long_max']:.0f} ms) | |")
    print(f"| updates a second | {budget['updates']:.1f} | >= 4 |")
    print(f"| feed records a second (steps) | {budget['records']:.0f} | |")
    print(f"| first draw after clicking the tab | {first['click_to_draw']:.2f} s | < 2 s |")
    print(f"| first draw after navigation (page load included) | {first['nav_to_draw']:.2f} s | |")
    if turns["open"]:
        o, h = statistics.median(turns["open"]), statistics.median(turns["hidden"])
        print(f"| engine output tok/s, dashboard hidden (median of {args.rounds} turns of {args.turn:.0f} s) | "
              f"{h:.1f} ({', '.join(f'{x:.1f}' for x in turns['hidden'])}) | |")
        print(f"| engine output tok/s, dashboard open | {o:.1f} ({', '.join(f'{x:.1f}' for x in turns['open'])}) "
              f"| |")
        print(f"| open / hidden | {o / h:.3f} | within 10% |")


if __name__ == "__main__":
    main()
