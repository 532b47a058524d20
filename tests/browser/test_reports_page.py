"""The accountant's page in Chromium: sign in with a key, read the charts, download the CSV, sign out.

The server runs on http://127.0.0.1 and the session cookie is ``Secure``: this test is also the proof
that browsers accept it there. A screenshot of the page is written to ``$VEILBILL_ARTIFACTS_DIR``
(default: the test's tmp dir) as ``reports-page.png``; its path is printed (``pytest -s`` or ``-rP``).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from faker import Faker
from playwright.sync_api import Browser, Page

from api.app import create_app
from api.pages import SESSION_COOKIE
from api.settings import Settings
from billing import Actor, Address, Billing, CustomerInput, InvoiceInput, InvoiceLineInput

from ..conftest import serve_in_thread

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

WAIT_MS = 15_000
PERIOD = "from=2026-01-01&to=2026-06-30"
INVOICE_COLUMNS = [
    "customer",
    "region",
    "age_band",
    "gender",
    "period",
    "category",
    "net",
    "tax",
    "total",
    "refunded",
    "currency",
    "status",
    "card_brand",
]
CSP_WATCHER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(event.effectiveDirective + " " + event.blockedURI);
});
"""
_SERVICES = [("hair", 4500, 2000), ("nails", 3200, 2000), ("massage", 8500, 2000), ("physio", 6000, 0)]


@dataclass
class MovingClock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass(frozen=True)
class ReportsServer:
    base_url: str
    accountant_key: str
    pii: list[str]
    invoices: int
    log_path: Path


def _seed(settings: Settings, fake: Faker) -> tuple[str, list[str], int]:
    """A tenant with 24 Faker clients and 96 finalized invoices over January to June 2026."""
    clock = MovingClock(datetime(2026, 1, 3, 9, tzinfo=UTC))
    from billing import Database, DatabaseConfig, load_keyring

    billing = Billing(
        db=Database(DatabaseConfig(settings.database_url)),
        keyring=load_keyring(settings.keyring_path),
        clock=clock,
    )
    try:
        admin = billing.tenants.create_tenant("Institut Beauté Rivoli")
        operator = Actor(tenant_id=admin.tenant_id, role="admin", key_id=admin.id)
        key = billing.tenants.issue_api_key(operator, role="accountant", name="accountant on the web").key
        booking = Actor(tenant_id=admin.tenant_id, role="booking", key_id="seed")
        pii: list[str] = []
        count = 0
        for _ in range(24):
            data = CustomerInput(
                name=fake.name(),
                email=fake.unique.email(),
                address=Address(
                    line1="3 rue Test", city=fake.city(), postcode=fake.numerify("750##"), country="FR"
                ),
                birth_date=fake.date_of_birth(minimum_age=20, maximum_age=80),
                gender=fake.random_element(["female", "male"]),
            )
            pii += [data.name, str(data.email)]
            customer = billing.customers.create(booking, data)
            for _ in range(4):
                clock.now = datetime(2026, 1, 3, 9, tzinfo=UTC) + timedelta(days=fake.random_int(0, 175))
                category, amount, rate = fake.random_element(_SERVICES)
                draft = billing.invoices.create_draft(
                    booking,
                    InvoiceInput(
                        customer_id=customer.id,
                        currency="EUR",
                        lines=[
                            InvoiceLineInput(
                                description="treatment",
                                quantity=fake.random_int(1, 3),
                                unit_amount=amount,
                                tax_rate_bps=rate,
                                category=category,
                            )
                        ],
                    ),
                )
                billing.invoices.finalize(booking, draft.id)
                count += 1
        return key, pii, count
    finally:
        billing.db.dispose()


@pytest.fixture
def reports_server(
    settings: Settings, fake: Faker, tmp_path: Path, restore_logging: None
) -> Iterator[ReportsServer]:
    key, pii, count = _seed(settings, fake)
    log_path = tmp_path / "veilbill.log"
    app = create_app(replace(settings, log_path=str(log_path)), configure_logs=True)
    with serve_in_thread(app) as base_url:
        yield ReportsServer(base_url, key, pii, count, log_path)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(WAIT_MS)
    opened = context.new_page()
    opened.add_init_script(CSP_WATCHER)
    yield opened
    context.close()


