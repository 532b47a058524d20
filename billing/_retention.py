"""Retention: how long each kind of data is kept, and the run that enforces it.

A tenant's policy comes from a country preset (or explicit numbers of years):

| country | invoices kept | counted from |
|---|---|---|
| DE | 8 years | the end of the year of issue (§ 147 AO since 2025) |
| GB | 6 years | the end of the year of issue (HMRC) |
| PL | 5 years | the end of the year in which the tax deadline expired (≈ year of issue + 1) |
| FR | 10 years | the end of the year of issue (Code de commerce L123-22) |

Audit events are kept ``audit_retention_years`` (default 6). Without a policy nothing is shredded.

A run, per tenant (``dry_run`` only reports):

- shreds the ``record`` key of every **erased** client whose newest invoice is past retention — their
  invoice content becomes unreadable, the amounts stay (a client who was not erased keeps their
  record key: their relationship with the business goes on);
- purges idempotency records past their 24 hours, gateway webhook events older than 30 days, our
  own event log's events older than 30 days (with their deliveries) once none of their deliveries
  is still pending, and audit events older than the audit period — the chain then starts from a
  signed checkpoint, so it stays verifiable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import msgspec
from sqlalchemy import delete, func
from sqlmodel import Session, col, select

from billing._actor import Actor
from billing._audit import AuditTrail
from billing._db import Database
from billing._event_models import EventDelivery, EventRecord
from billing._idempotency import IdempotencyStore
from billing._keyring import Keyring
from billing._keys import SubjectKeys
from billing._models import (
    AuditEvent,
    Customer,
    DataKeyRecord,
    IdempotencyRecord,
    Invoice,
    Tenant,
    WebhookEvent,
)
from billing.errors import NotFound, ValidationFailed

__all__ = [
    "RETENTION_PRESETS",
    "RetentionPolicy",
    "RetentionPolicyInput",
    "RetentionReport",
    "RetentionService",
]

WEBHOOK_EVENT_TTL = timedelta(days=30)
# How long our own event log keeps an event (``GET /v1/events``, redelivery): Stripe's 30 days.
EVENT_LOG_TTL = timedelta(days=30)
DEFAULT_AUDIT_YEARS = 6


@dataclass(frozen=True, slots=True)
class _Preset:
    invoice_years: int
    start_offset_years: int


RETENTION_PRESETS: dict[str, _Preset] = {
    "DE": _Preset(8, 0),
    "GB": _Preset(6, 0),
    "PL": _Preset(5, 1),
    "FR": _Preset(10, 0),
}


class RetentionPolicy(msgspec.Struct, kw_only=True):
    country: str | None = None
    invoice_retention_years: int | None = None
    audit_retention_years: int = DEFAULT_AUDIT_YEARS
    start_offset_years: int = 0

    def invoice_retained_until(self, issued: date) -> date | None:
        """The last day an invoice issued on ``issued`` must be kept (None: no policy, keep)."""
        if self.invoice_retention_years is None:
            return None
        return date(issued.year + self.start_offset_years + self.invoice_retention_years, 12, 31)


class RetentionPolicyInput(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    country: str | None = None
    invoice_retention_years: int | None = None
    audit_retention_years: int | None = None


class RetentionReport(msgspec.Struct, kw_only=True):
    dry_run: bool
    ran_at: datetime
    record_keys_shredded: list[str]
    idempotency_records_purged: int
    webhook_events_purged: int
    events_purged: int
    audit_events_purged: int


class RetentionService:
    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        audit: AuditTrail,
        *,
        clock: Callable[[], datetime],
        idempotency: IdempotencyStore | None = None,
    ) -> None:
        self._db = db
        self._keyring = keyring
        self._audit = audit
        self._clock = clock
        self._idempotency = idempotency

    def policy(self, tenant_id: str) -> RetentionPolicy:
        with self._db.read() as session:
            tenant = session.get(Tenant, tenant_id)
            if tenant is None:
                raise NotFound(resource="tenant")
            return _policy_of(tenant)

    def set_policy(self, actor: Actor, data: RetentionPolicyInput) -> RetentionPolicy:
        """A country preset and/or explicit numbers of years (1 to 30)."""
        if data.country is not None and data.country not in RETENTION_PRESETS:
            raise ValidationFailed("No retention preset for this country; give the years.", field="country")
        for name in ("invoice_retention_years", "audit_retention_years"):
            value = getattr(data, name)
            if value is not None and not 1 <= value <= 30:
                raise ValidationFailed("Retention is 1 to 30 years.", field=name)
        with self._db.transaction() as session:
            tenant = session.get(Tenant, actor.tenant_id, with_for_update=True)
            if tenant is None:
                raise NotFound(resource="tenant")
            tenant.retention_country = data.country
            tenant.invoice_retention_years = data.invoice_retention_years
            tenant.audit_retention_years = data.audit_retention_years
            session.add(tenant)
            self._audit.record(
                session,
                actor=actor,
                action="retention.policy_set",
                resource_type="tenant",
                resource_id=actor.tenant_id,
                detail={"country": data.country, "invoice_years": data.invoice_retention_years},
            )
            return _policy_of(tenant)

    def run(
        self, *, dry_run: bool, tenant_id: str | None = None, actor: Actor | None = None
    ) -> RetentionReport:
        """Enforce every tenant's policy (or one tenant's); ``dry_run`` lists what would go.

        Each tenant's part is one transaction: its shredding, its purges and their audit events
        commit together or not at all. A run for one tenant (``POST /v1/admin/retention/run``) is
        that one transaction, and stores its report there as the answer of the keyed request being
        served: a retry after a crash replays what the run did, rather than running again and
        answering that nothing more was due. Gateway webhook events belong to no tenant: a run for
        every tenant purges them last, in a transaction of their own.
        """
        now = self._clock()
        if tenant_id is not None:
            with self._db.transaction() as session:
                tenant = session.get(Tenant, tenant_id)
                report = (
                    self._enforce(session, tenant, now, dry_run=dry_run, actor=actor)
                    if tenant is not None
                    else _nothing_done(now, dry_run=dry_run)
                )
                if actor is not None and self._idempotency is not None:
                    self._idempotency.record_outcome(session, actor.tenant_id, report)
                return report
        with self._db.read() as session:
            tenant_ids = list(session.exec(select(Tenant.id)).all())
        report = _nothing_done(now, dry_run=dry_run)
        for each in tenant_ids:
            with self._db.transaction() as session:
                tenant = session.get(Tenant, each)
                if tenant is not None:
                    _add(report, self._enforce(session, tenant, now, dry_run=dry_run, actor=actor))
        with self._db.transaction() as session:
            report.webhook_events_purged = _purge(
                session, WebhookEvent, col(WebhookEvent.received_at) < now - WEBHOOK_EVENT_TTL, None, dry_run
            )
        return report

    def _enforce(
        self, session: Session, tenant: Tenant, now: datetime, *, dry_run: bool, actor: Actor | None
    ) -> RetentionReport:
        """One tenant's run, in ``session``.

        The purges come first and the shredding, which appends audit links, last: the tenant's
        chain head stays locked from its first link to the commit, and every audited request of
        the tenant waits for it meanwhile — not through the deletes of the purges.
        """
        policy = _policy_of(tenant)
        idempotency = _purge(
            session, IdempotencyRecord, col(IdempotencyRecord.expires_at) <= now, tenant.id, dry_run
        )
        events = _purge_event_log(session, now - EVENT_LOG_TTL, tenant.id, dry_run=dry_run)
        audit = self._purge_audit(session, tenant.id, policy, now, dry_run=dry_run)
        return RetentionReport(
            dry_run=dry_run,
            ran_at=now,
            record_keys_shredded=self._expired_records(
                session, tenant.id, policy, now.date(), dry_run=dry_run, actor=actor
            ),
            idempotency_records_purged=idempotency,
            webhook_events_purged=0,
            events_purged=events,
            audit_events_purged=audit,
        )

    def _expired_records(
        self,
        session: Session,
        tenant_id: str,
        policy: RetentionPolicy,
        today: date,
        *,
        dry_run: bool,
        actor: Actor | None,
    ) -> list[str]:
        if policy.invoice_retention_years is None:
            return []
        rows = session.exec(
            select(Customer.id, func.max(func.coalesce(Invoice.issue_date, func.date(Invoice.created_at))))
            .join(Invoice, col(Invoice.customer_id) == col(Customer.id), isouter=True)
            .join(
                DataKeyRecord,
                (col(DataKeyRecord.subject_id) == col(Customer.id))
                & (col(DataKeyRecord.purpose) == "record"),
            )
            .where(
                Customer.tenant_id == tenant_id,
                col(Customer.erased_at).is_not(None),
                col(DataKeyRecord.wrapped).is_not(None),
            )
            .group_by(col(Customer.id))
        ).all()
        expired = []
        for customer_id, newest in rows:
            newest_date = _as_date(newest)
            until = policy.invoice_retained_until(newest_date) if newest_date else None
            if newest_date is None or (until is not None and until < today):
                expired.append(customer_id)
        if dry_run or not expired:
            return expired
        keys = SubjectKeys(session, self._keyring, clock=self._clock)
        for customer_id in expired:
            keys.shred(tenant_id, customer_id, "record")
            self._audit.record(
                session,
                actor=actor,
                tenant_id=tenant_id,
                action="retention.record_shredded",
                resource_type="customer",
                resource_id=customer_id,
                subject_id=customer_id,
            )
        return expired

    def _purge_audit(
        self, session: Session, tenant_id: str, policy: RetentionPolicy, now: datetime, *, dry_run: bool
    ) -> int:
        cutoff = now.replace(year=now.year - policy.audit_retention_years)
        if dry_run:
            count = session.exec(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.chain == tenant_id, AuditEvent.occurred_at < cutoff)
            ).one()
            return int(count)
        return self._audit.purge_before(session, tenant_id, cutoff)


def _purge_event_log(session: Session, cutoff: datetime, tenant_id: str, *, dry_run: bool) -> int:
    """Delete the tenant's events older than ``cutoff`` none of whose deliveries is pending, with
    their deliveries (delivered or given up); returns how many events."""
    pending = (
        select(EventDelivery.id)
        .where(col(EventDelivery.event_id) == col(EventRecord.id), EventDelivery.status == "pending")
        .exists()
    )
    where = [col(EventRecord.created_at) < cutoff, ~pending, col(EventRecord.tenant_id) == tenant_id]
    if dry_run:
        return int(session.exec(select(func.count()).select_from(EventRecord).where(*where)).one())
    expired = select(EventRecord.id).where(*where).scalar_subquery()
    session.execute(delete(EventDelivery).where(col(EventDelivery.event_id).in_(expired)))
    result = session.execute(delete(EventRecord).where(*where))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _purge(session: Session, model: type, condition: object, tenant_id: str | None, dry_run: bool) -> int:
    where = [condition]
    if tenant_id is not None:
        where.append(col(model.tenant_id) == tenant_id)  # type: ignore[attr-defined]
    if dry_run:
        return int(session.exec(select(func.count()).select_from(model).where(*where)).one())  # type: ignore[arg-type]
    result = session.execute(delete(model).where(*where))  # type: ignore[arg-type]
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _nothing_done(now: datetime, *, dry_run: bool) -> RetentionReport:
    return RetentionReport(
        dry_run=dry_run,
        ran_at=now,
        record_keys_shredded=[],
        idempotency_records_purged=0,
        webhook_events_purged=0,
        events_purged=0,
        audit_events_purged=0,
    )


def _add(total: RetentionReport, part: RetentionReport) -> None:
    total.record_keys_shredded += part.record_keys_shredded
    total.idempotency_records_purged += part.idempotency_records_purged
    total.events_purged += part.events_purged
    total.audit_events_purged += part.audit_events_purged


def _policy_of(tenant: Tenant) -> RetentionPolicy:
    preset = RETENTION_PRESETS.get(tenant.retention_country or "")
    invoice_years = tenant.invoice_retention_years or (preset.invoice_years if preset else None)
    return RetentionPolicy(
        country=tenant.retention_country,
        invoice_retention_years=invoice_years,
        audit_retention_years=tenant.audit_retention_years or DEFAULT_AUDIT_YEARS,
        start_offset_years=preset.start_offset_years if preset else 0,
    )


def _as_date(value: object) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])
