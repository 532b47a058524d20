"""Data-subject rights: access and portability (export) and erasure by crypto-shredding.

Erasure of a client, in order:

1. the gateway customer is deleted at the gateway (its saved cards go with it);
2. in one transaction: the client's ``profile`` key is shredded, their sealed profile columns and
   blind indexes are cleared, their card summaries deleted, and the client marked erased — from
   then on their invoices are *restricted*: amounts stay for accounting, the content (sealed under
   the ``record`` key, kept until the invoice retention period ends) is readable only by admins and
   auditors who state a reason;
3. the erasure is appended to the **erasure journal**, a file outside the database, so that
   ``veilbill erasures replay`` can apply it again after a database restore from a backup taken
   before it. The journal holds ids and times, never personal data.

Every step is idempotent, so an interrupted erasure is finished by running it again, and a replay
of an already-applied entry changes nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import msgspec
from sqlalchemy import delete
from sqlmodel import col, select

from billing._actor import Actor
from billing._audit import AuditTrail
from billing._customers import PII_FIELDS, CustomerService, CustomerView
from billing._db import Database, get_for_tenant
from billing._events import EventOutbox
from billing._invoices import InvoiceService, InvoiceView
from billing._keyring import Keyring
from billing._keys import SubjectKeys
from billing._models import (
    AuditEvent,
    Customer,
    GatewayCustomer,
    Invoice,
    Payment,
    PaymentMethod,
    Refund,
    new_id,
)
from billing._payments import PaymentService
from billing.errors import CustomerErased
from tokenization import derive_idempotency_key

_Struct = TypeVar("_Struct", bound=msgspec.Struct)

__all__ = ["DATA_CATEGORIES", "ErasureReceipt", "PrivacyService", "SubjectExport"]


# What Veilbill holds about a client, why, and for how long (shown in every access export).
DATA_CATEGORIES: dict[str, dict[str, str]] = {
    "profile": {
        "fields": "name, email, phone, address, birth date, gender, notes, external reference",
        "purpose": "identify the client and send them invoices",
        "lawful_basis": "contract (GDPR Art. 6(1)(b))",
        "retention": "until erasure, or the end of the business relationship",
        "protection": "AES-256-GCM under the client's profile key; destroyed at erasure",
    },
    "invoices": {
        "fields": "invoice content: client snapshot, line descriptions, notes; amounts and dates",
        "purpose": "issue invoices and keep them as tax law requires",
        "lawful_basis": "legal obligation (GDPR Art. 6(1)(c))",
        "retention": "the invoice retention period of the business's country (e.g. DE 8, UK 6, FR 10 years)",
        "protection": (
            "content under the client's record key; restricted after erasure, shredded after retention"
        ),
    },
    "payments": {
        "fields": "payments, refunds, credit notes; card brand, last 4 digits, expiry (never the number)",
        "purpose": "take payment and account for it",
        "lawful_basis": "contract and legal obligation (GDPR Art. 6(1)(b), (c))",
        "retention": "as invoices; card summaries until erasure or detachment",
        "protection": "card data stays with the payment gateway; only its token and summary are kept",
    },
    "audit": {
        "fields": "who read or changed the client's data, when, from where (ids only)",
        "purpose": "accountability and security of processing",
        "lawful_basis": "legal obligation and legitimate interest (GDPR Art. 5(2), 32)",
        "retention": "the audit period of the business's retention policy",
        "protection": "tamper-evident HMAC chain; no personal data in events",
    },
}


class CardSummary(msgspec.Struct, kw_only=True):
    id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    created_at: datetime
    detached_at: datetime | None


class PaymentRecord(msgspec.Struct, kw_only=True):
    id: str
    invoice_id: str
    amount: int
    currency: str
    status: str
    created_at: datetime


class RefundRecord(msgspec.Struct, kw_only=True):
    id: str
    invoice_id: str
    amount: int
    currency: str
    status: str
    created_at: datetime


class AccessRecord(msgspec.Struct, kw_only=True):
    occurred_at: datetime
    action: str
    actor_role: str | None
    actor_key_id: str | None
    resource_type: str | None
    resource_id: str | None


class SubjectExport(msgspec.Struct, kw_only=True):
    """Everything held about one client (GDPR Art. 15 and 20), as one JSON document."""

    customer_id: str
    exported_at: datetime
    erased_at: datetime | None
    profile: CustomerView | None
    invoices: list[InvoiceView]
    payments: list[PaymentRecord]
    refunds: list[RefundRecord]
    cards: list[CardSummary]
    data_categories: dict[str, dict[str, str]]
    access_log: list[AccessRecord]

    def __repr__(self) -> str:
        return f"SubjectExport(customer_id={self.customer_id!r}, <content redacted>)"


class ErasureReceipt(msgspec.Struct, kw_only=True):
    id: str
    customer_id: str
    erased_at: datetime
    profile_key_destroyed: bool
    blind_indexes_removed: bool
    gateway_customer_deleted: bool
    card_summaries_removed: int
    invoices_restricted: int
    record_key: str


class PrivacyService:
    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        audit: AuditTrail,
        customers: CustomerService,
        invoices: InvoiceService,
        payments: PaymentService,
        *,
        journal_path: Path | None,
        clock: Callable[[], datetime],
        events: EventOutbox | None = None,
    ) -> None:
        self._db = db
        self._keyring = keyring
        self._audit = audit
        self._customers = customers
        self._invoices = invoices
        self._payments = payments
        self._journal = journal_path
        self._clock = clock
        self._events = events or EventOutbox(clock=clock)

    def export_customer(self, actor: Actor, customer_id: str) -> SubjectExport:
        """The client's whole file, decrypted; audited as one ``customer.exported`` event."""
        with self._db.transaction() as session:
            customer = get_for_tenant(session, Customer, actor.tenant_id, customer_id, resource="customer")
            profile = self._customers.profile_for_export(session, actor.tenant_id, customer_id)
            invoices = self._invoices.views_for_customer(session, actor.tenant_id, customer_id)
            payments = session.exec(
                select(Payment)
                .where(Payment.tenant_id == actor.tenant_id, Payment.customer_id == customer_id)
                .order_by(col(Payment.created_at))
            ).all()
            invoice_ids = [i.id for i in invoices]
            refunds = session.exec(
                select(Refund).where(col(Refund.invoice_id).in_(invoice_ids)).order_by(col(Refund.created_at))
            ).all()
            cards = session.exec(
                select(PaymentMethod)
                .where(PaymentMethod.tenant_id == actor.tenant_id, PaymentMethod.customer_id == customer_id)
                .order_by(col(PaymentMethod.created_at))
            ).all()
            accesses = session.exec(
                select(AuditEvent)
                .where(AuditEvent.chain == actor.tenant_id, AuditEvent.subject_id == customer_id)
                .order_by(col(AuditEvent.seq))
            ).all()
            self._audit.record(
                session,
                actor=actor,
                action="customer.exported",
                resource_type="customer",
                resource_id=customer_id,
                subject_id=customer_id,
            )
            return SubjectExport(
                customer_id=customer_id,
                exported_at=self._clock(),
                erased_at=customer.erased_at,
                profile=profile,
                invoices=invoices,
                payments=_project(payments, PaymentRecord),
                refunds=_project(refunds, RefundRecord),
                cards=_project(cards, CardSummary),
                data_categories=DATA_CATEGORIES,
                access_log=_project(accesses, AccessRecord),
            )

    def erase_customer(self, actor: Actor, customer_id: str) -> ErasureReceipt:
        """Crypto-shred the client's profile and restrict their invoices; returns a receipt.

        Raises:
            NotFound: no such client in this tenant.
            CustomerErased: the client was erased already (the first receipt stands).
        """
        with self._db.read() as session:
            customer = get_for_tenant(session, Customer, actor.tenant_id, customer_id, resource="customer")
        if customer.erased_at is not None:
            raise CustomerErased(resource="customer")
        receipt = self._apply_erasure(actor, customer_id, receipt_id=new_id("er"))
        self._append_to_journal(actor.tenant_id, customer_id, receipt)
        return receipt

    def replay_erasures(self, journal_path: Path | None = None) -> int:
        """Apply every journaled erasure again (after a restore); returns how many changed anything."""
        path = journal_path or self._journal
        if path is None or not path.exists():
            return 0
        changed = 0
        for entry in _read_journal(path):
            with self._db.read() as session:
                customer = session.get(Customer, entry["customer_id"])
            if customer is None or customer.tenant_id != entry["tenant_id"] or customer.erased_at is not None:
                continue
            operator = Actor(tenant_id=entry["tenant_id"], role="operator")
            self._apply_erasure(operator, entry["customer_id"], receipt_id=entry["receipt_id"])
            changed += 1
        return changed

    def _apply_erasure(self, actor: Actor, customer_id: str, *, receipt_id: str) -> ErasureReceipt:
        gateway_deleted = self._delete_at_gateway(actor.tenant_id, customer_id)
        now = self._clock()
        with self._db.transaction() as session:
            customer = get_for_tenant(
                session, Customer, actor.tenant_id, customer_id, resource="customer", for_update=True
            )
            keys = SubjectKeys(session, self._keyring, clock=self._clock)
            shredded = keys.shred(actor.tenant_id, customer_id, "profile")
            for column in PII_FIELDS:
                setattr(customer, f"{column}_ct", None)
            indexes_removed = customer.email_bidx is not None or customer.external_ref_bidx is not None
            customer.email_bidx = customer.external_ref_bidx = None
            customer.erased_at = customer.erased_at or now
            customer.updated_at = now
            session.add(customer)
            cards = session.execute(
                delete(PaymentMethod).where(
                    col(PaymentMethod.tenant_id) == actor.tenant_id,
                    col(PaymentMethod.customer_id) == customer_id,
                )
            )
            restricted = len(
                session.exec(
                    select(Invoice.id).where(
                        Invoice.tenant_id == actor.tenant_id, Invoice.customer_id == customer_id
                    )
                ).all()
            )
            self._audit.record(
                session,
                actor=actor,
                action="customer.erased",
                resource_type="customer",
                resource_id=customer_id,
                subject_id=customer_id,
                detail={"receipt_id": receipt_id, "invoices_restricted": restricted},
            )
            self._events.record(
                session,
                tenant_id=actor.tenant_id,
                type="customer.erased",
                data={"customer_id": customer_id, "erased_at": customer.erased_at.isoformat()},
            )
        return ErasureReceipt(
            id=receipt_id,
            customer_id=customer_id,
            erased_at=now,
            profile_key_destroyed=shredded,
            blind_indexes_removed=indexes_removed,
            gateway_customer_deleted=gateway_deleted,
            card_summaries_removed=int(cards.rowcount or 0),  # type: ignore[attr-defined]
            invoices_restricted=restricted,
            record_key="kept, restricted to admins and auditors, until the invoice retention period ends",
        )

    def _delete_at_gateway(self, tenant_id: str, customer_id: str) -> bool:
        with self._db.read() as session:
            linked = session.get(GatewayCustomer, customer_id)
        if linked is None or linked.tenant_id != tenant_id:
            return False
        if linked.deleted_at is None:
            key = derive_idempotency_key("delete_customer", tenant_id, customer_id)
            self._payments.gateway.delete_customer(customer=linked.gateway_customer_id, idempotency_key=key)
            with self._db.transaction() as session:
                stored = session.get(GatewayCustomer, customer_id, with_for_update=True)
                if stored is not None and stored.deleted_at is None:
                    stored.deleted_at = self._clock()
                    session.add(stored)
        return True

    def _append_to_journal(self, tenant_id: str, customer_id: str, receipt: ErasureReceipt) -> None:
        if self._journal is None:
            return
        self._journal.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(
            {
                "tenant_id": tenant_id,
                "customer_id": customer_id,
                "receipt_id": receipt.id,
                "erased_at": receipt.erased_at.isoformat(),
            },
            sort_keys=True,
        )
        fd = os.open(self._journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def _project(rows: Sequence[object], kind: type[_Struct]) -> list[_Struct]:
    """Rows as export records: only the fields the record declares leave the database."""
    return [msgspec.convert(row, kind, from_attributes=True) for row in rows]


def _read_journal(path: Path) -> Iterator[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                entry = json.loads(line)
                if isinstance(entry, dict) and {"tenant_id", "customer_id", "receipt_id"} <= set(entry):
                    yield entry