def _artifacts_dir(tmp_path: Path) -> Path:
    configured = os.environ.get("VEILBILL_ARTIFACTS_DIR")
    target = Path(configured) if configured else tmp_path
    target.mkdir(parents=True, exist_ok=True)
    return target


def test_an_accountant_signs_in_reads_the_charts_and_downloads_the_csv(
    page: Page, reports_server: ReportsServer, tmp_path: Path
) -> None:
    server = reports_server
    page.goto(f"{server.base_url}/reports?{PERIOD}")
    assert page.url.startswith(f"{server.base_url}/signin?next=")
    artifacts = _artifacts_dir(tmp_path)
    page.screenshot(path=str(artifacts / "signin-page.png"), full_page=True)
    page.get_by_label("API key").fill(server.accountant_key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{server.base_url}/reports?{PERIOD}")

    cookie = next(c for c in page.context.cookies() if c["name"] == SESSION_COOKIE)
    assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (True, True, "Strict")
    assert cookie["domain"] == "127.0.0.1" and cookie["path"] == "/"
    assert SESSION_COOKIE not in page.evaluate("document.cookie"), "HttpOnly: no script can read it"
    assert page.get_by_role("heading", level=1).inner_text().startswith("Reports")

    for chart, pattern in (
        ("#chart-month-EUR", r"^(\w{3} 2026|Other): [\d,]+\.\d{2} EUR$"),
        ("#chart-category-EUR", r"^(hair|nails|massage|physio|Other): [\d,]+\.\d{2} EUR$"),
    ):
        bars = page.locator(f"{chart} svg rect.bar")
        assert bars.count() >= 2, chart
        labels = [bars.nth(i).get_attribute("aria-label") or "" for i in range(bars.count())]
        assert all(re.match(pattern, label) for label in labels), labels
        heights = [float(bars.nth(i).get_attribute("height") or 0) for i in range(bars.count())]
        assert max(heights) > 150 and all(h >= 0 for h in heights)
        assert page.locator(f"{chart} svg").get_attribute("role") == "img"
        assert page.locator(f"{chart} svg text.chart__label").count() == bars.count()
        box = page.locator(f"{chart} svg").bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 120, "the chart is drawn"
    assert page.locator("#g-k").inner_text() == "5"
    assert page.locator("#g-l").inner_text() == "2"
    suppressed, rows = re.fullmatch(r"(\d+) of (\d+)", page.locator("#g-suppressed").inner_text()).groups()  # type: ignore[union-attr]
    assert int(rows) == server.invoices
    assert re.fullmatch(r"\d+\.\d %", page.locator("#g-loss").inner_text())

    screenshot = artifacts / "reports-page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"\nscreenshot of /reports: {screenshot}")
    assert screenshot.stat().st_size > 20_000

    invoices_row = page.locator(".download", has=page.get_by_role("heading", name="Invoices (anonymized)"))
    with page.expect_download() as info:
        invoices_row.get_by_role("link", name="CSV").click()
    download = info.value
    assert download.suggested_filename == "invoices-2026-01-01-2026-06-30.csv"
    released = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
    assert list(released[0]) == INVOICE_COLUMNS
    assert len(released) == int(rows)
    assert sum(1 for row in released if row["region"] == "*") >= int(suppressed)
    assert {row["currency"] for row in released} == {"EUR"}
    content = Path(download.path()).read_text() + page.content()
    for pii in server.pii:
        assert pii not in content, "no client data on the page or in the dataset"
    assert page.evaluate("window.__cspViolations") == []

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/signin\?notice=signed_out$"))
    assert "You are signed out." in page.locator("#notice").inner_text()
    assert not [c for c in page.context.cookies() if c["name"] == SESSION_COOKIE]
    page.goto(f"{server.base_url}/reports")
    assert "/signin?next=%2Freports" in page.url

    logged = server.log_path.read_text()
    assert "/signin" in logged and "/reports/download/invoices" in logged
    assert server.accountant_key not in logged
    assert cookie["value"] not in logged
