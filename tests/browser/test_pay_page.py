"""The hosted payment page in a real browser, with the sandbox gateway's card element.

Card numbers here are the gateway's public TEST numbers. Every payment test records each request
the page makes and proves the number went to the gateway's origin only: never to Veilbill (URL or
body), never into the SQLite file or its WAL, never into the log file. The page also runs under its
own CSP: a watcher installed before any page script records every ``securitypolicyviolation``, and
a normal payment must produce none.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_plus, urlsplit

import httpx
import pytest
from faker import Faker
from playwright.sync_api import Browser, Page
from playwright.sync_api import Error as PlaywrightError
from sqlmodel import select

from billing._models import PaymentSession

from ..conftest import TEST_CARDS
from .conftest import PayServer, invoice_status, open_payment_link

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

WAIT_MS = 15_000
FINAL_OUTCOME = '#outcome[data-outcome]:not([data-outcome="pending"])'
# Installed before any page script (init scripts are not subject to the page's CSP).
CSP_WATCHER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(event.effectiveDirective + " " + event.blockedURI);
});
"""


@dataclass(frozen=True)
class SeenRequest:
    url: str
    body: bytes


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1024, "height": 860})
    context.set_default_timeout(WAIT_MS)
    opened = context.new_page()
    opened.add_init_script(CSP_WATCHER)
    yield opened
    context.close()


def _record_requests(page: Page) -> list[SeenRequest]:
    seen: list[SeenRequest] = []
    page.on("request", lambda request: seen.append(SeenRequest(request.url, request.post_data_buffer or b"")))
    return seen


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _enter_card(page: Page, number: str) -> None:
    """Types into the gateway's card element as a payer would (the sandbox's inputs, by placeholder)."""
    element = page.locator("#card-element")
    element.get_by_placeholder("number", exact=True).press_sequentially(number)
    element.get_by_placeholder("exp_month").fill("12")
    element.get_by_placeholder("exp_year").fill("30")
    element.get_by_placeholder("cvc").fill("123")
    element.get_by_placeholder("postal_code").fill("75001")


def _final_outcome(page: Page, *, authenticate: bool = False) -> str:
    """Waits (bounded) for the page's final outcome; completes each 3-D Secure modal when asked."""
    deadline = time.monotonic() + 30
    completed = 0
    final = page.locator(FINAL_OUTCOME)
    complete = page.get_by_role("button", name="Complete authentication")
    while not final.is_visible():
        assert time.monotonic() < deadline, "the page reached no outcome within 30 s"
        if authenticate and complete.is_visible():
            complete.click()
            completed += 1
        page.wait_for_timeout(100)
    if authenticate:
        assert completed >= 1, "no 3-D Secure modal was shown"
    outcome = final.get_attribute("data-outcome")
    assert outcome is not None
    return outcome


def _assert_card_number_only_reached_the_gateway(
    server: PayServer, requests: list[SeenRequest], number: str
) -> None:
    forms = [number, " ".join(re.findall(r"\d{4}", number))]
    app, gateway = _origin(server.base_url), server.gateway_origin
    to_app = [r for r in requests if _origin(r.url) == app]
    to_gateway = [r for r in requests if _origin(r.url) == gateway]
    assert any(r.body for r in to_app), "the page posted nothing to Veilbill"
    for request in to_app:
        for form in forms:
            assert form not in unquote_plus(request.url), f"card number in a URL: {request.url}"
            assert form.encode() not in request.body, f"card number posted to Veilbill: {request.url}"
    assert any(number.encode() in r.body for r in to_gateway), "the card never reached the gateway"
    assert {_origin(r.url) for r in requests} <= {app, gateway}
    stored = b"".join(
        path.read_bytes()
        for path in (server.db_path, server.db_path.with_name(server.db_path.name + "-wal"))
        if path.exists()
    )
    logged = server.log_path.read_bytes()
    assert b"/confirm" in logged, "the log file saw no payment request"
    for form in forms:
        assert form.encode() not in stored, "card number in the database file"
        assert form.encode() not in logged, "card number in the log file"


def _csp_violations(page: Page) -> list[str]:
    violations: list[str] = page.evaluate("window.__cspViolations")
    return violations


