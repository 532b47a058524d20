"""Payments through the API with the real SDK against the sandbox gateway over real HTTP.

Card numbers here are public gateway TEST numbers, turned into ``pm_…`` tokens at the sandbox the
way the browser's card element would; Veilbill itself only ever receives the tokens.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import httpx
import pytest
import stripe
from faker import Faker
from litestar.testing import TestClient
from sqlalchemy import delete
from sqlmodel import col, select

from api.app import create_app
from api.settings import Settings
from billing import Billing
from billing._models import Dispute, IdempotencyRecord, Invoice, Payment, Refund, WebhookEvent, utcnow
from tokenization import LocalStripeSandbox, StripeGateway, make_stripe_client, sign_payload
from tokenization.testing import FlakyGateway, UnavailableGateway

from ..conftest import API_KEY, TEST_CARDS, serve_in_thread
from .conftest import TenantKeys, customer_payload, invoice_payload, make_tenant

WEBHOOK_SECRET = "whsec_test_veilbill"


@pytest.fixture
def gateway_settings(settings: Settings, sandbox: LocalStripeSandbox) -> Settings:
    return replace(
        settings,
        stripe_api_key=API_KEY,
        stripe_api_base=sandbox.api_base,
        stripe_publishable_key="pk_test_veilbill",
        stripe_webhook_secret=f"whsec_old_secret,{WEBHOOK_SECRET}",
    )


@pytest.fixture
def pay_client(gateway_settings: Settings) -> Iterator[TestClient]:  # type: ignore[type-arg]
    with TestClient(create_app(gateway_settings, configure_logs=False)) as client:
        yield client


@pytest.fixture
def shop(pay_client: TestClient, app_billing: Billing) -> TenantKeys:  # type: ignore[type-arg]
    return make_tenant(pay_client, app_billing, "Hotel du Lac")


@dataclass
class Billed:
    customer_id: str
    invoice_id: str
    total: int


def _billed(client: TestClient, keys: TenantKeys, fake: Faker) -> Billed:  # type: ignore[type-arg]
    headers = keys.headers("booking")
    customer = client.post("/v1/customers", json=customer_payload(fake), headers=headers).json()
    draft = client.post("/v1/invoices", json=invoice_payload(customer["id"], fake), headers=headers).json()
    opened = client.post(f"/v1/invoices/{draft['id']}/finalize", headers=headers).json()
    return Billed(customer["id"], opened["id"], opened["total"])


def _save_card(
    client: TestClient,
    keys: TenantKeys,
    customer_id: str,
    token: str,  # type: ignore[type-arg]
) -> httpx.Response:
    return client.post(
        f"/v1/customers/{customer_id}/payment-methods", json={"token": token}, headers=keys.headers("booking")
    )


def _pay(client: Any, keys: TenantKeys, invoice_id: str, method_id: str, key: str | None) -> httpx.Response:
    headers = keys.headers("booking") | ({"Idempotency-Key": key} if key else {})
    return client.post(
        f"/v1/invoices/{invoice_id}/pay", json={"payment_method_id": method_id}, headers=headers
    )


def _intents_of(stripe_client: stripe.StripeClient, invoice_id: str) -> list[Any]:
    intents = stripe_client.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter()
    return [
        i for i in intents if i.metadata and i.metadata.to_dict().get("veilbill_invoice_id") == invoice_id
    ]


def test_save_a_card_and_pay(
    pay_client: TestClient,
    shop: TenantKeys,
    fake: Faker,
    card_token: Callable[[str], str],
    app_billing: Billing,
) -> None:
    billed = _billed(pay_client, shop, fake)
    saved = _save_card(pay_client, shop, billed.customer_id, card_token(TEST_CARDS["visa"]))
    assert saved.status_code == 201, saved.text
    card = saved.json()
    assert (card["brand"], card["last4"], card["exp_month"], card["exp_year"]) == ("visa", "4242", 12, 2030)
    listed = pay_client.get(
        f"/v1/customers/{billed.customer_id}/payment-methods", headers=shop.headers("booking")
    )
    assert [c["id"] for c in listed.json()["data"]] == [card["id"]]

    paid = _pay(pay_client, shop, billed.invoice_id, card["id"], "order-1")
    assert paid.status_code == 200, paid.text
    assert paid.json()["status"] == "succeeded" and paid.json()["amount"] == billed.total
    invoice = pay_client.get(f"/v1/invoices/{billed.invoice_id}", headers=shop.headers("booking")).json()
    assert invoice["status"] == "paid"
    again = _pay(pay_client, shop, billed.invoice_id, card["id"], "order-2")
    assert again.status_code == 409 and again.json()["code"] == "invalid_state_transition"


def test_pay_requires_an_idempotency_key(
    pay_client: TestClient, shop: TenantKeys, fake: Faker, card_token: Callable[[str], str]
) -> None:
    billed = _billed(pay_client, shop, fake)
    card = _save_card(pay_client, shop, billed.customer_id, card_token(TEST_CARDS["visa"])).json()
    response = _pay(pay_client, shop, billed.invoice_id, card["id"], None)
    assert response.status_code == 400 and response.json()["code"] == "idempotency_key_required"


def test_a_replayed_request_charges_once(
    pay_client: TestClient,
    shop: TenantKeys,
    fake: Faker,
    card_token: Callable[[str], str],
    stripe_client: stripe.StripeClient,
) -> None:
    billed = _billed(pay_client, shop, fake)
    card = _save_card(pay_client, shop, billed.customer_id, card_token(TEST_CARDS["visa"])).json()
    first = _pay(pay_client, shop, billed.invoice_id, card["id"], "same-key")
    replay = _pay(pay_client, shop, billed.invoice_id, card["id"], "same-key")
    assert replay.status_code == first.status_code == 200
    assert replay.json() == first.json()
    assert replay.headers["idempotent-replayed"] == "true"
    assert len(_intents_of(stripe_client, billed.invoice_id)) == 1
    reused = pay_client.post(
        f"/v1/invoices/{billed.invoice_id}/pay",
        json={"payment_method_id": "pmt_other"},
        headers=shop.headers("booking") | {"Idempotency-Key": "same-key"},
    )
    assert reused.status_code == 422 and reused.json()["code"] == "idempotency_key_reused"


def test_a_payment_whose_answer_was_lost_after_it_was_recorded_is_answered_again(
    pay_client: TestClient,
    shop: TenantKeys,
    fake: Faker,
    card_token: Callable[[str], str],
    stripe_client: stripe.StripeClient,
    app_billing: Billing,
) -> None:
    """The process died after the payment was recorded and before its answer was stored.

    The retry takes the key's claim over (see ``tests/api/test_idempotency.py``) and runs again; it
    answered ``409 invalid_state_transition`` (the invoice was paid) instead of the payment. Found
    while writing ``tests/integration/test_kill_under_load.py``, which can hit that window too.
    """
    billed = _billed(pay_client, shop, fake)
    card = _save_card(pay_client, shop, billed.customer_id, card_token(TEST_CARDS["visa"])).json()
    first = _pay(pay_client, shop, billed.invoice_id, card["id"], "pay-then-crash")
    assert first.status_code == 200, first.text
    with app_billing.db.transaction() as session:  # the answer never stored: only the claim is left
        session.execute(delete(IdempotencyRecord).where(col(IdempotencyRecord.key) == "pay-then-crash"))
    retried = _pay(pay_client, shop, billed.invoice_id, card["id"], "pay-then-crash")
    assert retried.status_code == 200, retried.text
    assert "idempotent-replayed" not in retried.headers, "ran again, not replayed"
    assert retried.json() == first.json()
    assert len(_intents_of(stripe_client, billed.invoice_id)) == 1
    other_key = _pay(pay_client, shop, billed.invoice_id, card["id"], "another-payment")
    assert other_key.status_code == 409 and other_key.json()["code"] == "invalid_state_transition"


def _setup_intents_of(stripe_client: stripe.StripeClient, gateway_customer: str | None) -> list[str]:
    intents = stripe_client.v1.setup_intents.list(params={"limit": 100}).auto_paging_iter()
    return sorted(i.id for i in intents if gateway_customer is not None and i.customer == gateway_customer)


def _answer_lost(billing: Billing, key: str) -> None:
    """What a process killed before storing the answer leaves: the claim, in progress, unextended."""
    with billing.db.transaction() as session:
        record = session.exec(select(IdempotencyRecord).where(IdempotencyRecord.key == key)).one()
        record.state, record.response_ct, record.response_status = "in_progress", None, None
        record.expires_at = utcnow() - timedelta(seconds=1)
        session.add(record)


def test_a_setup_intent_whose_answer_was_lost_is_answered_again_not_made_twice(
    pay_client: TestClient,
    shop: TenantKeys,
    fake: Faker,
    stripe_client: stripe.StripeClient,
    app_billing: Billing,
) -> None:
    """The process died after the gateway made the setup intent and before the answer was stored;
    the retry made a second intent (the sandbox, like a gateway past its replay window, ignores
    idempotency keys). It now finds the first by the key derived from the request's."""
    customer = pay_client.post("/v1/customers", json=customer_payload(fake), headers=shop.headers("booking"))
    path = f"/v1/customers/{customer.json()['id']}/setup-intents"
    headers = shop.headers("booking") | {"Idempotency-Key": "setup-then-crash"}
    first = pay_client.post(path, headers=headers)
    assert first.status_code == 201, first.text
    _answer_lost(app_billing, "setup-then-crash")

    retried = pay_client.post(path, headers=headers)
    assert retried.status_code == 201, retried.text
    assert "idempotent-replayed" not in retried.headers, "ran again, not replayed"
    assert retried.json() == first.json()
    gateway_customer = app_billing.payments.gateway_customer_id(customer.json()["id"])
    assert _setup_intents_of(stripe_client, gateway_customer) == [first.json()["setup_intent_id"]]
    another = pay_client.post(path, headers=shop.headers("booking") | {"Idempotency-Key": "another-card"})
    assert another.json()["setup_intent_id"] != first.json()["setup_intent_id"], "another key, another"
    assert len(_setup_intents_of(stripe_client, gateway_customer)) == 2


