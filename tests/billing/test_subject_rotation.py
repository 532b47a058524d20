"""Tests for billing._subject_rotation (DEK rotation of one data subject), on both databases."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import pytest
from faker import Faker
from sqlalchemy import LargeBinary, text, update
from sqlmodel import col, select

from billing import (
    Actor,
    Address,
    Billing,
    CustomerInput,
    CustomerPatch,
    Database,
    InvoiceInput,
    InvoiceLineInput,
    InvoicePatch,
)
from billing._customers import PII_FIELDS
from billing._envelope import sealed_key_id
from billing._invoices import SEALED_INVOICE_COLUMNS, SEALED_LINE_COLUMNS
from billing._models import AuditEvent, Customer, DataKeyRecord, Invoice, InvoiceLine, metadata
from billing.errors import CustomerErased, DecryptionError, NotFound

from ..conftest import FIXED_NOW


@dataclass
class Client:
    actor: Actor
    customer_id: str
    name: str
    email: str
    notes: str
    invoice_ids: list[str]
    descriptions: dict[str, list[str]]  # invoice id -> line descriptions
    invoice_notes: dict[str, str]


def make_client(billing: Billing, fake: Faker, actor: Actor | None = None, *, invoices: int = 2) -> Client:
    if actor is None:
        issued = billing.tenants.create_tenant(fake.company())
        actor = Actor(tenant_id=issued.tenant_id, role="booking", key_id=issued.id)
    data = CustomerInput(
        name=fake.name(),
        email=fake.email(),
        phone="+33 1 23 45 67 89",
        address=Address(line1=fake.street_address(), city=fake.city(), postcode="75011", country="FR"),
        birth_date=date(1984, 3, 2),
        gender="female",
        external_ref=fake.uuid4(),
        notes=fake.sentence(),
    )
    customer = billing.customers.create(actor, data)
    client = Client(actor, customer.id, data.name, data.email or "", data.notes or "", [], {}, {})
    for number in range(invoices):
        descriptions = [fake.sentence(), fake.sentence()]
        notes = fake.sentence()
        invoice = billing.invoices.create_draft(
            actor,
            InvoiceInput(
                customer_id=customer.id,
                currency="EUR",
                notes=notes,
                lines=[
                    InvoiceLineInput(description=d, unit_amount=4500, tax_rate_bps=2000) for d in descriptions
                ],
            ),
        )
        if number == 0:
            billing.invoices.finalize(actor, invoice.id)
        client.invoice_ids.append(invoice.id)
        client.descriptions[invoice.id] = descriptions
        client.invoice_notes[invoice.id] = notes
    return client


def assert_client_opens(billing: Billing, client: Client) -> None:
    view = billing.customers.read(client.actor, client.customer_id)
    assert (view.name, view.email, view.notes) == (client.name, client.email, client.notes)
    assert view.address is not None and view.address.postcode == "75011"
    assert view.birth_date == date(1984, 3, 2) and view.gender == "female"
    for invoice_id in client.invoice_ids:
        invoice = billing.invoices.read(client.actor, invoice_id)
        assert [line.description for line in invoice.lines] == client.descriptions[invoice_id]
        assert invoice.notes == client.invoice_notes[invoice_id]
        assert invoice.customer is not None and invoice.customer["name"] == client.name


def subject_keys(database: Database, client: Client) -> dict[str, DataKeyRecord]:
    with database.read() as session:
        rows = session.exec(select(DataKeyRecord).where(DataKeyRecord.subject_id == client.customer_id))
        return {row.purpose: row for row in rows}


def sealed_values(database: Database, client: Client) -> dict[tuple[str, str, str], bytes]:
    """Every sealed value of the client: (table, row id, column) -> ciphertext."""
    values: dict[tuple[str, str, str], bytes] = {}
    with database.read() as session:
        customer = session.get(Customer, client.customer_id)
        assert customer is not None
        for name in PII_FIELDS:
            if (sealed := getattr(customer, f"{name}_ct")) is not None:
                values[("customers", customer.id, name)] = sealed
        for invoice in session.exec(select(Invoice).where(Invoice.customer_id == client.customer_id)):
            for name in SEALED_INVOICE_COLUMNS:
                if (sealed := getattr(invoice, f"{name}_ct")) is not None:
                    values[("invoices", invoice.id, name)] = sealed
            for line in session.exec(select(InvoiceLine).where(InvoiceLine.invoice_id == invoice.id)):
                for name in SEALED_LINE_COLUMNS:
                    if (sealed := getattr(line, f"{name}_ct")) is not None:
                        values[("invoice_lines", line.id, name)] = sealed
    return values


@pytest.fixture
def service(billing: Billing) -> Billing:
    return billing


def test_rotation_reencrypts_every_value_and_destroys_the_old_keys(
    billing: Billing, database: Database, fake: Faker
) -> None:
    client = make_client(billing, fake)
    bystander = make_client(billing, fake, client.actor)
    before = sealed_values(database, client)
    bystander_before = sealed_values(database, bystander)
    old_keys = subject_keys(database, client)
    assert len(before) == 8 + 2 * (2 + 2)  # every profile field, notes + snapshot + 2 lines per invoice

    result = billing.subject_rotation.rotate_subject_keys(client.actor, client.customer_id)

    assert set(result.rotated) == {"profile", "record"} and result.skipped == ()
    assert result.values == len(before)
    new_keys = subject_keys(database, client)
    with database.read() as session:
        remaining = set(session.exec(select(DataKeyRecord.id)))
    for purpose in ("profile", "record"):
        assert old_keys[purpose].id not in remaining, "the old DEK is gone"
        assert new_keys[purpose].id == result.rotated[purpose] != old_keys[purpose].id
        assert (
            new_keys[purpose].wrapped is not None and new_keys[purpose].wrapped != old_keys[purpose].wrapped
        )
    after = sealed_values(database, client)
    assert after.keys() == before.keys()
    for where, sealed in after.items():
        purpose = "profile" if where[0] == "customers" else "record"
        assert sealed != before[where], f"{where} was not re-encrypted"
        assert sealed_key_id(sealed) == new_keys[purpose].id
    assert sealed_values(database, bystander) == bystander_before, "other clients are untouched"
    assert_client_opens(billing, client)
    assert_client_opens(billing, bystander)
    assert [c.id for c in billing.customers.find_by_email(client.actor, client.email)] == [client.customer_id]

    with database.read() as session:
        event = session.exec(select(AuditEvent).where(AuditEvent.action == "keys.subject_rotated")).one()
    assert (event.chain, event.subject_id, event.actor_key_id) == (
        client.actor.tenant_id,
        client.customer_id,
        client.actor.key_id,
    )
    assert event.detail is not None and old_keys["profile"].id in event.detail
    assert client.name not in event.detail and client.email not in event.detail


def test_a_value_sealed_under_the_old_key_no_longer_opens(
    billing: Billing, database: Database, fake: Faker
) -> None:
    client = make_client(billing, fake, invoices=1)
    before = sealed_values(database, client)
    billing.subject_rotation.rotate_subject_keys(client.actor, client.customer_id)
    (invoice_id,) = client.invoice_ids
    with database.transaction() as session:  # someone writes the pre-rotation ciphertexts back
        session.execute(
            update(Customer)
            .where(col(Customer.id) == client.customer_id)
            .values(name_ct=before[("customers", client.customer_id, "name")])
        )
        session.execute(
            update(Invoice)
            .where(col(Invoice.id) == invoice_id)
            .values(notes_ct=before[("invoices", invoice_id, "notes")])
        )
    with pytest.raises(DecryptionError) as opaque:
        billing.customers.read(client.actor, client.customer_id)
    assert opaque.value.__cause__ is None and opaque.value.__context__ is None
    with pytest.raises(DecryptionError):
        billing.invoices.read(client.actor, invoice_id)


def test_one_purpose_rotates_only_its_key(billing: Billing, database: Database, fake: Faker) -> None:
    client = make_client(billing, fake, invoices=1)
    before = sealed_values(database, client)
    old_keys = subject_keys(database, client)
    result = billing.subject_rotation.rotate_subject_keys(client.actor, client.customer_id, purpose="profile")
    assert list(result.rotated) == ["profile"] and result.values == 8
    after = sealed_values(database, client)
    assert subject_keys(database, client)["record"].id == old_keys["record"].id
    for where, sealed in after.items():
        assert (sealed != before[where]) == (where[0] == "customers")
    assert_client_opens(billing, client)


def test_an_erased_clients_record_key_can_still_be_rotated(
    billing: Billing, database: Database, fake: Faker
) -> None:
    client = make_client(billing, fake, invoices=1)
    admin = Actor(tenant_id=client.actor.tenant_id, role="admin", key_id=client.actor.key_id)
    billing.privacy.erase_customer(admin, client.customer_id)
    with pytest.raises(CustomerErased):
        billing.subject_rotation.rotate_subject_keys(admin, client.customer_id, purpose="profile")
    result = billing.subject_rotation.rotate_subject_keys(admin, client.customer_id)
    assert list(result.rotated) == ["record"] and result.skipped == ("profile",)
    (invoice_id,) = client.invoice_ids
    view = billing.invoices.read_restricted(admin, invoice_id, "tax audit of 2026")
    assert [line.description for line in view.lines] == client.descriptions[invoice_id]


def test_a_tampered_value_aborts_the_rotation_and_changes_nothing(
    billing: Billing, database: Database, fake: Faker
) -> None:
    client = make_client(billing, fake, invoices=1)
    (invoice_id,) = client.invoice_ids
    with database.transaction() as session:
        line = session.exec(select(InvoiceLine).where(InvoiceLine.invoice_id == invoice_id)).first()
        assert line is not None and line.description_ct is not None
        line.description_ct = line.description_ct[:-1] + bytes([line.description_ct[-1] ^ 1])
        session.add(line)
    before, keys_before = sealed_values(database, client), subject_keys(database, client)
    with pytest.raises(DecryptionError):
        billing.subject_rotation.rotate_subject_keys(client.actor, client.customer_id)
    assert sealed_values(database, client) == before
    assert {p: k.id for p, k in subject_keys(database, client).items()} == {
        p: k.id for p, k in keys_before.items()
    }


def test_another_tenants_client_is_not_found(billing: Billing, database: Database, fake: Faker) -> None:
    client = make_client(billing, fake, invoices=0)
    other = billing.tenants.create_tenant(fake.company())
    stranger = Actor(tenant_id=other.tenant_id, role="admin", key_id=other.id)
    before = sealed_values(database, client)
    with pytest.raises(NotFound):
        billing.subject_rotation.rotate_subject_keys(stranger, client.customer_id)
    assert sealed_values(database, client) == before


def test_every_sealed_column_of_the_models_is_rotated_or_keyed_per_tenant() -> None:
    sealed = {
        f"{table.name}.{column.name}"
        for table in metadata.sorted_tables
        for column in table.columns
        if isinstance(column.type, LargeBinary) and column.name.endswith("_ct")
    }
    rotated = (
        {f"customers.{name}_ct" for name in PII_FIELDS}
        | {f"invoices.{name}_ct" for name in SEALED_INVOICE_COLUMNS}
        | {f"invoice_lines.{name}_ct" for name in SEALED_LINE_COLUMNS}
    )
    keyed_per_tenant = {
        "idempotency_records.response_ct",  # the tenant's idempotency key
        "webhook_endpoints.secret_ct",  # the tenant's webhooks key: no client's data
        "webhook_endpoints.previous_secret_ct",
    }
    assert sealed == rotated | keyed_per_tenant


def test_concurrent_rectification_and_invoicing_during_rotations_lose_nothing(
    billing: Billing, database: Database, fake: Faker
) -> None:
    """Two threads: one rotates the client's keys again and again, one rectifies and invoices.

    On PostgreSQL the writers really overlap; each sealer takes the subject lock before it reads
    the key, so none seals under a key being replaced, and no rectification is lost.
    """
    client = make_client(billing, fake, invoices=1)
    rounds = 8
    start = threading.Barrier(2)
    errors: list[BaseException] = []
    notes = [f"note {n} {fake.word()}" for n in range(rounds)]
    created: dict[str, str] = {}

    def rotate() -> None:
        try:
            start.wait()
            for _ in range(rounds):
                billing.subject_rotation.rotate_subject_keys(client.actor, client.customer_id)
        except BaseException as error:
            errors.append(error)

    def write() -> None:
        try:
            start.wait()
            for note in notes:
                billing.customers.rectify(client.actor, client.customer_id, CustomerPatch(notes=note))
                description = fake.sentence()
                invoice = billing.invoices.create_draft(
                    client.actor,
                    InvoiceInput(
                        customer_id=client.customer_id,
                        currency="EUR",
                        lines=[InvoiceLineInput(description=description, unit_amount=100)],
                    ),
                )
                billing.invoices.update_draft(client.actor, invoice.id, InvoicePatch(notes=note))
                created[invoice.id] = description
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=rotate), threading.Thread(target=write)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert billing.customers.read(client.actor, client.customer_id).notes == notes[-1]
    for invoice_id, description in created.items():
        assert billing.invoices.read(client.actor, invoice_id).lines[0].description == description
    keys = subject_keys(database, client)
    for where, sealed in sealed_values(database, client).items():
        purpose = "profile" if where[0] == "customers" else "record"
        assert sealed_key_id(sealed) == keys[purpose].id, f"{where} is sealed under a replaced key"
    with database.read() as session:
        rotations = session.exec(select(AuditEvent).where(AuditEvent.action == "keys.subject_rotated")).all()
    assert len(rotations) == rounds


def _wait_until_a_statement_waits_for_a_lock(database: Database) -> None:
    """Until another session of this database waits for a row lock (PostgreSQL), or fail."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with database.read() as session:
            waiting = session.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        if waiting:
            return
        time.sleep(0.02)
    raise AssertionError("no statement came to wait for the lock")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite's writers never overlap
