"""The breach register: when a breach became known, its deadlines, who was affected.

GDPR Art. 33 gives 72 hours from awareness to notify the supervisory authority; HIPAA's breach
notification rule gives 60 days to notify individuals. ``affected`` answers the first question of
every investigation — whose data did this key read? — from the audit chain, exactly: the distinct
clients whose decrypted data the key read since a given time.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import msgspec
from sqlmodel import col, select

from billing._audit import AuditTrail
from billing._db import Database, in_constants
from billing._models import PII_READ_ACTIONS, AuditEvent, Breach, new_id
from billing.errors import NotFound, ValidationFailed

__all__ = ["GDPR_DEADLINE", "HIPAA_DEADLINE", "BreachInput", "BreachService", "BreachView"]

GDPR_DEADLINE = timedelta(hours=72)
HIPAA_DEADLINE = timedelta(days=60)


class BreachInput(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    nature: str
    aware_at: datetime | None = None
    tenant_id: str | None = None
    categories: str | None = None
    approx_subjects: int | None = None
    approx_records: int | None = None
    consequences: str | None = None
    measures: str | None = None
    suspected_key_id: str | None = None


class BreachView(msgspec.Struct, kw_only=True):
    """The fields a notification to the authority needs (GDPR Art. 33(3)), and the deadlines."""

    id: str
    tenant_id: str | None
    aware_at: datetime
    gdpr_authority_deadline: datetime
    hipaa_individuals_deadline: datetime
    nature: str
    categories: str | None
    approx_subjects: int | None
    approx_records: int | None
    consequences: str | None
    measures: str | None
    suspected_key_id: str | None
    closed_at: datetime | None


class BreachService:
    def __init__(self, db: Database, audit: AuditTrail, *, clock: Callable[[], datetime]) -> None:
        self._db = db
        self._audit = audit
        self._clock = clock

    def open(self, data: BreachInput) -> BreachView:
        """Record a breach; awareness defaults to now. Audited on the tenant's (or system) chain."""
        if not data.nature.strip():
            raise ValidationFailed("Describe the nature of the breach.", field="nature")
        aware_at = data.aware_at or self._clock()
        if aware_at.tzinfo is None:
            raise ValidationFailed("Give the moment of awareness with its time zone.", field="aware_at")
        breach = Breach(
            id=new_id("br"),
            tenant_id=data.tenant_id,
            aware_at=aware_at,
            nature=data.nature.strip()[:2000],
            categories=data.categories,
            approx_subjects=data.approx_subjects,
            approx_records=data.approx_records,
            consequences=data.consequences,
            measures=data.measures,
            suspected_key_id=data.suspected_key_id,
            created_at=self._clock(),
        )
        with self._db.transaction() as session:
            session.add(breach)
            self._audit.record(
                session,
                tenant_id=data.tenant_id,
                action="breach.opened",
                resource_type="breach",
                resource_id=breach.id,
                detail={"suspected_key_id": data.suspected_key_id},
            )
        return _view(breach)

    def get(self, breach_id: str) -> BreachView:
        with self._db.read() as session:
            breach = session.get(Breach, breach_id)
            if breach is None:
                raise NotFound(resource="breach")
            return _view(breach)

    def all(self) -> list[BreachView]:
        with self._db.read() as session:
            return [_view(b) for b in session.exec(select(Breach).order_by(col(Breach.aware_at)))]

    def affected(self, key_id: str, since: datetime) -> list[str]:
        """The ids of the distinct clients whose decrypted data ``key_id`` read since ``since``."""
        with self._db.read() as session:
            rows = session.exec(
                select(AuditEvent.subject_id)
                .where(
                    AuditEvent.actor_key_id == key_id,
                    col(AuditEvent.occurred_at) >= since,
                    in_constants(col(AuditEvent.action), PII_READ_ACTIONS),
                    col(AuditEvent.subject_id).is_not(None),
                )
                .distinct()
            ).all()
        return sorted(r for r in rows if r)


def _view(breach: Breach) -> BreachView:
    return BreachView(
        id=breach.id,
        tenant_id=breach.tenant_id,
        aware_at=breach.aware_at,
        gdpr_authority_deadline=breach.aware_at + GDPR_DEADLINE,
        hipaa_individuals_deadline=breach.aware_at + HIPAA_DEADLINE,
        nature=breach.nature,
        categories=breach.categories,
        approx_subjects=breach.approx_subjects,
        approx_records=breach.approx_records,
        consequences=breach.consequences,
        measures=breach.measures,
        suspected_key_id=breach.suspected_key_id,
        closed_at=breach.closed_at,
    )
