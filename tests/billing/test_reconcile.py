"""Reconciliation against the sandbox gateway: clean books stay clean, each kind of drift is named.

Payments are made through the API with the real SDK against the sandbox; drift is then made the
way a crash or a bad restore would leave it — by writing the database directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from faker import Faker
from litestar.testing import TestClient
from sqlalchemy import text

from api.app import create_app
from api.settings import Settings
from billing import STALE_PENDING_REFUND, Billing, Database, DatabaseConfig, Reconciler, utcnow
from tokenization import GatewayTimeout, GatewayUnavailable, StripeGateway, make_stripe_client
from tokenization.testing import FlakyGateway

from ..api.conftest import TenantKeys, make_tenant
from ..api.test_payments import _billed, _billed_with_card, _pay, _save_card
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


# --- refunds left pending -----------------------------------------------------------------------


@pytest.fixture
def reconciler_later(gateway_settings: Settings) -> Iterator[Callable[[timedelta], Reconciler]]:
    """A reconciler on the sandbox whose clock runs ``later`` ahead of now."""
    db = Database(DatabaseConfig(gateway_settings.database_url))
    gateway = StripeGateway(
        make_stripe_client(API_KEY, api_base=gateway_settings.stripe_api_base), localstripe=True
    )

    def at(later: timedelta) -> Reconciler:
        return Reconciler(db, gateway, clock=lambda: utcnow() + later)

    yield at
    db.dispose()


def _abandoned_refund(
    settings: Settings, billing: Billing, fake: Faker, card_token: Callable[[str], str], *, reached: bool
) -> tuple[str, str, str]:
    """A paid invoice whose refund of 5.00 failed on the gateway's side and was never retried.

    ``reached``: the gateway made the refund and its answer was lost (504); otherwise the gateway
    was unreachable (503) and made nothing. Either way the refund stays ``pending``. Returns the
    tenant, the payment and the refund ids.
    """
    real, keys, billed, card = _billed_with_card(settings, billing, fake, card_token)
    failing = FlakyGateway(
        real,
        1,
        (lambda: GatewayTimeout(None)) if reached else (lambda: GatewayUnavailable(None)),
        lose_response=reached,
    )
    with TestClient(create_app(settings, configure_logs=False, gateway=real)) as client:
        assert _pay(client, keys, billed.invoice_id, card["id"], "pay").status_code == 200
    with TestClient(create_app(settings, configure_logs=False, gateway=failing)) as client:
        refund = client.post(
            f"/v1/invoices/{billed.invoice_id}/refunds",
            json={"amount": 500},
            headers=keys.headers("booking") | {"Idempotency-Key": "refund-abandoned"},
        )
        assert refund.status_code == (504 if reached else 503), refund.text
    db = Database(DatabaseConfig(settings.database_url))
    with db.engine.connect() as connection:
        payment_id, refund_id, status = connection.execute(
            text("SELECT payment_id, id, status FROM refunds WHERE invoice_id = :id"),
            {"id": billed.invoice_id},
        ).one()
    db.dispose()
    assert status == "pending"
    return keys.tenant_id, payment_id, refund_id


def test_a_refund_left_pending_is_reported_once_it_is_stale(
    gateway_settings: Settings,
    app_billing: Billing,
    fake: Faker,
    card_token: Callable[[str], str],
    reconciler_later: Callable[[timedelta], Reconciler],
) -> None:
    """An abandoned refund used to stay pending, unreported, with its amount reserved for ever."""
    tenant_id, payment_id, refund_id = _abandoned_refund(
        gateway_settings, app_billing, fake, card_token, reached=False
    )
    fresh = reconciler_later(STALE_PENDING_REFUND - timedelta(minutes=1)).reconcile(tenant_id=tenant_id)
    assert fresh.clean, fresh.discrepancies

    stale = reconciler_later(STALE_PENDING_REFUND + timedelta(seconds=1)).reconcile(tenant_id=tenant_id)
    assert not stale.clean
    [found] = stale.discrepancies
    assert (found.kind, found.payment_id, found.gateway) == ("refund_pending_stale", payment_id, "absent")
    assert found.local is not None and found.local.startswith(f"{refund_id}:500:")
    sooner = reconciler_later(timedelta(minutes=6)).reconcile(
        tenant_id=tenant_id, stale_refund_after=timedelta(minutes=5)
    )
    assert [f.kind for f in sooner.discrepancies] == ["refund_pending_stale"], "the threshold is a parameter"


def test_a_stale_refund_the_gateway_made_is_reported_with_what_the_gateway_says(
    gateway_settings: Settings,
    app_billing: Billing,
    fake: Faker,
    card_token: Callable[[str], str],
    stripe_client: Any,
    reconciler_later: Callable[[timedelta], Reconciler],
) -> None:
    tenant_id, payment_id, refund_id = _abandoned_refund(
        gateway_settings, app_billing, fake, card_token, reached=True
    )
    [made] = [
        r
        for r in stripe_client.v1.refunds.list(params={"limit": 100}).auto_paging_iter()
        if r.metadata and r.metadata.to_dict().get("veilbill_refund_id") == refund_id
    ]

    found = reconciler_later(timedelta(hours=1)).reconcile(tenant_id=tenant_id).discrepancies
    stale = [f for f in found if f.kind == "refund_pending_stale"]
    assert [(f.payment_id, f.gateway) for f in stale] == [(payment_id, f"{made.id}:500:succeeded")]
    assert sorted(f.kind for f in found) == ["refund_pending_stale", "refund_status_differs"]


def test_a_stale_refund_is_reported_without_a_gateway_too(
    gateway_settings: Settings, app_billing: Billing, fake: Faker, card_token: Callable[[str], str]
) -> None:
    tenant_id, _, refund_id = _abandoned_refund(
        gateway_settings, app_billing, fake, card_token, reached=False
    )
    db = Database(DatabaseConfig(gateway_settings.database_url))
    try:
        later = Reconciler(db, None, clock=lambda: utcnow() + timedelta(hours=1))
        found = later.reconcile(tenant_id=tenant_id).discrepancies
        with pytest.raises(ValueError, match="negative"):
            later.reconcile(tenant_id=tenant_id, stale_refund_after=timedelta(minutes=-1))
    finally:
        db.dispose()
    assert [(f.kind, f.gateway) for f in found] == [("refund_pending_stale", None)]
    assert found[0].local is not None and found[0].local.startswith(f"{refund_id}:500:")
