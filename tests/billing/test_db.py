"""The storage primitives that cross-process guarantees rest on, on both databases."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col, select

from billing import Database, DatabaseConfig, normalize_database_url
from billing._db import in_constants, insert_ignore
from billing._models import AuditEvent, WebhookEvent, utcnow


def test_insert_ignore_reports_whether_it_inserted(database: Database) -> None:
    row = {"id": "evt_a", "type": "x", "payload": "{}", "received_at": utcnow()}
    with database.transaction() as session:
        assert insert_ignore(session, WebhookEvent, row) is True
    with database.transaction() as session:
        assert insert_ignore(session, WebhookEvent, row) is False


def test_concurrent_insert_ignore_has_exactly_one_winner(database: Database) -> None:
    def attempt(_: int) -> bool:
        with database.transaction() as session:
            return insert_ignore(
                session,
                WebhookEvent,
                {"id": "evt_race", "type": "x", "payload": "{}", "received_at": utcnow()},
            )

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(attempt, range(16)))
    assert outcomes.count(True) == 1


def test_a_failed_transaction_writes_nothing(database: Database) -> None:
    with pytest.raises(RuntimeError), database.transaction() as session:  # noqa: PT012
        insert_ignore(
            session, WebhookEvent, {"id": "evt_b", "type": "x", "payload": "{}", "received_at": utcnow()}
        )
        raise RuntimeError("boom")
    with database.read() as session:
        assert session.get(WebhookEvent, "evt_b") is None


def test_a_snapshot_sees_one_state_and_holds_no_writer_back(database: Database) -> None:
    def count(session: Session) -> int:
        return len(session.exec(select(WebhookEvent)).all())

    with database.transaction() as session:
        insert_ignore(
            session, WebhookEvent, {"id": "evt_1", "type": "x", "payload": "{}", "received_at": utcnow()}
        )
    with database.snapshot() as snapshot:
        assert count(snapshot) == 1
        # a writer commits while the snapshot is open: not blocked (SQLite would time out otherwise)…
        with database.transaction() as session:
            insert_ignore(
                session, WebhookEvent, {"id": "evt_2", "type": "x", "payload": "{}", "received_at": utcnow()}
            )
        # …and the snapshot keeps seeing the state of its first read
        assert count(snapshot) == 1
    with database.read() as session:
        assert count(session) == 2


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@h:5432/db", "postgresql+psycopg://u@h:5432/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///var/x.db", "sqlite:///var/x.db"),
    ],
)
def test_urls_get_our_driver(given: str, expected: str) -> None:
    assert normalize_database_url(given) == expected


def test_other_databases_are_refused_without_echoing_credentials() -> None:
    with pytest.raises(ValueError, match="unsupported") as error:
        DatabaseConfig("mysql://user:hunter2@h/db")
    assert "hunter2" not in str(error.value)


def test_constant_names_are_written_into_the_sql_and_nothing_else_is() -> None:
    condition = in_constants(col(AuditEvent.action), ["invoice.read", "customer.read", "invoice.read"])
    assert str(condition.compile()) == "audit_events.action IN ('customer.read', 'invoice.read')"
    for unsafe in ["it's", "a b", "Invoice.read", "x'); DROP TABLE audit_events; --", ""]:
        with pytest.raises(ValueError, match="not a constant name"):
            in_constants(col(AuditEvent.action), [unsafe])


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # psycopg's prepared statements
def test_read_units_keep_the_statements_psycopg_prepared(database: Database) -> None:
    """A read unit ends with COMMIT, not ROLLBACK, at which psycopg would forget them (decision 60)."""
    query = select(WebhookEvent.id).where(WebhookEvent.id == "evt_none")
    for _ in range(6):  # psycopg prepares a statement at its fifth execution on a connection
        with database.read() as session:
            assert session.exec(query).all() == []
    with database.read() as session:
        prepared = session.exec(
            select(func.count())
            .select_from(text("pg_prepared_statements"))
            .where(text("statement LIKE '%webhook_events.id = $1%'"))
        ).one()
    assert prepared == 1


# SQLite has no read-only transactions
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_write_in_a_read_unit_fails(database: Database) -> None:
    def write_in_a_read_unit() -> None:
        with database.read() as session:
            session.add(
                WebhookEvent(id="evt_read_only", type="charge.succeeded", payload="{}", received_at=utcnow())
            )
            session.flush()

    with pytest.raises(DBAPIError, match="read-only transaction"):
        write_in_a_read_unit()
    with database.read() as session:
        assert session.get(WebhookEvent, "evt_read_only") is None
