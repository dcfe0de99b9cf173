"""Who may use the server: a Host header check (DNS rebinding) and an optional API key for /v1.

Host check: a web page on another site could make a browser on this machine talk to a server on
localhost through a name it controls that resolves to 127.0.0.1; the browser then sends that name
as Host. Only the names this server is meant to be reached by are accepted (`allowed_hosts`).

API key: with one set, every /v1 request must carry `Authorization: Bearer KEY`, as vLLM's
`--api-key`; /health and /metrics stay open for probes and scrapers.
"""
from __future__ import annotations

import hmac
import ipaddress
import os
import socket
from typing import Any, Awaitable, Callable

import psutil

from server.errors import send_error

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
LOOPBACK = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")


def default_allowed_hosts(bound: str) -> list[str]:
    """The bound address and localhost; for a wildcard bind, this machine's names and addresses.
    On Hugging Face Spaces, the Space's own host ($SPACE_HOST) too."""
    hosts = [*LOOPBACK, bound] if bound not in WILDCARDS else [*LOOPBACK, *_machine_addresses()]
    if os.environ.get("SPACE_HOST"):
        hosts.append(os.environ["SPACE_HOST"])
    return sorted(set(hosts))


def _machine_addresses() -> list[str]:
    names = [socket.gethostname(), socket.getfqdn()]
    addresses = [a.address.split("%")[0] for nic in psutil.net_if_addrs().values() for a in nic
                 if a.family in (socket.AF_INET, socket.AF_INET6)]
    return names + addresses


def host_of(header: str) -> str:
    """The host of a Host header, without its port: 'a.b:7860' -> 'a.b', '[::1]:7860' -> '::1'.
    A malformed header ('[::1]evil', 'a.b:evil') comes back whole, and so matches no allowed name."""
    if header.startswith("["):
        end = header.find("]")
        rest = header[end + 1:] if end > 0 else "x"
        return header[1:end] if not rest or rest[0] == ":" and rest[1:].isdigit() else header
    if header.count(":") == 1:
        host, port = header.split(":")
        return host if port.isdigit() else header
    return header


def _same_host(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:  # names: one trailing dot (the root) is allowed, as in DNS
        return a.lower().removesuffix(".") == b.lower().removesuffix(".")


async def _refuse(send: Send, status: int, message: str, code: str, headers: list[tuple[bytes, bytes]] = (),
                  websocket: bool = False) -> None:
    if websocket:  # refused before accept: the client sees HTTP 403
        await send({"type": "websocket.close", "code": 1008})
        return
    await send_error(send, status, message, code, headers)


class AccessControl:
    """ASGI middleware: 400 for a Host not in `allowed_hosts` ('*' allows any), 401 for a /v1
    request without the API key (when one is set)."""

    def __init__(self, app: Any, allowed_hosts: list[str], api_key: str | None = None) -> None:
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.allowed_hosts = [host_of(h) if h.startswith("[") else h for h in allowed_hosts]
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        host = host_of(headers.get(b"host", b"").decode("latin-1"))
        if not self.any_host and not any(_same_host(host, h) for h in self.allowed_hosts):
            return await _refuse(send, 400, f"the Host header {host[:80]!r} is not one this server answers to "
                                 "(see --allowed-hosts)", "invalid_host", websocket=scope["type"] == "websocket")
        path = scope.get("path", "")
        if self.api_key is not None and (path == "/v1" or path.startswith("/v1/")):
            given = headers.get(b"authorization", b"")
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
                return await _refuse(send, 401, "a valid API key is required: send `Authorization: Bearer KEY`",
                                     "invalid_api_key", [(b"www-authenticate", b"Bearer")],
                                     websocket=scope["type"] == "websocket")
        await self.app(scope, receive, send)
