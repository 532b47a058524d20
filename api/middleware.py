"""Request-scoped plumbing: request ids and the card-data guard.

The card-data guard runs as a ``before_request`` hook, after authentication and role guards and
before the body is parsed or validated, so a card number is refused even in a field the schema
would reject. The raw body is then dropped: it is never logged, stored or echoed.
"""

from __future__ import annotations

import re
import secrets
import time
from functools import partial
from typing import Any

import anyio.to_thread
import msgspec
import structlog
from litestar import Request
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.logging import get_logger
from api.settings import Settings
from billing import Actor, Billing
from tokenization import (
    CardDataRejected,
    contains_card_number,
    find_card_data,
    scan_query_params,
)

__all__ = [
    "HSTS_MAX_AGE",
    "RequestIdMiddleware",
    "StrictTransportSecurity",
    "guard_request",
    "hsts_header",
    "refuse_card_data",
]

HSTS_MAX_AGE = 31_536_000  # one year, what browsers' preload lists ask for

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")
_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
_access_log = get_logger("veilbill.access")


class RequestIdMiddleware(ASGIMiddleware):
    """Gives every request an id (the caller's ``X-Request-Id`` when it is a safe token) and logs it.

    This is the service's access log (uvicorn's is off): method, path, status and duration, never
    the query string — lookups such as ``?email=`` carry PII — nor any header.
    """

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        offered = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        request_id = offered if _SAFE_REQUEST_ID.match(offered) else f"req_{secrets.token_hex(12)}"
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableScopeHeaders.from_message(message)["X-Request-Id"] = request_id
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await next_app(scope, receive, send_with_id)
            finally:
                _access_log.info(
                    "request",
                    method=scope.get("method"),
                    path=_loggable_path(scope),
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                )


def hsts_header(settings: Settings) -> str | None:
    """The ``Strict-Transport-Security`` value the service sends: only when reached over https."""
    return f"max-age={HSTS_MAX_AGE}; includeSubDomains" if settings.serves_https else None


class StrictTransportSecurity(ASGIMiddleware):
    """Adds HSTS to every response when the public URL is https (TLS ends at the proxy in front).

    Over plain HTTP (development on loopback) the header would be ignored by browsers, so it is not
    sent; the PCI scope report flags a non-https public URL.
    """

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        value = hsts_header(scope["app"].state.settings)
        if value is None:
            await next_app(scope, receive, send)
            return

        async def send_with_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableScopeHeaders.from_message(message)["Strict-Transport-Security"] = value
            await send(message)

        await next_app(scope, receive, send_with_hsts)


def _loggable_path(scope: Scope) -> str:
    """The request path, or its route template when the route says its path holds a credential."""
    handler = scope.get("route_handler")
    if handler is not None and handler.opt.get("secret_in_path"):
        return min(handler.paths, default="?")
    return str(scope.get("path", ""))


async def guard_request(request: Request[Any, Any, Any]) -> None:
    """Runs before every handler: the card-data guard first, then idempotency refusals.

    Card data wins over every other refusal, so that whatever else is wrong with such a request,
    the caller learns that card data is never accepted.
    """
    if not request.route_handler.opt.get("skip_card_guard"):
        await refuse_card_data(request)
    refusal = request.scope.get("state", {}).get("idempotency_refusal")
    if refusal is not None:
        raise refusal


async def refuse_card_data(request: Request[Any, Any, Any]) -> None:
    """Refuse (422 ``card_data_rejected``) a request with card data in its body or query string.

    The refusal is audited with the field paths only.
    """
    paths = scan_query_params(request.query_params.multi_items())
    if contains_card_number(request.url.path):
        paths.append("path")
    if request.method in _BODY_METHODS:
        body = await request.body()
        if body:
            try:
                decoded = msgspec.json.decode(body)
            except msgspec.DecodeError:
                paths += _scan_raw(body)
            else:
                paths += find_card_data(decoded)
    if not paths:
        return
    billing: Billing = request.app.state.billing
    actor = request.scope.get("user")
    await anyio.to_thread.run_sync(
        partial(_audit_refusal, billing, actor if isinstance(actor, Actor) else None, _route(request), paths)
    )
    raise CardDataRejected(paths)


def _route(request: Request[Any, Any, Any]) -> str:
    """The route template (``/v1/customers/{customer_id:str}``), never the raw path."""
    return min(request.route_handler.paths, default="?")


def _scan_raw(body: bytes) -> list[str]:
    return find_card_data(body.decode("utf-8", errors="replace"), path="body")


def _audit_refusal(billing: Billing, actor: Actor | None, route: str, paths: list[str]) -> None:
    with billing.db.transaction() as session:
        billing.audit.record(
            session,
            actor=actor,
            action="card_data.rejected",
            resource_type="request",
            outcome="denied",
            detail={"route": route[:200], "fields": ",".join(paths)[:1000]},
        )
