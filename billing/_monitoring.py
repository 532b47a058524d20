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
    return AccessPolicy(
        pii_read_threshold=tenant.pii_read_threshold or DEFAULT_PII_READ_THRESHOLD,
        window_minutes=tenant.pii_read_window_minutes or int(DEFAULT_PII_READ_WINDOW.total_seconds() // 60),
        suspend_on_alert=tenant.suspend_on_alert,
    )


class AccessMonitor:
    def __init__(self, audit: AuditTrail, *, clock: Callable[[], datetime]) -> None:
        self._audit = audit
        self._clock = clock

    def after_event(self, session: Session, event: AuditEvent) -> None:
        """Audit observer: check the reading key after each PII read."""
        if event.action not in PII_READ_ACTIONS or not event.actor_key_id or not event.tenant_id:
            return
        tenant = session.get(Tenant, event.tenant_id)
        if tenant is None:
            return
        policy = access_policy_of(tenant)
        since = self._clock() - timedelta(minutes=policy.window_minutes)
        distinct = session.exec(
            select(func.count(func.distinct(AuditEvent.subject_id))).where(
                AuditEvent.actor_key_id == event.actor_key_id,
                col(AuditEvent.occurred_at) >= since,
                col(AuditEvent.action).in_(PII_READ_ACTIONS),
            )
        ).one()
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
