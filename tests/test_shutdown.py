"""`python app.py` shuts down cleanly on SIGTERM and on Ctrl-C (SIGINT): a stream still open ends
with an error event and [DONE], a UI session's open connection is closed without a traceback, the
engine thread stops, the process exits 0 within seconds and the port is free again."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from server.uvicorn_thread import free_port

ROOT = Path(__file__).resolve().parent.parent
EXIT_WITHIN = 10.0  # seconds from the signal; about 1.5 s on an idle 2-core machine


def default_sigint() -> None:
    """In the child: Ctrl-C as in a terminal (a shell's background job would ignore it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# app.py whose engine loses its device at the first step (as after a CUDA device-side assert)
DYING_APP = """
import sys, app
from engine.serving.llm_engine import LLMEngine
from engine.serving.request_stream import DeviceFailure
def step(self):
    raise DeviceFailure("injected: the device is gone")
LLMEngine.step = step
app.main(sys.argv[1:])
"""


def start_app(model_dir: str, port: int, log: Path, program: list[str] = ("app.py",),
              extra: list[str] = ()) -> subprocess.Popen:
    command = [sys.executable, *program, "--model", model_dir, "--num-blocks", "64", "--port", str(port), *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, preexec_fn=default_sigint)
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, f"app.py exited with {proc.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no /health within 180 s:\n{log.read_text()}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


def open_stream(port: int, events: list, streaming: threading.Event) -> None:
    """A long streamed completion; every `data:` payload goes to `events`."""
    body = {"prompt": "Tell a long story.", "max_tokens": 1000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
                streaming.set()


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server restarting on it would
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0  # nobody answers


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_app_shuts_down_cleanly(sig: signal.Signals, embedded_model_dir: str, tmp_path: Path) -> None:
    port, log, recording = free_port(), tmp_path / "app.log", tmp_path / "run.jsonl.gz"
    proc = start_app(embedded_model_dir, port, log, extra=["--record", str(recording)])
    browser = None
    try:
        # a user of the UI, as an open browser tab: its queue stream stays open across the signal
        from gradio_client import Client

        browser = Client(f"http://127.0.0.1:{port}", verbose=False)
        assert browser.predict("Hi", "Be brief.", 0.0, 1.0, 4, api_name="/chat")
        events: list = []
        streaming = threading.Event()
        reader = threading.Thread(target=open_stream, args=(port, events, streaming), daemon=True)
        reader.start()
        assert streaming.wait(60), log.read_text()
        proc.send_signal(sig)
        signalled = time.monotonic()
        code = proc.wait(timeout=EXIT_WITHIN + 20)
        took = time.monotonic() - signalled
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        if browser is not None:
            browser.close()
    text = log.read_text()
    assert code == 0, text
    assert took < EXIT_WITHIN, f"exit took {took:.1f} s"
    assert "the engine thread stopped" in text and "PagedChat stopped" in text, text
    assert "Traceback" not in text, text
    assert events[-1] == "[DONE]" and "shutting down" in events[-2]["error"]["message"]
    assert any(e["choices"][0]["text"] for e in events[:-2])
    assert port_is_free(port)
    from server.recording import read_recording  # --record wrote the run, closed cleanly

    phases = {e["phase"] for r in read_recording(recording).records for e in r["requests"]}
    assert {"waiting", "prefill", "decode", "finished"} <= phases


@pytest.mark.slow
def test_app_exits_non_zero_when_the_engine_dies(embedded_model_dir: str, tmp_path: Path) -> None:
    """The chosen recovery: requests in flight end with an error (a stream with an error event,
    see test_stream_errors), and the process exits with status 70 so that a supervisor starts a
    fresh one."""
    port, log = free_port(), tmp_path / "app.log"
    proc = start_app(embedded_model_dir, port, log, ["-c", DYING_APP])
    try:
        body = {"prompt": "Hello", "max_tokens": 4}
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=30)
        code = proc.wait(timeout=EXIT_WITHIN + 20)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 70, text
    assert "the engine died" in text and "device is gone" in text
    assert reply.status_code == 503 and "device is gone" in reply.json()["error"]["message"]
    assert port_is_free(port)