def _amount(total: int) -> str:
    return f"{total // 100}.{total % 100:02d} EUR"


def test_pay_with_a_card(page: Page, pay_server: PayServer, fake: Faker, tmp_path: Path) -> None:
    link = open_payment_link(pay_server, fake)
    requests = _record_requests(page)
    page.goto(link.url)
    assert page.locator("#merchant").inner_text() == "Hotel du Lac"
    assert page.locator("#invoice-number").inner_text() == link.number
    assert page.locator("#amount-due").inner_text() == _amount(link.total)
    pay = page.get_by_role("button", name=f"Pay {_amount(link.total)}")
    page.get_by_placeholder("number", exact=True).wait_for()
    _enter_card(page, TEST_CARDS["visa"])
    page.screenshot(path=str(tmp_path / "pay-before.png"), full_page=True)

    pay.click()

    assert _final_outcome(page) == "success"
    assert "Payment successful" in page.locator("#outcome").inner_text()
    assert page.locator("#status-badge").inner_text() == "Paid"
    assert page.locator("#amount-label").inner_text() == "Amount paid"
    assert page.locator("#payment-form").is_hidden()
    page.screenshot(path=str(tmp_path / "pay-after.png"), full_page=True)
    assert invoice_status(pay_server, link) == "paid"
    assert _csp_violations(page) == []
    _assert_card_number_only_reached_the_gateway(pay_server, requests, TEST_CARDS["visa"])
    token = link.url.rsplit("/", 1)[1]
    assert token.encode() not in pay_server.log_path.read_bytes(), "the link's token reached the log"

    page.reload()
    assert page.locator('#outcome[data-outcome="paid"]').inner_text().startswith("Paid")
    assert page.locator("#payment-form").count() == 0


def test_a_declined_card_shows_a_friendly_message(page: Page, pay_server: PayServer, fake: Faker) -> None:
    link = open_payment_link(pay_server, fake)
    requests = _record_requests(page)
    page.goto(link.url)
    _enter_card(page, TEST_CARDS["declined_on_charge"])
    page.get_by_role("button", name=re.compile(r"^Pay ")).click()

    assert _final_outcome(page) == "declined"
    outcome = page.locator("#outcome").inner_text()
    assert "Your card was declined. Please try another card or contact your bank." in outcome
    assert "card_declined" not in outcome
    assert page.locator("#outcome").get_attribute("role") == "status"
    assert page.get_by_role("button", name=re.compile(r"^Pay ")).is_enabled(), "the payer can retry"
    assert invoice_status(pay_server, link) == "open"
    assert _csp_violations(page) == []
    _assert_card_number_only_reached_the_gateway(pay_server, requests, TEST_CARDS["declined_on_charge"])


def test_three_d_secure(page: Page, pay_server: PayServer, fake: Faker) -> None:
    link = open_payment_link(pay_server, fake)
    requests = _record_requests(page)
    page.goto(link.url)
    _enter_card(page, TEST_CARDS["three_d_secure"])
    page.get_by_role("button", name=re.compile(r"^Pay ")).click()

    # No webhook reaches this app: the page's polling of /state is what settles the payment.
    assert _final_outcome(page, authenticate=True) == "success"
    assert invoice_status(pay_server, link) == "paid"
    assert _csp_violations(page) == []
    _assert_card_number_only_reached_the_gateway(pay_server, requests, TEST_CARDS["three_d_secure"])


def test_card_details_the_gateway_refuses_get_our_own_message(
    page: Page, pay_server: PayServer, fake: Faker
) -> None:
    # The sandbox's stand-in takes exactly 16 digits (Stripe's element formats the spaces itself):
    # a number with spaces is refused by the gateway with its own text, which the payer never sees.
    link = open_payment_link(pay_server, fake)
    requests = _record_requests(page)
    page.goto(link.url)
    page.get_by_placeholder("number", exact=True).fill("4242 4242 4242 4242")
    for placeholder, value in (("exp_month", "12"), ("exp_year", "30"), ("cvc", "123")):
        page.get_by_placeholder(placeholder).fill(value)
    page.get_by_role("button", name=re.compile(r"^Pay ")).click()

    assert _final_outcome(page) == "error"
    outcome = page.locator("#outcome").inner_text()
    assert "We could not verify this card. Check the details and try again" in outcome
    assert "Bad request" not in page.content()
    charges = [r for r in requests if r.url == f"{link.url}/confirm"]
    assert charges == [], "nothing is charged when the gateway refuses the card"
    assert invoice_status(pay_server, link) == "open"


