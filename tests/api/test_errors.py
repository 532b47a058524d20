"""Bad input gets a problem+json with a stable code, echoes nothing, and writes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from faker import Faker
from litestar.testing import TestClient
from sqlalchemy import func, select

from billing import Billing
from billing._models import Customer, Invoice, InvoiceLine

from .conftest import TenantKeys, customer_payload, invoice_payload

PROBLEM_KEYS = {"type", "title", "status", "detail", "code", "request_id"}
CANARY = "zq-canary-value-7731"


def _assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = dict(response.json())
    assert set(body) >= PROBLEM_KEYS
    assert body["code"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    assert CANARY not in response.text
    return body


def _counts(billing: Billing) -> tuple[int, int, int]:
    with billing.db.read() as session:
        return (
            session.scalar(select(func.count()).select_from(Customer)) or 0,
            session.scalar(select(func.count()).select_from(Invoice)) or 0,
            session.scalar(select(func.count()).select_from(InvoiceLine)) or 0,
        )


@pytest.fixture
def customer_id(client: TestClient, tenant: TenantKeys, fake: Faker) -> str:
    return str(
        client.post("/v1/customers", json=customer_payload(fake), headers=tenant.headers("booking")).json()[
            "id"
        ]
    )


def test_malformed_json(client: TestClient, tenant: TenantKeys) -> None:
    response = client.post(
        "/v1/customers",
        content=b'{"name": "' + CANARY.encode() + b'",',
        headers=tenant.headers("booking") | {"content-type": "application/json"},
    )
    _assert_problem(response, 400, "malformed_json")


def test_unknown_field_is_refused_without_echo(client: TestClient, tenant: TenantKeys, fake: Faker) -> None:
    body = customer_payload(fake) | {CANARY: "x"}
    problem = _assert_problem(
        client.post("/v1/customers", json=body, headers=tenant.headers("booking")), 400, "unknown_field"
    )
    assert problem["errors"][0]["pointer"] == "$"


def test_nested_unknown_field(client: TestClient, tenant: TenantKeys, fake: Faker) -> None:
    body = customer_payload(fake)
    body["address"]["floor"] = CANARY
    problem = _assert_problem(
        client.post("/v1/customers", json=body, headers=tenant.headers("booking")), 400, "unknown_field"
    )
    assert problem["errors"][0]["pointer"] == "$.address"


def test_wrong_type_names_the_path(
    client: TestClient, tenant: TenantKeys, customer_id: str, fake: Faker
) -> None:
    body = invoice_payload(customer_id, fake)
    body["lines"][1]["quantity"] = CANARY
    problem = _assert_problem(
        client.post("/v1/invoices", json=body, headers=tenant.headers("booking")), 400, "invalid_type"
    )
    assert problem["errors"][0]["pointer"] == "$.lines[1].quantity"


def test_missing_field(client: TestClient, tenant: TenantKeys) -> None:
    _assert_problem(
        client.post("/v1/customers", json={}, headers=tenant.headers("booking")), 400, "missing_field"
    )


def test_invalid_enum_value_is_not_echoed(client: TestClient, tenant: TenantKeys, fake: Faker) -> None:
    body = customer_payload(fake) | {"gender": CANARY}
    _assert_problem(
        client.post("/v1/customers", json=body, headers=tenant.headers("booking")), 400, "invalid_value"
    )


def test_oversized_body(client: TestClient, tenant: TenantKeys, fake: Faker) -> None:
    body = customer_payload(fake) | {"notes": CANARY + "x" * 400_000}
    _assert_problem(
        client.post("/v1/customers", json=body, headers=tenant.headers("booking")), 413, "body_too_large"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("unit_amount", -1),
        ("unit_amount", 10**12),
        ("quantity", 0),
        ("quantity", 10**7),
        ("tax_rate_bps", -5),
    ],
)
def test_bad_amounts_write_nothing(
    client: TestClient,
    tenant: TenantKeys,
    customer_id: str,
    fake: Faker,
    app_billing: Billing,
    field: str,
    value: int,
) -> None:
    before = _counts(app_billing)
    body = invoice_payload(customer_id, fake)
    body["lines"][1][field] = value
    problem = _assert_problem(
        client.post("/v1/invoices", json=body, headers=tenant.headers("booking")), 422, "amount_out_of_range"
    )
    assert problem["field"] == field
    assert str(value) not in problem["title"] + problem["detail"]
    assert _counts(app_billing) == before


def test_invoice_total_overflow(
    client: TestClient, tenant: TenantKeys, customer_id: str, fake: Faker
) -> None:
    body = invoice_payload(customer_id, fake, lines=0)
    body["lines"] = [
        {"description": "Suite", "quantity": 1, "unit_amount": 9 * 10**11, "tax_rate_bps": 0}
    ] * 2
    _assert_problem(
        client.post("/v1/invoices", json=body, headers=tenant.headers("booking")), 422, "amount_out_of_range"
    )


@pytest.mark.parametrize("currency", ["XYZ", "eur", "EU1"])
def test_unknown_currency(
    client: TestClient, tenant: TenantKeys, customer_id: str, fake: Faker, currency: str
) -> None:
    body = invoice_payload(customer_id, fake) | {"currency": currency}
    _assert_problem(
        client.post("/v1/invoices", json=body, headers=tenant.headers("booking")), 422, "unknown_currency"
    )


def test_a_failed_edit_leaves_the_draft_unchanged(
    client: TestClient, tenant: TenantKeys, customer_id: str, fake: Faker
) -> None:
    headers = tenant.headers("booking")
    invoice = client.post("/v1/invoices", json=invoice_payload(customer_id, fake), headers=headers).json()
    bad_lines = [{"description": "ok", "unit_amount": 100}, {"description": "bad", "unit_amount": -100}]
    response = client.patch(
        f"/v1/invoices/{invoice['id']}", json={"lines": bad_lines, "notes": "n"}, headers=headers
    )
    _assert_problem(response, 422, "amount_out_of_range")
    after = client.get(f"/v1/invoices/{invoice['id']}", headers=headers).json()
    assert after["lines"] == invoice["lines"] and after["notes"] == invoice["notes"]


def test_missing_and_unknown_keys(client: TestClient) -> None:
    _assert_problem(client.get("/v1/invoices"), 401, "invalid_api_key")
    _assert_problem(
        client.get("/v1/invoices", headers={"Authorization": "Bearer vb_" + CANARY}), 401, "invalid_api_key"
    )
    _assert_problem(
        client.get("/v1/invoices", headers={"Authorization": "Basic abc"}), 401, "invalid_api_key"
    )


def test_revoked_key_is_refused(client: TestClient, tenant: TenantKeys) -> None:
    issued = client.post(
        "/v1/admin/api-keys", json={"role": "booking", "name": "temp"}, headers=tenant.headers("admin")
    ).json()
    assert client.get("/v1/invoices", headers={"Authorization": f"Bearer {issued['key']}"}).status_code == 200
    revoked = client.delete(f"/v1/admin/api-keys/{issued['id']}", headers=tenant.headers("admin"))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    _assert_problem(
        client.get("/v1/invoices", headers={"Authorization": f"Bearer {issued['key']}"}),
        401,
        "invalid_api_key",
    )


def test_unknown_route_and_method(client: TestClient, tenant: TenantKeys) -> None:
    _assert_problem(client.get("/v1/nothing-here", headers=tenant.headers("booking")), 404, "route_not_found")
    _assert_problem(client.put("/v1/invoices", headers=tenant.headers("booking")), 405, "method_not_allowed")
