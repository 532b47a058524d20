"""``/signin`` and ``/signout``: a person opens a page session with their own API key.

The key is resolved by ``billing.tenants.authenticate`` (which audits failures) and is never kept:
not in the session, the cookie, the page or the logs. The sign-in form is protected against login
CSRF by a pre-session cookie and a token derived from it (see :mod:`api.pages`).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, QueryParameter
from litestar.response import Redirect, Template

from api.deps import BillingDep
from api.pages import (
    PAGE_HOMES,
    SESSION_COOKIE,
    SIGNIN_COOKIE,
    CsrfTokenInvalid,
    PageController,
    expired_cookie,
    new_signin_nonce,
    refuse_cross_site,
    requires_page_role,
    safe_next,
    session_cookie,
    signin_csrf_token,
    signin_url,
)
from billing import Billing, PageSessionView
from billing.errors import ApiKeyInvalid, RoleForbidden

__all__ = ["SignInController", "SignInForm"]

_NOTICES = {
    "ended": "Your session has ended — after {idle} minutes without activity, at its time limit, or "
    "because its key was revoked. Sign in again to continue.",
    "signed_out": "You are signed out.",
}
_ERRORS = {
    "invalid_key": "That key was not accepted. Check it and try again.",
    "role": "Keys of this role have no pages here. Sign in with an accountant or auditor key.",
    "expired_form": "The sign-in form had expired. Please try again.",
}


@dataclass
class SignInForm:
    api_key: str = ""
    csrf_token: str = ""
    next: str = ""

    def __repr__(self) -> str:
        return "SignInForm(api_key=<redacted>)"


def _request_meta(request: Request[Any, Any, Any]) -> dict[str, str | None]:
    client = request.client
    return {
        "request_id": request.scope.get("state", {}).get("request_id"),
        "client_ip": client.host if client else None,
        "user_agent": request.headers.get("user-agent"),
    }


class SignInController(PageController):
    path = "/"

    @get("/signin", sync_to_thread=False)
    def sign_in_form(
        self,
        request: Request[Any, Any, Any],
        next_path: Annotated[str | None, QueryParameter(name="next", max_length=1000)] = None,
        notice: Annotated[str | None, QueryParameter(max_length=20)] = None,
    ) -> Template:
        return _form(request, 200, next_path=safe_next(next_path), notice=notice)

    @post("/signin", sync_to_thread=True)
    def sign_in(
        self,
        request: Request[Any, Any, Any],
        billing: BillingDep,
        data: Annotated[SignInForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    ) -> Response[Any]:
        """303 to ``next`` (or the role's page) with the session cookie; the form again on failure."""
        next_path = safe_next(data.next)
        nonce = request.cookies.get(SIGNIN_COOKIE, "")
        try:
            refuse_cross_site(request)
            expected = signin_csrf_token(nonce) if nonce else ""
            if not expected or not hmac.compare_digest(data.csrf_token.encode(), expected.encode()):
                raise CsrfTokenInvalid()
        except CsrfTokenInvalid:
            return _form(request, 403, next_path=next_path, error="expired_form")
        meta = _request_meta(request)
        try:
            actor = billing.tenants.authenticate(data.api_key.strip() or None, **meta)
            issued = billing.page_sessions.start(actor, roles=tuple(PAGE_HOMES))
        except ApiKeyInvalid:
            return _form(request, 401, next_path=next_path, error="invalid_key")
        except RoleForbidden:
            return _form(request, 403, next_path=next_path, error="role")
        _end_previous(billing, request, meta)
        response: Response[Any] = Redirect(next_path or PAGE_HOMES[actor.role], status_code=303)
        response.set_cookie(session_cookie(issued.token))
        response.set_cookie(expired_cookie(SIGNIN_COOKIE))
        return response

    @post("/signout", guards=[requires_page_role(*PAGE_HOMES)], sync_to_thread=True)
    def sign_out(self, request: Request[Any, Any, Any], billing: BillingDep) -> Response[Any]:
        """End the session (audited) and clear the cookie; the guard checked the CSRF token."""
        billing.page_sessions.end(
            request.cookies.get(SESSION_COOKIE), reason="signout", **_request_meta(request)
        )
        response: Response[Any] = Redirect(signin_url(notice="signed_out"), status_code=303)
        response.set_cookie(expired_cookie(SESSION_COOKIE))
        return response


def _end_previous(billing: Billing, request: Request[Any, Any, Any], meta: dict[str, str | None]) -> None:
    """A new sign-in replaces the browser's previous session rather than leaving it alive."""
    if isinstance(request.scope.get("auth"), PageSessionView):
        billing.page_sessions.end(request.cookies.get(SESSION_COOKIE), reason="replaced", **meta)


def _form(
    request: Request[Any, Any, Any],
    status: int,
    *,
    next_path: str | None,
    notice: str | None = None,
    error: str | None = None,
) -> Template:
    """The sign-in form with a fresh pre-session cookie and its token. The key is never echoed."""
    nonce = new_signin_nonce()
    billing: Billing = request.app.state.billing
    idle = int(billing.page_sessions.policy.idle.total_seconds() // 60)
    lifetime = int(billing.page_sessions.policy.lifetime.total_seconds() // 3600)
    view = request.scope.get("auth")
    session = view if isinstance(view, PageSessionView) else None
    response = Template(
        "pages/signin.html",
        status_code=status,
        context={
            "csrf_token": signin_csrf_token(nonce),
            "next": next_path or "",
            "notice": _NOTICES.get(notice or "", "").format(idle=idle) or None,
            "idle_minutes": idle,
            "lifetime_hours": lifetime,
            "error": _ERRORS.get(error or ""),
            "session": session,
            "home": PAGE_HOMES.get(session.actor.role) if session else None,
        },
    )
    response.set_cookie(
        key=SIGNIN_COOKIE, value=nonce, path="/", httponly=True, secure=True, samesite="strict", max_age=3600
    )
    return response
