"""Tests for billing._rotation (master-key rotation and retirement), on both databases.

Also the keyring-backed master-key providers of billing._keyring that rotation relies on: a
provider that follows the keyring file as another process rotates or retires.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from faker import Faker
from sqlalchemy import update
from sqlmodel import Session, col, select

from billing import (
    Actor,
    Billing,
    CustomerInput,
    Database,
    DatabaseConfig,
    InvoiceInput,
    InvoiceLineInput,
    Keyring,
    KeyringFileMasterKeys,
    KeyringMasterKeys,
    RotationProgress,
    load_keyring,
    write_keyring,
)
from billing._envelope import DataKey, sealed_key_id
from billing._keyring import add_master_key, wrap_data_key
from billing._keys import SubjectKeys
from billing._models import AuditEvent, DataKeyRecord
from billing.errors import DecryptionError, InvalidStateTransition, KeyringError, NotFound

from ..conftest import FIXED_NOW


class Interrupted(Exception):
    """Raised by a batch callback to stop a rotation the way a crash would."""


@dataclass
class Seeded:
    """A tenant with clients and invoices whose decrypted values the test remembers."""

    actor: Actor
    customers: dict[str, str]  # customer id -> name
    invoices: dict[str, str]  # invoice id -> first line's description


def file_billing(database: Database, keyring_path: Path) -> Billing:
    """A Billing whose master keys follow the keyring file (as the service and the CLI build it)."""
    return Billing(db=database, keyring=load_keyring(keyring_path), clock=lambda: FIXED_NOW)


@pytest.fixture
def billing_from_file(database: Database, keyring_path: Path) -> Billing:
    return file_billing(database, keyring_path)


def seed(billing: Billing, fake: Faker, *, customers: int = 3) -> Seeded:
    issued = billing.tenants.create_tenant(fake.company())
    actor = Actor(tenant_id=issued.tenant_id, role="booking", key_id=issued.id)
    seeded = Seeded(actor, {}, {})
    for _ in range(customers):
        customer = billing.customers.create(actor, CustomerInput(name=fake.name(), email=fake.email()))
        seeded.customers[customer.id] = customer.name
        description = fake.sentence()
        line = InvoiceLineInput(description=description, unit_amount=4500, tax_rate_bps=2000)
        invoice = billing.invoices.create_draft(
            actor, InvoiceInput(customer_id=customer.id, currency="EUR", lines=[line])
        )
        seeded.invoices[invoice.id] = description
    return seeded


def assert_all_values_open(billing: Billing, seeded: Seeded) -> None:
    for customer_id, name in seeded.customers.items():
        assert billing.customers.read(seeded.actor, customer_id).name == name
    for invoice_id, description in seeded.invoices.items():
        assert billing.invoices.read(seeded.actor, invoice_id).lines[0].description == description


def live_keys(database: Database) -> list[DataKeyRecord]:
    with database.read() as session:
        return list(session.exec(select(DataKeyRecord).where(col(DataKeyRecord.wrapped).is_not(None))))


def versions_on_file(keyring_path: Path) -> list[str]:
    return [key.key_id for key in load_keyring(keyring_path).master_keys]


def system_actions(database: Database) -> list[str]:
    with database.read() as session:
        query = select(AuditEvent.action).where(AuditEvent.chain == "system").order_by(col(AuditEvent.seq))
        return list(session.exec(query))


def stop_after(batches: int) -> Callable[[RotationProgress], None]:
    """A batch callback that stops the rotation once ``batches`` batches have committed."""

    def on_batch(progress: RotationProgress) -> None:
        if progress.batches >= batches:
            raise Interrupted

    return on_batch


# --- rotation ----------------------------------------------------------------------------------


def test_rotation_rewraps_every_live_key_and_every_value_still_opens(
    billing_from_file: Billing, database: Database, keyring_path: Path, fake: Faker
) -> None:
    billing = billing_from_file
    seeded = seed(billing, fake)
    shredded = next(iter(seeded.customers))
    with database.transaction() as session:
        assert SubjectKeys(session, billing.keyring, clock=billing.clock).shred(
            seeded.actor.tenant_id, shredded, "profile"
        )
    live_before = len(live_keys(database))

    report = billing.rotation.rotate_master_key(batch_size=2)

    assert (report.from_versions, report.to_version, report.resumed) == (("mk_0001",), "mk_0002", False)
    assert (report.rewrapped, report.failed, report.remaining) == (live_before, 0, 0)
    assert report.complete and report.batches >= live_before // 2
    assert versions_on_file(keyring_path) == ["mk_0001", "mk_0002"]
    assert load_keyring(keyring_path).active_master_id == "mk_0002"
    for record in live_keys(database):
        assert record.wrapped is not None
        assert record.master_key_id == sealed_key_id(record.wrapped) == "mk_0002"
    del seeded.customers[shredded]  # its profile is gone for good; its invoice (record key) remains
    assert_all_values_open(billing, seeded)
    assert_all_values_open(file_billing(database, keyring_path), seeded)  # a fresh process, too
    assert system_actions(database)[-2:] == ["keys.master_key_added", "keys.rotated"]
    assert billing.verify_audit().ok


def test_an_interrupted_rotation_resumes_without_adding_a_version(
    billing_from_file: Billing, database: Database, keyring_path: Path, fake: Faker
) -> None:
    billing = billing_from_file
    seeded = seed(billing, fake)
    live = len(live_keys(database))

    with pytest.raises(Interrupted):
        billing.rotation.rotate_master_key(batch_size=3, on_batch=stop_after(1))

    status = billing.rotation.key_status()
    assert status.rotation_in_progress
    assert [(v.key_id, v.active, v.live_deks) for v in status.versions] == [
        ("mk_0001", False, live - 3),
        ("mk_0002", True, 3),
    ]
    assert status.pending_deks == live - 3
    assert 0 < status.progress < 1
    assert_all_values_open(billing, seeded)  # online: rows under either version open

    report = billing.rotation.rotate_master_key(batch_size=3)

    assert (report.resumed, report.from_versions, report.to_version) == (True, ("mk_0001",), "mk_0002")
    assert (report.rewrapped, report.remaining) == (live - 3, 0)
    assert versions_on_file(keyring_path) == ["mk_0001", "mk_0002"], "a resume adds no version"
    assert {record.master_key_id for record in live_keys(database)} == {"mk_0002"}
    assert_all_values_open(billing, seeded)
    assert not billing.rotation.key_status().rotation_in_progress


def test_the_service_keeps_working_while_another_process_rotates(
    billing_from_file: Billing, database: Database, keyring_path: Path, fake: Faker
) -> None:
    service = billing_from_file  # "the running service": loaded the keyring before the rotation
    seeded = seed(service, fake)
    operator = file_billing(database, keyring_path)  # "veilbill keys rotate", another process
    created_meanwhile: list[str] = []

    def serve_requests(progress: RotationProgress) -> None:
        assert_all_values_open(service, seeded)
        customer = service.customers.create(seeded.actor, CustomerInput(name=fake.name()))
        created_meanwhile.append(customer.id)

    operator.rotation.rotate_master_key(batch_size=2, on_batch=serve_requests)

    assert created_meanwhile
    assert {record.master_key_id for record in live_keys(database)} == {"mk_0002"}
    assert service.rotation.key_status().active_key_id == "mk_0002", "the service followed the file"
    assert_all_values_open(service, seeded)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SKIP LOCKED is PostgreSQL's
def test_a_rewrap_passes_over_the_keys_of_a_draft_in_progress_and_a_resume_takes_them(
    billing_from_file: Billing,
    database: Database,
    keyring_path: Path,
    fake: Faker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A draft locks its client's key rows with the client (decision 70): a re-wrap batch does not
    wait for it, the run reports the rows it could not take, the old version cannot be retired
    while they name it, and a resume re-wraps them once the draft has committed."""
    service = billing_from_file
    seeded = seed(service, fake)
    customer_id = next(iter(seeded.customers))
    holding, go = threading.Event(), threading.Event()
    keys_of = service.invoices._keys

    def keys_after_a_pause(session: Session) -> SubjectKeys:
        if not holding.is_set():  # the draft's first statement has run: its locks are held
            holding.set()
            assert go.wait(timeout=30)
        return keys_of(session)

    monkeypatch.setattr(service.invoices, "_keys", keys_after_a_pause)
    description = fake.sentence()
    drafted: dict[str, object] = {}

    def draft() -> None:
        try:
            line = InvoiceLineInput(description=description, unit_amount=100)
            drafted["view"] = service.invoices.create_draft(
                seeded.actor, InvoiceInput(customer_id=customer_id, currency="EUR", lines=[line])
            )
        except BaseException as error:
            drafted["error"] = error

    thread = threading.Thread(target=draft)
    thread.start()
    try:
        assert holding.wait(timeout=30)
        operator = file_billing(database, keyring_path)
        report = operator.rotation.rotate_master_key(batch_size=2)
        assert report.remaining == 2 and not report.complete  # the draft's client's two keys
        with pytest.raises(InvalidStateTransition, match="keys rotate"):
            operator.rotation.retire_master_key("mk_0001")
    finally:
        go.set()
        thread.join(timeout=60)
    assert "error" not in drafted, drafted
    resumed = operator.rotation.rotate_master_key(resume_only=True)
    assert resumed.rewrapped == 2 and resumed.complete
    operator.rotation.retire_master_key("mk_0001")
    assert {record.master_key_id for record in live_keys(database)} == {"mk_0002"}
    seeded.invoices[drafted["view"].id] = description  # type: ignore[attr-defined]
    assert_all_values_open(file_billing(database, keyring_path), seeded)


