"""The audit chain on both databases: appends, verification, and every kind of tampering."""

from __future__ import annotations

import functools
import sys
import threading
from typing import Any

import pytest
from sqlalchemy import Select, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql
from sqlmodel import col

from billing import Actor, Billing, Database, DatabaseConfig, Keyring, create_keyring
from billing._audit import Along, AuditTrail, Link, _append_after_with
from billing._invoices import _lines_query
from billing._keys import _keys_of_subject, _locked_subject
from billing._models import AuditEvent, AuditHead
from billing._monitoring import _check_statement

from ..conftest import FIXED_NOW, statements_of


def _append(billing: Billing, count: int, tenant: str = "ten_a") -> None:
    actor = Actor(tenant_id=tenant, role="booking", key_id="key_1", request_id="req_1")
    for index in range(count):
        with billing.db.transaction() as session:
            billing.audit.record(session, actor=actor, action="customer.read", subject_id=f"cus_{index}")


def test_a_clean_chain_verifies(billing: Billing) -> None:
    _append(billing, 5)
    _append(billing, 3, tenant="ten_b")
    result = billing.verify_audit()
    assert (result.ok, result.chains, result.events, result.first_break) == (True, 2, 8, None)


def test_an_empty_database_verifies(billing: Billing) -> None:
    assert billing.verify_audit().ok


def test_a_rolled_back_event_leaves_no_link(billing: Billing) -> None:
    _append(billing, 2)

    def failing_request() -> None:
        with billing.db.transaction() as session:
            billing.audit.record(session, action="customer.read", tenant_id="ten_a")
            raise RuntimeError("the request failed")

    with pytest.raises(RuntimeError):
        failing_request()
    _append(billing, 1)
    assert billing.verify_audit().ok


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("action", "customer.created"),
        ("subject_id", "cus_x"),
        ("actor_key_id", "key_2"),
        ("outcome", "denied"),
    ],
)
def test_an_edited_event_is_named(billing: Billing, column: str, value: str) -> None:
    _append(billing, 5)
    with billing.db.transaction() as session:
        session.execute(update(AuditEvent).where(AuditEvent.seq == 3).values({column: value}))  # type: ignore[arg-type]
        edited = session.scalars(select(AuditEvent).where(AuditEvent.seq == 3)).one().id
    result = billing.verify_audit()
    assert not result.ok and result.first_break is not None
    assert (result.first_break.seq, result.first_break.event_id, result.first_break.reason) == (
        3,
        edited,
        "event was modified",
    )


def test_a_deleted_event_is_named(billing: Billing) -> None:
    _append(billing, 5)
    with billing.db.transaction() as session:
        session.execute(delete(AuditEvent).where(AuditEvent.seq == 2))  # type: ignore[arg-type]
    result = billing.verify_audit()
    assert result.first_break is not None
    assert result.first_break.seq == 2 and "missing" in result.first_break.reason


def test_a_deleted_tail_is_detected(billing: Billing) -> None:
    _append(billing, 4)
    with billing.db.transaction() as session:
        session.execute(delete(AuditEvent).where(AuditEvent.seq == 4))  # type: ignore[arg-type]
    result = billing.verify_audit()
    assert result.first_break is not None and result.first_break.seq == 4


def test_reordered_events_are_detected(billing: Billing) -> None:
    _append(billing, 4)
    with billing.db.transaction() as session:
        events = {e.seq: e for e in session.scalars(select(AuditEvent))}
        two, three = events[2], events[3]
        fields = ("subject_id", "mac", "prev_mac", "occurred_at")
        swapped = {f: getattr(three, f) for f in fields}
        for f in fields:
            setattr(three, f, getattr(two, f))
            setattr(two, f, swapped[f])
        session.add_all([two, three])
    result = billing.verify_audit()
    assert result.first_break is not None and result.first_break.seq == 2


def test_a_forged_chain_without_the_key_fails(billing: Billing) -> None:
    _append(billing, 3)
    forger = AuditTrail(create_keyring(now=FIXED_NOW), clock=billing.clock)
    with billing.db.transaction() as session:
        forger.record(session, action="customer.read", tenant_id="ten_a")
    result = billing.verify_audit()
    assert result.first_break is not None and result.first_break.seq == 4


def test_a_removed_head_is_detected(billing: Billing) -> None:
    _append(billing, 2)
    with billing.db.transaction() as session:
        session.execute(delete(AuditHead))
    assert not billing.verify_audit().ok