def test_a_setup_intent_whose_gateway_answer_timed_out_is_found_by_the_retry(
    gateway_settings: Settings,
    fake: Faker,
    card_token: Callable[[str], str],
    stripe_client: stripe.StripeClient,
    app_billing: Billing,
) -> None:
    """The gateway made the intent but its answer was lost (504: the key is released and the retry
    runs again); the retry adopts the intent instead of making a second one."""
    real, keys, billed, _ = _billed_with_card(gateway_settings, app_billing, fake, card_token)
    path = f"/v1/customers/{billed.customer_id}/setup-intents"
    headers = keys.headers("booking") | {"Idempotency-Key": "setup-timed-out"}
    lossy = FlakyGateway(real, 1, _timeout, lose_response=True)
    with TestClient(create_app(gateway_settings, configure_logs=False, gateway=lossy)) as client:
        lost = client.post(path, headers=headers)
        assert lost.status_code == 504, lost.text
        retried = client.post(path, headers=headers)
        assert retried.status_code == 201, retried.text
    gateway_customer = app_billing.payments.gateway_customer_id(billed.customer_id)
    assert _setup_intents_of(stripe_client, gateway_customer) == [retried.json()["setup_intent_id"]]


def test_idempotency_keys_are_per_tenant(
    pay_client: TestClient, shop: TenantKeys, fake: Faker, app_billing: Billing
) -> None:
    other = make_tenant(pay_client, app_billing, "Other Hotel")
    body = customer_payload(fake)
    mine = pay_client.post(
        "/v1/customers", json=body, headers=shop.headers("booking") | {"Idempotency-Key": "k1"}
    )
    theirs = pay_client.post(
        "/v1/customers", json=body, headers=other.headers("booking") | {"Idempotency-Key": "k1"}
    )
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]
    replay = pay_client.post(
        "/v1/customers", json=body, headers=shop.headers("booking") | {"Idempotency-Key": "k1"}
    )
    assert replay.json()["id"] == mine.json()["id"]


