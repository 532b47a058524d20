"""Card data is refused in every field of every operation, never stored, never logged."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from faker import Faker
from litestar.testing import TestClient
from sqlalchemy import func, select

from api.logging import configure_logging
from billing import Billing
from billing._models import AuditEvent, Customer, Invoice
from tokenization import PAN_REDACTION

from .conftest import TenantKeys, customer_payload, invoice_payload, planted, string_paths

# Gateway test card numbers, allowed here only: this suite tests the card-data defenses.
CARDS = ["4242424242424242", "4242 4242 4242 4242", "5555-5555-5555-4444", "378282246310005"]


def _pointer(path: tuple[Any, ...]) -> str:
    return "$" + "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path)


@pytest.fixture
def log_stream(restore_logging: None) -> io.StringIO:
    stream = io.StringIO()
    configure_logging(level="DEBUG", stream=stream)
    return stream


def test_card_number_in_any_customer_field_is_refused(
    client: TestClient, tenant: TenantKeys, fake: Faker, app_billing: Billing, log_stream: io.StringIO
) -> None:
    body = customer_payload(fake)
    paths = list(string_paths(body))
    assert len(paths) >= 9
    for index, path in enumerate(paths):
        card = CARDS[index % len(CARDS)]
        response = client.post(
            "/v1/customers", json=planted(body, path, f"ref {card}"), headers=tenant.headers("booking")
        )
        assert response.status_code == 422, (path, response.text)
        assert response.json()["code"] == "card_data_rejected"
        assert response.json()["fields"] == [_pointer(path)]
        assert card not in response.text and card.replace(" ", "") not in response.text
    with app_billing.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Customer)) == 0
        refusals = session.scalars(select(AuditEvent).where(AuditEvent.action == "card_data.rejected")).all()
    assert len(refusals) == len(paths)
    logged = log_stream.getvalue()
    for card in CARDS:
        assert card not in logged and card.replace(" ", "").replace("-", "") not in logged
    assert all(card not in (r.detail or "") for r in refusals for card in CARDS)


def test_card_number_in_any_invoice_field_is_refused(
    client: TestClient, tenant: TenantKeys, fake: Faker, app_billing: Billing
) -> None:
    customer_id = client.post(
        "/v1/customers", json=customer_payload(fake), headers=tenant.headers("booking")
    ).json()["id"]
    body = invoice_payload(customer_id, fake)
    for path in string_paths(body):
        response = client.post(
            "/v1/invoices", json=planted(body, path, f"ref {CARDS[0]}"), headers=tenant.headers("booking")
        )
        assert response.status_code == 422, path
        assert response.json()["code"] == "card_data_rejected"
    as_number = json.loads(json.dumps(body))
    as_number["lines"][0]["unit_amount"] = int(CARDS[0])
    response = client.post("/v1/invoices", json=as_number, headers=tenant.headers("booking"))
    assert response.json()["code"] == "card_data_rejected"
    with app_billing.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Invoice)) == 0


@pytest.mark.parametrize("field", ["card_number", "cardNumber", "cvc", "cvv", "pan"])
def test_card_field_names_are_refused(
    client: TestClient, tenant: TenantKeys, fake: Faker, field: str
) -> None:
    body = customer_payload(fake) | {field: "123"}
    response = client.post("/v1/customers", json=body, headers=tenant.headers("booking"))
    assert response.status_code == 422
    assert response.json()["code"] == "card_data_rejected"


def test_card_number_in_query_path_and_raw_body(client: TestClient, tenant: TenantKeys) -> None:
    headers = tenant.headers("booking")
    query = client.get("/v1/customers", params={"email": f"{CARDS[0]}@example.org"}, headers=headers)
    assert query.json()["code"] == "card_data_rejected"
    assert query.json()["fields"] == ["query:email"]
    path = client.get(f"/v1/customers/{CARDS[0]}", headers=headers)
    assert path.json()["code"] == "card_data_rejected"
    raw = client.post(
        "/v1/customers",
        content=f"not json {CARDS[1]}".encode(),
        headers=headers | {"content-type": "text/plain"},
    )
    assert raw.json()["code"] == "card_data_rejected"
    assert CARDS[1] not in raw.text


def test_a_card_number_in_an_identifier_key_is_neither_echoed_nor_audited(
    client: TestClient, tenant: TenantKeys, fake: Faker, app_billing: Billing, log_stream: io.StringIO
) -> None:
    # Found by the Atheris harness (tests/fuzz/fuzz_pan.py): the path of such a key carried the number.
    key = f"ref{CARDS[0]}"
    response = client.post(
        "/v1/customers", json=customer_payload(fake) | {key: "x"}, headers=tenant.headers("booking")
    )
    assert response.status_code == 422
    assert response.json()["fields"] == [f'$["ref{PAN_REDACTION}"]']
    assert CARDS[0] not in response.text
    with app_billing.db.read() as session:
        refusals = session.scalars(select(AuditEvent).where(AuditEvent.action == "card_data.rejected")).all()
    assert len(refusals) == 1
    assert CARDS[0] not in (refusals[0].detail or "")
    assert CARDS[0] not in log_stream.getvalue()


def test_ordinary_digits_pass(client: TestClient, tenant: TenantKeys, fake: Faker) -> None:
    body = customer_payload(fake) | {
        "phone": "+33 6 12 34 56 78",
        "notes": "booking 2026-11-22 room 1204, ref 123456789012",
    }
    assert client.post("/v1/customers", json=body, headers=tenant.headers("booking")).status_code == 201
