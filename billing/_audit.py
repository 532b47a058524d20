"""The tamper-evident audit chain.

Each tenant has its own chain (tenantless events, such as an unknown API key, go to ``system``).
Link ``n`` stores ``mac_n = HMAC-SHA256(audit_key, mac_{n-1} || canonical(event_n))`` where the
canonical encoding is sorted-key JSON of every column except ``id`` and ``mac``; ``mac_0`` is 64
zeros. ``audit_heads`` holds each chain's newest link, and every append moves it, so concurrent
writers from any number of processes extend the chain one at a time. An append first tries to
follow the head this process last saw (a compare and swap on the head's ``seq`` and ``mac``, one
statement on PostgreSQL); if another writer moved it since, it locks the head (``FOR UPDATE`` on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) and follows what it reads.

What it detects: an edited event (its mac no longer matches), a deleted event (a gap in ``seq``),
a reordered or inserted event (``prev_mac`` does not match), a truncated tail (the head names a
later link than the table holds). What it does not: someone holding the audit key can rewrite the
whole chain; someone able to edit both the tail and the head row can truncate the chain silently
(signed external checkpoints, planned with retention, close that gap).

Events never hold PII: subjects and resources are ids, ``detail`` is a small JSON of ids and codes.
"""

from __future__ import annotations

import functools
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from hashlib import sha256
from typing import Any, Protocol

from sqlalchemy import (
    CTE,
    Insert,
    Row,
    Select,
    Update,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    true,
    update,
)
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from billing._actor import Actor
from billing._db import insert_ignore, shareable
from billing._keyring import Keyring
from billing._models import AuditCheckpoint, AuditEvent, AuditHead

__all__ = [
    "GENESIS_MAC",
    "SYSTEM_CHAIN",
    "Along",
    "AuditBreak",
    "AuditTrail",
    "AuditVerification",
    "Check",
    "Link",
    "Watcher",
]

GENESIS_MAC = "0" * 64
SYSTEM_CHAIN = "system"

_SIGNED_FIELDS = (
    "chain",
    "seq",
    "occurred_at",
    "tenant_id",
    "actor_key_id",
    "actor_role",
    "action",
    "resource_type",
    "resource_id",
    "subject_id",
    "outcome",
    "request_id",
    "client_ip",
    "user_agent",
    "detail",
    "audit_key_id",
    "prev_mac",
)


@dataclass(frozen=True, slots=True)
class Link:
    """One event as appended: the columns of ``AuditEvent`` but its database ``id``.

    A plain record rather than the ORM model: the append writes it with Core statements, and making
    an instrumented model instance costs more than the rest of the append's Python work.
    """

    chain: str
    seq: int
    occurred_at: datetime
    tenant_id: str | None
    actor_key_id: str | None
    actor_role: str | None
    action: str
    resource_type: str | None
    resource_id: str | None
    subject_id: str | None
    outcome: str
    request_id: str | None
    client_ip: str | None
    user_agent: str | None
    detail: str | None
    audit_key_id: str
    prev_mac: str
    mac: str


@dataclass(frozen=True, slots=True)
class Check:
    """A watcher's query about a link (one row or none), run in the link's transaction."""

    query: Select[Any]
    parameters: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Along:
    """A read that an append's statement can carry: ``query`` selects rows of one model, or of
    several (built once, with bound parameters), ``parameters`` bind it. Its parameters must not be
    named after a column of ``audit_events`` or ``audit_heads`` (see :class:`Watcher`), and it must
    not read the audit chain itself: on PostgreSQL it runs before the link is inserted, on SQLite
    after.

    ``first``: the read locks rows that must be locked before the chain's head (the subject lock,
    whose holders take the head after it), and the link is about what it finds. It is read in
    full before the head is touched, and the link is appended only if it found a row; if it found
    none, nothing is appended (:meth:`AuditTrail.record_along` returns no link).
    """

    query: Select[*tuple[Any, ...]]
    parameters: Mapping[str, Any]
    first: bool = False

    def read(self, session: Session) -> list[Any]:
        """The rows in a statement of their own: entities, or tuples of them."""
        if len(self.query.column_descriptions) == 1:
            return list(session.scalars(self.query, self.parameters))
        return [tuple(row) for row in session.execute(self.query, self.parameters)]


