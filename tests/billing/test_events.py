"""The outbox: events are written in the transaction of the change that causes them, fan out to the
subscribed endpoints, carry no PII, and endpoint secrets are stored sealed. Both databases."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from faker import Faker
from sqlmodel import Session, select

from billing import (
    Actor,
    Address,
    Billing,
    CustomerInput,
    Database,
    DestinationPolicy,
    EventDelivery,
    EventOutbox,
    EventRecord,
    InvoiceInput,
    InvoiceLineInput,
    InvoiceService,
    Keyring,
    WebhookEndpoint,
)
from billing.errors import InvalidStateTransition, NotFound, ValidationFailed, WebhookUrlRefused

from ..conftest import WebhookReceiver


class FailingAfterRecordOutbox(EventOutbox):
    """Fault injection: records the event, then fails — the caller's transaction must roll back."""

    def record(self, session: Session, **kwargs: object) -> str:  # type: ignore[override]
        super().record(session, **kwargs)  # type: ignore[arg-type]
        raise RuntimeError("injected failure after the event was written")


@pytest.fixture
def events_billing(database: Database, keyring: Keyring) -> Billing:
    return Billing(db=database, keyring=keyring, webhook_destinations=DestinationPolicy(allow_private=True))


@pytest.fixture
def admin(events_billing: Billing) -> Actor:
    issued = events_billing.tenants.create_tenant("Salon Rivoli")
    return Actor(tenant_id=issued.tenant_id, role="admin", key_id=issued.id)


def make_invoice(billing: Billing, actor: Actor, fake: Faker, *, booking_ref: str = "bk_1") -> str:
    customer = billing.customers.create(
        actor,
        CustomerInput(
            name=fake.name(),
            email=fake.email(),
            phone=fake.numerify("+33 6 ## ## ## ##"),
            address=Address(
                line1=fake.street_address().replace("\n", " "),
                city=fake.city(),
                postcode="75002",
                country="FR",
            ),
        ),
    )
    draft = billing.invoices.create_draft(
        actor,
        InvoiceInput(
            customer_id=customer.id,
            currency="EUR",
            booking_ref=booking_ref,
            lines=[InvoiceLineInput(description=fake.sentence(), unit_amount=4500, tax_rate_bps=2000)],
        ),
    )
    return draft.id


def events_of(billing: Billing) -> list[EventRecord]:
    with billing.db.read() as session:
        return list(session.exec(select(EventRecord).order_by(EventRecord.seq)))  # type: ignore[arg-type]


def deliveries_of(billing: Billing) -> list[EventDelivery]:
    with billing.db.read() as session:
        return list(session.exec(select(EventDelivery).order_by(EventDelivery.event_seq)))  # type: ignore[arg-type]


def test_state_changes_emit_events_with_ids_amounts_and_booking_refs(
    events_billing: Billing, admin: Actor, fake: Faker
) -> None:
    first = make_invoice(events_billing, admin, fake, booking_ref="bk_first")
    second = make_invoice(events_billing, admin, fake, booking_ref="bk_second")
    opened = events_billing.invoices.finalize(admin, first)
    events_billing.invoices.finalize(admin, second)
    events_billing.invoices.mark_uncollectible(admin, second)
    events_billing.invoices.void(admin, second)
    recorded = events_of(events_billing)
    assert [(e.type, e.ordering_key) for e in recorded] == [
        ("invoice.finalized", first),
        ("invoice.finalized", second),
        ("invoice.uncollectible", second),
        ("invoice.voided", second),
    ]
    body = json.loads(recorded[0].payload)
    assert body["id"] == recorded[0].id and body["id"].startswith("evt_")
    assert body["type"] == "invoice.finalized"
    assert body["data"] == {
        "invoice_id": first,
        "customer_id": opened.customer_id,
        "booking_ref": "bk_first",
        "number": opened.number,
        "status": "open",
        "currency": "EUR",
        "total": opened.total,
        "amount_paid": 0,
        "amount_refunded": 0,
        "issue_date": opened.issue_date.isoformat() if opened.issue_date else None,
        "due_date": None,
    }
    assert [e.seq for e in recorded] == sorted(e.seq for e in recorded)


