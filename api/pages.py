"""Server-rendered pages behind a browser session: the base controller, the session cookie, the guard.

A page controller subclasses :class:`PageController` and names its role with one guard::

    class PciPageController(PageController):
        path = "/pci"
        guards = [requires_page_role("auditor")]

Everything else is inherited: no bearer authentication (``exclude_from_auth``), the session cookie
resolved into ``request.user`` (an :class:`billing.Actor`, so ``ActorDep`` works as in the API) and
``request.auth`` (the :class:`billing.PageSessionView`), strict security headers on every response,
a redirect to ``/signin?next=…`` without a live session, an HTML 403 page for a wrong role, and a
CSRF check on every state-changing request.

Security decisions:

- **The cookie** is ``__Host-veilbill_session``: ``HttpOnly`` (no script reads it), ``Secure``,
  ``SameSite=Strict`` (no cross-site request carries it), ``Path=/`` and no ``Domain`` (the
  ``__Host-`` prefix makes browsers refuse it otherwise, so a sibling subdomain cannot plant or
  shadow it). It is a browser-session cookie (no ``Max-Age``); the server enforces the idle and
  lifetime limits. Browsers treat ``http://127.0.0.1`` and ``http://localhost`` as secure contexts
  and accept ``Secure`` cookies there (checked with Chromium), so ``make run`` works over plain HTTP.
- **CSRF** is a synchronizer token bound to the session (``PageSessionView.csrf_token``, derived
  from the cookie's secret) in a hidden ``csrf_token`` field of every form that changes state; the
  guard checks it on every ``POST``/``PUT``/``PATCH``/``DELETE`` before the handler runs. Requests
  that the browser marks ``Sec-Fetch-Site: cross-site`` or ``same-site`` are refused as well.
  Sign-in, which has no session yet, uses a pre-session cookie (``__Host-veilbill_signin``) and a
  token derived from it in the same way (login CSRF).
- **Where to after sign-in** (``next``) is only ever a same-origin path: ``/…`` but not ``//…`` or
  ``/\\…``, no scheme, no host, no control characters; anything else goes to the role's home page.
- **Headers**: a CSP without any script source (these pages run no JavaScript), ``form-action
  'self'``, ``frame-ancestors 'none'``; ``Cache-Control: no-store``; ``Referrer-Policy:
  same-origin``; ``nosniff``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from functools import partial
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import anyio.to_thread
from litestar import Controller, Request, Response, Router
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie, MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.exceptions import ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.types import ASGIApp, Guard, Message, Receive, Scope, Send

from billing import ROLES, Billing, PageSessionView
from billing.errors import PageSessionInvalid, RoleForbidden

__all__ = [
    "CSRF_FIELD",
    "PAGE_ASSETS",
    "PAGE_HOMES",
    "SESSION_COOKIE",
    "SIGNIN_COOKIE",
    "CsrfTokenInvalid",
    "PageController",
    "PageSecurityHeaders",
    "PageSignInRequired",
    "error_page",
    "expired_cookie",
    "new_signin_nonce",
    "page_assets_router",
    "page_content_security_policy",
    "refuse_cross_site",
    "requires_page_role",
    "safe_next",
    "session_cookie",
    "signin_csrf_token",
    "signin_url",
]

SESSION_COOKIE: Final = "__Host-veilbill_session"
SIGNIN_COOKIE: Final = "__Host-veilbill_signin"
CSRF_FIELD: Final = "csrf_token"
PAGE_ASSETS: Final = "/pages/assets"
# The page each role lands on after signing in. Roles without a page cannot open a page session.
PAGE_HOMES: Final = {"accountant": "/reports", "auditor": "/pci"}

_STATIC_DIR: Final = Path(__file__).resolve().parent / "static" / "pages"
_UNSAFE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SIGNIN_LABEL: Final = b"veilbill signin csrf v1"
_MAX_NEXT: Final = 500
_INVALID_FLAG: Final = "page_session_invalid"


def page_content_security_policy() -> str:
    """No script at all; styles and images from this origin; forms post to this origin only."""
    return "; ".join(
        (
            "default-src 'none'",
            "style-src 'self'",
            "img-src 'self' data:",
            "form-action 'self'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        )
    )


class PageSecurityHeaders(ASGIMiddleware):
    """The pages' security headers on every response of the routes it wraps, errors included."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                headers["Content-Security-Policy"] = page_content_security_policy()
                headers["Referrer-Policy"] = "same-origin"
                headers["X-Content-Type-Options"] = "nosniff"
                headers["X-Frame-Options"] = "DENY"
                headers["Cache-Control"] = "no-store"
            await send(message)

        await next_app(scope, receive, send_with_headers)