def test_appends_in_one_transaction_chain_to_each_other(billing: Billing) -> None:
    _append(billing, 1)
    with billing.db.transaction() as session:
        seqs = [
            billing.audit.record(
                session, action="invoice.created", tenant_id="ten_a", resource_id=f"inv_{i}"
            ).seq
            for i in range(3)
        ]
    assert seqs == [2, 3, 4]
    result = billing.verify_audit()
    assert result.ok and result.events == 4
    with billing.db.read() as session:
        head = session.exec(select(AuditHead).where(AuditHead.chain == "ten_a")).scalar_one()
        last = session.exec(select(AuditEvent).where(AuditEvent.seq == 4)).scalar_one()
    assert (head.seq, head.mac) == (4, last.mac)


def test_the_first_append_of_a_process_locks_the_head(
    billing: Billing, database: Database, keyring: Keyring
) -> None:
    _append(billing, 1)  # the chain and its head exist, written by another process
    fresh = Billing(db=database, keyring=keyring)
    with fresh.db.transaction() as session, statements_of(fresh.db.engine) as sent:
        fresh.audit.record(session, action="invoice.created", tenant_id="ten_a")
    if fresh.db.dialect == "postgresql":
        assert _kinds(sent) == ["SELECT", "WITH"]  # FOR UPDATE of the head; insert and head move together
    else:
        assert _kinds(sent) == ["SELECT", "INSERT", "UPDATE"]
    assert fresh.verify_audit().ok


def test_an_append_after_the_head_this_process_wrote_is_one_statement_on_postgresql(billing: Billing) -> None:
    _append(billing, 1)
    with billing.db.transaction() as session, statements_of(billing.db.engine) as sent:
        billing.audit.record(session, action="invoice.created", tenant_id="ten_a")
    if billing.db.dialect == "postgresql":
        assert _kinds(sent) == ["WITH"]  # the head swapped from the seq it had and the link inserted
    else:
        assert _kinds(sent) == ["UPDATE", "INSERT"]
    assert billing.verify_audit().ok


def test_an_append_after_a_head_another_process_moved_follows_the_new_head(
    billing: Billing, database: Database, keyring: Keyring
) -> None:
    other = Billing(db=database, keyring=keyring)
    _append(billing, 2)
    _append(other, 3)  # the head moved past what ``billing`` saw
    with billing.db.transaction() as session, statements_of(billing.db.engine) as sent:
        link = billing.audit.record(session, action="invoice.created", tenant_id="ten_a")
    assert link.seq == 6
    if billing.db.dialect == "postgresql":
        assert _kinds(sent) == ["WITH", "SELECT", "WITH"]  # the swap missed; then locked and followed
    else:
        assert _kinds(sent) == ["UPDATE", "SELECT", "INSERT", "UPDATE"]
    _append(other, 1)  # and ``other`` in turn finds the head moved
    result = billing.verify_audit()
    assert result.ok and result.events == 7


def _append_then_roll_back(billing: Billing) -> None:
    """A request that appends a link and then fails: its transaction, link included, rolls back."""

    def failing_request() -> None:
        with billing.db.transaction() as session:
            billing.audit.record(session, action="invoice.created", tenant_id="ten_a")
            raise RuntimeError("the request failed after auditing")

    with pytest.raises(RuntimeError):
        failing_request()


def test_an_append_after_a_rolled_back_append_follows_the_committed_head(billing: Billing) -> None:
    _append(billing, 1)
    _append_then_roll_back(billing)  # seq 2, never kept
    with billing.db.transaction() as session:
        assert billing.audit.record(session, action="invoice.created", tenant_id="ten_a").seq == 2
    result = billing.verify_audit()
    assert result.ok and result.events == 2


def test_two_processes_appending_at_once_keep_one_chain(
    billing: Billing, database: Database, keyring: Keyring
) -> None:
    others = [Billing(db=database, keyring=keyring) for _ in range(3)]
    _append(billing, 1)
    _append_at_once([billing, *others], 10)
    result = billing.verify_audit()
    assert result.ok and result.events == 41