def test_declined_at_charge_leaves_the_invoice_open(
    pay_client: TestClient, shop: TenantKeys, fake: Faker, card_token: Callable[[str], str]
) -> None:
    billed = _billed(pay_client, shop, fake)
    bad = _save_card(
        pay_client, shop, billed.customer_id, card_token(TEST_CARDS["declined_on_charge"])
    ).json()
    declined = _pay(pay_client, shop, billed.invoice_id, bad["id"], "try-1")
    assert declined.status_code == 402, declined.text
    problem = declined.json()
    assert problem["code"] == "card_declined" and problem["decline_code"] and problem["payment_id"]
    invoice = pay_client.get(f"/v1/invoices/{billed.invoice_id}", headers=shop.headers("booking")).json()
    assert invoice["status"] == "open"
    good = _save_card(pay_client, shop, billed.customer_id, card_token(TEST_CARDS["visa"])).json()
    assert _pay(pay_client, shop, billed.invoice_id, good["id"], "try-2").json()["status"] == "succeeded"
    history = pay_client.get(
        f"/v1/invoices/{billed.invoice_id}/payments", headers=shop.headers("booking")
    ).json()
    assert [p["status"] for p in history["payments"]] == ["failed", "succeeded"]


def test_declined_at_attach(
    pay_client: TestClient, shop: TenantKeys, fake: Faker, card_token: Callable[[str], str]
) -> None:
    billed = _billed(pay_client, shop, fake)
    response = _save_card(pay_client, shop, billed.customer_id, card_token(TEST_CARDS["declined_on_attach"]))
    assert response.status_code == 402 and response.json()["code"] == "card_declined"
    listed = pay_client.get(
        f"/v1/customers/{billed.customer_id}/payment-methods", headers=shop.headers("booking")
    )
    assert listed.json()["data"] == []


