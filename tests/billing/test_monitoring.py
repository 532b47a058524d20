"""billing._monitoring: the window over which a key's reads of distinct clients are counted."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from faker import Faker
from sqlalchemy import event
from sqlmodel import select

from billing import AccessPolicy, Actor, Billing, CustomerInput, Database, InvoiceInput, Keyring
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


def _monitored(database: Database, keyring: Keyring, name: str, *, suspend: bool) -> tuple[Billing, Actor]:
    """A tenant whose keys are flagged above two clients in 60 minutes, and its admin."""
    billing = Billing(db=database, keyring=keyring)
    issued = billing.tenants.create_tenant(name)
    admin = Actor(tenant_id=issued.tenant_id, role="admin", key_id=issued.id)
    billing.tenants.set_access_policy(
        admin, AccessPolicy(pii_read_threshold=2, window_minutes=60, suspend_on_alert=suspend)
    )
    return billing, admin


def _alerts(database: Database) -> list[AuditEvent]:
    with database.read() as session:
        return list(session.exec(select(AuditEvent).where(AuditEvent.action == "access.alert")).all())


def test_rereading_clients_already_read_in_the_window_never_alerts(
    database: Database, keyring: Keyring, fake: Faker
) -> None:
    billing, admin = _monitored(database, keyring, "Salon Relecture", suspend=False)
    reader = Actor(tenant_id=admin.tenant_id, role="booking", key_id="key_reader")
    clients = [billing.customers.create(admin, CustomerInput(name=fake.name())).id for _ in range(3)]
    for customer_id in [clients[0], clients[1], clients[0], clients[1], clients[1], clients[0]]:
        billing.customers.read(reader, customer_id)
    assert _alerts(database) == []
    billing.customers.read(reader, clients[2])  # the third distinct client: the count runs, and crosses
    alerts = _alerts(database)
    assert [a.resource_id for a in alerts] == ["key_reader"]
    assert '"distinct_subjects": 3' in (alerts[0].detail or "")


def test_a_reinstated_key_reads_the_clients_it_read_but_a_new_one_suspends_it_again(
    database: Database, keyring: Keyring, fake: Faker
) -> None:
    billing, admin = _monitored(database, keyring, "Salon Reprise", suspend=True)
    scraper = billing.tenants.issue_api_key(admin, role="booking", name="scraper")
    reader = Actor(tenant_id=admin.tenant_id, role="booking", key_id=scraper.id)
    clients = [billing.customers.create(admin, CustomerInput(name=fake.name())).id for _ in range(4)]

    def suspended() -> bool:
        return (
            next(k for k in billing.tenants.list_api_keys(admin) if k.id == scraper.id).suspended_at
            is not None
        )

    for customer_id in clients[:3]:
        billing.customers.read(reader, customer_id)
    assert suspended()
    billing.tenants.reinstate_api_key(admin, scraper.id)
    for customer_id in clients[:3]:  # the admin's decision holds for what was already read
        billing.customers.read(reader, customer_id)
    assert not suspended()
    billing.customers.read(reader, clients[3])
    assert suspended()
    assert len(_alerts(database)) == 1  # one alert per window, however often it is crossed


def test_reads_of_invoices_count_their_clients(database: Database, keyring: Keyring, fake: Faker) -> None:
    """An invoice's read carries its audit link, the monitor's check and the lines in one statement
    on PostgreSQL: the check's answer still reaches the monitor."""
    billing, admin = _monitored(database, keyring, "Salon Factures", suspend=False)
    reader = Actor(tenant_id=admin.tenant_id, role="booking", key_id="key_reader")
    clients = [billing.customers.create(admin, CustomerInput(name=fake.name())).id for _ in range(3)]
    drafts = [
        billing.invoices.create_draft(admin, InvoiceInput(customer_id=client, currency="EUR")).id
        for client in clients
    ]
    for draft in [drafts[0], drafts[1], drafts[0], drafts[1]]:
        billing.invoices.read(reader, draft)
    assert _alerts(database) == []
    billing.invoices.read(reader, drafts[2])  # the third distinct client
    alerts = _alerts(database)
    assert [a.resource_id for a in alerts] == ["key_reader"]
    assert '"distinct_subjects": 3' in (alerts[0].detail or "")


def test_the_check_stops_counting_at_the_threshold_but_the_alert_states_the_exact_count(
    database: Database, keyring: Keyring, fake: Faker
) -> None:
    """The threshold lowered under a key that had read seven clients: its next new client crosses it,
    and the alert says eight, not the threshold plus one where the check's count stopped."""
    billing = Billing(db=database, keyring=keyring)
    issued = billing.tenants.create_tenant("Salon Seuil")
    admin = Actor(tenant_id=issued.tenant_id, role="admin", key_id=issued.id)
    policy = AccessPolicy(pii_read_threshold=20, window_minutes=60, suspend_on_alert=False)
    billing.tenants.set_access_policy(admin, policy)
    reader = Actor(tenant_id=admin.tenant_id, role="booking", key_id="key_reader")
    clients = [billing.customers.create(admin, CustomerInput(name=fake.name())).id for _ in range(8)]
    for customer_id in clients[:7]:
        billing.customers.read(reader, customer_id)
        billing.customers.read(reader, customer_id)  # read twice: distinct clients are counted
    billing.tenants.set_access_policy(
        admin, AccessPolicy(pii_read_threshold=3, window_minutes=60, suspend_on_alert=False)
    )
    assert _alerts(database) == []
    billing.customers.read(reader, clients[7])
    alerts = _alerts(database)
    assert [a.resource_id for a in alerts] == ["key_reader"]
    assert '"distinct_subjects": 8' in (alerts[0].detail or "")
    assert '"threshold": 3' in (alerts[0].detail or "")


