"""billing._keys: a unit of work's data keys, on both databases."""

from __future__ import annotations

import pytest
from faker import Faker

from billing import Actor, Billing, CustomerInput
from billing._keys import SubjectKeys
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
