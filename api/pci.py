"""What the PCI scope report needs to know about this deployment, gathered by the composition root.

The checks themselves live in ``billing`` (:func:`billing.DeploymentFacts` and the scope report);
this module reads the facts only the HTTP layer knows, from the running configuration rather than
from documentation: the Content-Security-Policy the payment page is actually served with, the
scripts its template loads (with the SHA-256 of our own), the HSTS header, and the routes that skip
the card-data guard.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Final

from litestar import Litestar

from api.controllers.pay import PAY_ASSETS, content_security_policy, gateway_script_origins
from api.middleware import hsts_header
from api.settings import Settings
from billing import DeploymentFacts

__all__ = [
    "ALLOWED_CARD_GUARD_EXEMPTIONS",
    "card_guard_exemptions",
    "deployment_facts",
    "payment_page_scripts",
]

# Gateway webhook intake: authenticated by its signature, keeps whitelisted fields (decision 15).
ALLOWED_CARD_GUARD_EXEMPTIONS: Final = ("/v1/webhooks/stripe",)

_API_DIR: Final = Path(__file__).resolve().parent
_PAY_TEMPLATES: Final = (
    _API_DIR / "templates" / "pay" / "_base.html",
    _API_DIR / "templates" / "pay" / "page.html",
)
_SCRIPT_SRC: Final = re.compile(r"<script\b[^>]*\bsrc=\"([^\"]+)\"", re.IGNORECASE)


def payment_page_scripts(settings: Settings) -> tuple[tuple[str, str], ...]:
    """Each script the hosted payment page's templates load, with what it is and its SHA-256 if ours."""
    scripts: list[tuple[str, str]] = []
    for template in _PAY_TEMPLATES:
        for source in _SCRIPT_SRC.findall(template.read_text(encoding="utf-8")):
            if "gateway_js_url" in source:
                scripts.append(
                    (settings.gateway_js_url, "the gateway's JavaScript: card element and tokenization")
                )
            elif source.startswith(PAY_ASSETS + "/"):
                local = _API_DIR / "static" / "pay" / source.removeprefix(PAY_ASSETS + "/")
                digest = hashlib.sha256(local.read_bytes()).hexdigest()
                scripts.append((source, f"page logic served by Veilbill, SHA-256 {digest}"))
            else:
                scripts.append((source, "not in the reviewed inventory"))
    return tuple(scripts)


def card_guard_exemptions(app: Litestar) -> tuple[str, ...]:
    """The paths of the routes whose handlers skip the card-data guard."""
    paths: set[str] = set()
    for route in app.routes:
        handlers: list[Any] = list(getattr(route, "route_handlers", []))
        if any(handler.opt.get("skip_card_guard") for handler in handlers):
            paths.add(route.path)
    return tuple(sorted(paths))


def deployment_facts(app: Litestar) -> DeploymentFacts:
    settings: Settings = app.state.settings
    return DeploymentFacts(
        public_url=settings.public_url,
        hsts_header=hsts_header(settings),
        payment_page_csp=content_security_policy(settings),
        payment_page_scripts=payment_page_scripts(settings),
        gateway_origins=gateway_script_origins(settings),
        gateway_configured=settings.gateway_configured,
        gateway_is_sandbox=settings.gateway_is_sandbox,
        webhook_secret_count=len(settings.webhook_secrets),
        card_guard_exemptions=card_guard_exemptions(app),
        allowed_exemptions=ALLOWED_CARD_GUARD_EXEMPTIONS,
        scan_paths=settings.scan_paths,
        master_key_max_age_days=settings.master_key_max_age_days,
        api_key_max_age_days=settings.api_key_max_age_days,
        api_key_idle_days=settings.api_key_idle_days,
    )