def test_a_process_with_a_stale_keyring_resumes_rather_than_adding_another_version(
    database: Database, keyring_path: Path, fake: Faker
) -> None:
    first = file_billing(database, keyring_path)
    seed(first, fake)
    second = file_billing(database, keyring_path)
    assert second.rotation.key_status().active_key_id == "mk_0001"  # loaded and cached

    with pytest.raises(Interrupted):
        first.rotation.rotate_master_key(batch_size=2, on_batch=stop_after(1))
    report = second.rotation.rotate_master_key(batch_size=2)

    assert report.resumed and report.to_version == "mk_0002" and report.complete
    assert versions_on_file(keyring_path) == ["mk_0001", "mk_0002"]


def test_rotation_with_an_in_memory_keyring_changes_that_billing_only(billing: Billing, fake: Faker) -> None:
    seeded = seed(billing, fake, customers=2)
    report = billing.rotation.rotate_master_key()
    assert report.to_version == "mk_0002" and report.complete
    assert isinstance(billing.key_provider, KeyringMasterKeys)
    assert [v.key_id for v in billing.key_provider.versions()] == ["mk_0001", "mk_0002"]
    assert_all_values_open(billing, seeded)


def test_rotation_of_an_empty_database_just_adds_a_version(billing_from_file: Billing) -> None:
    report = billing_from_file.rotation.rotate_master_key()
    assert report.from_versions == () and report.to_version == "mk_0002"
    assert report.rewrapped == report.batches == 0


