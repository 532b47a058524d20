"""Customers through the API: PII sealed at rest, lookups, rectification, isolation, audit."""

from __future__ import annotations

import pytest
from faker import Faker
from litestar.testing import TestClient
from sqlalchemy import select, text

from billing import Billing
from billing._models import AuditEvent, Customer

from .conftest import TenantKeys, customer_payload


def test_create_then_read_returns_the_same_client(
    client: TestClient, tenant: TenantKeys, fake: Faker
) -> None:
    payload = customer_payload(fake)
    created = client.post("/v1/customers", json=payload, headers=tenant.headers("booking"))
    assert created.status_code == 201, created.text
    customer_id = created.json()["id"]
    read = client.get(f"/v1/customers/{customer_id}", headers=tenant.headers("booking"))
    assert read.status_code == 200
    body = read.json()
    for field in ("name", "email", "phone", "address", "birth_date", "gender", "external_ref", "notes"):
        assert body[field] == payload[field], field


def test_pii_is_stored_only_as_ciphertext(
    client: TestClient, tenant: TenantKeys, fake: Faker, app_billing: Billing
) -> None:
    payload = customer_payload(fake)
    customer_id = client.post("/v1/customers", json=payload, headers=tenant.headers("booking")).json()["id"]
    with app_billing.db.read() as session:
        row = session.get(Customer, customer_id)
        assert row is not None
        dump = " ".join(
            str(value) for value in session.execute(text("SELECT * FROM customers")).one()._mapping.values()
        )
    for value in (
        payload["name"],
        payload["email"],
        payload["phone"],
        payload["address"]["line1"],
        payload["notes"],
    ):
        assert value not in dump
        assert value.encode() not in (row.name_ct or b"") + (row.email_ct or b"") + (row.notes_ct or b"")
    assert row.email_ct is not None and row.email_ct[0] == 1  # format version of the envelope


def test_lookup_by_email_is_case_insensitive_and_audited(
    client: TestClient, tenant: TenantKeys, fake: Faker, app_billing: Billing
) -> None:
    payload = customer_payload(fake)
    customer_id = client.post("/v1/customers", json=payload, headers=tenant.headers("booking")).json()["id"]
    found = client.get(
        "/v1/customers", params={"email": f"  {payload['email'].upper()} "}, headers=tenant.headers("booking")
    )
    assert found.status_code == 200
    assert [c["id"] for c in found.json()["data"]] == [customer_id]
    missing = client.get(
        "/v1/customers", params={"email": "nobody@example.org"}, headers=tenant.headers("booking")
    )
    assert missing.json()["data"] == []
    with app_billing.db.read() as session:
        reads = session.scalars(
            select(AuditEvent).where(
                AuditEvent.action == "customer.read", AuditEvent.subject_id == customer_id
            )
        ).all()
    assert len(reads) == 1
    assert reads[0].actor_role == "booking"


def test_lookup_by_external_ref(client: TestClient, tenant: TenantKeys, fake: Faker) -> None:
    payload = customer_payload(fake)
    customer_id = client.post("/v1/customers", json=payload, headers=tenant.headers("booking")).json()["id"]
    found = client.get(
        "/v1/customers", params={"external_ref": payload["external_ref"]}, headers=tenant.headers("booking")
    )
    assert [c["id"] for c in found.json()["data"]] == [customer_id]


def test_lookup_needs_exactly_one_criterion(client: TestClient, tenant: TenantKeys) -> None:
    response = client.get("/v1/customers", headers=tenant.headers("booking"))
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_query"


def test_rectify_changes_fields_and_the_email_index(
    client: TestClient, tenant: TenantKeys, fake: Faker
) -> None:
    payload = customer_payload(fake)
    customer_id = client.post("/v1/customers", json=payload, headers=tenant.headers("booking")).json()["id"]
    new_email = fake.unique.email()
    patched = client.patch(
        f"/v1/customers/{customer_id}",
        json={"email": new_email, "notes": None},
        headers=tenant.headers("booking"),
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["email"] == new_email
    assert patched.json()["notes"] is None
    assert patched.json()["name"] == payload["name"]
    old = client.get("/v1/customers", params={"email": payload["email"]}, headers=tenant.headers("booking"))
    new = client.get("/v1/customers", params={"email": new_email}, headers=tenant.headers("booking"))
    assert old.json()["data"] == []
    assert [c["id"] for c in new.json()["data"]] == [customer_id]


def test_another_tenants_client_is_not_found(
    client: TestClient, tenant: TenantKeys, other_tenant: TenantKeys, fake: Faker
) -> None:
    payload = customer_payload(fake)
    customer_id = client.post("/v1/customers", json=payload, headers=tenant.headers("booking")).json()["id"]
    for response in (
        client.get(f"/v1/customers/{customer_id}", headers=other_tenant.headers("booking")),
        client.patch(
            f"/v1/customers/{customer_id}", json={"name": "X"}, headers=other_tenant.headers("booking")
        ),
    ):
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
    lookup = client.get(
        "/v1/customers", params={"email": payload["email"]}, headers=other_tenant.headers("booking")
    )
    assert lookup.json()["data"] == []


@pytest.mark.parametrize("role", ["accountant", "auditor", "admin"])
def test_other_roles_are_forbidden(client: TestClient, tenant: TenantKeys, fake: Faker, role: str) -> None:
    customer_id = client.post(
        "/v1/customers", json=customer_payload(fake), headers=tenant.headers("booking")
    ).json()["id"]
    response = client.get(f"/v1/customers/{customer_id}", headers=tenant.headers(role))
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden_role"
    assert (
        client.post("/v1/customers", json=customer_payload(fake), headers=tenant.headers(role)).status_code
        == 403
    )


def test_swapped_ciphertext_between_rows_gives_an_opaque_error(
    client: TestClient, tenant: TenantKeys, fake: Faker, app_billing: Billing
) -> None:
    first = client.post(
        "/v1/customers", json=customer_payload(fake), headers=tenant.headers("booking")
    ).json()
    second = client.post(
        "/v1/customers", json=customer_payload(fake), headers=tenant.headers("booking")
    ).json()
    with app_billing.db.transaction() as session:
        a = session.get(Customer, first["id"])
        b = session.get(Customer, second["id"])
        assert a is not None and b is not None
        b.name_ct = a.name_ct
        session.add(b)
    response = client.get(f"/v1/customers/{second['id']}", headers=tenant.headers("booking"))
    assert response.status_code == 500
    problem = response.json()
    assert problem["code"] == "decryption_failed"
    assert first["name"] not in response.text and second["name"] not in response.text
    assert set(problem) <= {"type", "title", "status", "detail", "code", "request_id"}


def test_tampered_ciphertext_gives_an_opaque_error(
    client: TestClient, tenant: TenantKeys, fake: Faker, app_billing: Billing
) -> None:
    created = client.post(
        "/v1/customers", json=customer_payload(fake), headers=tenant.headers("booking")
    ).json()
    with app_billing.db.transaction() as session:
        row = session.get(Customer, created["id"])
        assert row is not None and row.email_ct is not None
        flipped = bytearray(row.email_ct)
        flipped[-1] ^= 0x01
        row.email_ct = bytes(flipped)
        session.add(row)
    response = client.get(f"/v1/customers/{created['id']}", headers=tenant.headers("booking"))
    assert response.status_code == 500
    assert response.json()["code"] == "decryption_failed"
    assert created["email"] not in response.text