def test_three_d_secure_returns_a_client_secret_and_a_webhook_completes_it(
    pay_client: TestClient,
    shop: TenantKeys,
    fake: Faker,
    card_token: Callable[[str], str],
    app_billing: Billing,
) -> None:
    billed = _billed(pay_client, shop, fake)
    card = _save_card(pay_client, shop, billed.customer_id, card_token(TEST_CARDS["three_d_secure"])).json()
    started = _pay(pay_client, shop, billed.invoice_id, card["id"], "3ds-1")
    assert started.status_code == 200, started.text
    body = started.json()
    assert body["status"] == "requires_action" and body["client_secret"]
    payments = pay_client.get(
        f"/v1/invoices/{billed.invoice_id}/payments", headers=shop.headers("booking")
    ).json()
    intent_id = _intent_id(app_billing, payments["payments"][0]["payment_id"])
    event = _event(
        "payment_intent.succeeded", {"id": intent_id, "object": "payment_intent", "status": "succeeded"}
    )
    delivered = _deliver(pay_client, event)
    assert delivered.status_code == 202, delivered.text
    invoice = _wait_for_status(pay_client, shop, billed.invoice_id, "paid")
    assert invoice["status"] == "paid"
    replayed = _deliver(pay_client, event)
    assert replayed.status_code == 200 and replayed.json()["duplicate"] is True


def test_refunds_issue_numbered_credit_notes_and_never_exceed_what_was_paid(
    pay_client: TestClient, shop: TenantKeys, fake: Faker, card_token: Callable[[str], str]
) -> None:
    billed = _billed(pay_client, shop, fake)
    card = _save_card(pay_client, shop, billed.customer_id, card_token(TEST_CARDS["visa"])).json()
    _pay(pay_client, shop, billed.invoice_id, card["id"], "pay")
    headers = shop.headers("booking")
    path = f"/v1/invoices/{billed.invoice_id}/refunds"
    first = pay_client.post(path, json={"amount": 1000}, headers=headers | {"Idempotency-Key": "r1"})
    assert first.status_code == 201, first.text
    year = time.gmtime().tm_year
    assert first.json()["credit_note_number"] == f"CN-{year}-000001"
    assert first.json()["status"] == "succeeded"
    partially = pay_client.get(f"/v1/invoices/{billed.invoice_id}", headers=headers).json()
    assert partially["status"] == "partially_refunded"
    too_much = pay_client.post(
        path, json={"amount": billed.total}, headers=headers | {"Idempotency-Key": "r2"}
    )
    assert too_much.status_code == 422 and too_much.json()["code"] == "refund_exceeds_paid"
    rest = pay_client.post(
        path, json={"reason": "requested_by_customer"}, headers=headers | {"Idempotency-Key": "r3"}
    )
    assert rest.json()["amount"] == billed.total - 1000
    assert rest.json()["credit_note_number"] == f"CN-{year}-000002"
    assert pay_client.get(f"/v1/invoices/{billed.invoice_id}", headers=headers).json()["status"] == "refunded"
    replay = pay_client.post(path, json={"amount": 1000}, headers=headers | {"Idempotency-Key": "r1"})
    assert replay.json() == first.json()