def test_an_alert_holds_for_its_key_and_its_window_only(
    database: Database, keyring: Keyring, fake: Faker
) -> None:
    """Whether a key was already flagged rides in the check's statement (the partial index of
    alerts): a second key crossing the threshold in the same window is flagged too, and the first
    key is flagged again once its alert has left the window."""
    clock = Clock(datetime(2026, 3, 1, 10, 0, tzinfo=UTC))
    billing = Billing(db=database, keyring=keyring, clock=clock)
    issued = billing.tenants.create_tenant("Salon Fenêtres")
    admin = Actor(tenant_id=issued.tenant_id, role="admin", key_id=issued.id)
    policy = AccessPolicy(pii_read_threshold=2, window_minutes=60, suspend_on_alert=False)
    billing.tenants.set_access_policy(admin, policy)
    first = Actor(tenant_id=issued.tenant_id, role="booking", key_id="key_first")
    second = Actor(tenant_id=issued.tenant_id, role="booking", key_id="key_second")
    clients = [billing.customers.create(admin, CustomerInput(name=fake.name())).id for _ in range(8)]
    for customer_id in clients[:4]:  # crosses at the third client; the fourth is already flagged
        billing.customers.read(first, customer_id)
    for customer_id in clients[:3]:
        billing.customers.read(second, customer_id)
    assert sorted(a.resource_id for a in _alerts(database)) == ["key_first", "key_second"]
    clock.now += timedelta(minutes=61)
    for customer_id in clients[4:7]:
        billing.customers.read(first, customer_id)
    assert sorted(a.resource_id for a in _alerts(database)) == ["key_first", "key_first", "key_second"]
    billing.customers.read(first, clients[7])  # flagged in this window already
    assert len(_alerts(database)) == 3


def test_the_monitors_probes_are_index_lookups(database: Database, keyring: Keyring, fake: Faker) -> None:
    """The check that rides along a PII read reaches ``audit_events`` through its indexes only: the
    key's earlier reads of the client (``ix_audit_events_actor_subject_time``), its reads of other
    clients, and whether it was already flagged (the partial ``ix_audit_events_alerts``, whose
    condition the statement states as a constant). A scan of the table would grow with every event
    ever audited. The indexes of reads are partial too (PII reads only): the statement states their
    condition the same way."""
    billing, admin = _monitored(database, keyring, "Salon Index", suspend=False)
    reader = Actor(tenant_id=admin.tenant_id, role="booking", key_id="key_reader")
    client = billing.customers.create(admin, CustomerInput(name=fake.name())).id
    plan = _plan_of(database, "audit_events.subject_id = ", lambda: billing.customers.read(reader, client))

    assert "ix_audit_events_actor_subject_time" in plan
    assert "ix_audit_events_alerts" in plan
    _assert_no_scan_of_audit_events(plan)


def test_a_breachs_affected_clients_are_an_index_lookup(database: Database, keyring: Keyring) -> None:
    billing = Billing(db=database, keyring=keyring)
    since = datetime.now(UTC) - timedelta(days=1)
    plan = _plan_of(
        database, "DISTINCT audit_events.subject_id", lambda: billing.breaches.affected("key_x", since)
    )

    assert "ix_audit_events_actor" in plan
    _assert_no_scan_of_audit_events(plan)


def _plan_of(database: Database, marker: str, run: Callable[[], object]) -> str:
    """The plan of the first statement holding ``marker`` that ``run`` sends.

    On PostgreSQL the statement is prepared and its *generic* plan asked for, as a prepared
    statement runs after its fifth execution (a condition on a bound value cannot choose a partial
    index there), with sequential scans disabled: whether it *can* use the indexes, which a small
    test table would otherwise not show.
    """
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if marker in statement:
            sent.append((statement, parameters))

    event.listen(database.engine, "before_cursor_execute", capture)
    try:
        run()
    finally:
        event.remove(database.engine, "before_cursor_execute", capture)
    (statement, parameters), *_ = sent

    with database.engine.connect() as connection:
        dbapi = connection.connection.dbapi_connection
        cursor = dbapi.cursor()  # type: ignore[union-attr]
        if database.engine.dialect.name == "postgresql":
            names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", statement)))
            numbered = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m.group(1)) + 1}", statement)
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            cursor.execute(f"PREPARE probe AS {numbered}")
            literal = psycopg.ClientCursor(dbapi)  # type: ignore[arg-type]
            literal.execute(
                f"EXPLAIN EXECUTE probe({', '.join(['%s'] * len(names))})", [parameters[n] for n in names]
            )
            plan = "\n".join(row[0] for row in literal.fetchall())
        else:
            cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            plan = "\n".join(row[-1] for row in cursor.fetchall())
        connection.rollback()
    return plan


def _assert_no_scan_of_audit_events(plan: str) -> None:
    scans = [line for line in plan.splitlines() if "audit_events" in line]
    assert scans and not [line for line in scans if "Seq Scan" in line or line.strip().startswith("SCAN ")]