def test_a_rolled_back_finalize_emits_nothing(events_billing: Billing, admin: Actor, fake: Faker) -> None:
    invoice_id = make_invoice(events_billing, admin, fake)
    events_billing.events.create_endpoint(admin, "http://127.0.0.1:9/hook", ["invoice.finalized"])
    failing = InvoiceService(
        events_billing.db,
        events_billing.keyring,
        events_billing.audit,
        events_billing.customers,
        clock=events_billing.clock,
        events=FailingAfterRecordOutbox(clock=events_billing.clock),
    )
    with pytest.raises(RuntimeError, match="injected"):
        failing.finalize(admin, invoice_id)
    assert events_of(events_billing) == [] and deliveries_of(events_billing) == []
    assert events_billing.invoices.read(admin, invoice_id).status == "draft"
    events_billing.invoices.finalize(admin, invoice_id)
    assert [e.type for e in events_of(events_billing)] == ["invoice.finalized"]
    assert len(deliveries_of(events_billing)) == 1


def test_a_refused_transition_emits_nothing(events_billing: Billing, admin: Actor, fake: Faker) -> None:
    invoice_id = make_invoice(events_billing, admin, fake)
    with pytest.raises(InvalidStateTransition):
        events_billing.invoices.void(admin, invoice_id)
    events_billing.invoices.finalize(admin, invoice_id)
    with pytest.raises(InvalidStateTransition):
        events_billing.invoices.finalize(admin, invoice_id)
    assert [e.type for e in events_of(events_billing)] == ["invoice.finalized"]


def test_deliveries_fan_out_to_subscribed_enabled_endpoints_only(
    events_billing: Billing, admin: Actor, fake: Faker
) -> None:
    finalized = events_billing.events.create_endpoint(admin, "http://127.0.0.1:9/a", ["invoice.finalized"])
    voided = events_billing.events.create_endpoint(admin, "http://127.0.0.1:9/b", ["invoice.voided"])
    deleted = events_billing.events.create_endpoint(admin, "http://127.0.0.1:9/c", ["invoice.finalized"])
    events_billing.events.delete_endpoint(admin, deleted.id)
    other = events_billing.tenants.create_tenant("Clinique du Parc")
    other_admin = Actor(tenant_id=other.tenant_id, role="admin")
    theirs = events_billing.events.create_endpoint(other_admin, "http://127.0.0.1:9/d", ["invoice.finalized"])
    invoice_id = make_invoice(events_billing, admin, fake)
    events_billing.invoices.finalize(admin, invoice_id)
    events_billing.invoices.void(admin, invoice_id)
    pairs = {(d.endpoint_id, d.ordering_key) for d in deliveries_of(events_billing)}
    assert pairs == {(finalized.id, invoice_id), (voided.id, invoice_id)}
    assert theirs.id not in {d.endpoint_id for d in deliveries_of(events_billing)}


def test_payloads_never_carry_client_pii(events_billing: Billing, admin: Actor, fake: Faker) -> None:
    pii: list[str] = []
    for _ in range(3):
        name, email, phone = fake.name(), fake.email(), fake.numerify("+33 6 ## ## ## ##")
        street, city = fake.street_address().replace("\n", " "), fake.city()
        customer = events_billing.customers.create(
            admin,
            CustomerInput(
                name=name,
                email=email,
                phone=phone,
                address=Address(line1=street, city=city, postcode="69001", country="FR"),
                notes=fake.sentence(),
            ),
        )
        pii += [name, email, phone, street, city]
        draft = events_billing.invoices.create_draft(
            admin,
            InvoiceInput(
                customer_id=customer.id,
                currency="EUR",
                booking_ref="bk_scan",
                lines=[InvoiceLineInput(description=f"Treatment for {name}", unit_amount=9900)],
            ),
        )
        events_billing.invoices.finalize(admin, draft.id)
        events_billing.invoices.void(admin, draft.id)
        events_billing.privacy.erase_customer(admin, customer.id)
    payloads = [e.payload for e in events_of(events_billing)]
    assert {json.loads(p)["type"] for p in payloads} == {
        "invoice.finalized",
        "invoice.voided",
        "customer.erased",
    }
    for payload in payloads:
        for value in pii:
            assert value not in payload
            assert value.lower() not in payload.lower()


