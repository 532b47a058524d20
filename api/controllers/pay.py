"""The hosted payment page, ``/pay/{token}``, and the JSON calls its own script makes.

The token in the path is the only credential: these routes take no API key, and what the token
unlocks is decided by ``billing.sessions`` (read one invoice's amount, start a card setup, pay it).

Security decisions:

- **Card data never reaches these routes.** The page's script hands the gateway's card element to
  the gateway's own JavaScript (``confirmCardSetup`` posts the card to the gateway's origin) and
  sends Veilbill only the resulting ``pm_…`` token. The card-data guard still runs before every
  handler here, so a card number posted to ``/confirm`` is refused like anywhere else.
- **Nothing leaks from an unusable link.** An unknown, expired or malformed token gets the same
  plain HTML 404 page on ``GET`` (and the usual ``payment_session_invalid`` problem on the JSON
  calls): it says neither which nor why.
- **Every response carries strict headers** (:class:`PageSecurityHeaders`): a Content-Security-Policy
  that runs scripts only from this origin and the gateway's (no inline script, no ``eval``) and
  frames nothing but the gateway; ``Referrer-Policy: no-referrer`` because the token is in the URL;
  ``nosniff``; ``Cache-Control: no-store``. The page receives its configuration through ``data-*``
  attributes, never an inline script.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

import msgspec
from litestar import Controller, Request, Router, get, post
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.params import FromPath, JSONBody
from litestar.response import Template
from litestar.static_files import create_static_files_router
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import BillingDep
from api.settings import Settings
from billing import HostedInvoice, Money
from billing.errors import PaymentSessionInvalid

__all__ = [
    "PAY_ASSETS",
    "CardSetup",
    "ConfirmPayment",
    "HostedPaymentController",
    "PageSecurityHeaders",
    "PaymentOutcome",
    "content_security_policy",
    "gateway_script_origins",
    "pay_assets_router",
]

PAY_ASSETS: Final = "/pay/assets"
_STATIC_DIR: Final = Path(__file__).resolve().parent.parent / "static" / "pay"
_PAID_STATUSES: Final = frozenset({"paid", "partially_refunded", "refunded"})

# What Stripe documents for pages that use Stripe.js and its card element behind a CSP
# (https://docs.stripe.com/security/guide#content-security-policy): the script and its frames come
# from js.stripe.com, 3-D Secure frames from hooks.stripe.com, API calls go to api.stripe.com.
_STRIPE_SCRIPT: Final = ("https://js.stripe.com", "https://*.js.stripe.com")
_STRIPE_CONNECT: Final = ("https://api.stripe.com",)
_STRIPE_FRAME: Final = ("https://js.stripe.com", "https://*.js.stripe.com", "https://hooks.stripe.com")


def gateway_script_origins(settings: Settings) -> tuple[str, ...]:
    """The origins besides our own from which the page may run scripts: the gateway's."""
    if settings.gateway_is_sandbox:
        js = urlsplit(settings.gateway_js_url)
        return (f"{js.scheme}://{js.netloc}",)
    return _STRIPE_SCRIPT


