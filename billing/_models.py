"""Tables of the billing domain.

What is clear and what is sealed is a design decision recorded here and in ``docs/``: client PII
and invoice contents are stored only as AES-256-GCM ciphertext (``*_ct`` columns, see
``_envelope``); amounts, currency, tax rates, dates, status, category codes and booking references
are clear because accounting needs them and they are not client PII on their own. Email and
external reference are findable through blind indexes (``*_bidx``), never stored in clear.

Every row carries ``tenant_id`` and every query filters on it.
"""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlmodel import Field, SQLModel

__all__ = [
    "ApiKey",
    "AuditCheckpoint",
    "AuditEvent",
    "AuditHead",
    "Breach",
    "CreditNote",
    "Customer",
    "DataKeyRecord",
    "Dispute",
    "GatewayCustomer",
    "IdempotencyRecord",
    "Invoice",
    "InvoiceLine",
    "InvoiceSequence",
    "PageSession",
    "Payment",
    "PaymentMethod",
    "PaymentSession",
    "Refund",
    "Tenant",
    "WebhookEvent",
    "metadata",
    "new_id",
    "utcnow",
]

# Constraint names are fixed so that Alembic migrations name them the same on every database.
metadata: MetaData = SQLModel.metadata
metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# Letters only: an id can never contain a digit run that the card-data guard would take for a card
# number (hex ids do, about once in ten thousand). 20 letters of 24 give 91 random bits.
_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz"


def new_id(prefix: str) -> str:
    """An opaque, unguessable id such as ``cus_hkqzv…`` (20 random letters, 91 bits)."""
    return f"{prefix}_{''.join(secrets.choice(_ID_ALPHABET) for _ in range(20))}"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timestamps stored as naive UTC on every database and returned as aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are refused; pass an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def _ts(*, nullable: bool = False, index: bool = False) -> Any:
    return Field(sa_column=Column(UtcDateTime(), nullable=nullable, index=index))


def _ct() -> Any:
    """A sealed value (format v1 of ``_envelope``), or NULL when the field is absent."""
    return Field(default=None, sa_column=Column(LargeBinary, nullable=True))


def _money() -> Any:
    return Field(sa_column=Column(BigInteger, nullable=False))


def _tenant_fk() -> Any:
    return Field(sa_column=Column(String(40), ForeignKey("tenants.id"), nullable=False, index=True))


class Tenant(SQLModel, table=True):
    """One business. Its blind-index key is a ``data_keys`` row of purpose ``index``.

    The seller details printed on its invoices are the business's own, public data — clear.
    """

    __tablename__ = "tenants"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    created_at: datetime = _ts()
    legal_name: str | None = Field(default=None, max_length=200)
    address_lines: str | None = Field(default=None, max_length=1000)
    vat_id: str | None = Field(default=None, max_length=40)
    billing_email: str | None = Field(default=None, max_length=320)
    retention_country: str | None = Field(default=None, max_length=2)
    pii_read_threshold: int | None = Field(default=None)
    pii_read_window_minutes: int | None = Field(default=None)
    suspend_on_alert: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=false())
    )
    invoice_retention_years: int | None = Field(default=None)
    audit_retention_years: int | None = Field(default=None)


class ApiKey(SQLModel, table=True):
    """An API key: only its SHA-256 is stored (keys are 256-bit random, so no slow hash is needed)."""

    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = _tenant_fk()
    name: str = Field(max_length=200)
    role: str = Field(max_length=20)
    key_hash: str = Field(max_length=64, unique=True)
    key_prefix: str = Field(max_length=16)
    created_at: datetime = _ts()
    created_by: str | None = Field(default=None, max_length=40)
    revoked_at: datetime | None = _ts(nullable=True)
    expires_at: datetime | None = _ts(nullable=True)
    suspended_at: datetime | None = _ts(nullable=True)
    last_used_at: datetime | None = _ts(nullable=True)
    last_used_ip: str | None = Field(default=None, max_length=64)
    last_used_user_agent: str | None = Field(default=None, max_length=200)


class DataKeyRecord(SQLModel, table=True):
    """A data-encryption key of one subject and purpose, wrapped by a master key version.

    Purposes: ``profile`` (contact data; destroyed at erasure), ``record`` (invoice content; kept,
    restricted, until retention ends), ``index`` (a tenant's blind-index key). Shredding sets
    ``wrapped`` to NULL and ``destroyed_at``: the values sealed under it become unreadable.
    """

    __tablename__ = "data_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "subject_id", "purpose"),)

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=40, index=True)
    subject_id: str = Field(max_length=40)
    purpose: str = Field(max_length=20)
    master_key_id: str = Field(max_length=40)
    wrapped: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    created_at: datetime = _ts()
    destroyed_at: datetime | None = _ts(nullable=True)


class Customer(SQLModel, table=True):
    """A client of the business. Every PII field is sealed under the client's ``profile`` key."""

    __tablename__ = "customers"
    __table_args__ = (
        Index("ix_customers_tenant_email_bidx", "tenant_id", "email_bidx"),
        Index("ix_customers_tenant_external_ref_bidx", "tenant_id", "external_ref_bidx"),
    )

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = _tenant_fk()
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    name_ct: bytes | None = _ct()
    email_ct: bytes | None = _ct()
    phone_ct: bytes | None = _ct()
    address_ct: bytes | None = _ct()
    birth_date_ct: bytes | None = _ct()
    gender_ct: bytes | None = _ct()
    notes_ct: bytes | None = _ct()
    external_ref_ct: bytes | None = _ct()
    email_bidx: str | None = Field(default=None, max_length=64)
    external_ref_bidx: str | None = Field(default=None, max_length=64)
    erased_at: datetime | None = _ts(nullable=True)


class Invoice(SQLModel, table=True):
    """An invoice. Amounts are clear; the client snapshot and notes are sealed (``record`` key)."""

    __tablename__ = "invoices"
    __table_args__ = (
        UniqueConstraint("tenant_id", "series", "number_year", "number_seq"),
        Index("ix_invoices_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_invoices_tenant_booking_ref", "tenant_id", "booking_ref"),
    )

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = _tenant_fk()
    customer_id: str = Field(
        sa_column=Column(String(40), ForeignKey("customers.id"), nullable=False, index=True)
    )
    booking_ref: str | None = Field(default=None, max_length=100)
    currency: str = Field(max_length=3)
    series: str = Field(max_length=10)
    status: str = Field(max_length=20)
    number: str | None = Field(default=None, max_length=40)
    number_year: int | None = Field(default=None)
    number_seq: int | None = Field(default=None)
    due_date: date | None = Field(default=None)
    issue_date: date | None = Field(default=None)
    subtotal: int = _money()
    tax: int = _money()
    total: int = _money()
    notes_ct: bytes | None = _ct()
    customer_snapshot_ct: bytes | None = _ct()
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    finalized_at: datetime | None = _ts(nullable=True)
    closed_at: datetime | None = _ts(nullable=True)
    amount_paid: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    amount_refunded: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    paid_at: datetime | None = _ts(nullable=True)
    version: int = Field(default=1)


class InvoiceLine(SQLModel, table=True):
    """One line of an invoice; the description is sealed under the client's ``record`` key."""

    __tablename__ = "invoice_lines"
    __table_args__ = (UniqueConstraint("invoice_id", "position"),)

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=40, index=True)
    invoice_id: str = Field(
        sa_column=Column(String(40), ForeignKey("invoices.id", ondelete="CASCADE"), nullable=False)
    )
    position: int
    description_ct: bytes | None = _ct()
    quantity: int = Field(sa_column=Column(Integer, nullable=False))
    unit_amount: int = _money()
    tax_rate_bps: int
    category: str = Field(max_length=40)
    net: int = _money()
    tax: int = _money()
    total: int = _money()


class InvoiceSequence(SQLModel, table=True):
    """The last number used per tenant, series and year: the row lock that makes numbering gapless."""

    __tablename__ = "invoice_sequences"

    tenant_id: str = Field(primary_key=True, max_length=40)
    series: str = Field(primary_key=True, max_length=10)
    year: int = Field(primary_key=True)
    last_value: int = Field(default=0)


