"""Invoices through the API: totals, drafts, numbering, transitions, listing, sealed content."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from faker import Faker
from litestar.testing import TestClient
from sqlalchemy import text

from billing import Billing
from billing._models import InvoiceLine

from .conftest import TenantKeys, customer_payload, invoice_payload


@pytest.fixture
def customer_id(client: TestClient, tenant: TenantKeys, fake: Faker) -> str:
    response = client.post("/v1/customers", json=customer_payload(fake), headers=tenant.headers("booking"))
    return str(response.json()["id"])


def _draft(client: TestClient, tenant: TenantKeys, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/invoices", json=body, headers=tenant.headers("booking"))
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_draft_totals_are_computed_by_the_server(
    client: TestClient, tenant: TenantKeys, customer_id: str, fake: Faker
) -> None:
    body = invoice_payload(customer_id, fake, lines=0)
    body["lines"] = [
        {"description": "Cut", "quantity": 1, "unit_amount": 4500, "tax_rate_bps": 2000, "category": "hair"},
        {"description": "Colour", "quantity": 3, "unit_amount": 333, "tax_rate_bps": 550, "category": "hair"},
        {
            "description": "Product",
            "quantity": 1,
            "unit_amount": 1999,
            "tax_rate_bps": 2000,
            "category": "retail",
        },
    ]
    invoice = _draft(client, tenant, body)
    # 999 * 5.5 % = 54.945 → 55 (half-up per line); 4500 + 1999 at 20 % → 900 + 399.8 → 400
    assert (invoice["subtotal"], invoice["tax"], invoice["total"]) == (7498, 1355, 8853)
    assert invoice["tax_breakdown"] == [
        {"tax_rate_bps": 550, "net": 999, "tax": 55},
        {"tax_rate_bps": 2000, "net": 6499, "tax": 1300},
    ]
    assert invoice["status"] == "draft" and invoice["number"] is None
    assert invoice["currency_exponent"] == 2
    assert [line["description"] for line in invoice["lines"]] == ["Cut", "Colour", "Product"]


def test_zero_exponent_currency(
    client: TestClient, tenant: TenantKeys, customer_id: str, fake: Faker
) -> None:
    body = invoice_payload(customer_id, fake, lines=1)
    body["currency"] = "JPY"
    invoice = _draft(client, tenant, body)
    assert invoice["currency_exponent"] == 0


def test_edit_draft_replaces_lines_and_recomputes(
    client: TestClient, tenant: TenantKeys, customer_id: str, fake: Faker
) -> None:
    invoice = _draft(client, tenant, invoice_payload(customer_id, fake))
    patched = client.patch(
        f"/v1/invoices/{invoice['id']}",
        json={
            "lines": [{"description": "Massage", "unit_amount": 6000, "tax_rate_bps": 1000}],
            "notes": None,
        },
        headers=tenant.headers("booking"),
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert (body["subtotal"], body["tax"], body["total"]) == (6000, 600, 6600)
    assert [ln["description"] for ln in body["lines"]] == ["Massage"]
    assert body["notes"] is None


def test_finalize_assigns_gapless_numbers_per_series(
    client: TestClient, tenant: TenantKeys, customer_id: str, fake: Faker
) -> None:
    numbers = []
    for series in ("INV", "INV", "DEP", "INV"):
        body = invoice_payload(customer_id, fake) | {"series": series}
        invoice = _draft(client, tenant, body)
        finalized = client.post(f"/v1/invoices/{invoice['id']}/finalize", headers=tenant.headers("booking"))
        assert finalized.status_code == 200, finalized.text
        assert finalized.json()["status"] == "open"
        numbers.append(finalized.json()["number"])
    year = datetime.now(UTC).year
    assert numbers == [f"INV-{year}-000001", f"INV-{year}-000002", f"DEP-{year}-000001", f"INV-{year}-000003"]


def test_each_tenant_has_its_own_sequence(
    client: TestClient, tenant: TenantKeys, other_tenant: TenantKeys, customer_id: str, fake: Faker
) -> None:
    other_customer = client.post(
        "/v1/customers", json=customer_payload(fake), headers=other_tenant.headers("booking")
    ).json()["id"]
    for keys, cid in ((tenant, customer_id), (other_tenant, other_customer)):
        invoice = _draft(client, keys, invoice_payload(cid, fake))
        number = client.post(
            f"/v1/invoices/{invoice['id']}/finalize", headers=keys.headers("booking")
        ).json()["number"]
        assert number.endswith("-000001")


def test_state_machine(client: TestClient, tenant: TenantKeys, customer_id: str, fake: Faker) -> None:
    headers = tenant.headers("booking")
    invoice = _draft(client, tenant, invoice_payload(customer_id, fake))
    path = f"/v1/invoices/{invoice['id']}"
    for action in ("void", "mark-uncollectible"):
        refused = client.post(f"{path}/{action}", headers=headers)
        assert refused.status_code == 409
        assert refused.json()["code"] == "invalid_state_transition"
    assert client.post(f"{path}/finalize", headers=headers).status_code == 200
    again = client.post(f"{path}/finalize", headers=headers)
    assert again.status_code == 409 and again.json()["code"] == "invalid_state_transition"
    edit = client.patch(path, json={"notes": "late change"}, headers=headers)
    assert edit.status_code == 409
    assert client.post(f"{path}/mark-uncollectible", headers=headers).json()["status"] == "uncollectible"
    assert client.post(f"{path}/void", headers=headers).json()["status"] == "void"
    assert client.post(f"{path}/void", headers=headers).status_code == 409


def test_finalize_refuses_an_empty_invoice(
    client: TestClient, tenant: TenantKeys, customer_id: str, fake: Faker
) -> None:
    invoice = _draft(client, tenant, invoice_payload(customer_id, fake, lines=0))
    response = client.post(f"/v1/invoices/{invoice['id']}/finalize", headers=tenant.headers("booking"))
    assert response.status_code == 422
    assert response.json()["code"] == "validation_failed"
    assert response.json()["field"] == "lines"


def test_list_filters_and_paginates(
    client: TestClient, tenant: TenantKeys, customer_id: str, fake: Faker
) -> None:
    headers = tenant.headers("booking")
    ids = [
        _draft(client, tenant, invoice_payload(customer_id, fake) | {"booking_ref": f"bk-{i}"})["id"]
        for i in range(5)
    ]
    client.post(f"/v1/invoices/{ids[0]}/finalize", headers=headers)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/invoices", params=params, headers=headers).json()
        seen += [inv["id"] for inv in page["data"]]
        assert "lines" not in page["data"][0]  # lists carry no sealed content
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    by_ref = client.get("/v1/invoices", params={"booking_ref": "bk-3"}, headers=headers).json()["data"]
    assert [inv["id"] for inv in by_ref] == [ids[3]]
    open_ = client.get("/v1/invoices", params={"status": "open"}, headers=headers).json()["data"]
    assert [inv["id"] for inv in open_] == [ids[0]]
    issued = open_[0]["issue_date"]
    in_period = client.get("/v1/invoices", params={"from": issued, "to": issued}, headers=headers).json()[
        "data"
    ]
    assert [inv["id"] for inv in in_period] == [ids[0]]
    before = client.get("/v1/invoices", params={"to": "2000-01-01"}, headers=headers).json()["data"]
    assert before == []
    by_customer = client.get("/v1/invoices", params={"customer_id": customer_id}, headers=headers).json()[
        "data"
    ]
    assert len(by_customer) == 5


def test_a_forged_cursor_is_refused(client: TestClient, tenant: TenantKeys) -> None:
    response = client.get(
        "/v1/invoices", params={"cursor": "bm90LWEtY3Vyc29y"}, headers=tenant.headers("booking")
    )
    assert response.status_code == 422
    assert response.json()["field"] == "cursor"


def test_line_descriptions_are_sealed(
    client: TestClient, tenant: TenantKeys, customer_id: str, fake: Faker, app_billing: Billing
) -> None:
    body = invoice_payload(customer_id, fake)
    invoice = _draft(client, tenant, body)
    with app_billing.db.read() as session:
        rows = session.execute(text("SELECT * FROM invoice_lines")).all()
        invoices = session.execute(text("SELECT * FROM invoices")).all()
    dump = repr(rows) + repr(invoices)
    for line in body["lines"]:
        assert line["description"] not in dump
    assert body["notes"] not in dump
    assert invoice["customer"]["name"] not in dump


def test_another_tenants_invoice_is_not_found(
    client: TestClient, tenant: TenantKeys, other_tenant: TenantKeys, customer_id: str, fake: Faker
) -> None:
    invoice = _draft(client, tenant, invoice_payload(customer_id, fake))
    other = other_tenant.headers("booking")
    assert client.get(f"/v1/invoices/{invoice['id']}", headers=other).status_code == 404
    assert client.post(f"/v1/invoices/{invoice['id']}/finalize", headers=other).status_code == 404
    assert client.get("/v1/invoices", headers=other).json()["data"] == []
    cross = client.post("/v1/invoices", json=invoice_payload(customer_id, fake), headers=other)
    assert cross.status_code == 404 and cross.json()["resource"] == "customer"


def test_accountant_cannot_touch_invoices(
    client: TestClient, tenant: TenantKeys, customer_id: str, fake: Faker
) -> None:
    response = client.post(
        "/v1/invoices", json=invoice_payload(customer_id, fake), headers=tenant.headers("accountant")
    )
    assert response.status_code == 403


def test_swapped_line_description_gives_an_opaque_error(
    client: TestClient, tenant: TenantKeys, customer_id: str, fake: Faker, app_billing: Billing
) -> None:
    invoice = _draft(client, tenant, invoice_payload(customer_id, fake))
    first, second = (line["id"] for line in invoice["lines"])
    with app_billing.db.transaction() as session:
        a, b = session.get(InvoiceLine, first), session.get(InvoiceLine, second)
        assert a is not None and b is not None
        a.description_ct, b.description_ct = b.description_ct, a.description_ct
        session.add_all([a, b])
    response = client.get(f"/v1/invoices/{invoice['id']}", headers=tenant.headers("booking"))
    assert response.status_code == 500
    assert response.json()["code"] == "decryption_failed"
    assert invoice["lines"][0]["description"] not in response.text
