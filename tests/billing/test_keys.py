"""billing._keys: a unit of work's data keys, on both databases."""

from __future__ import annotations

import pytest
from faker import Faker
from sqlmodel import col, select

from billing import Actor, Billing, CustomerInput
from billing._keys import SubjectKeys
from billing._models import DataKeyRecord
from billing.errors import DecryptionError

from ..conftest import statements_of


def _client(billing: Billing, fake: Faker) -> tuple[str, str]:
    issued = billing.tenants.create_tenant("Cabinet Test")
    actor = Actor(tenant_id=issued.tenant_id, role="booking", key_id=issued.id)
    return issued.tenant_id, billing.customers.create(actor, CustomerInput(name=fake.name())).id


def test_load_unwraps_several_keys_of_a_subject_with_one_query(billing: Billing, fake: Faker) -> None:
    tenant_id, customer_id = _client(billing, fake)
    with billing.db.transaction() as session, statements_of(billing.db.engine) as sent:
        keys = SubjectKeys(session, billing.keyring, clock=billing.clock)
        keys.load(tenant_id, customer_id, ("profile", "record"))
        profile = keys.get(tenant_id, customer_id, "profile")
        record = keys.get(tenant_id, customer_id, "record")
    assert [s.split()[0] for s in sent if not s.startswith("BEGIN")] == ["SELECT"]  # SQLite's BEGIN aside
    assert profile.key_id != record.key_id
    with billing.db.transaction() as session:  # the keys a fresh unit gets one by one
        fresh = SubjectKeys(session, billing.keyring, clock=billing.clock)
        assert fresh.get(tenant_id, customer_id, "profile").material == profile.material
        assert fresh.get(tenant_id, customer_id, "record").material == record.material


def test_load_skips_a_shredded_key(billing: Billing, fake: Faker) -> None:
    tenant_id, customer_id = _client(billing, fake)
    with billing.db.transaction() as session:
        SubjectKeys(session, billing.keyring, clock=billing.clock).shred(tenant_id, customer_id, "profile")
    with billing.db.transaction() as session:
        keys = SubjectKeys(session, billing.keyring, clock=billing.clock)
        keys.load(tenant_id, customer_id, ("profile", "record"))
        assert keys.get(tenant_id, customer_id, "record").key_id.startswith("dek_")
        with pytest.raises(DecryptionError):
            keys.get(tenant_id, customer_id, "profile")


def test_load_does_not_cross_subjects_or_tenants(billing: Billing, fake: Faker) -> None:
    tenant_id, customer_id = _client(billing, fake)
    other_tenant, other_customer = _client(billing, fake)
    with billing.db.transaction() as session:
        keys = SubjectKeys(session, billing.keyring, clock=billing.clock)
        keys.load(tenant_id, other_customer, ("profile", "record"))  # another tenant's client
        keys.load(other_tenant, customer_id, ("profile",))
        for tenant, subject in ((tenant_id, other_customer), (other_tenant, customer_id)):
            with pytest.raises(DecryptionError):
                keys.get(tenant, subject, "profile")


def test_adopt_takes_a_row_read_elsewhere_and_refuses_one_relabelled(billing: Billing, fake: Faker) -> None:
    tenant_id, customer_id = _client(billing, fake)
    _, other_customer = _client(billing, fake)
    with billing.db.transaction() as session:
        rows = {
            row.subject_id: row
            for row in session.exec(
                select(DataKeyRecord).where(
                    col(DataKeyRecord.subject_id).in_([customer_id, other_customer]),
                    DataKeyRecord.purpose == "record",
                )
            )
        }
        session.expunge_all()
    relabelled = rows[other_customer]
    relabelled.subject_id, relabelled.tenant_id = customer_id, tenant_id  # another tenant's key, as ours
    with billing.db.transaction() as session, statements_of(billing.db.engine) as sent:
        keys = SubjectKeys(session, billing.keyring, clock=billing.clock)
        keys.adopt(relabelled)  # it does not unwrap under our tenant: not adopted
        assert keys.get(tenant_id, customer_id, "record").key_id == rows[customer_id].id
        assert any(s.startswith("SELECT") for s in sent)  # get looked the real key up
    with billing.db.transaction() as session, statements_of(billing.db.engine) as sent:
        keys = SubjectKeys(session, billing.keyring, clock=billing.clock)
        keys.adopt(rows[customer_id])
        assert keys.get(tenant_id, customer_id, "record").key_id == rows[customer_id].id
    assert not sent  # adopted: no query
