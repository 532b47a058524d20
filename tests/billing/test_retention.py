"""Retention: country presets, record-key shredding after the period, purges, audit checkpoints."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from faker import Faker
from sqlalchemy import update
from sqlmodel import col, select

from billing import (
    Actor,
    Billing,
    CustomerInput,
    Database,
    DestinationPolicy,
    InvoiceInput,
    InvoiceLineInput,
    InvoiceQuery,
    Keyring,
    RetentionPolicyInput,
)
from billing._event_models import EventDelivery, EventRecord
from billing._models import AuditCheckpoint, AuditEvent, IdempotencyRecord, WebhookEvent
from billing.errors import RecordExpired, ValidationFailed

from ..conftest import statements_of


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 3, 1, 10, 0, tzinfo=UTC))


@pytest.fixture
def timed(database: Database, keyring: Keyring, clock: Clock) -> Billing:
    return Billing(db=database, keyring=keyring, clock=clock)


def _invoiced_client(billing: Billing, actor: Actor, fake: Faker) -> tuple[str, str]:
    customer = billing.customers.create(actor, CustomerInput(name=fake.name(), email=fake.email())).id
    line = InvoiceLineInput(description="Consultation", unit_amount=8000, tax_rate_bps=2000)
    draft = billing.invoices.create_draft(
        actor, InvoiceInput(customer_id=customer, currency="EUR", lines=[line])
    )
    billing.invoices.finalize(actor, draft.id)
    return customer, draft.id


@pytest.mark.parametrize(
    ("country", "issued", "until"),
    [
        ("DE", date(2026, 3, 1), date(2034, 12, 31)),
        ("PL", date(2026, 3, 1), date(2032, 12, 31)),
        ("FR", date(2026, 12, 31), date(2036, 12, 31)),
        ("GB", date(2026, 1, 1), date(2032, 12, 31)),
    ],
)
def test_country_presets(timed: Billing, country: str, issued: date, until: date) -> None:
    tenant = timed.tenants.create_tenant("Presets").tenant_id
    policy = timed.retention.set_policy(
        Actor(tenant_id=tenant, role="admin"), RetentionPolicyInput(country=country)
    )
    assert policy.invoice_retained_until(issued) == until


def test_unknown_country_and_absurd_years_are_refused(timed: Billing) -> None:
    admin = Actor(tenant_id=timed.tenants.create_tenant("X").tenant_id, role="admin")
    with pytest.raises(ValidationFailed):
        timed.retention.set_policy(admin, RetentionPolicyInput(country="ZZ"))
    with pytest.raises(ValidationFailed):
        timed.retention.set_policy(admin, RetentionPolicyInput(invoice_retention_years=0))


def test_an_erased_clients_records_are_shredded_after_retention_only(
    timed: Billing, clock: Clock, fake: Faker
) -> None:
    tenant = timed.tenants.create_tenant("Clinic").tenant_id
    booking, admin = Actor(tenant_id=tenant, role="booking"), Actor(tenant_id=tenant, role="admin")
    timed.retention.set_policy(admin, RetentionPolicyInput(country="DE"))
    erased, erased_invoice = _invoiced_client(timed, booking, fake)
    kept, kept_invoice = _invoiced_client(timed, booking, fake)
    timed.privacy.erase_customer(admin, erased)

    clock.now = datetime(2034, 12, 31, 12, tzinfo=UTC)  # the last day of retention: nothing goes
    assert timed.retention.run(dry_run=True).record_keys_shredded == []
    clock.now = datetime(2035, 1, 1, 9, tzinfo=UTC)
    dry = timed.retention.run(dry_run=True)
    assert dry.record_keys_shredded == [erased]
    assert timed.invoices.read_restricted(
        admin, erased_invoice, "audit sample"
    ).number  # dry run changed nothing
    real = timed.retention.run(dry_run=False)
    assert real.record_keys_shredded == [erased] and not real.dry_run
    with pytest.raises(RecordExpired):
        timed.invoices.read_restricted(admin, erased_invoice, "audit sample")
    totals = {i.id: i.total for i in timed.invoices.list_invoices(booking, InvoiceQuery()).data}
    assert totals[erased_invoice] == 9600  # the amounts stay for accounting
    assert timed.invoices.read(booking, kept_invoice).lines[0].description == "Consultation"
    assert kept not in timed.retention.run(dry_run=True).record_keys_shredded
    assert timed.verify_audit().ok


def test_without_a_policy_nothing_is_shredded(timed: Billing, clock: Clock, fake: Faker) -> None:
    tenant = timed.tenants.create_tenant("No policy").tenant_id
    customer, _ = _invoiced_client(timed, Actor(tenant_id=tenant, role="booking"), fake)
    timed.privacy.erase_customer(Actor(tenant_id=tenant, role="admin"), customer)
    clock.now = datetime(2070, 1, 1, tzinfo=UTC)
    assert timed.retention.run(dry_run=False).record_keys_shredded == []


def test_purges_of_idempotency_records_and_webhook_events(timed: Billing, clock: Clock) -> None:
    tenant = timed.tenants.create_tenant("Purge").tenant_id
    timed.idempotency.begin(tenant, "old-key", "f" * 64)
    timed.idempotency.complete(tenant, "old-key", 201, b"{}")
    event = WebhookEvent(id="evt_old", type="payment_intent.succeeded", payload="{}", received_at=clock.now)
    with timed.db.transaction() as session:
        session.add(event)
    clock.now += timedelta(days=31)
    dry = timed.retention.run(dry_run=True)
    assert (dry.idempotency_records_purged, dry.webhook_events_purged) == (1, 1)
    done = timed.retention.run(dry_run=False)
    assert (done.idempotency_records_purged, done.webhook_events_purged) == (1, 1)
    with timed.db.read() as session:
        assert session.exec(select(IdempotencyRecord)).all() == []
        assert session.get(WebhookEvent, "evt_old") is None


def test_old_audit_events_go_and_the_chain_still_verifies_from_a_signed_checkpoint(
    timed: Billing, clock: Clock, fake: Faker
) -> None:
    tenant = timed.tenants.create_tenant("Audit").tenant_id
    booking = Actor(tenant_id=tenant, role="booking")
    customer, _ = _invoiced_client(timed, booking, fake)
    clock.now = datetime(2033, 6, 1, tzinfo=UTC)
    timed.customers.read(booking, customer)  # a recent event, inside the period
    before = len(timed.audit_events(booking, limit=500))
    report = timed.retention.run(dry_run=False)
    assert report.audit_events_purged == before - 1
    remaining = timed.audit_events(booking, limit=500)
    assert [e.action for e in remaining] == ["customer.read"]
    assert timed.verify_audit(chain=tenant).ok
    with timed.db.transaction() as session:
        session.execute(update(AuditCheckpoint).where(AuditCheckpoint.chain == tenant).values(seq=1))  # type: ignore[arg-type]
    result = timed.verify_audit(chain=tenant)
    assert not result.ok and result.first_break is not None
    assert result.first_break.reason == "checkpoint signature is not valid"


def test_deleting_an_event_after_a_checkpoint_is_still_detected(
    timed: Billing, clock: Clock, fake: Faker
) -> None:
    tenant = timed.tenants.create_tenant("Audit 2").tenant_id
    booking = Actor(tenant_id=tenant, role="booking")
    customer, _ = _invoiced_client(timed, booking, fake)
    clock.now = datetime(2033, 6, 1, tzinfo=UTC)
    for _ in range(3):
        timed.customers.read(booking, customer)
    timed.retention.run(dry_run=False)
    with timed.db.transaction() as session:
        victim = session.exec(
            select(AuditEvent).where(AuditEvent.chain == tenant).order_by(AuditEvent.seq)
        ).first()  # type: ignore[arg-type]
        assert victim is not None
        session.delete(victim)
    assert not timed.verify_audit(chain=tenant).ok


def test_the_event_log_keeps_30_days_and_every_event_still_to_deliver(
    database: Database, keyring: Keyring, clock: Clock, fake: Faker
) -> None:
    billing = Billing(
        db=database, keyring=keyring, clock=clock, webhook_destinations=DestinationPolicy(allow_private=True)
    )
    issued = billing.tenants.create_tenant("Journal")
    admin = Actor(tenant_id=issued.tenant_id, role="admin", key_id=issued.id)
    billing.events.create_endpoint(admin, "http://127.0.0.1:9/hook", ["invoice.finalized"])
    old_delivered = _invoiced_client(billing, admin, fake)[1]
    old_pending = _invoiced_client(billing, admin, fake)[1]
    clock.now += timedelta(days=20)
    recent = _invoiced_client(billing, admin, fake)[1]
    with billing.db.transaction() as session:  # the receiver took the first one; the second still fails
        session.execute(
            update(EventDelivery)
            .where(col(EventDelivery.ordering_key) == old_delivered)
            .values(status="delivered", delivered_at=clock.now)
        )
    clock.now += timedelta(days=11)  # the first two are 31 days old, the third 11
    assert billing.retention.run(dry_run=True).events_purged == 1
    assert billing.retention.run(dry_run=False).events_purged == 1
    with billing.db.read() as session:
        kept = {e.ordering_key for e in session.exec(select(EventRecord))}
        deliveries = {d.ordering_key for d in session.exec(select(EventDelivery))}
    assert kept == deliveries == {old_pending, recent}


def test_a_tenants_run_purges_before_it_locks_the_chain_head(
    timed: Billing, clock: Clock, fake: Faker
) -> None:
    """The shredding appends audit links, and the chain's head stays locked from the first one to
    the commit: the purges' deletes come before it, not while the tenant's reads wait."""
    tenant = timed.tenants.create_tenant("Clinic").tenant_id
    booking, admin = Actor(tenant_id=tenant, role="booking"), Actor(tenant_id=tenant, role="admin")
    timed.retention.set_policy(admin, RetentionPolicyInput(country="DE"))
    erased, _ = _invoiced_client(timed, booking, fake)
    timed.privacy.erase_customer(admin, erased)
    clock.now = datetime(2035, 1, 1, 9, tzinfo=UTC)
    with statements_of(timed.db.engine) as sent:
        report = timed.retention.run(dry_run=False, tenant_id=tenant, actor=admin)
    assert report.record_keys_shredded == [erased]
    first_link = next(i for i, statement in enumerate(sent) if "audit_heads" in statement)
    deletes = [i for i, statement in enumerate(sent) if statement.startswith("DELETE")]
    assert deletes and max(deletes) < first_link
    assert timed.verify_audit().ok
