"""The /pci scope report in Chromium: it renders as a document a reviewer can file, runs no script,
and shows findings by location without the number.

The number planted is a gateway sandbox test card, there to test the defense.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from faker import Faker
from playwright.sync_api import Browser

from api.settings import Settings
from billing import (
    Actor,
    Billing,
    CustomerInput,
    Database,
    DatabaseConfig,
    InvoiceInput,
    InvoiceLineInput,
    load_keyring,
)

PLANTED = "4242 4242 4242 4242"


def _auditor_with_a_finding(base_url: str, settings: Settings, fake: Faker) -> tuple[str, str]:
    billing = Billing(
        db=Database(DatabaseConfig(settings.database_url)), keyring=load_keyring(settings.keyring_path)
    )
    try:
        issued = billing.tenants.create_tenant("Clinique du Parc")
        actor = Actor(tenant_id=issued.tenant_id, role="booking")
        customer = billing.customers.create(actor, CustomerInput(name=fake.name()))
        line = InvoiceLineInput(description="Physiotherapy session", unit_amount=5500)
        invoice = billing.invoices.create_draft(
            actor,
            InvoiceInput(customer_id=customer.id, currency="EUR", lines=[line], notes=f"card {PLANTED}"),
        ).id
    finally:
        billing.db.dispose()
    response = httpx.post(
        f"{base_url}/v1/admin/api-keys",
        json={"role": "auditor", "name": "PCI reviewer"},
        headers={"Authorization": f"Bearer {issued.key}"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return response.json()["key"], invoice


def test_the_scope_report_reads_as_a_document(
    live_server: str, browser: Browser, settings: Settings, fake: Faker, tmp_path: Path
) -> None:
    key, invoice = _auditor_with_a_finding(live_server, settings, fake)
    context = browser.new_context(viewport={"width": 1100, "height": 1400})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    scripts: list[str] = []
    page.on(
        "request", lambda request: scripts.append(request.url) if request.resource_type == "script" else None
    )

    page.goto(f"{live_server}/pci")
    assert "/signin?next=" in page.url  # a session page: the auditor signs in once with their key
    page.get_by_label("API key").fill(key)
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Sign in").click()
    response = navigation.value

    assert response is not None and response.status == 200 and page.url == f"{live_server}/pci"
    assert page.title().startswith("PCI DSS scope report")
    assert page.locator("h1").inner_text() == "Card-data scope report"
    assert page.locator("#result").text_content() == "Action needed"
    assert page.locator("#finding-count").inner_text() == "1"
    row = page.locator("#findings tbody tr")
    assert row.count() == 1
    assert f"invoices.notes_ct row {invoice} (encrypted; opened in memory)" in row.inner_text()
    assert page.locator("#card-fields tbody tr").count() == 8
    assert page.locator("#requirements tbody tr").count() == 10
    assert page.locator("#check-payment_page_csp .status").text_content() == "pass"
    # Styled by its own stylesheet (the strict policy allows nothing else), no script at all.
    assert (
        page.evaluate("getComputedStyle(document.querySelector('.document')).backgroundColor")
        == "rgb(255, 255, 255)"
    )
    assert scripts == []
    assert problems == []
    html = page.content()
    assert PLANTED not in html and PLANTED.replace(" ", "") not in html

    page.screenshot(path=str(tmp_path / "pci-report.png"), full_page=True)
    page.emulate_media(media="print")
    assert not page.locator(".actions").is_visible()
    page.screenshot(path=str(tmp_path / "pci-report-print.png"), full_page=True)
    context.close()
