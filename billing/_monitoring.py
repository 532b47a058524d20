"""Access monitoring: a key that reads the personal data of too many clients is flagged.

Every audited read of decrypted PII (``PII_READ_ACTIONS``) of a client the key had not read within
the tenant's window is followed, in the same transaction, by a count of the *distinct* clients that
key read within the window, which stops at the threshold (default: more than 100 clients in 60
minutes). Crossing the threshold
appends one ``access.alert`` event per window to the audit chain and, when the tenant chose
``suspend_on_alert``, suspends the key at once (it then authenticates no more until an admin
reinstates it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import ColumnElement, Row, Select, bindparam, case, exists, func, literal_column, true
from sqlalchemy import select as sa_select
from sqlmodel import Session, col

from billing._audit import AuditTrail, Check, Link
from billing._db import in_constants, shareable
from billing._models import ACCESS_ALERT, PII_READ_ACTIONS, ApiKey, AuditEvent, Tenant

__all__ = [
    "DEFAULT_PII_READ_THRESHOLD",
    "DEFAULT_PII_READ_WINDOW",
    "PII_READ_ACTIONS",
    "AccessMonitor",
    "AccessPolicy",
    "access_policy_of",
]

DEFAULT_PII_READ_THRESHOLD = 100
DEFAULT_PII_READ_WINDOW = timedelta(minutes=60)


class AccessPolicy(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pii_read_threshold: int = DEFAULT_PII_READ_THRESHOLD
    window_minutes: int = int(DEFAULT_PII_READ_WINDOW.total_seconds() // 60)
    suspend_on_alert: bool = False


def access_policy_of(tenant: Tenant) -> AccessPolicy:
    """The tenant's monitoring policy, defaults filled in."""
    return _policy(tenant.pii_read_threshold, tenant.pii_read_window_minutes, tenant.suspend_on_alert)


def _policy(threshold: int | None, window_minutes: int | None, suspend: bool) -> AccessPolicy:
    return AccessPolicy(
        pii_read_threshold=threshold or DEFAULT_PII_READ_THRESHOLD,
        window_minutes=window_minutes or _DEFAULT_WINDOW_MINUTES,
        suspend_on_alert=suspend,
    )


