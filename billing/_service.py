"""The billing domain assembled from its collaborators (the API's composition root calls this)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlmodel import select

from billing._actor import Actor
from billing._audit import AuditTrail, AuditVerification
from billing._customers import CustomerService
from billing._db import Database
from billing._invoices import InvoiceService
from billing._keyring import Keyring
from billing._models import AuditEvent, utcnow
from billing._tenants import TenantService

__all__ = ["Billing"]


@dataclass
class Billing:
    """Every billing service, sharing one database, keyring, clock and randomness source."""

    db: Database
    keyring: Keyring
    clock: Callable[[], datetime] = utcnow
    rng: Callable[[int], bytes] = os.urandom
    audit: AuditTrail = field(init=False)
    tenants: TenantService = field(init=False)
    customers: CustomerService = field(init=False)
    invoices: InvoiceService = field(init=False)

    def __post_init__(self) -> None:
        self.audit = AuditTrail(self.keyring, clock=self.clock)
        common = {"clock": self.clock, "rng": self.rng}
        self.tenants = TenantService(self.db, self.keyring, self.audit, **common)  # type: ignore[arg-type]
        self.customers = CustomerService(self.db, self.keyring, self.audit, **common)  # type: ignore[arg-type]
        self.invoices = InvoiceService(self.db, self.keyring, self.audit, self.customers, **common)  # type: ignore[arg-type]

    def audit_events(self, actor: Actor, *, after: int = 0, limit: int = 100) -> list[AuditEvent]:
        """The actor's tenant chain from ``seq > after``, oldest first."""
        with self.db.read() as session:
            query = (
                select(AuditEvent)
                .where(AuditEvent.chain == actor.tenant_id, AuditEvent.seq > after)
                .order_by(AuditEvent.seq)  # type: ignore[arg-type]
                .limit(limit)
            )
            return list(session.exec(query))

    def verify_audit(self, *, chain: str | None = None) -> AuditVerification:
        with self.db.read() as session:
            return self.audit.verify(session, chain=chain)
