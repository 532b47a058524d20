"""Invoice numbering under concurrency and failure, on both databases."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from faker import Faker
from sqlalchemy import delete, func, update
from sqlmodel import select

from billing import Actor, Billing, CustomerInput, InvoiceInput, InvoiceLineInput
from billing._models import AuditEvent, DataKeyRecord, Invoice
from billing.errors import DecryptionError, NotFound, RecordExpired

from ..conftest import statements_of


def _setup(billing: Billing, fake: Faker) -> tuple[Actor, str]:
    issued = billing.tenants.create_tenant("Hotel Test")
    actor = Actor(tenant_id=issued.tenant_id, role="booking", key_id=issued.id)
    customer = billing.customers.create(actor, CustomerInput(name=fake.name(), email=fake.email()))
    return actor, customer.id


def _draft(billing: Billing, actor: Actor, customer_id: str) -> str:
    line = InvoiceLineInput(description="Night", unit_amount=10000, tax_rate_bps=1000)
    return billing.invoices.create_draft(
        actor, InvoiceInput(customer_id=customer_id, currency="EUR", lines=[line])
    ).id


def test_concurrent_finalizations_are_gapless_and_unique(billing: Billing, fake: Faker) -> None:
    actor, customer_id = _setup(billing, fake)
    drafts = [_draft(billing, actor, customer_id) for _ in range(24)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        numbers = list(pool.map(lambda i: billing.invoices.finalize(actor, i).number, drafts))
    sequence = sorted(int(str(n).rsplit("-", 1)[1]) for n in numbers)
    assert sequence == list(range(1, 25))


def test_concurrent_finalization_of_one_draft_succeeds_once(billing: Billing, fake: Faker) -> None:
    actor, customer_id = _setup(billing, fake)
    draft = _draft(billing, actor, customer_id)

    def attempt(_: int) -> str:
        try:
            return str(billing.invoices.finalize(actor, draft).number)
        except Exception as exc:  # the losers see an invalid transition
            return type(exc).__name__

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(attempt, range(4)))
    assert sorted(outcomes).count("InvalidStateTransition") == 3
    assert any(o.endswith("-000001") for o in outcomes)


def test_a_failed_finalization_gives_its_number_back(billing: Billing, fake: Faker) -> None:
    actor, customer_id = _setup(billing, fake)
    broken_customer = billing.customers.create(actor, CustomerInput(name=fake.name())).id
    broken = _draft(billing, actor, broken_customer)
    good = _draft(billing, actor, customer_id)
    with billing.db.transaction() as session:  # fault injection: the client's profile key is gone
        session.execute(
            update(DataKeyRecord)
            .where(DataKeyRecord.subject_id == broken_customer, DataKeyRecord.purpose == "profile")  # type: ignore[arg-type]
            .values(wrapped=None)
        )
    with pytest.raises(DecryptionError):
        billing.invoices.finalize(actor, broken)
    assert billing.invoices.read(actor, broken).status == "draft"
    assert str(billing.invoices.finalize(actor, good).number).endswith("-000001")


@pytest.mark.parametrize(("destroyed", "error"), [(True, RecordExpired), (False, DecryptionError)])
def test_a_record_key_gone_reads_as_expired_only_when_it_was_shredded(
    billing: Billing, fake: Faker, destroyed: bool, error: type[Exception]
) -> None:
    actor, customer_id = _setup(billing, fake)
    draft = _draft(billing, actor, customer_id)
    with billing.db.transaction() as session:  # shredded at retention's end, or lost (fault injection)
        session.execute(
            update(DataKeyRecord)
            .where(DataKeyRecord.subject_id == customer_id, DataKeyRecord.purpose == "record")  # type: ignore[arg-type]
            .values(wrapped=None, destroyed_at=billing.clock() if destroyed else None)
        )
    with pytest.raises(error):
        billing.invoices.read(actor, draft)
    with pytest.raises(error):
        billing.invoices.create_draft(actor, InvoiceInput(customer_id=customer_id, currency="EUR"))


def test_a_draft_for_an_unknown_client_or_one_without_key_rows_writes_nothing(
    billing: Billing, fake: Faker
) -> None:
    actor, customer_id = _setup(billing, fake)
    _draft(billing, actor, customer_id)
    with billing.db.transaction() as session:  # fault injection: the client's key rows are gone
        session.execute(delete(DataKeyRecord).where(DataKeyRecord.subject_id == customer_id))  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        billing.invoices.create_draft(actor, InvoiceInput(customer_id="cus_unknown", currency="EUR"))
    with pytest.raises(DecryptionError):
        billing.invoices.create_draft(actor, InvoiceInput(customer_id=customer_id, currency="EUR"))
    with billing.db.read() as session:
        assert session.exec(select(func.count()).select_from(Invoice)).one() == 1
        assert session.exec(
            select(AuditEvent.action).where(AuditEvent.action == "invoice.created")
        ).all() == ["invoice.created"]


def test_a_draft_and_its_read_stay_within_their_statement_budget(billing: Billing, fake: Faker) -> None:
    """What the privacy machinery costs in statements (see docs/benchmarks.md, "Privacy tax")."""
    actor, customer_id = _setup(billing, fake)
    _draft(billing, actor, customer_id)  # the tenant's audit chain has its head
    with statements_of(billing.db.engine) as sent:
        draft = _draft(billing, actor, customer_id)
    created = [s.split()[0] for s in sent if not s.startswith("BEGIN")]
    with statements_of(billing.db.engine) as sent:
        assert billing.invoices.read(actor, draft).lines[0].description == "Night"
    read = [s.split()[0] for s in sent if not s.startswith("BEGIN")]
    # The process knows its chain's head, so PostgreSQL appends an audit link with one statement
    # (the head swapped from the seq it had, and the link inserted), SQLite with two.
    append = ["WITH"] if billing.db.dialect == "postgresql" else ["UPDATE", "INSERT"]
    # the client FOR SHARE with its two keys, and the link (on PostgreSQL one statement, on SQLite
    # the client and its keys, then the link), the invoice, its lines
    keyed = ["WITH"] if billing.db.dialect == "postgresql" else ["SELECT", *append]
    assert created == [*keyed, "INSERT", "INSERT"]
    # invoice with erasure mark and key, then the link with the access monitor's check and the
    # lines: on PostgreSQL one statement, on SQLite the link, the check, then the lines
    monitored = ["WITH"] if billing.db.dialect == "postgresql" else [*append, "SELECT", "SELECT"]
    assert read == ["SELECT", *monitored]


def test_a_client_read_stays_within_its_statement_budget(billing: Billing, fake: Faker) -> None:
    actor, customer_id = _setup(billing, fake)
    billing.customers.read(actor, customer_id)  # the tenant's audit chain has its head
    with statements_of(billing.db.engine) as sent:
        assert billing.customers.read(actor, customer_id).id == customer_id
    read = [s.split()[0] for s in sent if not s.startswith("BEGIN")]
    # the client, then the link with the monitor's check and the client's profile key: on
    # PostgreSQL one statement, on SQLite the link, the check, then the key
    linked = ["WITH"] if billing.db.dialect == "postgresql" else ["UPDATE", "INSERT", "SELECT", "SELECT"]
    assert read == ["SELECT", *linked]