_DEFAULT_WINDOW_MINUTES = int(DEFAULT_PII_READ_WINDOW.total_seconds() // 60)


def _other_reads(since: Any) -> list[ColumnElement[bool]]:
    """The PII reads by the link's key since ``since``, but the link itself."""
    return [
        col(AuditEvent.actor_key_id) == bindparam("m_key"),
        col(AuditEvent.occurred_at) >= since,
        in_constants(col(AuditEvent.action), PII_READ_ACTIONS),
        ~((col(AuditEvent.chain) == bindparam("m_chain")) & (col(AuditEvent.seq) == bindparam("m_seq"))),
    ]


def _parameters_of(link: Link, since: datetime) -> dict[str, Any]:
    return {
        "m_tenant": link.tenant_id,
        "m_key": link.actor_key_id,
        "m_subject": link.subject_id,
        "m_chain": link.chain,
        "m_seq": link.seq,
        "m_since": since,
    }


def _since() -> Any:
    return bindparam("m_since", type_=AuditEvent.__table__.c.occurred_at.type)  # type: ignore[attr-defined]


def _alerted(since: Any) -> Any:
    """Whether the key was flagged (an ``access.alert`` of its tenant) since ``since``: a probe of
    the partial index ``ix_audit_events_alerts``, whose condition (``ACCESS_ALERT_WHERE``) the
    query states with the action as a constant, so that the planner uses the index in a prepared
    statement too."""
    return exists().where(
        col(AuditEvent.action) == literal_column(f"'{ACCESS_ALERT}'"),
        col(AuditEvent.resource_id) == bindparam("m_key"),
        col(AuditEvent.occurred_at) >= since,
        col(AuditEvent.chain) == bindparam("m_chain"),
    )


@functools.cache
def _exact_count() -> Select[Any]:
    """How many distinct other clients the key read since ``since``, uncapped."""
    return shareable(
        sa_select(func.count(func.distinct(AuditEvent.subject_id))).where(*_other_reads(_since()))
    )


@functools.cache
def _check_statement() -> Select[Any]:
    """The tenant's policy, whether the key read the client before since ``since``, and — only when
    it did not — how many other clients it read since, up to the tenant's threshold, in one query
    built once.

    The count's subquery sits in a ``CASE`` branch, which both databases evaluate only when taken.
    It stops at the threshold (``LIMIT``): the read crosses it exactly when the key had read at least
    that many other clients, so a key far above it costs the same as one at it, not a count of
    every read in the window (decision 62). The alert's exact figure is counted apart
    (``_exact_count``), once per window.
    """
    since = _since()
    threshold = (
        sa_select(func.coalesce(col(Tenant.pii_read_threshold), DEFAULT_PII_READ_THRESHOLD))
        .where(col(Tenant.id) == bindparam("m_tenant"))
        .scalar_subquery()
    )
    read = (
        sa_select(col(AuditEvent.subject_id))
        .where(col(AuditEvent.subject_id).is_not(None), *_other_reads(since))
        .distinct()
        .limit(threshold)
        .subquery()
    )
    others = sa_select(func.count()).select_from(read)
    # ``seen`` is written once, in a derived table the two branches read: repeated in each, the
    # statement that carries this check past psycopg's 4,096-byte limit for caching a query's
    # conversion, and every read of PII paid for parsing it again (decision 68).
    prior = sa_select(
        exists()
        .where(col(AuditEvent.subject_id) == bindparam("m_subject"), *_other_reads(since))
        .label("seen")
    ).subquery("prior")
    columns: list[Any] = [
        col(Tenant.pii_read_threshold),
        col(Tenant.pii_read_window_minutes),
        col(Tenant.suspend_on_alert),
        prior.c.seen,
        case((prior.c.seen, None), else_=others.scalar_subquery()),
        case((prior.c.seen, None), else_=_alerted(since)),
    ]
    return shareable(
        sa_select(*columns)
        .select_from(Tenant)
        .join(prior, true())
        .where(col(Tenant.id) == bindparam("m_tenant"))
    )


class AccessMonitor:
    """The audit trail's watcher of PII reads (see the module's docstring)."""

    def __init__(self, audit: AuditTrail, *, clock: Callable[[], datetime]) -> None:
        self._audit = audit
        self._clock = clock

    def check(self, link: Link) -> Check | None:
        """For a PII read: the tenant's policy, whether the key read this client before within the
        default window, and — only if it did not — how many other clients it read in that window.

        The number of distinct clients a key read in the window only grows when it reads one it
        had not read in the window, so only such a read can cross the threshold: a read of a client
        already read is one index lookup (``ix_audit_events_actor_subject_time``), and only the
        first read of each client in the window pays the count (decision 54).
        """
        if link.action not in PII_READ_ACTIONS or not link.actor_key_id or not link.tenant_id:
            return None
        return Check(_check_statement(), _parameters_of(link, self._clock() - DEFAULT_PII_READ_WINDOW))

    def after(self, session: Session, link: Link, row: Row[Any] | None) -> None:
        """Alert (and suspend, if the tenant chose to) when the read took the key over the threshold.

        A tenant with a window of its own costs a second query, over that window.
        """
        if row is None:
            return
        threshold, window_minutes, suspend, seen, others, alerted = tuple(row)
        policy = _policy(threshold, window_minutes, suspend)
        since = self._clock() - timedelta(minutes=policy.window_minutes)
        if policy.window_minutes != _DEFAULT_WINDOW_MINUTES:
            seen, others, alerted = session.execute(_check_statement(), _parameters_of(link, since)).one()[3:]
        if seen:
            return
        distinct = others + (link.subject_id is not None)  # the other clients, and this one
        if distinct <= policy.pii_read_threshold:
            return
        if not alerted:
            # The check's count stops at the threshold; the alert states the exact figure.
            others = session.execute(_exact_count(), _parameters_of(link, since)).scalar_one()
            distinct = others + (link.subject_id is not None)
            self._audit.record(
                session,
                tenant_id=link.tenant_id,
                action=ACCESS_ALERT,
                resource_type="api_key",
                resource_id=link.actor_key_id,
                outcome="alert",
                detail={
                    "distinct_subjects": int(distinct),
                    "threshold": policy.pii_read_threshold,
                    "window_minutes": policy.window_minutes,
                },
            )
        if policy.suspend_on_alert:
            key = session.get(ApiKey, link.actor_key_id, with_for_update=True)
            if key is not None and key.suspended_at is None:
                key.suspended_at = self._clock()
                session.add(key)
                self._audit.record(
                    session,
                    tenant_id=link.tenant_id,
                    action="api_key.suspended",
                    resource_type="api_key",
                    resource_id=key.id,
                    detail={"reason": "pii_read_threshold"},
                )
