"""Reconciliation against the sandbox gateway: clean books stay clean, each kind of drift is named.

Payments are made through the API with the real SDK against the sandbox; drift is then made the
way a crash or a bad restore would leave it — by writing the database directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from faker import Faker
from litestar.testing import TestClient
from sqlalchemy import text

from api.settings import Settings
from billing import Billing, Database, DatabaseConfig, Reconciler
from tokenization import StripeGateway, make_stripe_client

from ..api.conftest import TenantKeys, make_tenant
from ..api.test_payments import _billed, _pay, _save_card
from ..conftest import API_KEY, TEST_CARDS


@pytest.fixture
def paid(
    pay_client: TestClient[Any], app_billing: Billing, fake: Faker, card_token: Callable[[str], str]
) -> tuple[TenantKeys, str]:
    """A tenant with one invoice paid by card and partly refunded (with its credit note)."""
    shop = make_tenant(pay_client, app_billing, "Spa des Lilas")
    billed = _billed(pay_client, shop, fake)
    card = _save_card(pay_client, shop, billed.customer_id, card_token(TEST_CARDS["visa"])).json()
    assert _pay(pay_client, shop, billed.invoice_id, card["id"], "pay-1").status_code == 200
    refund = pay_client.post(
        f"/v1/invoices/{billed.invoice_id}/refunds",
        json={"amount": 500, "reason": "requested_by_customer"},
        headers=shop.headers("booking") | {"Idempotency-Key": "refund-1"},
    )
    assert refund.status_code == 201, refund.text
    return shop, billed.invoice_id


@pytest.fixture
def reconciler(gateway_settings: Settings) -> Iterator[Reconciler]:
    db = Database(DatabaseConfig(gateway_settings.database_url))
    gateway = StripeGateway(
        make_stripe_client(API_KEY, api_base=gateway_settings.stripe_api_base), localstripe=True
    )
    yield Reconciler(db, gateway)
    db.dispose()


def _sql(settings: Settings, statement: str, **params: Any) -> None:
    db = Database(DatabaseConfig(settings.database_url))
    with db.engine.begin() as connection:
        connection.execute(text(statement), params)
    db.dispose()


def _kinds(reconciler: Reconciler, tenant_id: str) -> list[str]:
    return sorted(found.kind for found in reconciler.reconcile(tenant_id=tenant_id).discrepancies)


def test_books_that_agree_with_the_gateway_are_clean(
    paid: tuple[TenantKeys, str], reconciler: Reconciler
) -> None:
    shop, _ = paid
    report = reconciler.reconcile(tenant_id=shop.tenant_id)
    assert report.gateway_checked and report.payments_checked == 1 and report.invoices_checked == 1
    assert report.clean, report.discrepancies


def test_a_payment_marked_failed_that_the_gateway_took_is_reported(
    paid: tuple[TenantKeys, str], reconciler: Reconciler, gateway_settings: Settings
) -> None:
    shop, invoice_id = paid
    _sql(gateway_settings, "UPDATE payments SET status = 'failed' WHERE invoice_id = :id", id=invoice_id)
    found = reconciler.reconcile(tenant_id=shop.tenant_id).discrepancies
    assert {f.kind for f in found} == {
        "intent_status_differs",  # the gateway took the money
        "paid_amount_differs",  # the invoice says paid, no succeeded payment backs it
        "refunds_exceed_payment",  # the refund now exceeds what the books say was paid
        "status_inconsistent",
    }
    differs = next(f for f in found if f.kind == "intent_status_differs")
    assert (differs.invoice_id, differs.local, differs.gateway) == (invoice_id, "failed", "succeeded")


def test_an_intent_whose_answer_was_never_written_is_found_by_its_metadata(
    paid: tuple[TenantKeys, str], reconciler: Reconciler, gateway_settings: Settings
) -> None:
    shop, invoice_id = paid
    # As if the process died between the gateway's answer and the write of the intent id.
    _sql(
        gateway_settings, "UPDATE payments SET gateway_intent_id = NULL WHERE invoice_id = :id", id=invoice_id
    )
    assert _kinds(reconciler, shop.tenant_id) == ["intent_not_recorded"]


def test_amounts_refunds_credit_notes_and_numbering_are_checked(
    paid: tuple[TenantKeys, str], reconciler: Reconciler, gateway_settings: Settings
) -> None:
    shop, invoice_id = paid
    _sql(
        gateway_settings,
        "UPDATE invoices SET amount_refunded = 0, number_seq = 7 WHERE id = :id",
        id=invoice_id,
    )
    _sql(gateway_settings, "DELETE FROM credit_notes WHERE invoice_id = :id", id=invoice_id)
    assert _kinds(reconciler, shop.tenant_id) == [
        "numbering_gap",
        "refund_without_credit_note",
        "refunded_amount_differs",
    ]


def test_a_refund_made_at_the_gateway_behind_our_back_is_named(
    paid: tuple[TenantKeys, str], reconciler: Reconciler, gateway_settings: Settings
) -> None:
    """Found by ``tests/integration/test_kill_under_load.py``: this was reported clean.

    A refund leaves the intent ``succeeded`` with its amount, so comparing intents alone never saw
    money given back outside Veilbill (the gateway's dashboard, or a crash between the gateway's
    refund and its record).
    """
    shop, invoice_id = paid
    db = Database(DatabaseConfig(gateway_settings.database_url))
    with db.engine.connect() as connection:
        payment_id, intent_id = connection.execute(
            text("SELECT id, gateway_intent_id FROM payments WHERE invoice_id = :id"), {"id": invoice_id}
        ).one()
    db.dispose()
    client = make_stripe_client(API_KEY, api_base=gateway_settings.stripe_api_base)
    out_of_band = client.v1.refunds.create(params={"payment_intent": intent_id, "amount": 100})
    found = reconciler.reconcile(tenant_id=shop.tenant_id).discrepancies
    assert [(f.kind, f.payment_id, f.local, f.gateway) for f in found] == [
        ("refund_not_recorded", payment_id, None, f"{out_of_band.id}:100")
    ]


@pytest.mark.parametrize(
    ("drift", "kinds"),
    [
        (
            "UPDATE refunds SET status = 'pending' WHERE invoice_id = :id",
            ["refund_status_differs", "refunded_amount_differs"],
        ),
        (
            "UPDATE refunds SET amount = 400 WHERE invoice_id = :id",
            ["refund_amount_differs", "refunded_amount_differs"],
        ),
        (
            "INSERT INTO refunds (id, tenant_id, invoice_id, payment_id, amount, currency, status, reason,"
            " gateway_refund_id, gateway_idempotency_key, created_at, updated_at)"
            " SELECT 're_ghost', tenant_id, invoice_id, payment_id, 200, currency, 'succeeded', reason, NULL,"
            " 'vb-ghost', created_at, updated_at FROM refunds WHERE invoice_id = :id",
            ["refund_missing", "refund_without_credit_note", "refunded_amount_differs"],
        ),
    ],
    ids=["status", "amount", "missing"],
)
def test_refunds_recorded_otherwise_than_the_gateway_made_them_are_named(
    paid: tuple[TenantKeys, str],
    reconciler: Reconciler,
    gateway_settings: Settings,
    drift: str,
    kinds: list[str],
) -> None:
    shop, invoice_id = paid
    _sql(gateway_settings, drift, id=invoice_id)
    assert _kinds(reconciler, shop.tenant_id) == sorted(kinds)


def test_without_a_gateway_only_the_books_are_checked(
    paid: tuple[TenantKeys, str], gateway_settings: Settings
) -> None:
    shop, _ = paid
    db = Database(DatabaseConfig(gateway_settings.database_url))
    try:
        report = Reconciler(db, None).reconcile(tenant_id=shop.tenant_id)
    finally:
        db.dispose()
    assert not report.gateway_checked and report.clean


def test_the_whole_database_by_default(
    paid: tuple[TenantKeys, str], reconciler: Reconciler, pay_client: TestClient[Any], app_billing: Billing
) -> None:
    make_tenant(pay_client, app_billing, "Hotel Beau Rivage")  # a second tenant, nothing to reconcile
    everything = reconciler.reconcile()
    assert everything.clean and everything.payments_checked == 1
    assert everything.invoices_checked == reconciler.reconcile(tenant_id=paid[0].tenant_id).invoices_checked
