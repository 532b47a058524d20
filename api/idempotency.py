"""``Idempotency-Key`` on mutating requests: the first response is stored and replayed for 24 h.

An ASGI middleware after authentication (it needs the tenant). For a ``POST`` carrying the header it
fingerprints the request (method, path, body), claims the key through ``billing``'s store, runs the
request while passing the response through, then stores it — sealed — unless it was a failure on
our side (5xx) or a refusal of card data, in which case the key is released so a retry runs again.
A replay answers the stored status and body with ``Idempotent-Replayed: true``. Responses
pass through buffered (they are small JSON documents) so they are stored before the client sees them.
While the request runs its claim is bound, so that an operation whose change is one transaction
stores its answer in that very transaction (a crash can then not separate the change from its
answer); the claim is a lease that a retry takes over once the process holding it is dead (see
``billing``'s ``IdempotencyStore``).
"""

from __future__ import annotations

import hashlib
import re
from functools import partial
from typing import Any

import anyio.to_thread
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import (
    ASGIApp,
    HTTPRequestEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)

from billing import Actor, Billing
from billing.errors import BillingError

__all__ = ["IDEMPOTENCY_HEADER", "IdempotencyMiddleware", "idempotency_key_of"]

IDEMPOTENCY_HEADER = "idempotency-key"
_VALID_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_NOT_STORED_CODES = (b'"code":"card_data_rejected"', b'"code":"idempotency_')


def idempotency_key_of(headers: Any) -> str | None:
    """The request's ``Idempotency-Key`` if it is 1 to 255 printable ASCII characters."""
    value = headers.get(IDEMPOTENCY_HEADER)
    return value if isinstance(value, str) and _VALID_KEY.match(value) else None


class IdempotencyMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, max_body_bytes: int) -> None:
        self._max_body = max_body_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        actor = scope.get("user")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        key = idempotency_key_of(headers)
        if scope.get("method") != "POST" or key is None or not isinstance(actor, Actor):
            await next_app(scope, receive, send)
            return
        body, replay_receive = await _buffer_body(receive, self._max_body)
        # A digest of the request, held in memory only: billing stores it keyed under the tenant's key.
        fingerprint = hashlib.sha256(b"\x1f".join([b"POST", scope["path"].encode(), body])).hexdigest()
        billing: Billing = scope["app"].state.billing
        try:
            stored = await anyio.to_thread.run_sync(
                partial(billing.idempotency.begin, actor.tenant_id, key, fingerprint)
            )
        except BillingError as refusal:
            # Let the app's exception handlers turn the refusal into problem+json.
            scope.setdefault("state", {})["idempotency_refusal"] = refusal
            await next_app(scope, replay_receive, send)
            return
        if stored is not None:
            await _send_stored(send, stored.status, stored.body)
            return
        # The response is held back until it is stored: a client that retries the moment it gets an
        # answer must find the key finished, not "in progress".
        start: HTTPResponseStartEvent | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            else:
                await send(message)

        # The status the handler answers on success, for an operation that stores its answer in
        # the transaction of its change (billing's IdempotencyStore.record_outcome).
        status_on_success = getattr(scope.get("route_handler"), "status_code", None) or 200
        try:
            with billing.idempotency.bound(actor.tenant_id, key, status_on_success):
                await next_app(scope, replay_receive, capture)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(partial(billing.idempotency.release, actor.tenant_id, key))
            raise
        response = b"".join(chunks)
        status = start["status"] if start is not None else 500
        with anyio.CancelScope(shield=True):
            if status >= 500 or any(code in response for code in _NOT_STORED_CODES):
                await anyio.to_thread.run_sync(partial(billing.idempotency.release, actor.tenant_id, key))
            else:
                await anyio.to_thread.run_sync(
                    partial(billing.idempotency.complete, actor.tenant_id, key, status, response)
                )
        if start is not None:
            await send(start)
            await send({"type": "http.response.body", "body": response, "more_body": False})


async def _buffer_body(receive: Receive, limit: int) -> tuple[bytes, Receive]:
    """Read the body (at most ``limit + 1`` bytes are kept) and a ``receive`` that replays it."""
    parts: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit + 1:
            parts.append(chunk)
        more = message.get("more_body", False)
    body = b"".join(parts)
    delivered = False

    async def replay() -> ReceiveMessage:
        nonlocal delivered
        if not delivered:
            delivered = True
            first: HTTPRequestEvent = {"type": "http.request", "body": body, "more_body": False}
            return first
        return await receive()

    return body, replay


async def _send_stored(send: Send, status: int, body: bytes) -> None:
    content_type = b"application/problem+json" if status >= 400 else b"application/json"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"idempotent-replayed", b"true"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