class PageSessionAuthentication(ASGIMiddleware):
    """Resolves the session cookie (when there is one) into ``scope["user"]`` and ``scope["auth"]``.

    A cookie that no longer names a live session is deleted in the response (unless the response
    sets a new one), and the request is marked so that the sign-in page can say the session ended.
    """

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        connection: ASGIConnection[Any, Any, Any, Any] = ASGIConnection(scope)
        token = connection.cookies.get(SESSION_COOKIE)
        invalid = False
        if token:
            billing: Billing = scope["app"].state.billing
            client = connection.client
            try:
                view = await anyio.to_thread.run_sync(
                    partial(
                        billing.page_sessions.resolve,
                        token,
                        request_id=scope.get("state", {}).get("request_id"),
                        client_ip=client.host if client else None,
                        user_agent=connection.headers.get("user-agent"),
                    )
                )
            except PageSessionInvalid:
                invalid = True
                scope.setdefault("state", {})[_INVALID_FLAG] = True
            else:
                scope["user"] = view.actor
                scope["auth"] = view

        async def send_clearing_cookie(message: Message) -> None:
            if invalid and message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                prefix = f"{SESSION_COOKIE}="
                if not any(value.startswith(prefix) for value in headers.getall("set-cookie", [])):
                    headers.add("Set-Cookie", expired_cookie(SESSION_COOKIE).to_header(header=""))
            await send(message)

        await next_app(scope, receive, send_clearing_cookie)


class PageSignInRequired(Exception):
    """No live page session: the browser is sent to the sign-in page (then back to ``next``)."""

    def __init__(self, next_path: str | None, *, ended: bool) -> None:
        super().__init__("sign-in required")
        self.next_path = next_path
        self.ended = ended


class CsrfTokenInvalid(Exception):
    """A state-changing page request without the session's CSRF token, or sent cross-site."""

    code = "csrf_token_invalid"


def requires_page_role(*roles: str) -> Guard:
    """A page guard: a live session whose key has one of ``roles``, and a CSRF token on writes.

    No session → :class:`PageSignInRequired` (a redirect to ``/signin``); another role →
    ``RoleForbidden`` (403); a write without the session's token → :class:`CsrfTokenInvalid` (403).
    """
    unknown = set(roles) - set(ROLES)
    if unknown or not roles:
        raise ValueError(f"unknown roles: {sorted(unknown)}")
    allowed = frozenset(roles)

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        view = connection.scope.get("auth")
        method = connection.scope.get("method", "GET")
        if not isinstance(view, PageSessionView):
            next_path = None if method in _UNSAFE_METHODS else _current_path(connection)
            ended = bool(connection.scope.get("state", {}).get(_INVALID_FLAG))
            raise PageSignInRequired(next_path, ended=ended)
        if view.actor.role not in allowed:
            raise RoleForbidden(required=",".join(sorted(allowed)))
        if method in _UNSAFE_METHODS:
            refuse_cross_site(connection)
            offered = await _offered_csrf_token(connection)
            if not hmac.compare_digest(offered.encode(), view.csrf_token.encode()):
                raise CsrfTokenInvalid()

    guard.__name__ = f"requires_page_role({', '.join(roles)})"
    return guard