def test_max_batches_stops_early_and_the_next_call_goes_on(billing_from_file: Billing, fake: Faker) -> None:
    billing = billing_from_file
    seeded = seed(billing, fake)
    first = billing.rotation.rotate_master_key(batch_size=2, max_batches=1)
    assert (first.batches, first.rewrapped, first.complete) == (1, 2, False)
    second = billing.rotation.rotate_master_key(batch_size=2, max_batches=100)
    assert second.resumed and second.complete and second.to_version == "mk_0002"
    assert_all_values_open(billing, seeded)
    outcomes = [e.outcome for e in billing.audit_events(seeded.actor)]  # tenant chain: untouched
    assert "incomplete" not in outcomes


def test_a_key_that_does_not_unwrap_is_left_alone_and_blocks_retirement(
    billing_from_file: Billing, database: Database, fake: Faker
) -> None:
    billing = billing_from_file
    seeded = seed(billing, fake)
    broken = next(iter(seeded.customers))
    with database.transaction() as session:  # fault injection: one wrapped key is corrupted
        record = session.exec(
            select(DataKeyRecord).where(
                DataKeyRecord.subject_id == broken, DataKeyRecord.purpose == "profile"
            )
        ).one()
        assert record.wrapped is not None
        record.wrapped = record.wrapped[:-1] + bytes([record.wrapped[-1] ^ 1])
        session.add(record)

    report = billing.rotation.rotate_master_key(batch_size=2)

    assert (report.failed, report.remaining) == (1, 1)
    assert not report.complete
    with pytest.raises(InvalidStateTransition) as refused:
        billing.rotation.retire_master_key("mk_0001")
    assert refused.value.ids["live_deks"] == 1

    with database.transaction() as session:
        SubjectKeys(session, billing.keyring, clock=billing.clock).shred(
            seeded.actor.tenant_id, broken, "profile"
        )
    assert billing.rotation.rotate_master_key().resumed is False  # nothing pending: a new version
    billing.rotation.retire_master_key("mk_0001")


