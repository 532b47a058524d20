"""A live server on loopback and headless Chromium (Debian's), driven by Playwright.

The browser comes from the operating system (``apt-get install chromium``), never from
``playwright install``. Without it these tests skip — or fail when ``VEILBILL_REQUIRE_ALL=1``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from faker import Faker
from playwright.sync_api import Browser, sync_playwright

from api.app import create_app
from api.settings import Settings
from billing import Billing
from tokenization import LocalStripeSandbox

from ..conftest import API_KEY, require_or_skip, serve_in_thread

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium_path() -> str | None:
    explicit = os.environ.get("VEILBILL_CHROMIUM")
    return explicit or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def live_server(settings: Settings) -> Iterator[str]:
    """The app served by uvicorn in a background thread; yields its base URL."""
    with serve_in_thread(create_app(settings, configure_logs=False)) as base_url:
        yield base_url


@pytest.fixture
def browser() -> Iterator[Browser]:
    path = _chromium_path()
    if path is None:
        require_or_skip("Chromium is not installed (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


# --- the hosted payment page: the app with the sandbox gateway, logging to a file ---------------

PUBLISHABLE_KEY = "pk_test_veilbill"
WEBHOOK_SECRET = "whsec_test_browser"


@dataclass(frozen=True)
class PayServer:
    """A live app wired to the sandbox gateway, and where it writes (for leak checks)."""

    base_url: str
    gateway_origin: str
    billing: Billing
    log_path: Path
    db_path: Path


@dataclass(frozen=True)
class PaymentLink:
    url: str
    invoice_id: str
    number: str
    total: int
    booking_headers: dict[str, str]


@pytest.fixture
def pay_server(
    settings: Settings, sandbox: LocalStripeSandbox, tmp_path: Path, restore_logging: None
) -> Iterator[PayServer]:
    """The app served on loopback with the sandbox gateway, logging JSON to a file in ``tmp_path``."""
    log_path = tmp_path / "veilbill.log"
    configured = replace(
        settings,
        stripe_api_key=API_KEY,
        stripe_api_base=sandbox.api_base,
        stripe_publishable_key=PUBLISHABLE_KEY,
        stripe_webhook_secret=WEBHOOK_SECRET,
        log_path=str(log_path),
    )
    app = create_app(configured, configure_logs=True)
    db_path = Path(settings.database_url.removeprefix("sqlite:///"))
    with serve_in_thread(app) as base_url:
        yield PayServer(
            base_url=base_url,
            gateway_origin=sandbox.api_base,
            billing=app.state.billing,
            log_path=log_path,
            db_path=db_path,
        )


def open_payment_link(server: PayServer, fake: Faker, *, business: str = "Hotel du Lac") -> PaymentLink:
    """A tenant, a booking key, a client, an open invoice and a payment link, through the real API."""
    issued = server.billing.tenants.create_tenant(business)
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        admin = {"Authorization": f"Bearer {issued.key}"}
        key = http.post("/v1/admin/api-keys", json={"role": "booking", "name": "booking"}, headers=admin)
        assert key.status_code == 201, key.text
        booking = {"Authorization": f"Bearer {key.json()['key']}"}
        customer = http.post(
            "/v1/customers", json={"name": fake.name(), "email": fake.unique.email()}, headers=booking
        )
        assert customer.status_code == 201, customer.text
        draft = http.post(
            "/v1/invoices",
            json={
                "customer_id": customer.json()["id"],
                "booking_ref": f"bk_{fake.uuid4()[:8]}",
                "currency": "EUR",
                "due_date": "2026-12-01",
                "lines": [
                    {
                        "description": "Junior suite, two nights",
                        "quantity": 2,
                        "unit_amount": 12450,
                        "tax_rate_bps": 1000,
                        "category": "lodging",
                    }
                ],
            },
            headers=booking,
        )
        assert draft.status_code == 201, draft.text
        invoice_id = draft.json()["id"]
        opened = http.post(f"/v1/invoices/{invoice_id}/finalize", headers=booking)
        assert opened.status_code == 200, opened.text
        link = http.post(f"/v1/invoices/{invoice_id}/payment-sessions", headers=booking)
        assert link.status_code == 201, link.text
    path = urlsplit(link.json()["url"]).path
    return PaymentLink(
        url=f"{server.base_url}{path}",
        invoice_id=invoice_id,
        number=opened.json()["number"],
        total=opened.json()["total"],
        booking_headers=booking,
    )


def invoice_status(server: PayServer, link: PaymentLink) -> str:
    response = httpx.get(
        f"{server.base_url}/v1/invoices/{link.invoice_id}", headers=link.booking_headers, timeout=10
    )
    assert response.status_code == 200, response.text
    status: str = response.json()["status"]
    return status
