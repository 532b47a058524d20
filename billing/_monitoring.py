"""Access monitoring: a key that reads the personal data of too many clients is flagged.

Every audited read of decrypted PII (``PII_READ_ACTIONS``) is followed, in the same transaction,
by a count of the *distinct* clients that key read within the tenant's window (default: more than
100 clients in 60 minutes). Crossing the threshold appends one ``access.alert`` event per window to
the audit chain and, when the tenant chose ``suspend_on_alert``, suspends the key at once (it then
authenticates no more until an admin reinstates it).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import msgspec
from sqlalchemy import func
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from billing._audit import AuditTrail
from billing._models import ApiKey, AuditEvent, Tenant

__all__ = [
    "DEFAULT_PII_READ_THRESHOLD",
    "DEFAULT_PII_READ_WINDOW",
    "PII_READ_ACTIONS",
    "AccessMonitor",
    "AccessPolicy",
    "access_policy_of",
]

PII_READ_ACTIONS = frozenset(
    {
        "customer.read",
        "invoice.read",
        "invoice.document_rendered",
        "invoice.restricted_read",
        "customer.exported",
    }
)
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


def _distinct_subjects_read(key_id: str, since: datetime) -> SelectOfScalar[int]:
    """How many distinct clients ``key_id`` read (audited PII reads) since ``since``."""
    return select(func.count(func.distinct(AuditEvent.subject_id))).where(
        AuditEvent.actor_key_id == key_id,
        col(AuditEvent.occurred_at) >= since,
        col(AuditEvent.action).in_(PII_READ_ACTIONS),
    )


class AccessMonitor:
    def __init__(self, audit: AuditTrail, *, clock: Callable[[], datetime]) -> None:
        self._audit = audit
        self._clock = clock

    def after_event(self, session: Session, event: AuditEvent) -> None:
        """Audit observer: check the reading key after each PII read.

        One query reads the tenant's policy together with the count over the default window; a
        tenant with a window of its own costs a second count over that window.
        """
        if event.action not in PII_READ_ACTIONS or not event.actor_key_id or not event.tenant_id:
            return
        now = self._clock()
        row = session.execute(
            select(
                col(Tenant.pii_read_threshold),
                col(Tenant.pii_read_window_minutes),
                col(Tenant.suspend_on_alert),
                _distinct_subjects_read(event.actor_key_id, now - DEFAULT_PII_READ_WINDOW).scalar_subquery(),
            ).where(Tenant.id == event.tenant_id)
        ).one_or_none()
        if row is None:
            return
        threshold, window_minutes, suspend, distinct = row
        policy = _policy(threshold, window_minutes, suspend)
        since = now - timedelta(minutes=policy.window_minutes)
        if policy.window_minutes != _DEFAULT_WINDOW_MINUTES:
            distinct = session.execute(_distinct_subjects_read(event.actor_key_id, since)).scalar_one()
        if distinct <= policy.pii_read_threshold:
            return
        already = session.exec(
            select(AuditEvent.id).where(
                AuditEvent.chain == event.tenant_id,
                AuditEvent.action == "access.alert",
                AuditEvent.resource_id == event.actor_key_id,
                col(AuditEvent.occurred_at) >= since,
            )
        ).first()
        if already is None:
            self._audit.record(
                session,
                tenant_id=event.tenant_id,
                action="access.alert",
                resource_type="api_key",
                resource_id=event.actor_key_id,
                outcome="alert",
                detail={
                    "distinct_subjects": int(distinct),
                    "threshold": policy.pii_read_threshold,
                    "window_minutes": policy.window_minutes,
                },
            )
        if policy.suspend_on_alert:
            key = session.get(ApiKey, event.actor_key_id, with_for_update=True)
            if key is not None and key.suspended_at is None:
                key.suspended_at = self._clock()
                session.add(key)
                self._audit.record(
                    session,
                    tenant_id=event.tenant_id,
                    action="api_key.suspended",
                    resource_type="api_key",
                    resource_id=key.id,
                    detail={"reason": "pii_read_threshold"},
                )