def test_batch_size_and_max_batches_are_checked(billing_from_file: Billing) -> None:
    for kwargs in ({"batch_size": 0}, {"batch_size": 10_001}, {"max_batches": 0}):
        with pytest.raises(ValueError, match="must be"):
            billing_from_file.rotation.rotate_master_key(**kwargs)  # type: ignore[arg-type]


# --- retirement --------------------------------------------------------------------------------


def test_retire_refuses_the_active_version_and_versions_still_in_use(
    billing_from_file: Billing, database: Database, keyring_path: Path, fake: Faker
) -> None:
    billing = billing_from_file
    seeded = seed(billing, fake)

    with pytest.raises(InvalidStateTransition, match="active"):
        billing.rotation.retire_master_key("mk_0001")
    with pytest.raises(NotFound):
        billing.rotation.retire_master_key("mk_0042")
    with pytest.raises(Interrupted):
        billing.rotation.rotate_master_key(batch_size=2, on_batch=stop_after(1))
    with pytest.raises(InvalidStateTransition, match="keys rotate") as in_use:
        billing.rotation.retire_master_key("mk_0001")
    assert in_use.value.ids["live_deks"] == len(live_keys(database)) - 2
    with pytest.raises(InvalidStateTransition, match="active"):
        billing.rotation.retire_master_key("mk_0002")
    assert versions_on_file(keyring_path) == ["mk_0001", "mk_0002"]

    billing.rotation.rotate_master_key()
    retired = billing.rotation.retire_master_key("mk_0001")

    assert retired.key_id == "mk_0001" and retired.retired_at == FIXED_NOW
    assert versions_on_file(keyring_path) == ["mk_0002"]
    assert_all_values_open(billing, seeded)
    assert_all_values_open(file_billing(database, keyring_path), seeded)
    assert system_actions(database)[-1] == "keys.retired"
    with pytest.raises(NotFound):
        billing.rotation.retire_master_key("mk_0001")
    assert billing.verify_audit().ok


def test_retire_also_refuses_a_version_that_a_blob_still_names(
    billing_from_file: Billing, database: Database, fake: Faker
) -> None:
    billing = billing_from_file
    seed(billing, fake)
    billing.rotation.rotate_master_key()
    old_keyring = load_keyring(billing.keyring.source or Path())
    with database.transaction() as session:  # a row whose column disagrees with its blob
        record = session.exec(select(DataKeyRecord).where(col(DataKeyRecord.wrapped).is_not(None))).first()
        assert record is not None
        dek = billing.key_provider.unwrap(  # type: ignore[union-attr]
            record.wrapped or b"", tenant_id=record.tenant_id, purpose=record.purpose, dek_id=record.id
        )
        record.wrapped = wrap_data_key(
            old_keyring.master("mk_0001"), dek, tenant_id=record.tenant_id, purpose=record.purpose
        )
        session.add(record)
    with pytest.raises(InvalidStateTransition):
        billing.rotation.retire_master_key("mk_0001")