def test_unavailable_gateway_then_a_retry_charges_exactly_once(
    gateway_settings: Settings,
    fake: Faker,
    card_token: Callable[[str], str],
    stripe_client: stripe.StripeClient,
    app_billing: Billing,
) -> None:
    real, keys, billed, card = _billed_with_card(gateway_settings, app_billing, fake, card_token)
    for broken, status in (
        (UnavailableGateway(), 503),
        (FlakyGateway(real, 1, _timeout, lose_response=True), 504),
    ):
        with TestClient(create_app(gateway_settings, configure_logs=False, gateway=broken)) as client:
            failed = _pay(client, keys, billed.invoice_id, card["id"], "retry-me")
            assert failed.status_code == status, failed.text
            assert failed.json()["code"] == "gateway_unavailable"
            assert (
                client.get(f"/v1/invoices/{billed.invoice_id}", headers=keys.headers("booking")).json()[
                    "status"
                ]
                == "open"
            )
    assert len(_intents_of(stripe_client, billed.invoice_id)) == 1  # the lost response did charge
    with TestClient(create_app(gateway_settings, configure_logs=False, gateway=real)) as client:
        retried = _pay(client, keys, billed.invoice_id, card["id"], "retry-me")
        assert retried.status_code == 200, retried.text
        assert retried.json()["status"] == "succeeded"
        assert (
            client.get(f"/v1/invoices/{billed.invoice_id}", headers=keys.headers("booking")).json()["status"]
            == "paid"
        )
    assert len(_intents_of(stripe_client, billed.invoice_id)) == 1
    with app_billing.db.read() as session:
        payments = session.exec(select(Payment).where(Payment.invoice_id == billed.invoice_id)).all()
        invoice = session.get(Invoice, billed.invoice_id)
    assert [p.status for p in payments] == ["succeeded"]
    assert invoice is not None and invoice.amount_paid == billed.total


def test_concurrent_payments_and_refunds(
    gateway_settings: Settings,
    fake: Faker,
    card_token: Callable[[str], str],
    stripe_client: stripe.StripeClient,
    app_billing: Billing,
) -> None:
    with (
        serve_in_thread(create_app(gateway_settings, configure_logs=False)) as base_url,
        httpx.Client(base_url=base_url, timeout=30) as client,
    ):
        keys = make_tenant(client, app_billing, "Busy Salon")  # type: ignore[arg-type]
        billed = _billed(client, keys, fake)  # type: ignore[arg-type]
        card = _save_card(client, keys, billed.customer_id, card_token(TEST_CARDS["visa"])).json()  # type: ignore[arg-type]

        def pay(index: int) -> int:
            key = "one-key" if index % 2 else f"key-{index}"
            with httpx.Client(base_url=base_url, timeout=30) as own:
                return _pay(own, keys, billed.invoice_id, card["id"], key).status_code

        with ThreadPoolExecutor(max_workers=10) as pool:
            statuses = list(pool.map(pay, range(20)))
        assert 200 in statuses and set(statuses) <= {200, 409}, statuses
        assert len(_intents_of(stripe_client, billed.invoice_id)) == 1

        share = billed.total // 8 + 1  # 20 refunds of this sum to far more than was paid

        def refund(index: int) -> int:
            with httpx.Client(base_url=base_url, timeout=30) as own:
                return own.post(
                    f"/v1/invoices/{billed.invoice_id}/refunds",
                    json={"amount": share},
                    headers=keys.headers("booking") | {"Idempotency-Key": f"refund-{index}"},
                ).status_code

        with ThreadPoolExecutor(max_workers=10) as pool:
            refund_statuses = list(pool.map(refund, range(20)))
        assert refund_statuses.count(201) == billed.total // share
        history = client.get(
            f"/v1/invoices/{billed.invoice_id}/payments", headers=keys.headers("booking")
        ).json()
    refunded = sum(r["amount"] for r in history["refunds"] if r["status"] == "succeeded")
    assert refunded <= billed.total
    numbers = sorted(r["credit_note_number"] for r in history["refunds"])
    assert len(set(numbers)) == len(numbers)


