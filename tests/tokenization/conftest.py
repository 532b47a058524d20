"""Fixtures for the gateway boundary: the real sandbox (localstripe), the real SDK, real HTTP.

- ``sandbox``: one localstripe process for the session, on a free port. Skipped when localstripe is
  not installed, unless ``VEILBILL_REQUIRE_ALL=1`` (CI), which turns the skip into a failure.
- ``gateway``: a :class:`StripeGateway` on it; ``stripe_client``: the raw SDK client, for what a
  test must do that Veilbill never does (creating payment methods from test card numbers, looking
  at what the sandbox stored).
- ``wire``: a loopback HTTP proxy in front of the sandbox that records every request (method,
  path, headers, body) before forwarding it. It is the seam through which tests see what the SDK
  really sent, ``Idempotency-Key`` included: the sandbox ignores that header, so only the wire
  can show it was derived from ours.
- ``canned_server``: a loopback HTTP server answering every request with a fixed status and body,
  for the gateway's failure modes (5xx, 429, HTML instead of JSON).

Card numbers here and in the tests are public gateway TEST numbers.
"""

from __future__ import annotations

import http.server
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import stripe

from tokenization import (
    LocalStripeSandbox,
    StripeGateway,
    derive_idempotency_key,
    make_stripe_client,
)

from ..conftest import API_KEY


def new_key(*parts: str) -> str:
    """A fresh idempotency key: the sandbox keeps objects across tests, so ids must not repeat."""
    return derive_idempotency_key("test", *parts, uuid.uuid4().hex)


@pytest.fixture
def gateway(stripe_client: stripe.StripeClient) -> StripeGateway:
    return StripeGateway(stripe_client, localstripe=True)


@pytest.fixture
def customer(gateway: StripeGateway) -> str:
    return gateway.create_customer(
        reference=f"cus-{uuid.uuid4().hex[:12]}", idempotency_key=new_key("customer")
    )


@dataclass(frozen=True)
class WireRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class _ServerThread:
    server: http.server.ThreadingHTTPServer
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.daemon = True
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class Wire:
    """A recording proxy: every request is kept, then forwarded to ``upstream``."""

    def __init__(self, upstream: str) -> None:
        self.requests: list[WireRequest] = []
        self._lock = threading.Lock()
        self._upstream = httpx.Client(base_url=upstream, timeout=10.0)
        wire = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {name.lower(): value for name, value in self.headers.items()}
                with wire._lock:
                    wire.requests.append(WireRequest(self.command, self.path, headers, body))
                outgoing = {
                    k: v for k, v in headers.items() if k not in {"host", "content-length", "connection"}
                }
                answer = wire._upstream.request(self.command, self.path, content=body, headers=outgoing)
                self.send_response(answer.status_code)
                for name, value in answer.headers.items():
                    if name.lower() not in {
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "content-encoding",
                    }:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_DELETE = _forward  # noqa: N815 - http.server's handler names

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = _ServerThread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler))
        self.url = self._server.url

    def mutations(self) -> list[WireRequest]:
        with self._lock:
            return [request for request in self.requests if request.method in {"POST", "DELETE"}]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def close(self) -> None:
        self._server.close()
        self._upstream.close()


@pytest.fixture
def wire(sandbox: LocalStripeSandbox) -> Iterator[Wire]:
    proxy = Wire(sandbox.api_base)
    yield proxy
    proxy.close()


@pytest.fixture
def wired_gateway(wire: Wire) -> StripeGateway:
    """A gateway whose every request goes through ``wire``."""
    return StripeGateway(make_stripe_client(API_KEY, api_base=wire.url), localstripe=True)


class CannedServer:
    """Answers every request with ``status`` and ``body`` (JSON by default), and a request id."""

    REQUEST_ID = "req_canned"

    def __init__(self) -> None:
        self.status = 200
        self.body = b"{}"
        self.content_type = "application/json"
        canned = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self.send_response(canned.status)
                self.send_header("Content-Type", canned.content_type)
                self.send_header("Request-Id", CannedServer.REQUEST_ID)
                self.send_header("Content-Length", str(len(canned.body)))
                self.end_headers()
                self.wfile.write(canned.body)

            do_GET = do_POST = do_DELETE = _answer  # noqa: N815 - http.server's handler names

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = _ServerThread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler))
        self.url = self._server.url

    def answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.status, self.body, self.content_type = status, body, content_type

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def canned_server() -> Iterator[CannedServer]:
    server = CannedServer()
    yield server
    server.close()