def test_a_draft_that_waits_for_a_rotation_seals_under_the_new_keys(
    billing: Billing, database: Database, fake: Faker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The draft's first statement takes the subject lock, reads the client's keys and appends its
    audit link: it waits for a rotation holding the lock, then seals under the keys the rotation
    made, not those of its snapshot; and it does not hold the chain's head while it waits, which
    the rotation takes after the lock (else one of the two would be a deadlock's victim)."""
    client = make_client(billing, fake, invoices=1)  # the process knows the chain's head
    holding, go = threading.Event(), threading.Event()
    record = billing.audit.record

    def record_when_told(*args: object, **kwargs: object) -> object:
        if kwargs.get("action") == "keys.subject_rotated":  # the keys are rewritten, not yet committed
            holding.set()
            assert go.wait(timeout=30)
        return record(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(billing.audit, "record", record_when_told)
    outcome: dict[str, object] = {}

    def run(name: str, work: Callable[[], object]) -> threading.Thread:
        def target() -> None:
            try:
                outcome[name] = work()
            except BaseException as error:
                outcome[name] = error

        thread = threading.Thread(target=target)
        thread.start()
        return thread

    rotation = run(
        "rotation", lambda: billing.subject_rotation.rotate_subject_keys(client.actor, client.customer_id)
    )
    assert holding.wait(timeout=30)
    draft = run(
        "draft",
        lambda: billing.invoices.create_draft(
            client.actor,
            InvoiceInput(
                customer_id=client.customer_id,
                currency="EUR",
                notes="after the rotation",
                lines=[InvoiceLineInput(description="Cut", unit_amount=100)],
            ),
        ),
    )
    _wait_until_a_statement_waits_for_a_lock(database)
    go.set()
    for thread in (rotation, draft):
        thread.join(timeout=60)
    assert not any(isinstance(value, BaseException) for value in outcome.values()), outcome
    keys = subject_keys(database, client)
    assert set(outcome["rotation"].rotated.values()) == {keys["profile"].id, keys["record"].id}  # type: ignore[attr-defined]
    for where, sealed in sealed_values(database, client).items():
        purpose = "profile" if where[0] == "customers" else "record"
        assert sealed_key_id(sealed) == keys[purpose].id, f"{where} is sealed under a replaced key"
    created = billing.invoices.read(client.actor, outcome["draft"].id)  # type: ignore[attr-defined]
    assert created.notes == "after the rotation" and created.customer == {
        "name": client.name,
        "email": client.email,
        "address": created.customer["address"],  # type: ignore[index]
    }
    assert billing.verify_audit().ok


def test_the_clock_stamps_the_new_keys(billing: Billing, database: Database, fake: Faker) -> None:
    client = make_client(billing, fake, invoices=0)
    fixed = Billing(db=database, keyring=billing.keyring, clock=lambda: FIXED_NOW)
    result = fixed.subject_rotation.rotate_subject_keys(client.actor, client.customer_id)
    assert result.rotated_at == FIXED_NOW
    assert subject_keys(database, client)["profile"].created_at == FIXED_NOW


# SQLite cannot show it: its writers wait for the reader's snapshot, and the snapshot keeps the
# old keys beside the old rows.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_reader_holding_rows_from_before_a_rotation_still_opens_them(
    billing: Billing, database: Database, fake: Faker
) -> None:
    """Readers take no subject lock: a rotation can commit between loading a row and its key.

    The reader's session holds the client's and the invoice's rows as sealed under the old keys;
    the rotation then commits from another session. Under READ COMMITTED the reader next finds
    the *new* keys, which do not open the rows it holds: it must re-read them once.
    """
    client = make_client(billing, fake, invoices=1)
    tenant_id = client.actor.tenant_id
    with database.read() as session:
        held = session.get(Customer, client.customer_id)
        assert held is not None
        held_lines = session.exec(select(InvoiceLine).where(col(InvoiceLine.tenant_id) == tenant_id)).all()
        assert held_lines
        held_notes = held.notes_ct

        billing.subject_rotation.rotate_subject_keys(client.actor, client.customer_id)

        profile = billing.customers.profile_for_export(session, tenant_id, client.customer_id)
        invoices = billing.invoices.views_for_customer(session, tenant_id, client.customer_id)

    assert profile is not None
    assert (profile.name, profile.email, profile.notes) == (client.name, client.email, client.notes)
    [invoice] = invoices
    assert [line.description for line in invoice.lines] == client.descriptions[invoice.id]
    assert invoice.notes == client.invoice_notes[invoice.id]
    assert held.notes_ct != held_notes  # the reader re-read the rotated rows
    assert sealed_key_id(held.notes_ct or b"") == subject_keys(database, client)["profile"].id