class AuditEvent(SQLModel, table=True):
    """One link of an audit chain (one chain per tenant, plus ``system`` for tenantless events).

    ``mac`` is HMAC-SHA256 under the audit key ``audit_key_id`` over the previous link's mac and
    this event's canonical encoding. Never holds PII: subjects are ids.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        UniqueConstraint("chain", "seq"),
        Index("ix_audit_events_actor_time", "actor_key_id", "occurred_at"),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    chain: str = Field(max_length=40)
    seq: int
    occurred_at: datetime = _ts()
    tenant_id: str | None = Field(default=None, max_length=40)
    actor_key_id: str | None = Field(default=None, max_length=40)
    actor_role: str | None = Field(default=None, max_length=20)
    action: str = Field(max_length=60)
    resource_type: str | None = Field(default=None, max_length=40)
    resource_id: str | None = Field(default=None, max_length=40)
    subject_id: str | None = Field(default=None, max_length=40)
    outcome: str = Field(default="success", max_length=20)
    request_id: str | None = Field(default=None, max_length=64)
    client_ip: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=200)
    detail: str | None = Field(default=None, max_length=2000)
    audit_key_id: str = Field(max_length=40)
    prev_mac: str = Field(max_length=64)
    mac: str = Field(max_length=64)


class AuditHead(SQLModel, table=True):
    """The newest link of each chain; appending locks this row, so links are strictly ordered."""

    __tablename__ = "audit_heads"

    chain: str = Field(primary_key=True, max_length=40)
    seq: int
    mac: str = Field(max_length=64)


class GatewayCustomer(SQLModel, table=True):
    """The gateway's customer object for one of our clients (created on first card capture).

    Only the gateway's id is kept; the gateway is sent no PII, only our customer id as metadata.
    """

    __tablename__ = "gateway_customers"

    customer_id: str = Field(sa_column=Column(String(40), ForeignKey("customers.id"), primary_key=True))
    tenant_id: str = Field(max_length=40, index=True)
    gateway_customer_id: str = Field(max_length=255, unique=True)
    created_at: datetime = _ts()
    deleted_at: datetime | None = _ts(nullable=True)


class PaymentMethod(SQLModel, table=True):
    """A saved card: the gateway token and the card summary the gateway returns — never the number.

    PCI DSS allows these fields outside the cardholder-data environment: brand, last four digits,
    expiry, the gateway's fingerprint, funding type and issuing country.
    """

    __tablename__ = "payment_methods"
    __table_args__ = (UniqueConstraint("tenant_id", "gateway_payment_method_id"),)

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=40, index=True)
    customer_id: str = Field(
        sa_column=Column(String(40), ForeignKey("customers.id"), nullable=False, index=True)
    )
    gateway_payment_method_id: str = Field(max_length=255)
    brand: str = Field(max_length=20)
    last4: str = Field(max_length=4)
    exp_month: int
    exp_year: int
    fingerprint: str | None = Field(default=None, max_length=64)
    funding: str | None = Field(default=None, max_length=20)
    country: str | None = Field(default=None, max_length=2)
    created_at: datetime = _ts()
    detached_at: datetime | None = _ts(nullable=True)


class Payment(SQLModel, table=True):
    """One attempt to charge an invoice through the gateway.

    The row is written *before* the gateway call (status ``pending``) with the gateway idempotency
    key derived from ours, so a crash or timeout leaves a record that the retry completes instead of
    charging again. At most one payment per invoice is unfinished or succeeded at any time.
    """

    __tablename__ = "payments"
    __table_args__ = (Index("ix_payments_tenant_invoice", "tenant_id", "invoice_id"),)

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=40)
    invoice_id: str = Field(sa_column=Column(String(40), ForeignKey("invoices.id"), nullable=False))
    customer_id: str = Field(max_length=40)
    payment_method_id: str | None = Field(default=None, max_length=40)
    amount: int = _money()
    currency: str = Field(max_length=3)
    status: str = Field(max_length=20)
    gateway_intent_id: str | None = Field(default=None, max_length=255, unique=True)
    gateway_idempotency_key: str = Field(max_length=64)
    decline_code: str | None = Field(default=None, max_length=60)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class Refund(SQLModel, table=True):
    """A refund of (part of) a payment; its amount is reserved while ``pending``."""

    __tablename__ = "refunds"
    __table_args__ = (Index("ix_refunds_tenant_invoice", "tenant_id", "invoice_id"),)

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=40)
    invoice_id: str = Field(sa_column=Column(String(40), ForeignKey("invoices.id"), nullable=False))
    payment_id: str = Field(sa_column=Column(String(40), ForeignKey("payments.id"), nullable=False))
    amount: int = _money()
    currency: str = Field(max_length=3)
    status: str = Field(max_length=20)
    reason: str | None = Field(default=None, max_length=40)
    gateway_refund_id: str | None = Field(default=None, max_length=255, unique=True)
    gateway_idempotency_key: str = Field(max_length=64)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class CreditNote(SQLModel, table=True):
    """A numbered credit note issued for a refund (``CN-2026-000001``), gapless like invoices."""

    __tablename__ = "credit_notes"
    __table_args__ = (UniqueConstraint("tenant_id", "number_year", "number_seq"),)

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=40, index=True)
    invoice_id: str = Field(sa_column=Column(String(40), ForeignKey("invoices.id"), nullable=False))
    refund_id: str = Field(
        sa_column=Column(String(40), ForeignKey("refunds.id"), nullable=False, unique=True)
    )
    number: str = Field(max_length=40)
    number_year: int
    number_seq: int
    amount: int = _money()
    currency: str = Field(max_length=3)
    issued_at: datetime = _ts()


class IdempotencyRecord(SQLModel, table=True):
    """The first response to a mutating request with an ``Idempotency-Key``, replayed for 24 h.

    The response body is sealed under the tenant's ``idempotency`` key (it may hold PII); the
    request is kept only as a SHA-256 fingerprint to tell a replay from a reuse of the key.
    """

    __tablename__ = "idempotency_records"

    tenant_id: str = Field(primary_key=True, max_length=40)
    key: str = Field(primary_key=True, max_length=255)
    request_fingerprint: str = Field(max_length=64)
    state: str = Field(max_length=20)
    response_status: int | None = Field(default=None)
    response_ct: bytes | None = _ct()
    created_at: datetime = _ts()
    expires_at: datetime = _ts(index=True)


class WebhookEvent(SQLModel, table=True):
    """A gateway event, stored once by its id; only the whitelisted fields are kept."""

    __tablename__ = "webhook_events"

    id: str = Field(primary_key=True, max_length=255)
    type: str = Field(max_length=80)
    object_id: str | None = Field(default=None, max_length=255)
    payload: str = Field(max_length=8000)
    received_at: datetime = _ts(index=True)
    processed_at: datetime | None = _ts(nullable=True)
    outcome: str | None = Field(default=None, max_length=40)


class PaymentSession(SQLModel, table=True):
    """A short-lived link to the hosted payment page; the token is stored as SHA-256 only."""

    __tablename__ = "payment_sessions"

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=40, index=True)
    invoice_id: str = Field(sa_column=Column(String(40), ForeignKey("invoices.id"), nullable=False))
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = _ts()
    expires_at: datetime = _ts()
    completed_at: datetime | None = _ts(nullable=True)


class PageSession(SQLModel, table=True):
    """A browser session of the server-rendered pages, opened by signing in with an API key.

    Only the SHA-256 of the cookie's random token is stored. ``expires_at`` is the absolute limit
    (``created_at`` + the maximum lifetime); the idle limit is checked against ``last_seen_at``.
    ``ended_at`` and ``end_reason`` (``signout``, ``idle``, ``lifetime``, ``key_unusable``,
    ``replaced``) record how it ended.
    """

    __tablename__ = "page_sessions"

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = _tenant_fk()
    api_key_id: str = Field(
        sa_column=Column(String(40), ForeignKey("api_keys.id"), nullable=False, index=True)
    )
    role: str = Field(max_length=20)
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = _ts()
    last_seen_at: datetime = _ts()
    expires_at: datetime = _ts()
    ended_at: datetime | None = _ts(nullable=True)
    end_reason: str | None = Field(default=None, max_length=20)


class Dispute(SQLModel, table=True):
    """A chargeback opened at the gateway against one of our payments."""

    __tablename__ = "disputes"

    id: str = Field(primary_key=True, max_length=255)
    tenant_id: str = Field(max_length=40, index=True)
    payment_id: str = Field(sa_column=Column(String(40), ForeignKey("payments.id"), nullable=False))
    amount: int = _money()
    status: str = Field(max_length=40)
    reason: str | None = Field(default=None, max_length=60)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class AuditCheckpoint(SQLModel, table=True):
    """Where a chain resumes after its oldest events were purged by retention.

    ``seq`` and ``mac`` are those of the last purged event; ``signature`` is HMAC-SHA256 under the
    audit key over chain, seq and mac, so a forged checkpoint cannot hide a rewritten chain.
    """

    __tablename__ = "audit_checkpoints"

    chain: str = Field(primary_key=True, max_length=40)
    seq: int
    mac: str = Field(max_length=64)
    audit_key_id: str = Field(max_length=40)
    signature: str = Field(max_length=64)
    created_at: datetime = _ts()


class Breach(SQLModel, table=True):
    """A personal-data breach: when it became known, and the fields a notification needs.

    GDPR Art. 33: notify the authority within 72 hours of awareness; HIPAA: individuals within 60
    days. The register holds no personal data: subjects are counted, and listed by id on request.
    """

    __tablename__ = "breaches"

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str | None = Field(default=None, max_length=40, index=True)
    aware_at: datetime = _ts()
    nature: str = Field(max_length=2000)
    categories: str | None = Field(default=None, max_length=1000)
    approx_subjects: int | None = Field(default=None)
    approx_records: int | None = Field(default=None)
    consequences: str | None = Field(default=None, max_length=2000)
    measures: str | None = Field(default=None, max_length=2000)
    suspected_key_id: str | None = Field(default=None, max_length=40)
    created_at: datetime = _ts()
    closed_at: datetime | None = _ts(nullable=True)