def refuse_cross_site(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """Refuse a request the browser says came from another site (Fetch Metadata)."""
    if connection.headers.get("sec-fetch-site", "same-origin") in {"cross-site", "same-site"}:
        raise CsrfTokenInvalid()


async def _offered_csrf_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    header = connection.headers.get("x-csrf-token")
    if header:
        return header
    if isinstance(connection, Request):
        form = await connection.form()
        value = form.get(CSRF_FIELD)
        if isinstance(value, str):
            return value
    return ""


def _current_path(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    query = connection.scope.get("query_string", b"").decode("latin-1")
    path = connection.scope.get("path", "/")
    return f"{path}?{query}" if query else str(path)


def safe_next(value: str | None) -> str | None:
    """``value`` if it is a path on this origin (``/reports?from=…``), else None."""
    if not value or len(value) > _MAX_NEXT or not value.startswith("/"):
        return None
    if value.startswith(("//", "/\\")) or "\\" in value:
        return None
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return None
    return value


def signin_url(next_path: str | None = None, *, notice: str | None = None) -> str:
    query = {key: value for key, value in (("next", next_path), ("notice", notice)) if value}
    return f"/signin?{urlencode(query)}" if query else "/signin"


def session_cookie(token: str) -> Cookie:
    return Cookie(key=SESSION_COOKIE, value=token, path="/", httponly=True, secure=True, samesite="strict")


def expired_cookie(name: str) -> Cookie:
    return Cookie(key=name, value="", path="/", httponly=True, secure=True, samesite="strict", max_age=0)


def new_signin_nonce() -> str:
    return secrets.token_urlsafe(32)


def signin_csrf_token(nonce: str) -> str:
    """The sign-in form's token: HMAC-SHA256 of the pre-session cookie's random value."""
    digest = hmac.new(nonce.encode(), _SIGNIN_LABEL, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def error_page(request: Request[Any, Any, Any], status: int, code: str, title: str, text: str) -> Template:
    """The pages' HTML error page (the code is shown, as in problem+json; input is never echoed)."""
    view = request.scope.get("auth")
    return Template(
        "pages/error.html",
        status_code=status,
        context={
            "status": status,
            "code": code,
            "title": title,
            "text": text,
            "session": view if isinstance(view, PageSessionView) else None,
        },
    )


def _to_signin(request: Request[Any, Any, Any], exc: PageSignInRequired) -> Response[Any]:
    return Redirect(signin_url(exc.next_path, notice="ended" if exc.ended else None), status_code=303)


def _forbidden_role(request: Request[Any, Any, Any], exc: RoleForbidden) -> Response[Any]:
    return error_page(
        request,
        403,
        exc.code,
        "This page is not for your role",
        "The key you signed in with does not have the role this page needs. Sign out and sign in "
        "with a key of the right role.",
    )


def _csrf_invalid(request: Request[Any, Any, Any], exc: CsrfTokenInvalid) -> Response[Any]:
    return error_page(
        request,
        403,
        exc.code,
        "This form could not be accepted",
        "The form was sent without its security token, or from another site. Reload the page and try again.",
    )


def _invalid_parameters(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    return error_page(
        request,
        400,
        "invalid_value",
        "This address has parameters the page does not accept",
        "Dates are written YYYY-MM-DD. Go back to the page and choose the period again.",
    )


PAGE_EXCEPTION_HANDLERS: Final[dict[type[Exception] | int, Any]] = {
    PageSignInRequired: _to_signin,
    RoleForbidden: _forbidden_role,
    CsrfTokenInvalid: _csrf_invalid,
    ValidationException: _invalid_parameters,
}


class PageController(Controller):
    """Base of every session page: see the module docstring."""

    include_in_schema = False
    opt = {"exclude_from_auth": True}
    middleware = [PageSecurityHeaders(), PageSessionAuthentication()]
    exception_handlers = PAGE_EXCEPTION_HANDLERS


def page_assets_router() -> Router:
    """The pages' stylesheet, served with the pages' headers and without authentication."""
    return create_static_files_router(
        path=PAGE_ASSETS,
        directories=[_STATIC_DIR],
        include_in_schema=False,
        opt={"exclude_from_auth": True},
        middleware=[PageSecurityHeaders()],
    )