def test_after_shred_rotate_and_retire_an_older_database_copy_cannot_open_the_shredded_subject(
    sqlite_template: Path, tmp_path: Path, keyring_path: Path, fake: Faker
) -> None:
    live_path, copy_path = tmp_path / "live.db", tmp_path / "copy-before-erasure.db"
    shutil.copy(sqlite_template, live_path)
    live_db = Database(DatabaseConfig(f"sqlite:///{live_path}"))
    try:
        billing = file_billing(live_db, keyring_path)
        seeded = seed(billing, fake, customers=2)
        erased, kept = list(seeded.customers)

        with sqlite3.connect(live_path) as source, sqlite3.connect(copy_path) as copy:
            source.backup(copy)  # the copy an attacker (or an old backup) keeps

        with live_db.transaction() as session:  # erasure: the profile key is shredded
            SubjectKeys(session, billing.keyring, clock=billing.clock).shred(
                seeded.actor.tenant_id, erased, "profile"
            )
        with pytest.raises(DecryptionError):
            billing.customers.read(seeded.actor, erased)

        copy_db = Database(DatabaseConfig(f"sqlite:///{copy_path}"))
        try:
            from_copy = file_billing(copy_db, keyring_path)
            # Until the old master version is retired, the copy still gives the erased client away.
            assert from_copy.customers.read(seeded.actor, erased).name == seeded.customers[erased]

            billing.rotation.rotate_master_key()
            billing.rotation.retire_master_key("mk_0001")

            with pytest.raises(DecryptionError) as opaque:
                file_billing(copy_db, keyring_path).customers.read(seeded.actor, erased)
            assert opaque.value.__cause__ is None and opaque.value.__context__ is None
        finally:
            copy_db.dispose()
        assert billing.customers.read(seeded.actor, kept).name == seeded.customers[kept]
        restarted = file_billing(live_db, keyring_path)
        assert restarted.customers.read(seeded.actor, kept).name == seeded.customers[kept]
    finally:
        live_db.dispose()


# --- status ------------------------------------------------------------------------------------


def test_key_status_counts_live_keys_per_version_and_per_tenant(
    billing_from_file: Billing, database: Database, fake: Faker
) -> None:
    billing = billing_from_file
    first = seed(billing, fake, customers=2)
    second = seed(billing, fake, customers=1)
    status = billing.rotation.key_status()
    assert status.active_key_id == "mk_0001"
    (only,) = status.versions
    assert (only.key_id, only.active, only.created_at, only.age_days) == ("mk_0001", True, FIXED_NOW, 0)
    assert only.live_deks == status.live_deks == len(live_keys(database))
    assert (status.pending_deks, status.orphaned_deks, status.progress) == (0, 0, 1.0)

    # Per tenant: a tenant's own index, idempotency, profile and record keys only.
    mine = billing.rotation.key_status(tenant_id=first.actor.tenant_id)
    theirs = billing.rotation.key_status(tenant_id=second.actor.tenant_id)
    assert mine.live_deks + theirs.live_deks == status.live_deks
    assert mine.live_deks > theirs.live_deks

    with database.transaction() as session:  # a key naming a version nobody has
        session.execute(
            update(DataKeyRecord)
            .where(col(DataKeyRecord.subject_id) == next(iter(second.customers)))
            .values(master_key_id="mk_0099")
        )
    status = billing.rotation.key_status()
    assert (status.orphaned_deks, status.pending_deks, status.rotation_in_progress) == (2, 0, False)

    # No rotation can help orphans, and they do not hold rotations up.
    report = billing.rotation.rotate_master_key()
    assert (report.resumed, report.complete, report.failed) == (False, True, 0)
    assert billing.rotation.key_status().orphaned_deks == 2


# --- keyring-backed providers (billing._keyring) -------------------------------------------------


DEK = DataKey("dek_test", bytes(range(32)))


