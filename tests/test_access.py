"""Access: the API key guards /v1 (not /health or /metrics), the Host check refuses names the
server was not meant to be reached by, and the load generator obeys its policy and its owner even
when driven through the Gradio API directly."""
from __future__ import annotations

import threading
import time

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from live_server import LiveServer, start_live_server
from server.access import AccessControl, default_allowed_hosts, host_of
from ui.load_generator import LoadConfig, LoadGenerator, LoadPolicy, LoadRefused, owner_label

KEY = "s3cret-key"


def guarded(**options) -> TestClient:
    app = FastAPI()

    @app.get("/v1/models")
    def models() -> dict:
        return {"ok": True}

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    app.add_middleware(AccessControl, **options)
    return TestClient(app, base_url="http://localhost:7860")


@pytest.mark.parametrize("header,status", [(None, 401), ("Bearer wrong", 401), ("Basic " + KEY, 401),
                                           ("Bearer " + KEY, 200), ("bearer " + KEY, 200)])
def test_the_api_key_guards_v1(header, status) -> None:
    client = guarded(allowed_hosts=["*"], api_key=KEY)
    response = client.get("/v1/models", headers={"Authorization": header} if header else {})
    assert response.status_code == status
    if status == 401:
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/health").status_code == 200  # probes need no key


@pytest.mark.parametrize("host,status", [("localhost:7860", 200), ("127.0.0.1:7860", 200), ("[::1]:7860", 200),
                                         ("LOCALHOST", 200), ("evil.example", 400), ("evil.example:7860", 400),
                                         ("127.0.0.1.evil.example", 400), ("", 400), ("[::1]evil.example", 400),
                                         ("[::1].evil.example:80", 400), ("127.0.0.1:evil.example", 400),
                                         ("localhost..", 400), ("localhost.", 200)])
def test_the_host_check_refuses_other_names(host, status) -> None:
    client = guarded(allowed_hosts=default_allowed_hosts("127.0.0.1"))
    response = client.get("/health", headers={"Host": host})
    assert response.status_code == status
    if status == 400:
        assert "Host header" in response.json()["error"]["message"]


def test_default_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPACE_HOST", raising=False)
    assert set(default_allowed_hosts("127.0.0.1")) == {"localhost", "127.0.0.1", "::1"}
    assert "10.1.2.3" in default_allowed_hosts("10.1.2.3")
    wildcard = default_allowed_hosts("0.0.0.0")
    assert "127.0.0.1" in wildcard and len(wildcard) > 3  # this machine's names and addresses
    monkeypatch.setenv("SPACE_HOST", "me-pagedchat.hf.space")
    assert "me-pagedchat.hf.space" in default_allowed_hosts("0.0.0.0")
    assert [host_of(h) for h in ("a.b:80", "[::1]:80", "::1", "a.b")] == ["a.b", "::1", "::1", "a.b"]


class _IdleEngine:
    """Stands in for the engine thread: every request waits until it is closed."""

    def submit(self, prompt, params, request_id=None):
        closed = threading.Event()

        class Stream:
            def __iter__(self):
                closed.wait(10)
                return iter(())

            def close(self):
                closed.set()

        return Stream()


def generator(policy: LoadPolicy) -> LoadGenerator:
    return LoadGenerator(_IdleEngine(), ["hi"], LoadConfig(arrival_spread_s=0.0), policy=policy)


def test_a_load_belongs_to_its_owner() -> None:
    load = generator(LoadPolicy("open"))
    load.start(3, owner="alice")
    assert load.status().users == 3 and load.status().owner == "alice"
    with pytest.raises(LoadRefused, match="only that session"):
        load.start(5, owner="mallory")
    with pytest.raises(LoadRefused, match="only that session"):
        load.stop(owner="mallory")
    assert load.status().users == 3
    load.release("mallory")  # someone else's tab closing changes nothing
    assert load.status().users == 3
    load.release("alice")  # the owner's tab closed
    assert load.status().users == 0
    load.start(2, owner="mallory")  # free again
    assert owner_label("mallory") in load.status().describe()
    load.stop()  # the operator may always


def test_a_load_stops_at_its_time_limit() -> None:
    load = generator(LoadPolicy("open", time_limit_s=0.5))
    load.start(2, owner="alice")
    assert 0 < load.status().seconds_left <= 0.5
    time.sleep(1.0)
    assert load.status().users == 0


def test_the_policy_decides_who_may_start() -> None:
    with pytest.raises(LoadRefused, match="turned off"):
        generator(LoadPolicy("off")).start(2, owner="alice")
    keyed = generator(LoadPolicy("key", KEY))
    with pytest.raises(LoadRefused, match="presenter key"):
        keyed.start(2, owner="alice")
    with pytest.raises(LoadRefused, match="presenter key"):
        keyed.start(2, owner="alice", key="guess")
    keyed.start(2, owner="alice", key=KEY)
    keyed.stop(owner="bob", key=KEY)  # the key may stop anyone's load
    assert keyed.status().users == 0
    keyed.start(2, owner="alice", key=KEY)
    keyed.release("alice")  # her tab closed: no key needed for that
    assert keyed.status().users == 0
    with pytest.raises(LoadRefused, match="between 1 and 64"):
        keyed.start(1000, owner="alice", key=KEY)


@pytest.fixture(scope="module")
def keyed_live(embedded_model_dir: str):
    server = start_live_server(embedded_model_dir, num_blocks=64, policy=LoadPolicy("key", KEY), api_key=KEY)
    yield server
    server.stop()


def test_the_gradio_api_cannot_get_around_the_presenter_key(keyed_live: LiveServer) -> None:
    """The start handler is called as any HTTP client could (Gradio's run route, by the handler's
    name; the UI marks it private, which only hides it), not through the page: without the key
    nothing starts."""

    def call(name: str, *data) -> None:
        response = httpx.post(f"{keyed_live.url}/gradio_api/run/{name}", json={"data": list(data)}, timeout=30)
        assert response.status_code == 200, response.text

    try:
        call("start_load", 16, "")
        call("start_load", 16, "wrong")
        assert keyed_live.load.status().users == 0
        call("start_load", 2, KEY)
        assert keyed_live.load.status().users == 2
        call("stop_load", "")
        assert keyed_live.load.status().users == 2
        call("stop_load", KEY)
        assert keyed_live.load.status().users == 0
    finally:
        keyed_live.load.stop()
    # and the API key holds for /v1 on the whole app
    assert httpx.get(keyed_live.url + "/v1/models", timeout=10).status_code == 401
    ok = httpx.get(keyed_live.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert ok.status_code == 200


def test_uploads_are_refused(keyed_live: LiveServer) -> None:
    """The UI takes no files: Gradio's upload route refuses any file with content."""
    files = {"files": ("note.txt", b"x" * 1000, "text/plain")}
    response = httpx.post(keyed_live.url + "/gradio_api/upload", files=files, timeout=30)
    assert response.status_code == 413
