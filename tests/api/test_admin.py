"""API keys and roles: issue, list, revoke; only admins; every change audited."""

from __future__ import annotations

import pytest
from litestar.testing import TestClient
from sqlalchemy import select

from billing import Billing
from billing._models import ApiKey, AuditEvent

from .conftest import TenantKeys


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
