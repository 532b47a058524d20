"""billing._monitoring: the window over which a key's reads of distinct clients are counted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from faker import Faker
from sqlmodel import select

from billing import AccessPolicy, Actor, Billing, CustomerInput, Database, Keyring
from billing._models import AuditEvent


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.mark.parametrize(("window_minutes", "alerted"), [(60, True), (10, False)])
def test_reads_older_than_the_tenants_window_do_not_count(
    database: Database, keyring: Keyring, fake: Faker, window_minutes: int, alerted: bool
) -> None:
    clock = Clock(datetime(2026, 3, 1, 10, 0, tzinfo=UTC))
    billing = Billing(db=database, keyring=keyring, clock=clock)
    issued = billing.tenants.create_tenant("Salon Fenêtre")
    admin = Actor(tenant_id=issued.tenant_id, role="admin", key_id=issued.id)
    billing.tenants.set_access_policy(
        admin, AccessPolicy(pii_read_threshold=2, window_minutes=window_minutes, suspend_on_alert=False)
    )
    reader = Actor(tenant_id=issued.tenant_id, role="booking", key_id="key_reader")
    clients = [billing.customers.create(admin, CustomerInput(name=fake.name())).id for _ in range(3)]
    billing.customers.read(reader, clients[0])
    billing.customers.read(reader, clients[1])
    clock.now += timedelta(minutes=15)  # the first two reads leave a 10-minute window, not a 60-minute one
    billing.customers.read(reader, clients[2])
    with database.read() as session:
        alerts = session.exec(select(AuditEvent).where(AuditEvent.action == "access.alert")).all()
    assert [a.resource_id for a in alerts] == (["key_reader"] if alerted else [])
    if alerted:
        assert '"distinct_subjects": 3' in (alerts[0].detail or "")