def content_security_policy(settings: Settings) -> str:
    """The page's CSP: scripts, connections and frames only from this origin and the gateway's.

    The sandbox serves its stand-in for Stripe.js, its API and its 3-D Secure modal from one origin
    (the modal is drawn in the page, with styles set through the CSSOM, which ``style-src 'self'``
    allows), so that one origin is all it needs.
    """
    if settings.gateway_is_sandbox:
        js = urlsplit(settings.gateway_js_url)
        origin = f"{js.scheme}://{js.netloc}"
        script: tuple[str, ...] = (origin,)
        connect: tuple[str, ...] = (origin,)
        frame: tuple[str, ...] = (origin,)
    else:
        script, connect, frame = _STRIPE_SCRIPT, _STRIPE_CONNECT, _STRIPE_FRAME
    directives = [
        "default-src 'none'",
        " ".join(("script-src", "'self'", *script)),
        " ".join(("connect-src", "'self'", *connect)),
        " ".join(("frame-src", *frame)),
        "style-src 'self'",
        "img-src 'self' data:",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
    return "; ".join(directives)


class PageSecurityHeaders(ASGIMiddleware):
    """Sets the page's security headers on every response of the routes it wraps, errors included."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        settings: Settings = scope["app"].state.settings
        policy = content_security_policy(settings)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                headers["Content-Security-Policy"] = policy
                headers["Referrer-Policy"] = "no-referrer"
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Cache-Control"] = "no-store"
            await send(message)

        await next_app(scope, receive, send_with_headers)


class ConfirmPayment(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    payment_method: Annotated[str, msgspec.Meta(min_length=4, max_length=255, pattern=r"^pm_[A-Za-z0-9_]+$")]


class PaymentOutcome(msgspec.Struct, kw_only=True, omit_defaults=True):
    status: str
    client_secret: str | None = None

    def __repr__(self) -> str:
        return f"PaymentOutcome(status={self.status!r})"


class CardSetup(msgspec.Struct, kw_only=True):
    client_secret: str
    publishable_key: str | None

    def __repr__(self) -> str:
        return "CardSetup(client_secret=<redacted>)"


def _settings(request: Request[Any, Any, Any]) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


class HostedPaymentController(Controller):
    path = "/pay/{token:str}"
    include_in_schema = False
    middleware = [PageSecurityHeaders()]
    # The token is the credential: the access log writes the route template, never the path.
    opt = {"secret_in_path": True}

    @get("/", sync_to_thread=True)
    def payment_page(
        self, token: FromPath[str], request: Request[Any, Any, Any], billing: BillingDep
    ) -> Template:
        try:
            invoice = billing.sessions.describe(token)
        except PaymentSessionInvalid:
            return Template("pay/not_found.html", status_code=404)
        settings = _settings(request)
        return Template("pay/page.html", context=_page_context(invoice, token, settings))

    @post("/setup-intent", status_code=201, sync_to_thread=True)
    def start_card_setup(
        self, token: FromPath[str], request: Request[Any, Any, Any], billing: BillingDep
    ) -> CardSetup:
        intent = billing.sessions.start_card_setup(token)
        return CardSetup(
            client_secret=intent.client_secret, publishable_key=_settings(request).stripe_publishable_key
        )

    @post("/confirm", status_code=200, sync_to_thread=True)
    def confirm_payment(
        self, token: FromPath[str], data: JSONBody[ConfirmPayment], billing: BillingDep
    ) -> PaymentOutcome:
        """Charge the card the gateway just tokenized; ``requires_action`` carries the 3-D Secure secret.

        A decline is the ``card_declined`` problem (402) with its ``decline_code``.
        """
        payment = billing.sessions.pay(token, data.payment_method)
        return PaymentOutcome(status=payment.status, client_secret=payment.client_secret)

    @get("/state", sync_to_thread=True)
    def payment_state(self, token: FromPath[str], billing: BillingDep) -> HostedInvoice:
        """The invoice after asking the gateway about an unfinished payment (the page polls this)."""
        return billing.sessions.refresh(token)


def _page_context(invoice: HostedInvoice, token: str, settings: Settings) -> dict[str, Any]:
    if invoice.status in _PAID_STATUSES:
        state = "paid"
    elif invoice.status == "open":
        state = "open" if settings.gateway_configured and settings.stripe_publishable_key else "unavailable"
    else:
        state = "closed"
    base = f"/pay/{token}"
    return {
        "business_name": invoice.business_name,
        "invoice_number": invoice.invoice_number,
        "amount_due": Money(invoice.amount_due, invoice.currency).format(),
        "state": state,
        "gateway_js_url": settings.gateway_js_url,
        "publishable_key": settings.stripe_publishable_key or "",
        "setup_url": f"{base}/setup-intent",
        "confirm_url": f"{base}/confirm",
        "state_url": f"{base}/state",
    }


def pay_assets_router() -> Router:
    """The page's own script and stylesheet, served with the same headers as the page."""
    return create_static_files_router(
        path=PAY_ASSETS,
        directories=[_STATIC_DIR],
        include_in_schema=False,
        opt={"exclude_from_auth": True},
        middleware=[PageSecurityHeaders()],
    )