def test_webhook_signatures_are_enforced(pay_client: TestClient) -> None:
    event = _event("payment_intent.succeeded", {"id": "pi_unknown", "object": "payment_intent"})
    payload = json.dumps(event).encode()
    now = int(time.time())
    cases = {
        "no header": {},
        "wrong secret": {"Stripe-Signature": sign_payload(payload, "whsec_wrong", timestamp=now)},
        "stale": {"Stripe-Signature": sign_payload(payload, WEBHOOK_SECRET, timestamp=now - 3600)},
        "garbage": {"Stripe-Signature": "t=abc,v1=zz"},
    }
    for name, headers in cases.items():
        response = pay_client.post("/v1/webhooks/stripe", content=payload, headers=headers)
        assert response.status_code == 400, name
        assert response.json()["code"] == "webhook_signature_invalid", name
    tampered = pay_client.post(
        "/v1/webhooks/stripe",
        content=payload.replace(b"pi_unknown", b"pi_other"),
        headers={"Stripe-Signature": sign_payload(payload, WEBHOOK_SECRET, timestamp=now)},
    )
    assert tampered.status_code == 400
    old_secret = pay_client.post(
        "/v1/webhooks/stripe",
        content=payload,
        headers={"Stripe-Signature": sign_payload(payload, "whsec_old_secret", timestamp=now)},
    )
    assert old_secret.status_code == 202  # the previous secret still verifies during rotation


def test_a_gateway_without_a_webhook_secret_refuses_to_start(gateway_settings: Settings) -> None:
    with pytest.raises(ValueError, match="WEBHOOK_SECRET"):
        replace(gateway_settings, stripe_webhook_secret=None)