def _append_at_once(appenders: list[Billing], count: int) -> None:
    """``count`` appends by each of ``appenders``, each in a thread of its own, all at once."""
    threads = [threading.Thread(target=_append, args=(each, count)) for each in appenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _kinds(sent: list[str]) -> list[str]:
    return [statement.split()[0] for statement in sent if not statement.startswith("BEGIN")]


def test_concurrent_appends_keep_one_chain(billing: Billing, keyring: Keyring) -> None:
    _append_at_once([billing] * 4, 10)
    result = billing.verify_audit()
    assert result.ok and result.events == 40


def test_an_append_after_a_rolled_back_one_and_another_processs_follows_the_real_head(
    billing: Billing, database: Database, keyring: Keyring
) -> None:
    """The head this process remembers can name the right ``seq`` with another link's mac: its own
    append was rolled back, and another process appended at that position."""
    other = Billing(db=database, keyring=keyring)
    _append(billing, 1)
    _append_then_roll_back(billing)  # seq 2, never kept
    _append(other, 1)  # seq 2 after all, with its own mac
    _append(billing, 1)
    result = billing.verify_audit()
    assert result.ok and result.events == 3, result.first_break


def _along_events_of(chain: str) -> Along:
    """A read that rides in an append: the events of another chain."""
    return Along(_events_query(), {"along_chain": chain})


@functools.cache
def _events_query() -> Select[Any]:
    return select(AuditEvent).where(col(AuditEvent.chain) == bindparam("along_chain"))


def _record_along(billing: Billing, along: Along, action: str) -> tuple[Link | None, list[Any]]:
    """An ``action`` of tenant ``ten_a`` appended with ``along``'s read, in a unit of its own."""
    actor = Actor(tenant_id="ten_a", role="booking", key_id="key_1", request_id="req_1")
    with billing.db.transaction() as session:
        return billing.audit.record_along(
            session,
            along,
            actor=actor,
            action=action,
            resource_type="invoice",
            resource_id="inv_1",
            subject_id="cus_1",
        )


def _read_along(billing: Billing, chain: str) -> tuple[Link | None, list[Any]]:
    return _record_along(billing, _along_events_of(chain), "invoice.read")


@pytest.mark.parametrize("chain", ["ten_b", "ten_empty"])
def test_a_read_along_an_append_is_one_statement_on_postgresql(billing: Billing, chain: str) -> None:
    _append(billing, 1)
    _append(billing, 3, tenant="ten_b")
    with statements_of(billing.db.engine) as sent:
        link, rows = _read_along(billing, chain)
    assert link is not None and link.seq == 2 and link.chain == "ten_a"
    assert sorted(row.seq for row in rows) == ([1, 2, 3] if chain == "ten_b" else [])
    if billing.db.dialect == "postgresql":
        assert _kinds(sent) == ["WITH"]  # swap, link, the monitor's check and the read
    else:
        assert _kinds(sent) == ["UPDATE", "INSERT", "SELECT", "SELECT"]
    result = billing.verify_audit()
    assert result.ok and result.events == 5


@pytest.mark.parametrize("chain", ["ten_b", "ten_empty"])
def test_a_read_along_an_append_whose_head_moved_is_read_once_and_linked_once(
    billing: Billing, database: Database, keyring: Keyring, chain: str
) -> None:
    other = Billing(db=database, keyring=keyring)
    _append(billing, 1)
    _append(other, 2)  # the head moved past what ``billing`` saw
    _append(other, 3, tenant="ten_b")
    with statements_of(billing.db.engine) as sent:
        link, rows = _read_along(billing, chain)
    assert link is not None and link.seq == 4
    assert sorted(row.seq for row in rows) == ([1, 2, 3] if chain == "ten_b" else [])
    if billing.db.dialect == "postgresql":
        # the swap missed (the read came back with it); then the head locked, followed, checked
        assert _kinds(sent) == ["WITH", "SELECT", "WITH", "SELECT"]
    else:
        assert _kinds(sent) == ["UPDATE", "SELECT", "INSERT", "UPDATE", "SELECT", "SELECT"]
    result = billing.verify_audit()
    assert result.ok and result.events == 7


def _first_along_of(chain: str) -> Along:
    """A read made ``first``: another chain's events with their head, as pairs."""
    return Along(_events_with_head_query(), {"along_chain": chain}, first=True)


@functools.cache
def _events_with_head_query() -> Select[Any]:
    return (
        select(AuditEvent, AuditHead)
        .join(AuditHead, col(AuditHead.chain) == col(AuditEvent.chain))
        .where(col(AuditEvent.chain) == bindparam("along_chain"))
    )


def _read_first(billing: Billing, chain: str) -> tuple[Link | None, list[Any]]:
    return _record_along(billing, _first_along_of(chain), "invoice.created")


@pytest.mark.parametrize("knows_the_head", [True, False])
def test_a_read_made_first_that_finds_nothing_appends_nothing(
    billing: Billing, database: Database, keyring: Keyring, knows_the_head: bool
) -> None:
    _append(billing, 2)
    reader = billing if knows_the_head else Billing(db=database, keyring=keyring)
    with statements_of(billing.db.engine) as sent:
        assert _read_first(reader, "ten_empty") == (None, [])
    if billing.db.dialect == "postgresql" and knows_the_head:
        assert _kinds(sent) == ["WITH"]  # the swap waited for the read, which found nothing
    else:
        assert _kinds(sent) == ["SELECT"]  # the read alone: the head is not even locked
    _append(billing, 1)  # the head did not move: this process's compare and swap still matches
    result = billing.verify_audit()
    assert result.ok and result.events == 3


@pytest.mark.parametrize("head_moved", [False, True])
def test_a_read_made_first_comes_back_in_pairs_and_before_the_head(
    billing: Billing, database: Database, keyring: Keyring, head_moved: bool
) -> None:
    other = Billing(db=database, keyring=keyring)
    _append(billing, 1)
    _append(other, 2, tenant="ten_b")
    if head_moved:
        _append(other, 1)
    with statements_of(billing.db.engine) as sent:
        link, rows = _read_first(billing, "ten_b")
    assert link is not None and link.seq == (3 if head_moved else 2)
    assert sorted((event.seq, head.seq) for event, head in rows) == [(1, 2), (2, 2)]
    postgresql = billing.db.dialect == "postgresql"
    if head_moved:  # the swap missed, the read came back with it; then the head locked and followed
        assert _kinds(sent) == (
            ["WITH", "SELECT", "WITH"] if postgresql else ["SELECT", "UPDATE", "SELECT", "INSERT", "UPDATE"]
        )
    else:
        assert _kinds(sent) == (["WITH"] if postgresql else ["SELECT", "UPDATE", "INSERT"])
    result = billing.verify_audit()
    assert result.ok and result.events == (5 if head_moved else 4)


# psycopg caches how it converts a query's text only up to this length; a longer query is parsed
# again at every execution (psycopg._queries.MAX_CACHED_STATEMENT_LENGTH, read here as a figure
# of its documented behaviour rather than imported from a private module).
PSYCOPG_CACHED_QUERY_BYTES = 4096


@pytest.mark.parametrize(
    ("watched", "along"),
    [
        (True, "lines"),  # an invoice read: the check and the lines
        (True, "profile"),  # a client read: the check and the profile key
        (False, "draft"),  # a draft: the client, locked, with its two keys, read first
        (False, "index"),  # a new client: the tenant's index key
    ],
)
def test_the_append_statements_stay_short_enough_for_psycopg_to_cache(watched: bool, along: str) -> None:
    """Every audited request of the privacy-tax path sends one of these statements; past 4,096
    bytes psycopg re-parses it each time (decision 68: the monitor's check had grown the invoice
    read's to 4,771 bytes)."""
    queries = {
        "lines": _lines_query(),
        "profile": _keys_of_subject(("profile",)),
        "draft": _locked_subject(("profile", "record")),
        "index": _keys_of_subject(("index",)),
    }
    combined = _append_after_with(
        _check_statement() if watched else None, queries[along], first=along == "draft"
    )
    text = str(combined.statement.compile(dialect=postgresql.psycopg.dialect()))
    assert len(text.encode()) <= PSYCOPG_CACHED_QUERY_BYTES, len(text.encode())


_SHARED_BY = 8  # threads, as a worker's handler threads at its first requests
_COLD_STARTS = 8  # about half of them failed before decision 74


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("along", ["lines", "draft", "index"])
@pytest.mark.filterwarnings("error::sqlalchemy.exc.SAWarning")  # the process's filters: every thread's
def test_a_link_statement_first_run_by_many_threads_at_once_runs_in_each(
    database_url: str, along: str
) -> None:
    """The combined statements are built once per process and shared by its threads; the first
    compilation of an entity aliased to their subquery is not safe to do in several threads at once.
    Before ``shareable`` (decision 74) about one in two of these cold starts failed
    (``NoSuchColumnError``, or a cartesian product warned about), with threads switching as often
    as the interpreter lets them; a server's first requests failed now and then (a 500)."""
    queries = {
        "lines": (_check_statement(), _lines_query()),
        "draft": (None, _locked_subject(("profile", "record"))),
        "index": (None, _keys_of_subject(("index",))),
    }
    check, query = queries[along]
    # Named from a statement of its own: compiling the one under test here would do what it tests.
    parameter_names = _append_after_with(check, query, first=along == "draft").statement.compile().params
    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for start in range(_COLD_STARTS):
            # What a new process has: its own engine (no compiled statement yet), and the statement
            # as its builder makes it, before anyone ran it.
            db = Database(DatabaseConfig(database_url))
            statement = _append_after_with.__wrapped__(check, query, first=along == "draft").statement
            parameters = dict.fromkeys(parameter_names)  # no head matches them: nothing is appended
            failures = _run_at_once_by_threads(db, statement, parameters)
            db.dispose()
            assert failures == [], f"cold start {start}: {failures[0]}"
    finally:
        sys.setswitchinterval(switching)


def _run_at_once_by_threads(db: Database, statement: Any, parameters: dict[str, Any]) -> list[str]:
    """Run ``statement`` in ``_SHARED_BY`` threads released together; what failed, with its type."""
    ready = threading.Barrier(_SHARED_BY)
    failures: list[str] = []

    def request() -> None:
        ready.wait()
        try:
            with db.transaction() as session:
                session.execute(statement, parameters).all()
        except Exception as error:
            failures.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=request) for _ in range(_SHARED_BY)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures
