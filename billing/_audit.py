"""The tamper-evident audit chain.

Each tenant has its own chain (tenantless events, such as an unknown API key, go to ``system``).
Link ``n`` stores ``mac_n = HMAC-SHA256(audit_key, mac_{n-1} || canonical(event_n))`` where the
canonical encoding is sorted-key JSON of every column except ``id`` and ``mac``; ``mac_0`` is 64
zeros. ``audit_heads`` holds each chain's newest link: appending locks that row (``FOR UPDATE`` on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) so concurrent writers from any number of processes
extend the chain one at a time.

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
from typing import Any

from sqlalchemy import Insert, Select, Update, bindparam, delete, func, insert, true, update
from sqlmodel import Session, col, select

from billing._actor import Actor
from billing._db import insert_ignore
from billing._keyring import Keyring
from billing._models import AuditCheckpoint, AuditEvent, AuditHead

__all__ = ["GENESIS_MAC", "SYSTEM_CHAIN", "AuditBreak", "AuditTrail", "AuditVerification"]

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
        self._observers: list[Callable[[Session, AuditEvent], None]] = []

    def observe(self, observer: Callable[[Session, AuditEvent], None]) -> None:
        """Call ``observer`` after each appended event, in the same transaction (access monitoring)."""
        self._observers.append(observer)

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
    ) -> AuditEvent:
        """Append one event in ``session``'s transaction; it is kept only if that commits.

        Returns the event as appended (not attached to ``session``; its database ``id`` is not read
        back). Observers see it after it is written, in the same transaction.
        """
        tenant = tenant_id or (actor.tenant_id if actor else None) or None
        chain = tenant or SYSTEM_CHAIN
        # What the unit of work has pending is written first, so the link follows what it records
        # and a failing write fails here, as when the link was flushed through the ORM; the
        # append's own statements are Core statements, which the session does not autoflush for.
        session.flush()
        head_seq, head_mac = _lock_head(session, chain)
        key = self._keyring.active_audit
        event = AuditEvent(
            chain=chain,
            seq=head_seq + 1,
            occurred_at=self._clock(),
            tenant_id=tenant,
            actor_key_id=actor.key_id if actor else None,
            actor_role=actor.role if actor else None,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            subject_id=subject_id,
            outcome=outcome,
            request_id=actor.request_id if actor else None,
            client_ip=actor.client_ip if actor else None,
            user_agent=(actor.user_agent or "")[:200] or None if actor else None,
            detail=json.dumps(dict(detail), sort_keys=True) if detail else None,
            audit_key_id=key.key_id,
            prev_mac=head_mac,
            mac="",
        )
        event.mac = _mac(key.material, event)
        _append(session, event)
        for observer in self._observers:
            observer(session, event)
        return event

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


def _append(session: Session, event: AuditEvent) -> None:
    """Insert ``event`` and move its chain's head (locked by :func:`_lock_head`) to it.

    On PostgreSQL one statement does both (the insert is a data-modifying CTE of the head's
    update), so an audited request pays one round trip for them, not two; elsewhere (SQLite,
    in-process) two statements. Either way both happen in the caller's transaction or neither.
    """
    statements = _statements()
    values = {f"e_{name}": getattr(event, name) for name in statements.event_columns}
    head = {"head_chain": event.chain, "head_seq": event.seq, "head_mac": event.mac}
    if session.get_bind().dialect.name == "postgresql":
        session.execute(statements.append, {**values, **head})
    else:
        session.execute(statements.insert_event, values)
        session.execute(statements.move_head, head)


@dataclass(frozen=True, slots=True)
class _Statements:
    lock_head: Select[tuple[int, str]]
    event_columns: tuple[str, ...]
    insert_event: Insert
    move_head: Update
    append: Update


@functools.cache
def _statements() -> _Statements:
    """The append's statements, built once with bound parameters (cheaper than rebuilding them
    for every event; SQLAlchemy then finds their compiled form in its cache at once)."""
    events = AuditEvent.__table__  # type: ignore[attr-defined]
    columns = tuple(column for column in events.columns if column.name != "id")
    insert_event = insert(events).values({c.name: bindparam(f"e_{c.name}", type_=c.type) for c in columns})
    heads = AuditHead.__table__  # type: ignore[attr-defined]
    move_head = (
        update(heads)
        .where(heads.c.chain == bindparam("head_chain", type_=heads.c.chain.type))
        .values(
            seq=bindparam("head_seq", type_=heads.c.seq.type),
            mac=bindparam("head_mac", type_=heads.c.mac.type),
        )
    )
    return _Statements(
        lock_head=select(heads.c.seq, heads.c.mac)
        .where(heads.c.chain == bindparam("chain", type_=heads.c.chain.type))
        .with_for_update(),
        event_columns=tuple(c.name for c in columns),
        insert_event=insert_event,
        move_head=move_head,
        append=move_head.add_cte(insert_event.cte("appended")),
    )


def _checkpoint_signature(key: bytes, chain: str, seq: int, mac: str) -> str:
    message = json.dumps({"chain": chain, "seq": seq, "mac": mac, "kind": "checkpoint"}, sort_keys=True)
    return hmac.new(key, message.encode(), sha256).hexdigest()


def _canonical(event: AuditEvent) -> bytes:
    values: dict[str, Any] = {name: getattr(event, name) for name in _SIGNED_FIELDS}
    values["occurred_at"] = event.occurred_at.isoformat(timespec="microseconds")
    return json.dumps(values, sort_keys=True, separators=(",", ":")).encode()


def _mac(key: bytes, event: AuditEvent) -> str:
    return hmac.new(key, event.prev_mac.encode() + _canonical(event), sha256).hexdigest()