class Watcher(Protocol):
    """Checks appended links (the access monitor): ``check`` says what to ask the database about a
    link, or ``None``; ``after`` gets the answer's row (``None`` if none, or if nothing was asked).

    The query runs in the same transaction as the append, after the link was written or — on
    PostgreSQL, in the same statement — before it: either way it must not count the link itself
    (the ``chain`` and ``seq`` of the link tell it apart). Its parameters must not be named after
    a column of ``audit_events`` or ``audit_heads``: in the append's statement they would be taken
    for values to write.
    """

    def check(self, link: Link) -> Check | None: ...

    def after(self, session: Session, link: Link, row: Row[Any] | None) -> None: ...


@dataclass(frozen=True, slots=True)
class AuditBreak:
    """The first link of a chain that fails verification, and why (no event content)."""

    chain: str
    seq: int
    event_id: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class AuditVerification:
    ok: bool
    chains: int
    events: int
    first_break: AuditBreak | None


class AuditTrail:
    """Appends events to the chains and verifies them."""

    def __init__(self, keyring: Keyring, *, clock: Callable[[], datetime]) -> None:
        self._keyring = keyring
        self._clock = clock
        self._watcher: Watcher | None = None
        # Each chain's head as this process last moved it: a hint, never trusted (see ``record``).
        self._heads: dict[str, tuple[int, str]] = {}

    def watch(self, watcher: Watcher) -> None:
        """Let ``watcher`` check each appended event, in the same transaction (access monitoring).

        One watcher: its check can ride in the append's statement."""
        self._watcher = watcher

    def record(
        self,
        session: Session,
        *,
        action: str,
        actor: Actor | None = None,
        tenant_id: str | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        subject_id: str | None = None,
        outcome: str = "success",
        detail: Mapping[str, str | int | bool | None] | None = None,
    ) -> Link:
        """Append one event in ``session``'s transaction; it is kept only if that commits.

        Returns the link as appended (its database ``id`` is not read back). Observers see it after
        it is written, in the same transaction.
        """
        fields = self._fields(
            action=action,
            actor=actor,
            tenant_id=tenant_id,
            resource_type=resource_type,
            resource_id=resource_id,
            subject_id=subject_id,
            outcome=outcome,
            detail=detail,
        )
        link, _ = self._record(session, fields, None)
        if link is None:  # only an ``Along`` read ``first`` that found nothing appends no link
            raise AssertionError("an append without a read appends its link")
        return link

    def record_along(
        self,
        session: Session,
        along: Along,
        *,
        action: str,
        actor: Actor,
        resource_type: str,
        resource_id: str,
        subject_id: str | None,
    ) -> tuple[Link | None, list[Any]]:
        """Append one event as :meth:`record` does, and read ``along``'s rows in the same round trip
        where the database allows it (PostgreSQL, after the head this process saw): for a read of
        PII whose last query can carry its own audit link.

        Returns the link and ``along``'s rows, in no particular order: entities for a query of one
        model, tuples of entities for several. For an ``along`` read ``first`` that found nothing,
        no link was appended: ``(None, [])``.
        """
        fields = self._fields(
            action=action,
            actor=actor,
            resource_type=resource_type,
            resource_id=resource_id,
            subject_id=subject_id,
        )
        return self._record(session, fields, along)

    def _fields(
        self,
        *,
        action: str,
        actor: Actor | None,
        tenant_id: str | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        subject_id: str | None = None,
        outcome: str = "success",
        detail: Mapping[str, str | int | bool | None] | None = None,
    ) -> dict[str, Any]:
        """The signed columns of a new event but its audit key and its place in the chain."""
        tenant = tenant_id or (actor.tenant_id if actor else None) or None
        return {
            "chain": tenant or SYSTEM_CHAIN,
            "occurred_at": self._clock(),
            "tenant_id": tenant,
            "actor_key_id": actor.key_id if actor else None,
            "actor_role": actor.role if actor else None,
            "action": action,
            "resource_type": resource_type,
            "resource_id": resource_id,
            "subject_id": subject_id,
            "outcome": outcome,
            "request_id": actor.request_id if actor else None,
            "client_ip": actor.client_ip if actor else None,
            "user_agent": (actor.user_agent or "")[:200] or None if actor else None,
            "detail": json.dumps(dict(detail), sort_keys=True) if detail else None,
        }

    def _record(
        self, session: Session, fields: dict[str, Any], along: Along | None
    ) -> tuple[Link | None, list[Any]]:
        # What the unit of work has pending is written first, so the link follows what it records
        # and a failing write fails here, as when the link was flushed through the ORM; the
        # append's own statements are Core statements, which the session does not autoflush for.
        session.flush()
        key = self._keyring.active_audit
        fields = {**fields, "audit_key_id": key.key_id}
        chain = fields["chain"]
        # The head this process saw last, if any: appending after it is one statement that fails
        # (appends nothing) when another writer moved the head since; then the head is locked and
        # read, and the link is made again after it. A watcher's check of the link, and ``along``'s
        # read, ride along in the append's statement where they can (PostgreSQL, after the head
        # this process saw).
        cached = self._heads.get(chain)
        postgresql = session.get_bind().dialect.name == "postgresql"
        first = along is not None and along.first
        link, row, rows = None, None, None
        if along is not None and first and not (postgresql and cached is not None):
            # Read first, in a statement of its own: its locks come before the head's.
            rows = along.read(session)
            if not rows:
                return None, []
        if cached is not None:
            link = _link(key.material, fields, cached)
            appended, row, read = _append_after(
                session, link, cached, self._check(link), along if rows is None else None, postgresql
            )
            rows = read if rows is None else rows
            if not appended:
                link = None
                if first and not rows:
                    return None, []
        if link is None:
            link = _link(key.material, fields, _lock_head(session, chain))
            _append(session, link, postgresql)
            row = _run(session, self._check(link))
        if rows is None and along is not None:
            rows = along.read(session)
        self._heads[chain] = (link.seq, link.mac)
        if self._watcher is not None:
            self._watcher.after(session, link, row)
        return link, rows or []

    def _check(self, link: Link) -> Check | None:
        return self._watcher.check(link) if self._watcher is not None else None

    def verify(self, session: Session, *, chain: str | None = None) -> AuditVerification:
        """Walk the chains (or one) in order and report the first broken link.

        A chain whose oldest events were purged by retention starts from its signed checkpoint.
        """
        heads = {
            h.chain: h
            for h in session.exec(
                select(AuditHead).where(AuditHead.chain == chain) if chain else select(AuditHead)
            )
        }
        checkpoints = {
            c.chain: c
            for c in session.exec(
                select(AuditCheckpoint).where(AuditCheckpoint.chain == chain)
                if chain
                else select(AuditCheckpoint)
            )
        }
        query = select(AuditEvent).order_by(col(AuditEvent.chain), col(AuditEvent.seq))
        if chain:
            query = query.where(AuditEvent.chain == chain)
        chains_seen: set[str] = set()
        count = 0
        current: str | None = None
        expected_seq, expected_prev = 1, GENESIS_MAC
        for event in session.exec(query).yield_per(1000):
            count += 1
            if event.chain != current:
                if current is not None:
                    broken = _check_tail(heads.pop(current, None), current, expected_seq - 1, expected_prev)
                    if broken:
                        return AuditVerification(False, len(chains_seen), count, broken)
                current = event.chain
                chains_seen.add(current)
                start = self._start_of(current, checkpoints.pop(current, None))
                if isinstance(start, AuditBreak):
                    return AuditVerification(False, len(chains_seen), count, start)
                expected_seq, expected_prev = start
            broken = self._check_link(event, expected_seq, expected_prev)
            if broken:
                return AuditVerification(False, len(chains_seen), count, broken)
            expected_seq, expected_prev = event.seq + 1, event.mac
        if current is not None:
            broken = _check_tail(heads.pop(current, None), current, expected_seq - 1, expected_prev)
            if broken:
                return AuditVerification(False, len(chains_seen), count, broken)
        for orphan in heads.values():  # a head whose chain has no events left
            start = self._start_of(orphan.chain, checkpoints.pop(orphan.chain, None))
            if isinstance(start, AuditBreak):
                return AuditVerification(False, len(chains_seen) + 1, count, start)
            broken = _check_tail(orphan, orphan.chain, start[0] - 1, start[1])
            if broken and orphan.seq > 0:
                reason = "every event of the chain is missing"
                return AuditVerification(
                    False, len(chains_seen) + 1, count, AuditBreak(orphan.chain, start[0], None, reason)
                )
        return AuditVerification(True, len(chains_seen), count, None)

    def purge_before(self, session: Session, chain: str, cutoff: datetime) -> int:
        """Delete the chain's events older than ``cutoff`` (a prefix), leaving a signed checkpoint."""
        first_kept = session.exec(
            select(func.min(AuditEvent.seq)).where(
                AuditEvent.chain == chain, AuditEvent.occurred_at >= cutoff
            )
        ).one()
        last_purged_seq = session.exec(
            select(func.max(AuditEvent.seq)).where(
                AuditEvent.chain == chain,
                AuditEvent.seq < first_kept if first_kept is not None else true(),
            )
        ).one()
        if last_purged_seq is None:
            return 0
        last = session.exec(
            select(AuditEvent).where(AuditEvent.chain == chain, AuditEvent.seq == last_purged_seq)
        ).one()
        key = self._keyring.active_audit
        checkpoint = session.get(AuditCheckpoint, chain) or AuditCheckpoint(
            chain=chain, seq=0, mac="", audit_key_id="", signature="", created_at=self._clock()
        )
        checkpoint.seq, checkpoint.mac, checkpoint.audit_key_id = last.seq, last.mac, key.key_id
        checkpoint.signature = _checkpoint_signature(key.material, chain, last.seq, last.mac)
        checkpoint.created_at = self._clock()
        session.add(checkpoint)
        result = session.execute(
            delete(AuditEvent).where(col(AuditEvent.chain) == chain, col(AuditEvent.seq) <= last_purged_seq)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def _start_of(self, chain: str, checkpoint: AuditCheckpoint | None) -> tuple[int, str] | AuditBreak:
        if checkpoint is None:
            return 1, GENESIS_MAC
        try:
            key = self._keyring.audit(checkpoint.audit_key_id)
        except Exception:
            return AuditBreak(chain, checkpoint.seq, None, "checkpoint signed with an unknown audit key")
        expected = _checkpoint_signature(key.material, chain, checkpoint.seq, checkpoint.mac)
        if not hmac.compare_digest(expected, checkpoint.signature):
            return AuditBreak(chain, checkpoint.seq, None, "checkpoint signature is not valid")
        return checkpoint.seq + 1, checkpoint.mac

    def _check_link(self, event: AuditEvent, expected_seq: int, expected_prev: str) -> AuditBreak | None:
        if event.seq != expected_seq:
            reason = f"events {expected_seq}..{event.seq - 1} are missing"
            return AuditBreak(event.chain, expected_seq, event.id, reason)
        if not hmac.compare_digest(event.prev_mac, expected_prev):
            return AuditBreak(event.chain, event.seq, event.id, "link does not follow the previous event")
        try:
            key = self._keyring.audit(event.audit_key_id)
        except Exception:  # an unknown key id is itself a sign of tampering
            return AuditBreak(event.chain, event.seq, event.id, "unknown audit key")
        if not hmac.compare_digest(event.mac, _mac(key.material, event)):
            return AuditBreak(event.chain, event.seq, event.id, "event was modified")
        return None


def _check_tail(head: AuditHead | None, chain: str, last_seq: int, last_mac: str) -> AuditBreak | None:
    if head is None:
        return AuditBreak(chain, last_seq, None, "chain head is missing")
    if head.seq != last_seq or not hmac.compare_digest(head.mac, last_mac):
        first_missing = last_seq + 1 if head.seq > last_seq else head.seq
        return AuditBreak(chain, first_missing, None, "events at the end of the chain are missing")
    return None


def _lock_head(session: Session, chain: str) -> tuple[int, str]:
    """The ``seq`` and ``mac`` of the chain's head, whose row stays locked until commit; the head
    is created (once, whatever the concurrency) if missing.

    One statement on every append but a chain's first: the head is locked first and inserted only
    when it is not there. Concurrent first appends both insert ``ON CONFLICT DO NOTHING``; the
    second waits for the first to commit, and both then lock the one row. Read as plain columns,
    not as an ORM object, so a second append in the same transaction sees the head as the first
    one left it.
    """
    query = _statements().lock_head
    row = session.execute(query, {"chain": chain}).one_or_none()
    if row is None:
        insert_ignore(session, AuditHead, {"chain": chain, "seq": 0, "mac": GENESIS_MAC})
        row = session.execute(query, {"chain": chain}).one()
    return int(row.seq), str(row.mac)


def _append(session: Session, link: Link, postgresql: bool) -> None:
    """Insert ``link`` and move its chain's head (locked by :func:`_lock_head`) to it.

    On PostgreSQL one statement does both (the insert is a data-modifying CTE of the head's
    update), so an audited request pays one round trip for them, not two; elsewhere (SQLite,
    in-process) two statements. Either way both happen in the caller's transaction or neither.
    """
    statements = _statements()
    values = {f"e_{name}": getattr(link, name) for name in statements.event_columns}
    head = {"head_chain": link.chain, "head_seq": link.seq, "head_mac": link.mac}
    if postgresql:
        session.execute(statements.append, {**values, **head})
    else:
        session.execute(statements.insert_event, values)
        session.execute(statements.move_head, head)


def _append_after(
    session: Session,
    link: Link,
    head: tuple[int, str],
    check: Check | None,
    along: Along | None,
    postgresql: bool,
) -> tuple[bool, Row[Any] | None, list[Any] | None]:
    """Append ``link`` if its chain's head is still ``head`` (compare and swap), run ``check``, and
    read ``along`` if the same statement can.

    Returns whether it was appended, the check's row (``None`` when it was not), and ``along``'s
    entities if they were read (``None`` if not: the caller reads them). The head's update only
    matches while its ``seq`` and ``mac`` are those ``link`` follows (the ``seq`` alone is not
    enough: this process's own append at that position may have been rolled back and another's
    committed there, with another mac); a concurrent writer holding the row makes it wait, and
    once that writer commits the update no longer matches (PostgreSQL re-reads the row; SQLite's
    writers take turns), so nothing is appended and the caller locks the head instead. On
    PostgreSQL the update, the insert (conditional on the update), the check and ``along``'s read
    are one statement; on SQLite each is a statement of its own.
    """
    statements = _statements()
    values = {f"e_{name}": getattr(link, name) for name in statements.event_columns}
    swap = {
        "head_chain": link.chain,
        "head_seq": link.seq,
        "head_mac": link.mac,
        "prev_seq": head[0],
        "prev_mac": head[1],
    }
    if postgresql:
        combined = _append_after_with(
            check.query if check is not None else None,
            along.query if along is not None else None,
            first=along is not None and along.first,
        )
        parameters = {
            **values,
            **swap,
            **(check.parameters if check is not None else {}),
            **(along.parameters if along is not None else {}),
        }
        result = session.execute(combined.statement, parameters).all()
        appended = [row for row in result if row[0] is not None]
        checked = None
        if appended and combined.found is not None and appended[0][combined.found]:
            checked = appended[0][1 : combined.found]
        rows = None
        if along is not None:
            width = combined.along_width
            rows = [
                row[-1] if width == 1 else tuple(row[-width:]) for row in result if row[-width] is not None
            ]
        return bool(appended), checked, rows  # type: ignore[return-value]
    if session.execute(statements.swap_head, swap).first() is None:
        return False, None, None
    session.execute(statements.insert_event, values)
    return True, _run(session, check), None


def _run(session: Session, check: Check | None) -> Row[Any] | None:
    return None if check is None else session.execute(check.query, check.parameters).one_or_none()


@dataclass(frozen=True, slots=True)
class _Combined:
    """The compare-and-swap append with a check and a read: its statement, and where the check's
    ``found`` marker is in a row (``None`` without a check)."""

    statement: Select[Any]
    found: int | None
    along_width: int


@functools.cache
def _append_after_with(
    check: Select[Any] | None, along: Select[Any] | None, *, first: bool = False
) -> _Combined:
    """The compare-and-swap append, with ``check``'s row (left-joined to the swapped head: it may
    have none) and ``along``'s entities (full-joined: they come back whether or not the head was
    swapped, and a swapped head comes back without them), built once per pair of queries; with
    neither, it is the swap and the insert alone, one row when the head was swapped.

    A row is ``(swapped chain or NULL, *check's columns, found, *entities or NULLs)``; no row at
    all means nothing was swapped and ``along`` found nothing. The queries run on the statement's
    snapshot, so they do not see the link being inserted.

    With ``first``, ``along`` is a common table expression that the swap waits for: the swap's
    condition counts its rows, so the read, with its row locks, is done in full before the head's
    row is locked, and the head is swapped only if it found a row (an ``Along`` read ``first``).
    """
    statements = _statements()
    swapped = statements.swapped
    insert_after = statements.insert_after
    read: Any = None
    if along is not None and first:
        read = along.cte("along")
        found_first = select(func.count()).select_from(read).scalar_subquery() > literal_column("0")
        swapped = statements.swap_head.where(found_first).cte("swapped")
        insert_after = _insert_after(swapped)
    source: Any = swapped
    columns: list[Any] = [swapped.c.chain]
    found = None
    if check is not None:
        # ``found`` tells a row of nulls from no row at all (the left join's null-filled row).
        checked = check.add_columns(literal_column("true").label("found")).subquery("checked")
        source = source.outerjoin(checked, true())
        columns += list(checked.c)
        found = len(columns) - 1
    width = 0
    if along is not None:
        read = along.subquery("along") if read is None else read
        source = source.outerjoin(read, true(), full=True)
        entities = [description["entity"] for description in along.column_descriptions]
        columns += [aliased(entity, read) for entity in entities]
        width = len(entities)
    combined: Select[Any] = select(*columns).select_from(source).add_cte(insert_after.cte("appended"))
    return _Combined(shareable(combined), found, width)


@dataclass(frozen=True, slots=True)
class _Statements:
    lock_head: Select[tuple[int, str]]
    event_columns: tuple[str, ...]
    insert_event: Insert
    move_head: Update
    append: Update
    swap_head: Update
    swapped: CTE
    insert_after: Insert


@functools.cache
def _statements() -> _Statements:
    """The append's statements, built once with bound parameters (cheaper than rebuilding them
    for every event; SQLAlchemy then finds their compiled form in its cache at once)."""
    events = AuditEvent.__table__  # type: ignore[attr-defined]
    columns = tuple(column for column in events.columns if column.name != "id")
    params = {c.name: bindparam(f"e_{c.name}", type_=c.type) for c in columns}
    insert_event = insert(events).values(params)
    heads = AuditHead.__table__  # type: ignore[attr-defined]
    new_head = {
        "seq": bindparam("head_seq", type_=heads.c.seq.type),
        "mac": bindparam("head_mac", type_=heads.c.mac.type),
    }
    of_chain = heads.c.chain == bindparam("head_chain", type_=heads.c.chain.type)
    move_head = update(heads).where(of_chain).values(new_head)
    swap_head = (
        update(heads)
        .where(
            of_chain,
            heads.c.seq == bindparam("prev_seq", type_=heads.c.seq.type),
            heads.c.mac == bindparam("prev_mac", type_=heads.c.mac.type),
        )
        .values(new_head)
        .returning(heads.c.chain)
    )
    swapped = swap_head.cte("swapped")
    insert_after = _insert_after(swapped)
    return _Statements(
        lock_head=shareable(
            select(heads.c.seq, heads.c.mac)
            .where(heads.c.chain == bindparam("chain", type_=heads.c.chain.type))
            .with_for_update()
        ),
        event_columns=tuple(c.name for c in columns),
        insert_event=shareable(insert_event),
        move_head=shareable(move_head),
        append=shareable(move_head.add_cte(insert_event.cte("appended"))),
        swap_head=shareable(swap_head),
        swapped=swapped,
        insert_after=insert_after,  # a fragment: compiled within the statements that use it
    )


def _checkpoint_signature(key: bytes, chain: str, seq: int, mac: str) -> str:
    message = json.dumps({"chain": chain, "seq": seq, "mac": mac, "kind": "checkpoint"}, sort_keys=True)
    return hmac.new(key, message.encode(), sha256).hexdigest()


def _mac_of(key: bytes, values: Mapping[str, Any]) -> str:
    """HMAC-SHA256 of the previous link's mac and the sorted-key JSON of the signed fields."""
    signed = {name: values[name] for name in _SIGNED_FIELDS}
    signed["occurred_at"] = values["occurred_at"].isoformat(timespec="microseconds")
    canonical = json.dumps(signed, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, values["prev_mac"].encode() + canonical, sha256).hexdigest()


def _mac(key: bytes, event: AuditEvent | Link) -> str:
    return _mac_of(key, {name: getattr(event, name) for name in _SIGNED_FIELDS})


def _link(key: bytes, fields: Mapping[str, Any], head: tuple[int, str]) -> Link:
    """The link of ``fields`` that follows ``head``, with its mac."""
    values = {**fields, "seq": head[0] + 1, "prev_mac": head[1]}
    mac = _mac_of(key, values)
    return Link(**values, mac=mac)


def _insert_after(swapped: CTE) -> Insert:
    """The link's insert, selecting its values from the swap's result: no row swapped, nothing
    inserted. (The parameters are typed: psycopg's dialect casts each to its column's type.)"""
    events = AuditEvent.__table__  # type: ignore[attr-defined]
    columns = [column for column in events.columns if column.name != "id"]
    values = [bindparam(f"e_{column.name}", type_=column.type) for column in columns]
    return insert(events).from_select(
        [column.name for column in columns], select(*values).select_from(swapped)
    )
