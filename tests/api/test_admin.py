"""API keys and roles: issue, list, revoke; only admins; every change audited."""

from __future__ import annotations

import io

import pytest
from faker import Faker
from litestar.testing import TestClient
from pypdf import PdfReader
from sqlalchemy import select

from billing import Billing
from billing._models import ApiKey, AuditEvent

from .conftest import TenantKeys, customer_payload, invoice_payload


def test_issued_key_is_shown_once_and_stored_hashed(
    client: TestClient, tenant: TenantKeys, app_billing: Billing
) -> None:
    issued = client.post(
        "/v1/admin/api-keys", json={"role": "auditor", "name": "reviewer"}, headers=tenant.headers("admin")
    )
    assert issued.status_code == 201
    body = issued.json()
    assert body["role"] == "auditor" and body["key"].startswith("vb_")
    listed = client.get("/v1/admin/api-keys", headers=tenant.headers("admin"))
    assert body["key"] not in listed.text
    assert body["id"] in {k["id"] for k in listed.json()["data"]}
    with app_billing.db.read() as session:
        row = session.get(ApiKey, body["id"])
        assert row is not None and body["key"] not in repr(row.model_dump())
        events = session.scalars(select(AuditEvent).where(AuditEvent.resource_id == body["id"])).all()
    assert [e.action for e in events] == ["api_key.issued"]


@pytest.mark.parametrize("role", ["booking", "accountant", "auditor"])
def test_only_admins_manage_keys(client: TestClient, tenant: TenantKeys, role: str) -> None:
    response = client.post(
        "/v1/admin/api-keys", json={"role": "admin", "name": "x"}, headers=tenant.headers(role)
    )
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden_role"


def test_unknown_role_is_refused(client: TestClient, tenant: TenantKeys) -> None:
    response = client.post(
        "/v1/admin/api-keys", json={"role": "root", "name": "x"}, headers=tenant.headers("admin")
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_value"


def test_cannot_revoke_another_tenants_key(
    client: TestClient, tenant: TenantKeys, other_tenant: TenantKeys
) -> None:
    issued = client.post(
        "/v1/admin/api-keys", json={"role": "booking", "name": "x"}, headers=tenant.headers("admin")
    ).json()
    response = client.delete(f"/v1/admin/api-keys/{issued['id']}", headers=other_tenant.headers("admin"))
    assert response.status_code == 404
    assert client.get("/v1/invoices", headers={"Authorization": f"Bearer {issued['key']}"}).status_code == 200


def test_failed_authentication_is_audited(
    client: TestClient, tenant: TenantKeys, app_billing: Billing
) -> None:
    issued = client.post(
        "/v1/admin/api-keys", json={"role": "booking", "name": "x"}, headers=tenant.headers("admin")
    ).json()
    client.delete(f"/v1/admin/api-keys/{issued['id']}", headers=tenant.headers("admin"))
    client.get("/v1/invoices", headers={"Authorization": f"Bearer {issued['key']}", "User-Agent": "probe/1"})
    client.get("/v1/invoices", headers={"Authorization": "Bearer vb_unknown"})
    with app_billing.db.read() as session:
        failures = session.scalars(select(AuditEvent).where(AuditEvent.action == "auth.failed")).all()
    by_chain = {e.chain: e for e in failures}
    assert by_chain[tenant.tenant_id].actor_key_id == issued["id"]
    assert by_chain[tenant.tenant_id].user_agent == "probe/1"
    assert '"reason": "revoked"' in (by_chain[tenant.tenant_id].detail or "")
    assert by_chain["system"].tenant_id is None


def test_business_details_appear_on_invoices(client: TestClient, tenant: TenantKeys, fake: Faker) -> None:
    details = {
        "legal_name": "Rivoli Coiffure SARL",
        "address_lines": ["12 rue de Rivoli", "75004 Paris", "France"],
        "vat_id": "FR40303265045",
        "email": "billing@rivoli.example",
    }
    assert (
        client.get("/v1/admin/business", headers=tenant.headers("admin")).json()["legal_name"]
        == "Salon Rivoli"
    )
    saved = client.put("/v1/admin/business", json=details, headers=tenant.headers("admin"))
    assert saved.status_code == 200 and saved.json() == details
    assert (
        client.put("/v1/admin/business", json=details, headers=tenant.headers("booking")).status_code == 403
    )
    headers = tenant.headers("booking")
    customer = client.post("/v1/customers", json=customer_payload(fake), headers=headers).json()
    invoice = client.post("/v1/invoices", json=invoice_payload(customer["id"], fake), headers=headers).json()
    client.post(f"/v1/invoices/{invoice['id']}/finalize", headers=headers)
    pdf = client.get(f"/v1/invoices/{invoice['id']}/pdf", headers=headers).content
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    for expected in ("Rivoli Coiffure SARL", "12 rue de Rivoli", "FR40303265045", customer["name"]):
        assert expected in text