def test_the_outbox_refuses_fields_outside_the_allow_list(events_billing: Billing, admin: Actor) -> None:
    with pytest.raises(ValueError, match="not allowed"), events_billing.db.transaction() as session:
        events_billing.outbox.record(
            session, tenant_id=admin.tenant_id, type="invoice.paid", data={"email": "x@example.org"}
        )
    with pytest.raises(ValueError, match="unknown event type"), events_billing.db.transaction() as session:
        events_billing.outbox.record(session, tenant_id=admin.tenant_id, type="invoice.created", data={})
    assert events_of(events_billing) == []


def test_the_secret_is_shown_once_and_stored_sealed(events_billing: Billing, admin: Actor) -> None:
    created = events_billing.events.create_endpoint(admin, "http://127.0.0.1:9/hook", ["invoice.paid"])
    assert created.secret is not None and created.secret.startswith("whsec_")
    assert created.secret not in repr(created)
    assert events_billing.events.get_endpoint(admin, created.id).secret is None
    assert all(e.secret is None for e in events_billing.events.list_endpoints(admin))
    with events_billing.db.read() as session:
        row = session.get(WebhookEndpoint, created.id)
        assert row is not None
        stored = row.secret_ct
    assert created.secret.encode() not in stored
    assert created.secret.removeprefix("whsec_").encode() not in stored


def test_rotation_keeps_the_old_secret_for_the_overlap(events_billing: Billing, admin: Actor) -> None:
    created = events_billing.events.create_endpoint(admin, "http://127.0.0.1:9/hook", ["invoice.paid"])
    rotated = events_billing.events.rotate_secret(admin, created.id, timedelta(hours=2))
    assert rotated.secret and rotated.secret != created.secret
    assert rotated.previous_secret_expires_at is not None
    with pytest.raises(ValidationFailed):
        events_billing.events.rotate_secret(admin, created.id, timedelta(days=8))


def test_endpoints_belong_to_their_tenant(events_billing: Billing, admin: Actor) -> None:
    created = events_billing.events.create_endpoint(admin, "http://127.0.0.1:9/hook", ["invoice.paid"])
    other = Actor(tenant_id=events_billing.tenants.create_tenant("Other").tenant_id, role="admin")
    for call in (
        lambda: events_billing.events.get_endpoint(other, created.id),
        lambda: events_billing.events.delete_endpoint(other, created.id),
        lambda: events_billing.events.rotate_secret(other, created.id),
        lambda: events_billing.events.enable_endpoint(other, created.id),
    ):
        with pytest.raises(NotFound):
            call()
    assert events_billing.events.list_endpoints(other) == []


def test_private_urls_are_refused_unless_allowed(billing: Billing) -> None:
    issued = billing.tenants.create_tenant("Strict")
    actor = Actor(tenant_id=issued.tenant_id, role="admin")
    with pytest.raises(WebhookUrlRefused):
        billing.events.create_endpoint(actor, "http://127.0.0.1:9/hook", ["invoice.paid"])
    assert billing.events.list_endpoints(actor) == []


def test_event_log_pages_and_redeliver(
    events_billing: Billing, admin: Actor, fake: Faker, webhook_receiver: WebhookReceiver
) -> None:
    for _ in range(3):
        events_billing.invoices.finalize(admin, make_invoice(events_billing, admin, fake))
    page = events_billing.events.list_events(admin, limit=2)
    assert len(page.data) == 2 and page.has_more and page.next_cursor
    rest = events_billing.events.list_events(admin, limit=2, cursor=page.next_cursor)
    assert len(rest.data) == 1 and not rest.has_more
    ids = [e.id for e in page.data + rest.data]
    assert ids == [e.id for e in reversed(events_of(events_billing))]
    # An endpoint registered later gets an old event by redelivery, with the event's own id.
    endpoint = events_billing.events.create_endpoint(admin, webhook_receiver.url, ["invoice.finalized"])
    replayed = events_billing.events.redeliver(admin, ids[-1])
    assert replayed.deliveries and [d.endpoint_id for d in replayed.deliveries] == [endpoint.id]
    with pytest.raises(NotFound):
        events_billing.events.redeliver(Actor(tenant_id="ten_other", role="admin"), ids[-1])
    with pytest.raises(ValidationFailed):
        events_billing.events.list_events(admin, cursor="bogus")