def test_invoice_pdf(pay_client: TestClient, shop: TenantKeys, fake: Faker) -> None:
    billed = _billed(pay_client, shop, fake)
    response = pay_client.get(f"/v1/invoices/{billed.invoice_id}/pdf", headers=shop.headers("booking"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    assert response.content.startswith(b"%PDF-")
    assert response.headers["cache-control"] == "no-store"


def test_payment_session_link(pay_client: TestClient, shop: TenantKeys, fake: Faker) -> None:
    billed = _billed(pay_client, shop, fake)
    response = pay_client.post(
        f"/v1/invoices/{billed.invoice_id}/payment-sessions", headers=shop.headers("booking")
    )
    assert response.status_code == 201, response.text
    assert "/pay/" in response.json()["url"]


# --- helpers ---------------------------------------------------------------------------------------


def _billed_with_card(
    settings: Settings, billing: Billing, fake: Faker, card_token: Callable[[str], str]
) -> tuple[StripeGateway, TenantKeys, Billed, dict[str, Any]]:
    """A real gateway, and a tenant whose client has an open invoice and a saved card."""
    real = StripeGateway(make_stripe_client(API_KEY, api_base=settings.stripe_api_base), localstripe=True)
    with TestClient(create_app(settings, configure_logs=False, gateway=real)) as client:
        keys = make_tenant(client, billing, fake.company())
        billed = _billed(client, keys, fake)
        card = _save_card(client, keys, billed.customer_id, card_token(TEST_CARDS["visa"])).json()
    return real, keys, billed, card


def _timeout() -> Exception:
    from tokenization import GatewayTimeout

    return GatewayTimeout(request_id=None)


def _event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "data": {"object": obj},
    }


def _deliver(client: TestClient, event: dict[str, Any]) -> httpx.Response:  # type: ignore[type-arg]
    payload = json.dumps(event).encode()
    signature = sign_payload(payload, WEBHOOK_SECRET, timestamp=int(time.time()))
    return client.post("/v1/webhooks/stripe", content=payload, headers={"Stripe-Signature": signature})


def _intent_id(billing: Billing, payment_id: str) -> str:
    with billing.db.read() as session:
        payment = session.get(Payment, payment_id)
        assert payment is not None and payment.gateway_intent_id is not None
        return payment.gateway_intent_id


def _wait_for_status(
    client: TestClient,
    keys: TenantKeys,
    invoice_id: str,
    status: str,  # type: ignore[type-arg]
) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        invoice: dict[str, Any] = client.get(
            f"/v1/invoices/{invoice_id}", headers=keys.headers("booking")
        ).json()
        if invoice["status"] == status or time.monotonic() > deadline:
            return invoice
        time.sleep(0.1)


def test_a_refund_whose_answer_was_lost_is_not_repeated(
    gateway_settings: Settings,
    fake: Faker,
    card_token: Callable[[str], str],
    stripe_client: stripe.StripeClient,
    app_billing: Billing,
) -> None:
    real, keys, billed, card = _billed_with_card(gateway_settings, app_billing, fake, card_token)
    with TestClient(create_app(gateway_settings, configure_logs=False, gateway=real)) as client:
        assert _pay(client, keys, billed.invoice_id, card["id"], "pay").status_code == 200
    refund_path = f"/v1/invoices/{billed.invoice_id}/refunds"
    headers = keys.headers("booking") | {"Idempotency-Key": "refund-once"}
    lossy = FlakyGateway(real, 1, _timeout, lose_response=True)
    with TestClient(create_app(gateway_settings, configure_logs=False, gateway=lossy)) as client:
        lost = client.post(refund_path, json={"amount": 500}, headers=headers)
        assert lost.status_code == 504, lost.text
    with TestClient(create_app(gateway_settings, configure_logs=False, gateway=real)) as client:
        retried = client.post(refund_path, json={"amount": 500}, headers=headers)
        assert retried.status_code == 201, retried.text
        assert retried.json()["status"] == "succeeded" and retried.json()["credit_note_number"]
    intent = _intents_of(stripe_client, billed.invoice_id)[0]
    refunds = [
        r
        for r in stripe_client.v1.refunds.list(params={"limit": 100}).auto_paging_iter()
        if r.payment_intent == intent.id
    ]
    assert [r.amount for r in refunds] == [500]


def test_events_signed_and_sent_by_the_sandbox_are_verified_and_applied(
    gateway_settings: Settings,
    fake: Faker,
    card_token: Callable[[str], str],
    sandbox: LocalStripeSandbox,
    app_billing: Billing,
) -> None:
    secret = f"whsec_{uuid.uuid4().hex}"
    settings = replace(gateway_settings, stripe_webhook_secret=secret)
    with (
        serve_in_thread(create_app(settings, configure_logs=False)) as base_url,
        httpx.Client(base_url=base_url, timeout=30) as client,
    ):
        sandbox.register_webhook("api-contract", f"{base_url}/v1/webhooks/stripe", secret)
        try:
            keys = make_tenant(client, app_billing, "Webhook Salon")  # type: ignore[arg-type]
            billed = _billed(client, keys, fake)  # type: ignore[arg-type]
            card = _save_card(client, keys, billed.customer_id, card_token(TEST_CARDS["visa"])).json()  # type: ignore[arg-type]
            paid = _pay(client, keys, billed.invoice_id, card["id"], "hooked")
            assert paid.json()["status"] == "succeeded"
            intent_id = _intent_id(app_billing, paid.json()["payment_id"])
            event = _wait_for_event(app_billing, "payment_intent.succeeded", intent_id)
        finally:  # registrations cannot be deleted: narrow this one to an event that never happens
            sandbox.register_webhook(
                "api-contract", f"{base_url}/v1/webhooks/stripe", secret, events=["none.never"]
            )
    assert event is not None, "the sandbox's signed event never arrived"
    assert event.outcome == "applied" and event.processed_at is not None
    assert json.loads(event.payload)["id"] == intent_id


def _wait_for_event(billing: Billing, kind: str, object_id: str) -> WebhookEvent | None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with billing.db.read() as session:
            found = session.exec(
                select(WebhookEvent).where(WebhookEvent.type == kind, WebhookEvent.object_id == object_id)
            ).first()
        if found is not None and found.processed_at is not None:
            return found
        time.sleep(0.2)
    return None


def test_detach_a_card(
    pay_client: TestClient, shop: TenantKeys, fake: Faker, card_token: Callable[[str], str]
) -> None:
    billed = _billed(pay_client, shop, fake)
    card = _save_card(pay_client, shop, billed.customer_id, card_token(TEST_CARDS["visa"])).json()
    path = f"/v1/customers/{billed.customer_id}/payment-methods"
    detached = pay_client.delete(f"{path}/{card['id']}", headers=shop.headers("booking"))
    assert detached.status_code == 200, detached.text
    assert pay_client.get(path, headers=shop.headers("booking")).json()["data"] == []
    refused = _pay(pay_client, shop, billed.invoice_id, card["id"], "after-detach")
    assert refused.status_code == 404 and refused.json()["resource"] == "payment_method"


def test_refund_and_dispute_events_are_applied_once(
    pay_client: TestClient,
    shop: TenantKeys,
    fake: Faker,
    card_token: Callable[[str], str],
    app_billing: Billing,
) -> None:
    billed = _billed(pay_client, shop, fake)
    card = _save_card(pay_client, shop, billed.customer_id, card_token(TEST_CARDS["visa"])).json()
    paid = _pay(pay_client, shop, billed.invoice_id, card["id"], "pay").json()
    intent_id = _intent_id(app_billing, paid["payment_id"])
    with app_billing.db.transaction() as session:  # a refund the gateway has not confirmed yet
        session.add(
            Refund(
                id="re_pendingtest",
                tenant_id=shop.tenant_id,
                invoice_id=billed.invoice_id,
                payment_id=paid["payment_id"],
                amount=700,
                currency="EUR",
                status="pending",
                gateway_refund_id="re_gateway_1",
                gateway_idempotency_key="k",
                created_at=utcnow(),
                updated_at=utcnow(),
            )
        )
    refunded = _event(
        "charge.refunded",
        {
            "id": "ch_1",
            "object": "charge",
            "payment_intent": intent_id,
            "refunds": {"data": [{"id": "re_gateway_1", "status": "succeeded", "amount": 700}]},
        },
    )
    assert _deliver(pay_client, refunded).status_code == 202
    assert _deliver(pay_client, refunded).json()["duplicate"] is True
    history = _wait_for(
        lambda: pay_client.get(
            f"/v1/invoices/{billed.invoice_id}/payments", headers=shop.headers("booking")
        ).json(),
        lambda h: h["refunds"] and h["refunds"][0]["status"] == "succeeded",
    )
    assert history["refunds"][0]["credit_note_number"]
    invoice = pay_client.get(f"/v1/invoices/{billed.invoice_id}", headers=shop.headers("booking")).json()
    assert invoice["status"] == "partially_refunded"

    disputed = _event(
        "charge.dispute.created",
        {
            "id": "dp_1",
            "object": "dispute",
            "payment_intent": intent_id,
            "amount": billed.total,
            "status": "needs_response",
            "reason": "fraudulent",
        },
    )
    assert _deliver(pay_client, disputed).status_code == 202
    dispute = _wait_for(lambda: _dispute(app_billing, "dp_1"), lambda d: d is not None)
    assert dispute is not None
    assert (dispute.payment_id, dispute.status, dispute.tenant_id) == (
        paid["payment_id"],
        "needs_response",
        shop.tenant_id,
    )


def _dispute(billing: Billing, dispute_id: str) -> Dispute | None:
    with billing.db.read() as session:
        return session.get(Dispute, dispute_id)


def _wait_for(read: Callable[[], Any], done: Callable[[Any], bool]) -> Any:
    deadline = time.monotonic() + 10
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.1)
        value = read()
    return value