def test_the_file_provider_touches_nothing_until_used(tmp_path: Path) -> None:
    provider = KeyringFileMasterKeys(tmp_path / "missing" / "keyring.json")
    assert "missing" in repr(provider)
    with pytest.raises(KeyringError, match="cannot read keyring file"):
        _ = provider.active_key_id


def test_the_file_provider_follows_versions_added_and_retired_by_another_writer(
    keyring_path: Path, keyring: Keyring
) -> None:
    provider = KeyringFileMasterKeys(keyring_path)
    old_blob = provider.wrap(DEK, tenant_id="tn_1", purpose="profile")
    write_keyring(keyring_path, add_master_key(load_keyring(keyring_path), now=FIXED_NOW), overwrite=True)

    assert provider.active_key_id == "mk_0002"
    new_blob = provider.wrap(DEK, tenant_id="tn_1", purpose="profile")
    assert (sealed_key_id(old_blob), sealed_key_id(new_blob)) == ("mk_0001", "mk_0002")
    for blob in (old_blob, new_blob):
        assert provider.unwrap(blob, tenant_id="tn_1", purpose="profile", dek_id=DEK.key_id) == DEK

    other_writer = KeyringFileMasterKeys(keyring_path)
    other_writer.remove_version("mk_0001")
    assert [v.key_id for v in provider.versions()] == ["mk_0002"]
    with pytest.raises(DecryptionError) as opaque:
        provider.unwrap(old_blob, tenant_id="tn_1", purpose="profile", dek_id=DEK.key_id)
    assert opaque.value.__cause__ is None and opaque.value.__context__ is None
    with pytest.raises(ValueError, match="active"):
        other_writer.remove_version("mk_0002")


def test_the_file_provider_fails_closed_when_the_file_becomes_unsafe(keyring_path: Path) -> None:
    provider = KeyringFileMasterKeys(keyring_path)
    assert provider.active_key_id == "mk_0001"
    os.chmod(keyring_path, 0o644)
    os.utime(keyring_path, ns=(0, 0))  # a changed file is read again
    with pytest.raises(KeyringError, match="permissions"):
        provider.wrap(DEK, tenant_id="tn_1", purpose="profile")


def test_blobs_wrapped_before_providers_existed_still_unwrap(keyring: Keyring, keyring_path: Path) -> None:
    legacy = wrap_data_key(keyring.active_master, DEK, tenant_id="tn_1", purpose="record")
    for provider in (KeyringMasterKeys(keyring), KeyringFileMasterKeys(keyring_path)):
        assert provider.unwrap(legacy, tenant_id="tn_1", purpose="record", dek_id=DEK.key_id) == DEK
        for tenant, purpose, dek_id in (("tn_2", "record", DEK.key_id), ("tn_1", "profile", DEK.key_id)):
            with pytest.raises(DecryptionError):
                provider.unwrap(legacy, tenant_id=tenant, purpose=purpose, dek_id=dek_id)
        with pytest.raises(DecryptionError):
            provider.unwrap(b"\x01\x07mk_0009" + bytes(60), tenant_id="tn_1", purpose="record", dek_id="x")


def test_subject_keys_store_the_version_named_by_the_blob(
    database: Database, keyring: Keyring, keyring_path: Path
) -> None:
    provider = KeyringFileMasterKeys(keyring_path)
    provider.add_version(now=FIXED_NOW)
    with database.transaction() as session:
        dek = SubjectKeys(session, provider, clock=lambda: FIXED_NOW).create("tn_1", "cus_1", "profile")
    with Session(database.engine) as session:
        record = session.exec(select(DataKeyRecord).where(DataKeyRecord.id == dek.key_id)).one()
        assert record.wrapped is not None
        assert record.master_key_id == sealed_key_id(record.wrapped) == "mk_0002"
        assert SubjectKeys(session, provider, clock=lambda: FIXED_NOW).get("tn_1", "cus_1", "profile") == dek
    assert "material" not in repr(provider) and "material" not in repr(KeyringMasterKeys(keyring))
