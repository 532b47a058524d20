"""API keys and roles: issue, list, revoke; only admins; every change audited."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
from faker import Faker
from litestar.testing import TestClient
from pypdf import PdfReader
from sqlalchemy import select

from api.app import create_app
from api.settings import Settings
from billing import Billing, load_keyring
from billing._models import ApiKey, AuditEvent

from .conftest import TenantKeys, customer_payload, invoice_payload, make_tenant


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


def test_master_key_status_is_shown_to_admins_with_this_tenants_counts_only(
    client: TestClient, tenant: TenantKeys, other_tenant: TenantKeys, fake: Faker
) -> None:
    client.post("/v1/customers", json={"name": fake.name()}, headers=tenant.headers("booking"))
    assert client.get("/v1/admin/keys", headers=tenant.headers("booking")).status_code == 403
    mine = client.get("/v1/admin/keys", headers=tenant.headers("admin")).json()
    theirs = client.get("/v1/admin/keys", headers=other_tenant.headers("admin")).json()
    assert mine["active"] == "mk_0001" and [v["id"] for v in mine["versions"]] == ["mk_0001"]
    assert mine["versions"][0]["age_days"] is not None and "material" not in json.dumps(mine)
    # both tenants hold their blind-index key; this one also the client's profile and record keys
    assert mine["versions"][0]["tenant_deks"] == theirs["versions"][0]["tenant_deks"] + 2
    assert mine["tenant_progress"] == 1.0 and mine["rotation_in_progress"] is False


def test_a_tenant_admin_cannot_rotate_the_shared_master_keys_by_default(
    client: TestClient, tenant: TenantKeys, settings: Settings, keyring_path: Path
) -> None:
    for role in ("booking", "accountant", "auditor"):
        refused = client.post("/v1/admin/keys/rotate", headers=tenant.headers(role))
        assert refused.status_code == 403 and refused.json()["code"] == "forbidden_role"
    refused = client.post("/v1/admin/keys/rotate", headers=tenant.headers("admin"))
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "master_key_rotation_reserved"
    assert [key.key_id for key in load_keyring(keyring_path).master_keys] == ["mk_0001"]
    assert settings.tenant_admin_master_key_rotation is False


def test_the_operator_can_let_tenant_admins_rotate_master_keys(
    settings: Settings, keyring_path: Path, app_billing: Billing
) -> None:
    enabled = replace(settings, tenant_admin_master_key_rotation=True)
    with TestClient(create_app(enabled, configure_logs=False)) as client:
        keys = make_tenant(client, app_billing, "Salon du Coin")
        assert client.post("/v1/admin/keys/rotate", headers=keys.headers("booking")).status_code == 403
        step = client.post("/v1/admin/keys/rotate", headers=keys.headers("admin"))
        assert step.status_code == 200, step.text
        assert step.json()["to_version"] == "mk_0002" and step.json()["complete"] is True
    assert [key.key_id for key in load_keyring(keyring_path).master_keys] == ["mk_0001", "mk_0002"]
    assert Settings.from_env(
        {"VEILBILL_TENANT_ADMIN_MASTER_KEY_ROTATION": "1"}
    ).tenant_admin_master_key_rotation
    assert not Settings.from_env({}).tenant_admin_master_key_rotation