def test_the_card_data_guard_covers_the_page_calls(pay_server: PayServer, fake: Faker) -> None:
    link = open_payment_link(pay_server, fake)
    for body in ({"payment_method": TEST_CARDS["visa"]}, {"payment_method": "pm_x", "card_number": "x"}):
        refused = httpx.post(f"{link.url}/confirm", json=body, timeout=10)
        assert refused.status_code == 422 and refused.json()["code"] == "card_data_rejected"
        assert refused.headers["cache-control"] == "no-store"
    unknown_field = httpx.post(
        f"{link.url}/confirm", json={"payment_method": "pm_x", "amount": 1}, timeout=10
    )
    assert unknown_field.status_code == 400 and unknown_field.json()["code"] == "unknown_field"
    assert invoice_status(pay_server, link) == "open"


def _directives(policy: str) -> dict[str, set[str]]:
    parsed: dict[str, set[str]] = {}
    for directive in filter(None, (part.strip() for part in policy.split(";"))):
        name, *sources = directive.split()
        parsed[name] = set(sources)
    return parsed


def test_the_page_runs_under_a_strict_csp(page: Page, pay_server: PayServer, fake: Faker) -> None:
    link = open_payment_link(pay_server, fake)
    response = page.goto(link.url)
    assert response is not None and response.status == 200
    headers = response.headers
    gateway = pay_server.gateway_origin
    assert _directives(headers["content-security-policy"]) == {
        "default-src": {"'none'"},
        "script-src": {"'self'", gateway},
        "connect-src": {"'self'", gateway},
        "frame-src": {gateway},
        "style-src": {"'self'"},
        "img-src": {"'self'", "data:"},
        "form-action": {"'self'"},
        "base-uri": {"'none'"},
        "frame-ancestors": {"'none'"},
    }
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"
    assert page.locator("script:not([src])").count() == 0, "the page itself has an inline script"
    for asset in ("/pay/assets/pay.js", "/pay/assets/pay.css"):
        served = httpx.get(f"{pay_server.base_url}{asset}", timeout=10)
        assert served.status_code == 200
        assert served.headers["content-security-policy"] == headers["content-security-policy"]

    page.get_by_placeholder("number", exact=True).wait_for()
    with pytest.raises(PlaywrightError):
        # Playwright reports the blocked script as an error; the watcher sees the violation either way.
        page.add_script_tag(content="window.__injected = true;")
    assert page.evaluate("typeof window.__injected") == "undefined"
    assert any(v.startswith("script-src") for v in _csp_violations(page))


def test_an_unknown_or_expired_link_is_a_plain_404(page: Page, pay_server: PayServer, fake: Faker) -> None:
    link = open_payment_link(pay_server, fake)
    token = urlsplit(link.url).path.rsplit("/", 1)[1]
    with pay_server.billing.db.transaction() as session:
        record = session.exec(select(PaymentSession)).one()
        record.expires_at = record.created_at
        session.add(record)

    pages = {}
    for name, url in (("expired", link.url), ("unknown", f"{pay_server.base_url}/pay/{'x' * len(token)}")):
        response = page.goto(url)
        assert response is not None and response.status == 404
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
        assert response.headers["referrer-policy"] == "no-referrer"
        pages[name] = response.body()
        assert "This payment link is not available" in page.locator("h1").inner_text()
        assert page.locator("#payment-form").count() == 0
    assert pages["expired"] == pages["unknown"], "an expired link must look exactly like an unknown one"
    for leak in (b"Hotel du Lac", link.number.encode(), token.encode(), b"payment_session", b"expired"):
        assert leak not in pages["expired"]

    state = httpx.get(f"{link.url}/state", timeout=10)
    assert state.status_code == 404 and state.json()["code"] == "payment_session_invalid"
