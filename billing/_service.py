"""The billing domain assembled from its collaborators (the API's composition root calls this)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlmodel import select

from billing._actor import Actor
from billing._audit import AuditTrail, AuditVerification
from billing._breaches import BreachService
from billing._customers import CustomerService
from billing._db import Database
from billing._events import EventOutbox, EventService
from billing._idempotency import IdempotencyStore
from billing._invoices import InvoiceService
from billing._keyring import Keyring, KeyringFileMasterKeys, KeyringMasterKeys, MasterKeyProvider
from billing._models import AuditEvent, utcnow
from billing._monitoring import AccessMonitor
from billing._page_sessions import PageSessionPolicy, PageSessionService
from billing._payments import PaymentService
from billing._pci import PciService
from billing._pdf import SellerDetails, render_invoice_pdf
from billing._privacy import PrivacyService
from billing._reconcile import Reconciler
from billing._reports import ReportService
from billing._retention import RetentionService
from billing._rotation import KeyRotationService
from billing._sessions import PaymentSessionService
from billing._subject_rotation import SubjectKeyRotationService
from billing._tenants import TenantService
from billing._webhook_urls import DestinationPolicy
from tokenization import PaymentGateway

__all__ = ["Billing"]


@dataclass
class Billing:
    """Every billing service, sharing one database, keyring, clock and randomness source.

    DEKs are wrapped by ``key_provider``: when it is ``None``, a :class:`KeyringFileMasterKeys`
    that follows the file the keyring was loaded from (``keyring.source``), else the keyring's own
    master keys in memory. Pass a :class:`~billing.Pkcs11MasterKeys` to keep master keys in an HSM
    (the keyring then only supplies the audit keys). The provider is attached to ``keyring``, so
    every service handed the keyring wraps through it.
    """

    db: Database
    keyring: Keyring
    gateway: PaymentGateway | None = None
    erasure_journal: Path | None = None
    clock: Callable[[], datetime] = utcnow
    rng: Callable[[int], bytes] = os.urandom
    key_provider: MasterKeyProvider | None = None
    page_session_policy: PageSessionPolicy = field(default_factory=PageSessionPolicy)
    on_background_error: Callable[[Exception], None] | None = None
    """Told about failures of background work (the keeper of idempotency claims); never raises."""
    webhook_destinations: DestinationPolicy = field(default_factory=DestinationPolicy)
    audit: AuditTrail = field(init=False)
    monitor: AccessMonitor = field(init=False)
    tenants: TenantService = field(init=False)
    customers: CustomerService = field(init=False)
    invoices: InvoiceService = field(init=False)
    payments: PaymentService = field(init=False)
    idempotency: IdempotencyStore = field(init=False)
    sessions: PaymentSessionService = field(init=False)
    privacy: PrivacyService = field(init=False)
    rotation: KeyRotationService = field(init=False)
    subject_rotation: SubjectKeyRotationService = field(init=False)
    retention: RetentionService = field(init=False)
    breaches: BreachService = field(init=False)
    reports: ReportService = field(init=False)
    page_sessions: PageSessionService = field(init=False)
    outbox: EventOutbox = field(init=False)
    events: EventService = field(init=False)
    pci: PciService = field(init=False)
    reconciler: Reconciler = field(init=False)

    def __post_init__(self) -> None:
        clock, rng = self.clock, self.rng
        if self.key_provider is None:
            source = self.keyring.source
            self.key_provider = self.keyring.master_key_provider or (
                KeyringFileMasterKeys(source, rng=rng)
                if source is not None
                else KeyringMasterKeys(self.keyring, rng=rng)
            )
        self.keyring = self.keyring.with_master_key_provider(self.key_provider)
        self.audit = AuditTrail(self.keyring, clock=clock)
        self.outbox = EventOutbox(clock=clock)
        self.monitor = AccessMonitor(self.audit, clock=clock)
        self.audit.watch(self.monitor)
        self.idempotency = IdempotencyStore(
            self.db, self.keyring, clock=clock, rng=rng, on_error=self.on_background_error
        )
        self.rotation = KeyRotationService(
            self.db, self.key_provider, self.audit, clock=clock, idempotency=self.idempotency
        )
        self.subject_rotation = SubjectKeyRotationService(
            self.db, self.keyring, self.audit, clock=clock, rng=rng
        )
        self.tenants = TenantService(
            self.db, self.keyring, self.audit, clock=clock, rng=rng, idempotency=self.idempotency
        )
        self.events = EventService(
            self.db,
            self.keyring,
            self.audit,
            policy=self.webhook_destinations,
            clock=clock,
            rng=rng,
            idempotency=self.idempotency,
        )
        self.customers = CustomerService(
            self.db, self.keyring, self.audit, clock=clock, rng=rng, idempotency=self.idempotency
        )
        self.invoices = InvoiceService(
            self.db,
            self.keyring,
            self.audit,
            self.customers,
            clock=clock,
            rng=rng,
            events=self.outbox,
            idempotency=self.idempotency,
        )
        self.payments = PaymentService(
            self.db, self.audit, self.gateway, clock=clock, rng=rng, events=self.outbox
        )
        self.sessions = PaymentSessionService(
            self.db, self.audit, self.payments, clock=clock, idempotency=self.idempotency
        )
        self.privacy = PrivacyService(
            self.db,
            self.keyring,
            self.audit,
            self.customers,
            self.invoices,
            self.payments,
            journal_path=self.erasure_journal,
            clock=clock,
            events=self.outbox,
        )
        self.retention = RetentionService(
            self.db, self.keyring, self.audit, clock=clock, idempotency=self.idempotency
        )
        self.breaches = BreachService(self.db, self.audit, clock=clock)
        self.reports = ReportService(self.db, self.keyring, self.audit, clock=clock)
        self.page_sessions = PageSessionService(
            self.db, self.audit, policy=self.page_session_policy, clock=clock
        )
        self.pci = PciService(
            self.db, self.keyring, self.audit, key_status=self.rotation.key_status, clock=clock
        )
        self.reconciler = Reconciler(self.db, self.gateway, clock=clock)

    def invoice_pdf(self, actor: Actor, invoice_id: str) -> tuple[str, bytes]:
        """The invoice as PDF, rendered in memory from the decrypted content and never stored.

        Returns a file name (the number, or the id of a draft) and the bytes.
        """
        view, _ = self.invoices.read_for_document(actor, invoice_id)
        business = self.tenants.business_details(actor.tenant_id)
        seller = SellerDetails(
            name=business.legal_name,
            address_lines=tuple(business.address_lines),
            vat_id=business.vat_id,
            email=business.email,
        )
        pdf = render_invoice_pdf(view, seller, now=self.clock())
        return view.number or view.id, pdf

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
