"""The PCI scope report over HTTP (auditor only): JSON, PDF, the /pci page, and the data inventory.

Card numbers here are the gateway sandbox's public test numbers, planted to test the defense.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from faker import Faker
from litestar.testing import TestClient
from pypdf import PdfReader

from api.app import create_app
from api.settings import Settings
from billing import Actor, Billing, CustomerInput, InvoiceInput, InvoiceLineInput

from .conftest import TenantKeys, make_tenant
from .test_pages import BASE_URL, sign_in

VISA_SPACED = "4242 4242 4242 4242"
OTHER = "5555555555554444"


def _plant_note(billing: Billing, tenant_id: str, fake: Faker, number: str) -> str:
    """An invoice whose note holds ``number``, sealed through the services (past the API guard)."""
    actor = Actor(tenant_id=tenant_id, role="booking")
    customer = billing.customers.create(actor, CustomerInput(name=fake.name()))
    line = InvoiceLineInput(description="Massage", unit_amount=5000)
    return billing.invoices.create_draft(
        actor, InvoiceInput(customer_id=customer.id, currency="EUR", lines=[line], notes=f"card {number}")
    ).id


def _never_printed(text: str) -> None:
    for number in (VISA_SPACED, OTHER):
        assert number not in text
        assert number.replace(" ", "") not in text


@pytest.mark.parametrize("role", ["booking", "accountant", "admin"])
def test_only_auditors_get_the_report(client: TestClient, tenant: TenantKeys, role: str) -> None:
    for path in ("/v1/pci/scope-report", "/v1/pci/scope-report.pdf"):
        response = client.get(path, headers=tenant.headers(role))
        assert response.status_code == 403, path
        assert response.json()["code"] == "forbidden_role"
    assert client.get("/v1/pci/scope-report").status_code == 401
    # The page is a session page: a bearer key opens nothing there, whatever its role.
    page = client.get("/pci", headers=tenant.headers(role), follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"].startswith("/signin?next=")


def test_a_clean_tenant_report(client: TestClient, tenant: TenantKeys) -> None:
    report = client.get("/v1/pci/scope-report", headers=tenant.headers("auditor")).json()

    assert report["tenant_id"] == tenant.tenant_id
    assert report["scan"]["findings"] == []
    assert report["passed"] is True
    assert {f["column"] for f in report["card_derived_fields"]} >= {
        "brand",
        "last4",
        "exp_month",
        "fingerprint",
    }
    assert [r["id"] for r in report["requirements"]] == [
        "3.2.1", "3.3.1", "3.4.1", "3.5.1", "4.2.1", "6.4.3", "8.3.1", "10.2.1", "11.6.1", "12.8.1",
    ]  # fmt: skip
    assert report["data_flow"][2].startswith("3. Browser → Gateway")
    statuses = {c["id"]: c["status"] for c in report["checks"]}
    assert statuses["payment_page_csp"] == "pass" and statuses["audit_chain"] == "pass"


def test_an_auditor_sees_their_own_tenants_findings_only(
    client: TestClient, tenant: TenantKeys, other_tenant: TenantKeys, app_billing: Billing, fake: Faker
) -> None:
    mine = _plant_note(app_billing, tenant.tenant_id, fake, VISA_SPACED)
    _plant_note(app_billing, other_tenant.tenant_id, fake, OTHER)

    response = client.get("/v1/pci/scope-report", headers=tenant.headers("auditor"))

    _never_printed(response.text)
    report = response.json()
    assert report["passed"] is False
    (finding,) = report["scan"]["findings"]
    assert finding["location"]["row_id"] == mine
    assert finding["location"]["tenant_id"] == tenant.tenant_id
    assert finding["location"]["encrypted"] is True
    assert finding["kind"] == "pan" and finding["separators"] is True
    statuses = {r["id"]: r["status"] for r in report["requirements"]}
    assert statuses["3.2.1"] == "not met" and statuses["3.5.1"] == "not met"
    events = client.get("/v1/audit/events?limit=500", headers=tenant.headers("auditor")).json()["data"]
    scans = [e for e in events if e["action"] == "pci.scan"]
    assert scans and scans[-1]["outcome"] == "alert" and scans[-1]["actor_role"] == "auditor"


def test_the_pdf_is_a_document_without_the_number(
    client: TestClient, tenant: TenantKeys, app_billing: Billing, fake: Faker
) -> None:
    invoice = _plant_note(app_billing, tenant.tenant_id, fake, VISA_SPACED)

    response = client.get("/v1/pci/scope-report.pdf", headers=tenant.headers("auditor"))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    assert response.headers["content-disposition"].startswith('attachment; filename="pci-scope-report-')
    pdf = PdfReader(io.BytesIO(response.content))
    text = "\n".join(page.extract_text() for page in pdf.pages)
    assert "SAQ A" in text and "3.5.1" in text and "6.4.3" in text
    assert invoice in text
    _never_printed(text)
    _never_printed(response.content.decode("latin-1"))


def test_the_page_renders_the_report_with_a_strict_policy(settings: Settings, app_billing: Billing) -> None:
    # Session cookies are Secure (and __Host-): the client speaks to an https origin.
    with TestClient(create_app(settings, configure_logs=False), base_url=BASE_URL) as client:
        tenant = make_tenant(client, app_billing, "Cabinet Morel")
        assert sign_in(client, tenant.auditor, "/pci").status_code == 303
        response = client.get("/pci")
        assert client.get("/pci/assets/pci.css").status_code == 200

    assert response.status_code == 200
    assert "Card-data scope report" in response.text
    assert 'id="scan-clean"' in response.text
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy
    assert response.headers["cache-control"] == "no-store"


def test_the_reported_csp_is_the_one_the_payment_page_sends(client: TestClient, tenant: TenantKeys) -> None:
    sent = client.get("/pay/not-a-real-link").headers["content-security-policy"]

    report = client.get("/v1/pci/scope-report", headers=tenant.headers("auditor")).json()

    csp = next(c for c in report["checks"] if c["id"] == "payment_page_csp")
    assert csp["evidence"][0].endswith(sent)
    scripts = next(c for c in report["checks"] if c["id"] == "payment_page_scripts")
    assert any(line.startswith("/pay/assets/pay.js") and "SHA-256" in line for line in scripts["evidence"])


@pytest.fixture
def https_client(settings: Settings) -> Iterator[TestClient]:  # type: ignore[type-arg]
    app = create_app(replace(settings, public_url="https://billing.example.org"), configure_logs=False)
    with TestClient(app) as test_client:
        yield test_client


def test_https_deployments_send_hsts_and_pass_the_tls_checks(
    https_client: TestClient, app_billing: Billing
) -> None:
    keys = make_tenant(https_client, app_billing, "Hotel Secure")

    response = https_client.get("/v1/pci/scope-report", headers=keys.headers("auditor"))

    assert response.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
    statuses = {c["id"]: c["status"] for c in response.json()["checks"]}
    assert statuses["tls"] == "pass" and statuses["hsts"] == "pass"


def test_plain_http_on_a_network_address_fails_the_tls_check(
    settings: Settings, app_billing: Billing
) -> None:
    app = create_app(replace(settings, public_url="http://billing.example.org"), configure_logs=False)
    with TestClient(app) as plain:
        keys = make_tenant(plain, app_billing, "Hotel Plain")
        response = plain.get("/v1/pci/scope-report", headers=keys.headers("auditor"))
    assert "strict-transport-security" not in response.headers
    report = response.json()
    assert {c["id"]: c["status"] for c in report["checks"]}["tls"] == "fail"
    assert report["passed"] is False


def test_the_data_inventory_is_served_to_auditors_and_admins(client: TestClient, tenant: TenantKeys) -> None:
    for role in ("auditor", "admin"):
        fields = client.get("/v1/privacy/inventory", headers=tenant.headers(role)).json()["fields"]
        email = next(f for f in fields if (f["table"], f["column"]) == ("customers", "email_ct"))
        assert email["protection"] == "encrypted" and email["key_purpose"] == "profile"
        assert email["category"] == "contact" and email["lawful_basis"] == "contract"
    assert client.get("/v1/privacy/inventory", headers=tenant.headers("booking")).status_code == 403


def test_a_report_with_findings_writes_no_number_to_the_log(
    settings: Settings, app_billing: Billing, fake: Faker, tmp_path: Path, restore_logging: None
) -> None:
    log = tmp_path / "veilbill.log"
    app = create_app(replace(settings, log_path=str(log)), configure_logs=True)
    with TestClient(app, base_url=BASE_URL) as logged:
        keys = make_tenant(logged, app_billing, "Salon Logged")
        _plant_note(app_billing, keys.tenant_id, fake, VISA_SPACED)
        for path in ("/v1/pci/scope-report", "/v1/pci/scope-report.pdf"):
            assert logged.get(path, headers=keys.headers("auditor")).status_code == 200
        assert sign_in(logged, keys.auditor, "/pci").status_code == 303
        assert logged.get("/pci").status_code == 200

    written = log.read_text()
    assert "/v1/pci/scope-report" in written  # the access log ran
    _never_printed(written)
