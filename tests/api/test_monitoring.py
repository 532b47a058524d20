"""Access monitoring (a key scraping clients is flagged, optionally suspended) and the breach register."""

from __future__ import annotations

from datetime import timedelta

from faker import Faker
from litestar.testing import TestClient
from sqlmodel import select

from billing import Billing, BreachInput, utcnow
from billing._models import AuditEvent

from .conftest import TenantKeys, customer_payload


def _clients(client: TestClient, keys: TenantKeys, fake: Faker, count: int) -> list[str]:
    return [
        client.post("/v1/customers", json=customer_payload(fake), headers=keys.headers("booking")).json()[
            "id"
        ]
        for _ in range(count)
    ]


def _issue(client: TestClient, keys: TenantKeys) -> dict[str, str]:
    issued = client.post(
        "/v1/admin/api-keys", json={"role": "booking", "name": "scraper"}, headers=keys.headers("admin")
    )
    return dict(issued.json())


def test_a_key_reading_too_many_clients_is_flagged_once(
    client: TestClient, tenant: TenantKeys, fake: Faker, app_billing: Billing
) -> None:
    policy = client.put(
        "/v1/admin/access-policy",
        json={"pii_read_threshold": 3, "window_minutes": 60, "suspend_on_alert": False},
        headers=tenant.headers("admin"),
    )
    assert policy.status_code == 200, policy.text
    ids = _clients(client, tenant, fake, 6)
    scraper = _issue(client, tenant)
    for customer_id in ids:
        response = client.get(
            f"/v1/customers/{customer_id}", headers={"Authorization": f"Bearer {scraper['key']}"}
        )
        assert response.status_code == 200
    with app_billing.db.read() as session:
        alerts = session.exec(select(AuditEvent).where(AuditEvent.action == "access.alert")).all()
    assert [a.resource_id for a in alerts] == [scraper["id"]]
    assert '"distinct_subjects": 4' in (alerts[0].detail or "")
    keys = client.get("/v1/admin/api-keys", headers=tenant.headers("admin")).json()["data"]
    used = next(k for k in keys if k["id"] == scraper["id"])
    assert used["last_used_at"] is not None and used["last_used_ip"] and used["suspended_at"] is None


def test_a_scraping_key_can_be_suspended_and_reinstated(
    client: TestClient, tenant: TenantKeys, fake: Faker
) -> None:
    client.put(
        "/v1/admin/access-policy",
        json={"pii_read_threshold": 2, "window_minutes": 10, "suspend_on_alert": True},
        headers=tenant.headers("admin"),
    )
    ids = _clients(client, tenant, fake, 4)
    scraper = _issue(client, tenant)
    headers = {"Authorization": f"Bearer {scraper['key']}"}
    statuses = [client.get(f"/v1/customers/{cid}", headers=headers).status_code for cid in ids]
    assert statuses == [200, 200, 200, 401]  # the third distinct client crossed the threshold
    keys = client.get("/v1/admin/api-keys", headers=tenant.headers("admin")).json()["data"]
    assert next(k for k in keys if k["id"] == scraper["id"])["suspended_at"] is not None
    reinstated = client.post(f"/v1/admin/api-keys/{scraper['id']}/reinstate", headers=tenant.headers("admin"))
    assert reinstated.status_code == 200 and reinstated.json()["suspended_at"] is None
    assert client.get("/v1/invoices", headers=headers).status_code == 200


def test_breach_affected_names_exactly_the_clients_a_key_read(
    client: TestClient, tenant: TenantKeys, fake: Faker, app_billing: Billing
) -> None:
    since = utcnow() - timedelta(seconds=1)
    ids = _clients(client, tenant, fake, 5)
    suspect = _issue(client, tenant)
    headers = {"Authorization": f"Bearer {suspect['key']}"}
    read = ids[:3]
    for customer_id in read:
        client.get(f"/v1/customers/{customer_id}", headers=headers)
    client.get(f"/v1/customers/{ids[4]}", headers=tenant.headers("booking"))  # another key's read
    assert app_billing.breaches.affected(suspect["id"], since) == sorted(read)
    assert app_billing.breaches.affected(suspect["id"], utcnow() + timedelta(minutes=1)) == []
    breach = app_billing.breaches.open(
        BreachInput(
            nature="API key leaked in a public repository",
            tenant_id=tenant.tenant_id,
            suspected_key_id=suspect["id"],
        )
    )
    assert breach.gdpr_authority_deadline - breach.aware_at == timedelta(hours=72)
    assert breach.hipaa_individuals_deadline - breach.aware_at == timedelta(days=60)
    assert app_billing.breaches.get(breach.id).suspected_key_id == suspect["id"]
