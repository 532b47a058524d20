"""Tables of the billing domain.

What is clear and what is sealed is a design decision recorded here and in ``docs/``: client PII
and invoice contents are stored only as AES-256-GCM ciphertext (``*_ct`` columns, see
``_envelope``); amounts, currency, tax rates, dates, status, category codes and booking references
are clear because accounting needs them and they are not client PII on their own. Email and
external reference are findable through blind indexes (``*_bidx``), never stored in clear.

Every row carries ``tenant_id`` and every query filters on it.

Every column is annotated with its data inventory (``_inventory.Inventory``: category, purpose,
lawful basis, protection, retention) through the helpers below — ``_f(Inventory(...), max_length=…)``
for plain fields, ``_ts``/``_ct``/``_money`` for the typed ones, ``note(...)`` as a ``Column``'s
``info``. ``tests/billing/test_inventory.py`` fails on a column without one; regenerate
``docs/data-inventory.md`` with ``veilbill privacy inventory --markdown`` after changing any.
"""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime
from typing import Any, Final

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
    column,
    false,
    text,
)
from sqlmodel import Field, SQLModel

from billing._db import in_constants
from billing._inventory import Category, Inventory, LawfulBasis, Sealed, note

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
# number (a 32-digit hex id does, about once in 2,000). 20 letters of 24 give 91 random bits.
_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz"
_ID_LENGTH = 20
_ID_SPACE = len(_ID_ALPHABET) ** _ID_LENGTH


def new_id(prefix: str) -> str:
    """An opaque, unguessable id such as ``cus_hkqzv…`` (20 random letters, 91 bits).

    One draw from the system's generator, written in base 24: a draw per letter
    (``secrets.choice``) cost 20 system calls, about 50 µs an id against 8.
    """
    value = secrets.randbelow(_ID_SPACE)
    letters = []
    for _ in range(_ID_LENGTH):
        value, digit = divmod(value, len(_ID_ALPHABET))
        letters.append(_ID_ALPHABET[digit])
    return f"{prefix}_{''.join(letters)}"


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


def _f(inventory: Inventory, **kwargs: Any) -> Any:
    """A field annotated with its data inventory (see ``_inventory``)."""
    return Field(sa_column_kwargs={"info": note(inventory)}, **kwargs)


def _ts(inventory: Inventory, *, nullable: bool = False, index: bool = False) -> Any:
    return Field(sa_column=Column(UtcDateTime(), nullable=nullable, index=index, info=note(inventory)))


def _ct(inventory: Inventory) -> Any:
    """A sealed value (format v1 of ``_envelope``), or NULL when the field is absent."""
    return Field(default=None, sa_column=Column(LargeBinary, nullable=True, info=note(inventory)))


def _money(inventory: Inventory) -> Any:
    return Field(sa_column=Column(BigInteger, nullable=False, info=note(inventory)))


def _tenant_fk() -> Any:
    return Field(
        sa_column=Column(
            String(40), ForeignKey("tenants.id"), nullable=False, index=True, info=note(_TENANT_ID)
        )
    )


# --- inventory of the columns many tables share ---------------------------------------------------

_NO_PII: Final = "none (no personal data)"
_TECH: Final = "technical"
_TENANT_ID: Final = Inventory(
    _TECH,
    "the business the row belongs to (tenant isolation)",
    "contract",
    "clear",
    "life of the row",
    why="an opaque random id",
)
_CLIENT_ID: Final = Inventory(
    _TECH,
    "links the row to a client",
    "contract",
    "clear",
    "life of the row",
    why="an opaque random id, not derived from PII",
)
_INVOICE_ID: Final = Inventory(
    _TECH, "links the row to an invoice", "contract", "clear", "life of the row", why="an opaque random id"
)
_PAYMENT_ID: Final = Inventory(
    _TECH, "links the row to a payment", "contract", "clear", "life of the row", why="an opaque random id"
)


def _row_id(retention: str, basis: LawfulBasis = "contract") -> Inventory:
    return Inventory(_TECH, "row identifier", basis, "clear", retention, why="an opaque random id")


def _when(purpose: str, retention: str, basis: LawfulBasis = "contract") -> Inventory:
    return Inventory(
        _TECH, purpose, basis, "clear", retention, why="a timestamp, needed in clear to query by time"
    )


def _bookkeeping(purpose: str, retention: str, basis: LawfulBasis = "contract", why: str = "") -> Inventory:
    return Inventory(_TECH, purpose, basis, "clear", retention, why=why or "not personal data on its own")


def _amount(purpose: str, retention: str) -> Inventory:
    return Inventory(
        "financial",
        purpose,
        "legal obligation",
        "clear",
        retention,
        why="accounting and tax reporting need it; not client PII on its own",
    )


_TENANT_LIFE = "life of the tenant account"
_KEY_LIFE = "until the tenant is closed; revoked keys are kept for the audit trail"
_PROFILE = "until the client is erased (crypto-shredded: the profile key is destroyed)"
_INVOICE = "the invoice retention period of the tenant's country (FR 10, DE 8, GB 6, PL 5 years)"
_INVOICE_CONTENT = (
    "as the invoice; after erasure restricted, then shredded (record key destroyed) when retention ends"
)
_AUDIT = "audit retention of the tenant (default 6 years), then purged behind a signed checkpoint"
_PAYMENTS = "as the invoice it belongs to"


class Tenant(SQLModel, table=True):
    """One business. Its blind-index key is a ``data_keys`` row of purpose ``index``.

    The seller details printed on its invoices are the business's own, public data — clear.
    """

    __tablename__ = "tenants"

    id: str = _f(_row_id(_TENANT_LIFE), primary_key=True, max_length=40)
    name: str = _f(
        Inventory(
            "contact",
            "the business's display name",
            "contract",
            "clear",
            _TENANT_LIFE,
            why="the business's own, public name",
        ),
        max_length=200,
    )
    created_at: datetime = _ts(_when("when the tenant was created", _TENANT_LIFE))
    legal_name: str | None = _f(
        Inventory(
            "contact",
            "seller name printed on invoices",
            "legal obligation",
            "clear",
            _TENANT_LIFE,
            why="the seller's public identity, required on invoices",
        ),
        default=None,
        max_length=200,
    )
    address_lines: str | None = _f(
        Inventory(
            "contact",
            "seller address printed on invoices",
            "legal obligation",
            "clear",
            _TENANT_LIFE,
            why="the seller's public business address, required on invoices",
        ),
        default=None,
        max_length=1000,
    )
    vat_id: str | None = _f(
        Inventory(
            "financial",
            "seller VAT id printed on invoices",
            "legal obligation",
            "clear",
            _TENANT_LIFE,
            why="a public registration number, required on invoices",
        ),
        default=None,
        max_length=40,
    )
    billing_email: str | None = _f(
        Inventory(
            "contact",
            "seller contact printed on invoices",
            "contract",
            "clear",
            _TENANT_LIFE,
            why="the business's published billing address, not a client's",
        ),
        default=None,
        max_length=320,
    )
    retention_country: str | None = _f(
        _bookkeeping("which country's invoice retention applies", _TENANT_LIFE), default=None, max_length=2
    )
    pii_read_threshold: int | None = _f(
        _bookkeeping("access-monitoring threshold", _TENANT_LIFE, "legitimate interests"), default=None
    )
    pii_read_window_minutes: int | None = _f(
        _bookkeeping("access-monitoring window", _TENANT_LIFE, "legitimate interests"), default=None
    )
    suspend_on_alert: bool = Field(
        default=False,
        sa_column=Column(
            Boolean,
            nullable=False,
            server_default=false(),
            info=note(
                _bookkeeping("suspend a key that crosses the threshold", _TENANT_LIFE, "legitimate interests")
            ),
        ),
    )
    invoice_retention_years: int | None = _f(
        _bookkeeping("invoice retention policy", _TENANT_LIFE, "legal obligation"), default=None
    )
    audit_retention_years: int | None = _f(
        _bookkeeping("audit retention policy", _TENANT_LIFE, "legal obligation"), default=None
    )


class ApiKey(SQLModel, table=True):
    """An API key: only its SHA-256 is stored (keys are 256-bit random, so no slow hash is needed)."""

    __tablename__ = "api_keys"

    id: str = _f(_row_id(_KEY_LIFE, "legitimate interests"), primary_key=True, max_length=40)
    tenant_id: str = _tenant_fk()
    name: str = _f(
        _bookkeeping(
            "the key's label, chosen by an admin",
            _KEY_LIFE,
            "legitimate interests",
            why="a label such as 'front desk app'; admins are told not to put names in it",
        ),
        max_length=200,
    )
    role: str = _f(
        _bookkeeping("what the key may do (access control)", _KEY_LIFE, "legitimate interests"), max_length=20
    )
    key_hash: str = _f(
        Inventory(
            _TECH,
            "authenticates the key",
            "legitimate interests",
            "hashed",
            _KEY_LIFE,
            why="SHA-256 of a 256-bit random secret: the key cannot be recovered",
        ),
        max_length=64,
        unique=True,
    )
    key_prefix: str = _f(
        _bookkeeping(
            "lets an admin recognise a key",
            _KEY_LIFE,
            "legitimate interests",
            why="the first characters only; not enough to authenticate",
        ),
        max_length=16,
    )
    created_at: datetime = _ts(_when("key age (rotation policy)", _KEY_LIFE, "legitimate interests"))
    created_by: str | None = _f(
        _bookkeeping(
            "which key issued it (accountability)", _KEY_LIFE, "legitimate interests", why="an opaque key id"
        ),
        default=None,
        max_length=40,
    )
    revoked_at: datetime | None = _ts(_when("revocation", _KEY_LIFE, "legitimate interests"), nullable=True)
    expires_at: datetime | None = _ts(_when("expiry", _KEY_LIFE, "legitimate interests"), nullable=True)
    suspended_at: datetime | None = _ts(
        _when("suspension by access monitoring", _KEY_LIFE, "legitimate interests"), nullable=True
    )
    last_used_at: datetime | None = _ts(
        _when("detects unused keys (PCI DSS 8.2.6)", _KEY_LIFE, "legitimate interests"), nullable=True
    )
    last_used_ip: str | None = _f(
        Inventory(
            _TECH,
            "security monitoring of the key's use",
            "legitimate interests",
            "clear",
            _KEY_LIFE,
            why="the address of the calling server (a booking app's backend), not of a client",
        ),
        default=None,
        max_length=64,
    )
    last_used_user_agent: str | None = _f(
        _bookkeeping(
            "security monitoring of the key's use",
            _KEY_LIFE,
            "legitimate interests",
            why="the calling software's name",
        ),
        default=None,
        max_length=200,
    )


_DEK_LIFE = "until shredded (erasure, end of retention); the row stays, without key material"


class DataKeyRecord(SQLModel, table=True):
    """A data-encryption key of one subject and purpose, wrapped by a master key version.

    Purposes: ``profile`` (contact data; destroyed at erasure), ``record`` (invoice content; kept,
    restricted, until retention ends), ``index`` (a tenant's blind-index key). Shredding sets
    ``wrapped`` to NULL and ``destroyed_at``: the values sealed under it become unreadable.
    """

    __tablename__ = "data_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "subject_id", "purpose"),)

    id: str = _f(_row_id(_DEK_LIFE), primary_key=True, max_length=40)
    tenant_id: str = _f(_TENANT_ID, max_length=40, index=True)
    subject_id: str = _f(_CLIENT_ID, max_length=40)
    purpose: str = _f(_bookkeeping("profile, record, index or idempotency", _DEK_LIFE), max_length=20)
    master_key_id: str = _f(
        _bookkeeping("the master key version that wraps it (rotation)", _DEK_LIFE), max_length=40
    )
    wrapped: bytes | None = Field(
        default=None,
        sa_column=Column(
            LargeBinary,
            nullable=True,
            info=note(
                Inventory(
                    _TECH,
                    "the data key, wrapped",
                    "contract",
                    "wrapped key",
                    _DEK_LIFE,
                    why="AES-256-GCM under a master key kept outside the database",
                )
            ),
        ),
    )
    created_at: datetime = _ts(_when("key age", _DEK_LIFE))
    destroyed_at: datetime | None = _ts(_when("proof of crypto-shredding", _DEK_LIFE), nullable=True)


def _profile(field: str, purpose: str, category: Category = "contact") -> Inventory:
    return Inventory(category, purpose, "contract", "encrypted", _PROFILE, sealed=Sealed("profile", field))


class Customer(SQLModel, table=True):
    """A client of the business. Every PII field is sealed under the client's ``profile`` key."""

    __tablename__ = "customers"
    __table_args__ = (
        Index("ix_customers_tenant_email_bidx", "tenant_id", "email_bidx"),
        Index("ix_customers_tenant_external_ref_bidx", "tenant_id", "external_ref_bidx"),
    )

    id: str = _f(_row_id(_PROFILE), primary_key=True, max_length=40)
    tenant_id: str = _tenant_fk()
    created_at: datetime = _ts(_when("when the client was registered", _PROFILE))
    updated_at: datetime = _ts(_when("last rectification", _PROFILE))
    name_ct: bytes | None = _ct(_profile("name", "identify the client; printed on invoices"))
    email_ct: bytes | None = _ct(_profile("email", "contact the client; invoice delivery"))
    phone_ct: bytes | None = _ct(_profile("phone", "contact the client"))
    address_ct: bytes | None = _ct(_profile("address", "billing address; region in anonymized reports"))
    birth_date_ct: bytes | None = _ct(_profile("birth_date", "age band in anonymized reports"))
    gender_ct: bytes | None = _ct(_profile("gender", "quasi-identifier in anonymized reports"))
    notes_ct: bytes | None = _ct(
        _profile("notes", "the business's free-text notes (may mention care received)", "health-related")
    )
    external_ref_ct: bytes | None = _ct(_profile("external_ref", "the booking app's id of the client"))
    email_bidx: str | None = _f(
        Inventory(
            "contact",
            "look a client up by email without decrypting",
            "contract",
            "blind index",
            _PROFILE,
            why="HMAC-SHA256 under the tenant's index key; leaks equality within one tenant",
        ),
        default=None,
        max_length=64,
    )
    external_ref_bidx: str | None = _f(
        Inventory(
            "contact",
            "look a client up by external ref",
            "contract",
            "blind index",
            _PROFILE,
            why="HMAC-SHA256 under the tenant's index key; leaks equality within one tenant",
        ),
        default=None,
        max_length=64,
    )
    erased_at: datetime | None = _ts(_when("proof of erasure", _PROFILE, "legal obligation"), nullable=True)


def _record(field: str, purpose: str, category: Category = "contact", **sealed: Any) -> Inventory:
    return Inventory(
        category,
        purpose,
        "legal obligation",
        "encrypted",
        _INVOICE_CONTENT,
        sealed=Sealed("record", field, subject="customer_id", **sealed),
    )


class Invoice(SQLModel, table=True):
    """An invoice. Amounts are clear; the client snapshot and notes are sealed (``record`` key)."""

    __tablename__ = "invoices"
    __table_args__ = (
        UniqueConstraint("tenant_id", "series", "number_year", "number_seq"),
        Index("ix_invoices_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_invoices_tenant_booking_ref", "tenant_id", "booking_ref"),
    )

    id: str = _f(_row_id(_INVOICE), primary_key=True, max_length=40)
    tenant_id: str = _tenant_fk()
    customer_id: str = Field(
        sa_column=Column(
            String(40), ForeignKey("customers.id"), nullable=False, index=True, info=note(_CLIENT_ID)
        )
    )
    booking_ref: str | None = _f(
        _bookkeeping(
            "links the invoice to the booking app's booking",
            _INVOICE,
            why="the booking app's opaque id; not client PII on its own",
        ),
        default=None,
        max_length=100,
    )
    currency: str = _f(_amount("ISO 4217 currency", _INVOICE), max_length=3)
    series: str = _f(_bookkeeping("numbering series", _INVOICE, "legal obligation"), max_length=10)
    status: str = _f(_bookkeeping("draft, open, paid, void…", _INVOICE), max_length=20)
    number: str | None = _f(
        _bookkeeping("the gapless invoice number", _INVOICE, "legal obligation"), default=None, max_length=40
    )
    number_year: int | None = _f(_bookkeeping("numbering year", _INVOICE, "legal obligation"), default=None)
    number_seq: int | None = _f(
        _bookkeeping("numbering sequence", _INVOICE, "legal obligation"), default=None
    )
    due_date: date | None = _f(_amount("when payment is due", _INVOICE), default=None)
    issue_date: date | None = _f(_amount("date of issue (tax point)", _INVOICE), default=None)
    subtotal: int = _money(_amount("net total", _INVOICE))
    tax: int = _money(_amount("tax total", _INVOICE))
    total: int = _money(_amount("amount due", _INVOICE))
    notes_ct: bytes | None = _ct(_record("notes", "free-text notes on the invoice", "health-related"))
    customer_snapshot_ct: bytes | None = _ct(
        _record("customer_snapshot", "the client's name, email and address as invoiced")
    )
    created_at: datetime = _ts(_when("creation", _INVOICE))
    updated_at: datetime = _ts(_when("last change", _INVOICE))
    finalized_at: datetime | None = _ts(_when("finalization", _INVOICE, "legal obligation"), nullable=True)
    closed_at: datetime | None = _ts(_when("void or uncollectible", _INVOICE), nullable=True)
    amount_paid: int = Field(
        default=0,
        sa_column=Column(
            BigInteger, nullable=False, server_default="0", info=note(_amount("paid", _INVOICE))
        ),
    )
    amount_refunded: int = Field(
        default=0,
        sa_column=Column(
            BigInteger, nullable=False, server_default="0", info=note(_amount("refunded", _INVOICE))
        ),
    )
    paid_at: datetime | None = _ts(_when("payment", _INVOICE), nullable=True)
    version: int = _f(_bookkeeping("optimistic concurrency", _INVOICE), default=1)


class InvoiceLine(SQLModel, table=True):
    """One line of an invoice; the description is sealed under the client's ``record`` key."""

    __tablename__ = "invoice_lines"
    __table_args__ = (UniqueConstraint("invoice_id", "position"),)

    id: str = _f(_row_id(_INVOICE), primary_key=True, max_length=40)
    tenant_id: str = _f(_TENANT_ID, max_length=40, index=True)
    invoice_id: str = Field(
        sa_column=Column(
            String(40), ForeignKey("invoices.id", ondelete="CASCADE"), nullable=False, info=note(_INVOICE_ID)
        )
    )
    position: int = _f(_bookkeeping("line order", _INVOICE))
    description_ct: bytes | None = _ct(
        _record(
            "description",
            "what was sold (may reveal care received)",
            "health-related",
            subject_via=("invoice_id", "invoices", "customer_id"),
        )
    )
    quantity: int = Field(sa_column=Column(Integer, nullable=False, info=note(_amount("quantity", _INVOICE))))
    unit_amount: int = _money(_amount("unit price", _INVOICE))
    tax_rate_bps: int = _f(_amount("tax rate", _INVOICE))
    category: str = _f(
        Inventory(
            "health-related",
            "service category for reports (l-diversity)",
            "legal obligation",
            "clear",
            _INVOICE,
            why="a short code chosen by the business; reports treat it as the sensitive attribute",
        ),
        max_length=40,
    )
    net: int = _money(_amount("line net", _INVOICE))
    tax: int = _money(_amount("line tax", _INVOICE))
    total: int = _money(_amount("line total", _INVOICE))


class InvoiceSequence(SQLModel, table=True):
    """The last number used per tenant, series and year: the row lock that makes numbering gapless."""

    __tablename__ = "invoice_sequences"

    tenant_id: str = _f(_TENANT_ID, primary_key=True, max_length=40)
    series: str = _f(
        _bookkeeping("numbering series", _TENANT_LIFE, "legal obligation"), primary_key=True, max_length=10
    )
    year: int = _f(_bookkeeping("numbering year", _TENANT_LIFE, "legal obligation"), primary_key=True)
    last_value: int = _f(_bookkeeping("last number issued", _TENANT_LIFE, "legal obligation"), default=0)


# The access monitor's alert, and the rows of the partial index of alerts (the migration that
# makes the index writes the same condition).
ACCESS_ALERT: Final = "access.alert"
ACCESS_ALERT_WHERE: Final = f"action = '{ACCESS_ALERT}'"
# The audited reads of decrypted PII, which the access monitor counts, and the rows of its partial
# indexes: the condition is made by ``in_constants``, as the monitor's queries make theirs, so that
# they can use the indexes on both databases.
PII_READ_ACTIONS: Final = frozenset(
    {
        "customer.read",
        "invoice.read",
        "invoice.document_rendered",
        "invoice.restricted_read",
        "customer.exported",
    }
)
PII_READ_WHERE: Final = in_constants(column("action"), PII_READ_ACTIONS)


def _audit(purpose: str, why: str = "ids and codes only, never PII") -> Inventory:
    return Inventory(_TECH, purpose, "legal obligation", "clear", _AUDIT, why=why)


class AuditEvent(SQLModel, table=True):
    """One link of an audit chain (one chain per tenant, plus ``system`` for tenantless events).

    ``mac`` is HMAC-SHA256 under the audit key ``audit_key_id`` over the previous link's mac and
    this event's canonical encoding. Never holds PII: subjects are ids.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        UniqueConstraint("chain", "seq"),
        # The access monitor's "how many clients did this key read in the window?" (and a breach's
        # affected clients): PII reads only.
        Index(
            "ix_audit_events_actor_time",
            "actor_key_id",
            "occurred_at",
            postgresql_where=PII_READ_WHERE,
            sqlite_where=PII_READ_WHERE,
        ),
        # The access monitor's "did this key read this client in the window before?": PII reads only.
        Index(
            "ix_audit_events_actor_subject_time",
            "actor_key_id",
            "subject_id",
            "occurred_at",
            postgresql_where=PII_READ_WHERE,
            sqlite_where=PII_READ_WHERE,
        ),
        # The access monitor's "was this key already flagged in the window?": alerts only.
        Index(
            "ix_audit_events_alerts",
            "resource_id",
            "occurred_at",
            postgresql_where=text(ACCESS_ALERT_WHERE),
            sqlite_where=text(ACCESS_ALERT_WHERE),
        ),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
            info=note(_audit("row identifier")),
        ),
    )
    chain: str = _f(_audit("which chain (tenant or system)"), max_length=40)
    seq: int = _f(_audit("position in the chain"))
    occurred_at: datetime = _ts(_audit("when it happened", "needed in clear to query by time"))
    tenant_id: str | None = _f(_audit("tenant"), default=None, max_length=40)
    actor_key_id: str | None = _f(_audit("which API key acted"), default=None, max_length=40)
    actor_role: str | None = _f(_audit("the key's role"), default=None, max_length=20)
    action: str = _f(_audit("what was done"), max_length=60)
    resource_type: str | None = _f(_audit("kind of resource"), default=None, max_length=40)
    resource_id: str | None = _f(_audit("which resource (an id)"), default=None, max_length=40)
    subject_id: str | None = _f(_audit("whose data (a client id, never PII)"), default=None, max_length=40)
    outcome: str = _f(_audit("success, denied, alert…"), default="success", max_length=20)
    request_id: str | None = _f(_audit("correlates with logs"), default=None, max_length=64)
    client_ip: str | None = _f(
        _audit("where the call came from", "the calling server's address (security monitoring)"),
        default=None,
        max_length=64,
    )
    user_agent: str | None = _f(_audit("the calling software"), default=None, max_length=200)
    detail: str | None = _f(_audit("small JSON of ids, codes and counts"), default=None, max_length=2000)
    audit_key_id: str = _f(_audit("which audit key signed the link"), max_length=40)
    prev_mac: str = _f(
        Inventory(_TECH, "chains the link to the previous one", "legal obligation", "keyed mac", _AUDIT),
        max_length=64,
    )
    mac: str = _f(Inventory(_TECH, "tamper evidence", "legal obligation", "keyed mac", _AUDIT), max_length=64)


class AuditHead(SQLModel, table=True):
    """The newest link of each chain; appending locks this row, so links are strictly ordered."""

    __tablename__ = "audit_heads"

    chain: str = _f(_audit("which chain"), primary_key=True, max_length=40)
    seq: int = _f(_audit("newest position"))
    mac: str = _f(Inventory(_TECH, "newest link", "legal obligation", "keyed mac", _AUDIT), max_length=64)


def _token(purpose: str, retention: str, card: str | None = None) -> Inventory:
    return Inventory(
        "financial",
        purpose,
        "contract",
        "clear",
        retention,
        why="a gateway token: it cannot be turned back into card data outside the gateway",
        card=card,
    )


class GatewayCustomer(SQLModel, table=True):
    """The gateway's customer object for one of our clients (created on first card capture).

    Only the gateway's id is kept; the gateway is sent no PII, only our customer id as metadata.
    """

    __tablename__ = "gateway_customers"

    customer_id: str = Field(
        sa_column=Column(String(40), ForeignKey("customers.id"), primary_key=True, info=note(_CLIENT_ID))
    )
    tenant_id: str = _f(_TENANT_ID, max_length=40, index=True)
    gateway_customer_id: str = _f(
        _token("the client at the gateway (cus_…)", _PROFILE), max_length=255, unique=True
    )
    created_at: datetime = _ts(_when("creation", _PROFILE))
    deleted_at: datetime | None = _ts(_when("deleted at the gateway on erasure", _PROFILE), nullable=True)


_CARD_LIFE = "until detached, then as the payments that used it"


def _card(purpose: str, rule: str, why: str) -> Inventory:
    return Inventory("financial", purpose, "contract", "clear", _CARD_LIFE, why=why, card=rule)


class PaymentMethod(SQLModel, table=True):
    """A saved card: the gateway token and the card summary the gateway returns — never the number.

    PCI DSS allows these fields outside the cardholder-data environment: brand, last four digits,
    expiry, the gateway's fingerprint, funding type and issuing country.
    """

    __tablename__ = "payment_methods"
    __table_args__ = (UniqueConstraint("tenant_id", "gateway_payment_method_id"),)

    id: str = _f(_row_id(_CARD_LIFE), primary_key=True, max_length=40)
    tenant_id: str = _f(_TENANT_ID, max_length=40, index=True)
    customer_id: str = Field(
        sa_column=Column(
            String(40), ForeignKey("customers.id"), nullable=False, index=True, info=note(_CLIENT_ID)
        )
    )
    gateway_payment_method_id: str = _f(
        _token(
            "charge the saved card (pm_…)",
            _CARD_LIFE,
            card="a token, not a PAN: PCI DSS scope ends at the gateway (SAQ A)",
        ),
        max_length=255,
    )
    brand: str = _f(
        _card(
            "shown to the client to recognise the card",
            "not cardholder data (PCI DSS 3.2.1)",
            "the card network's name",
        ),
        max_length=20,
    )
    last4: str = _f(
        _card(
            "shown to the client to recognise the card",
            "truncated PAN, at most the last four digits (PCI DSS 3.4.1, 3.5.1)",
            "four digits cannot be turned back into a card number",
        ),
        max_length=4,
    )
    exp_month: int = _f(
        _card(
            "warn before the card expires",
            "expiry without the PAN is not protected cardholder data (PCI DSS 3.2.1)",
            "month only",
        )
    )
    exp_year: int = _f(
        _card(
            "warn before the card expires",
            "expiry without the PAN is not protected cardholder data (PCI DSS 3.2.1)",
            "year only",
        )
    )
    fingerprint: str | None = _f(
        _card(
            "recognise the same card saved twice",
            "the gateway's own identifier, not a hash we could compute or reverse (PCI DSS 3.5.1.1 "
            "applies to hashes of the PAN we make; we make none)",
            "computed by the gateway under its key",
        ),
        default=None,
        max_length=64,
    )
    funding: str | None = _f(
        _card("credit, debit or prepaid", "not cardholder data", "a category"), default=None, max_length=20
    )
    country: str | None = _f(
        _card("issuing country (tax, fraud)", "not cardholder data", "a country code"),
        default=None,
        max_length=2,
    )
    created_at: datetime = _ts(_when("saved", _CARD_LIFE))
    detached_at: datetime | None = _ts(_when("detached", _CARD_LIFE), nullable=True)


class Payment(SQLModel, table=True):
    """One attempt to charge an invoice through the gateway.

    The row is written *before* the gateway call (status ``pending``) with the gateway idempotency
    key derived from ours, so a crash or timeout leaves a record that the retry completes instead of
    charging again. At most one payment per invoice is unfinished or succeeded at any time.
    """

    __tablename__ = "payments"
    __table_args__ = (Index("ix_payments_tenant_invoice", "tenant_id", "invoice_id"),)

    id: str = _f(_row_id(_PAYMENTS), primary_key=True, max_length=40)
    tenant_id: str = _f(_TENANT_ID, max_length=40)
    invoice_id: str = Field(
        sa_column=Column(String(40), ForeignKey("invoices.id"), nullable=False, info=note(_INVOICE_ID))
    )
    customer_id: str = _f(_CLIENT_ID, max_length=40)
    payment_method_id: str | None = _f(
        _bookkeeping("which saved card was charged", _PAYMENTS, why="our id of the card summary"),
        default=None,
        max_length=40,
    )
    amount: int = _money(_amount("amount charged", _PAYMENTS))
    currency: str = _f(_amount("currency", _PAYMENTS), max_length=3)
    status: str = _f(_bookkeeping("pending, succeeded, failed…", _PAYMENTS), max_length=20)
    gateway_intent_id: str | None = _f(
        _token("the gateway's payment (pi_…)", _PAYMENTS), default=None, max_length=255, unique=True
    )
    gateway_idempotency_key: str = _f(
        _bookkeeping("makes a retried charge happen once", _PAYMENTS, why="derived from our operation id"),
        max_length=64,
    )
    decline_code: str | None = _f(
        Inventory(
            "financial",
            "why the issuer declined",
            "contract",
            "clear",
            _PAYMENTS,
            why="a gateway code such as insufficient_funds",
        ),
        default=None,
        max_length=60,
    )
    created_at: datetime = _ts(_when("attempt", _PAYMENTS))
    updated_at: datetime = _ts(_when("last change", _PAYMENTS))


class Refund(SQLModel, table=True):
    """A refund of (part of) a payment; its amount is reserved while ``pending``."""

    __tablename__ = "refunds"
    __table_args__ = (Index("ix_refunds_tenant_invoice", "tenant_id", "invoice_id"),)

    id: str = _f(_row_id(_PAYMENTS), primary_key=True, max_length=40)
    tenant_id: str = _f(_TENANT_ID, max_length=40)
    invoice_id: str = Field(
        sa_column=Column(String(40), ForeignKey("invoices.id"), nullable=False, info=note(_INVOICE_ID))
    )
    payment_id: str = Field(
        sa_column=Column(String(40), ForeignKey("payments.id"), nullable=False, info=note(_PAYMENT_ID))
    )
    amount: int = _money(_amount("amount refunded", _PAYMENTS))
    currency: str = _f(_amount("currency", _PAYMENTS), max_length=3)
    status: str = _f(_bookkeeping("pending, succeeded, failed", _PAYMENTS), max_length=20)
    reason: str | None = _f(_bookkeeping("the gateway's reason code", _PAYMENTS), default=None, max_length=40)
    gateway_refund_id: str | None = _f(
        _token("the gateway's refund (re_…)", _PAYMENTS), default=None, max_length=255, unique=True
    )
    gateway_idempotency_key: str = _f(
        _bookkeeping("makes a retried refund happen once", _PAYMENTS, why="derived from our operation id"),
        max_length=64,
    )
    created_at: datetime = _ts(_when("request", _PAYMENTS))
    updated_at: datetime = _ts(_when("last change", _PAYMENTS))


class CreditNote(SQLModel, table=True):
    """A numbered credit note issued for a refund (``CN-2026-000001``), gapless like invoices."""

    __tablename__ = "credit_notes"
    __table_args__ = (UniqueConstraint("tenant_id", "number_year", "number_seq"),)

    id: str = _f(_row_id(_INVOICE), primary_key=True, max_length=40)
    tenant_id: str = _f(_TENANT_ID, max_length=40, index=True)
    invoice_id: str = Field(
        sa_column=Column(String(40), ForeignKey("invoices.id"), nullable=False, info=note(_INVOICE_ID))
    )
    refund_id: str = Field(
        sa_column=Column(
            String(40),
            ForeignKey("refunds.id"),
            nullable=False,
            unique=True,
            info=note(_bookkeeping("the refund it documents", _INVOICE, why="an opaque random id")),
        )
    )
    number: str = _f(
        _bookkeeping("the gapless credit note number", _INVOICE, "legal obligation"), max_length=40
    )
    number_year: int = _f(_bookkeeping("numbering year", _INVOICE, "legal obligation"))
    number_seq: int = _f(_bookkeeping("numbering sequence", _INVOICE, "legal obligation"))
    amount: int = _money(_amount("amount credited", _INVOICE))
    currency: str = _f(_amount("currency", _INVOICE), max_length=3)
    issued_at: datetime = _ts(_when("date of issue", _INVOICE, "legal obligation"))


_IDEMPOTENCY = "24 hours (purged by `veilbill retention run`)"


class IdempotencyRecord(SQLModel, table=True):
    """The first response to a mutating request with an ``Idempotency-Key``, replayed for 24 h.

    The response body is sealed under the tenant's ``idempotency`` key (it may hold PII); the
    request is kept only as a SHA-256 fingerprint to tell a replay from a reuse of the key.
    """

    __tablename__ = "idempotency_records"

    tenant_id: str = _f(_TENANT_ID, primary_key=True, max_length=40)
    key: str = _f(
        _bookkeeping(
            "the caller's Idempotency-Key", _IDEMPOTENCY, why="an opaque token chosen by the booking app"
        ),
        primary_key=True,
        max_length=255,
    )
    request_fingerprint: str = _f(
        Inventory(
            _TECH,
            "tells a replay from a reuse of the key",
            "contract",
            "keyed mac",
            _IDEMPOTENCY,
            why="HMAC-SHA256 of the request, keyed from the tenant's idempotency key; request not kept",
        ),
        max_length=64,
    )
    state: str = _f(_bookkeeping("in_progress or done", _IDEMPOTENCY), max_length=20)
    response_status: int | None = _f(_bookkeeping("HTTP status replayed", _IDEMPOTENCY), default=None)
    response_ct: bytes | None = _ct(
        Inventory(
            "contact",
            "the response replayed to a retry (may hold PII)",
            "contract",
            "encrypted",
            _IDEMPOTENCY,
            sealed=Sealed("idempotency", "response", subject="tenant_id", row_key="key"),
        )
    )
    created_at: datetime = _ts(_when("first request", _IDEMPOTENCY))
    expires_at: datetime = _ts(
        _when("end of replay window (while in progress: end of the claim's lease)", _IDEMPOTENCY), index=True
    )


_WEBHOOKS = "30 days (purged by `veilbill retention run`)"


class WebhookEvent(SQLModel, table=True):
    """A gateway event, stored once by its id; only the whitelisted fields are kept."""

    __tablename__ = "webhook_events"

    id: str = _f(
        _bookkeeping("the gateway's event id (deduplication)", _WEBHOOKS), primary_key=True, max_length=255
    )
    type: str = _f(_bookkeeping("event type", _WEBHOOKS), max_length=80)
    object_id: str | None = _f(
        _token("the gateway object it is about", _WEBHOOKS), default=None, max_length=255
    )
    payload: str = _f(
        Inventory(
            "financial",
            "the whitelisted fields of the event (ids, amounts, statuses)",
            "contract",
            "clear",
            _WEBHOOKS,
            why="only whitelisted non-PII fields are kept",
        ),
        max_length=8000,
    )
    received_at: datetime = _ts(_when("arrival", _WEBHOOKS), index=True)
    processed_at: datetime | None = _ts(_when("processing", _WEBHOOKS), nullable=True)
    outcome: str | None = _f(_bookkeeping("what processing did", _WEBHOOKS), default=None, max_length=40)


_SESSIONS = "as the invoice (the link itself expires after 30 minutes)"


class PaymentSession(SQLModel, table=True):
    """A short-lived link to the hosted payment page; the token is stored as SHA-256 only."""

    __tablename__ = "payment_sessions"

    id: str = _f(_row_id(_SESSIONS), primary_key=True, max_length=40)
    tenant_id: str = _f(_TENANT_ID, max_length=40, index=True)
    invoice_id: str = Field(
        sa_column=Column(String(40), ForeignKey("invoices.id"), nullable=False, info=note(_INVOICE_ID))
    )
    token_hash: str = _f(
        Inventory(
            _TECH,
            "finds the session from the link",
            "contract",
            "hashed",
            _SESSIONS,
            why="SHA-256 of a random token; the link cannot be rebuilt",
        ),
        max_length=64,
        unique=True,
    )
    created_at: datetime = _ts(_when("issued", _SESSIONS))
    expires_at: datetime = _ts(_when("expiry", _SESSIONS))
    completed_at: datetime | None = _ts(_when("paid through the page", _SESSIONS), nullable=True)


_PAGE_SESSIONS = "until purged with the audit period; a session is unusable 8 hours after sign-in at most"


class PageSession(SQLModel, table=True):
    """A browser session of the server-rendered pages, opened by signing in with an API key.

    Only the SHA-256 of the cookie's random token is stored. ``expires_at`` is the absolute limit
    (``created_at`` + the maximum lifetime); the idle limit is checked against ``last_seen_at``.
    ``ended_at`` and ``end_reason`` (``signout``, ``idle``, ``lifetime``, ``key_unusable``,
    ``replaced``) record how it ended.
    """

    __tablename__ = "page_sessions"

    id: str = _f(_row_id(_PAGE_SESSIONS, "legitimate interests"), primary_key=True, max_length=40)
    tenant_id: str = _tenant_fk()
    api_key_id: str = Field(
        sa_column=Column(
            String(40),
            ForeignKey("api_keys.id"),
            nullable=False,
            index=True,
            info=note(_bookkeeping("the key that signed in", _PAGE_SESSIONS, "legitimate interests")),
        )
    )
    role: str = _f(
        _bookkeeping("what the session may open", _PAGE_SESSIONS, "legitimate interests"), max_length=20
    )
    token_hash: str = _f(
        Inventory(
            _TECH,
            "finds the session from its cookie",
            "legitimate interests",
            "hashed",
            _PAGE_SESSIONS,
            why="SHA-256 of a random token; the cookie cannot be rebuilt",
        ),
        max_length=64,
        unique=True,
    )
    created_at: datetime = _ts(_when("sign-in", _PAGE_SESSIONS, "legitimate interests"))
    last_seen_at: datetime = _ts(_when("idle limit", _PAGE_SESSIONS, "legitimate interests"))
    expires_at: datetime = _ts(_when("absolute limit", _PAGE_SESSIONS, "legitimate interests"))
    ended_at: datetime | None = _ts(_when("end", _PAGE_SESSIONS, "legitimate interests"), nullable=True)
    end_reason: str | None = _f(
        _bookkeeping("how it ended", _PAGE_SESSIONS, "legitimate interests"), default=None, max_length=20
    )


class Dispute(SQLModel, table=True):
    """A chargeback opened at the gateway against one of our payments."""

    __tablename__ = "disputes"

    id: str = _f(_token("the gateway's dispute (dp_…)", _PAYMENTS), primary_key=True, max_length=255)
    tenant_id: str = _f(_TENANT_ID, max_length=40, index=True)
    payment_id: str = Field(
        sa_column=Column(String(40), ForeignKey("payments.id"), nullable=False, info=note(_PAYMENT_ID))
    )
    amount: int = _money(_amount("amount disputed", _PAYMENTS))
    status: str = _f(_bookkeeping("the gateway's dispute status", _PAYMENTS), max_length=40)
    reason: str | None = _f(_bookkeeping("the gateway's reason code", _PAYMENTS), default=None, max_length=60)
    created_at: datetime = _ts(_when("opened", _PAYMENTS))
    updated_at: datetime = _ts(_when("last change", _PAYMENTS))


class AuditCheckpoint(SQLModel, table=True):
    """Where a chain resumes after its oldest events were purged by retention.

    ``seq`` and ``mac`` are those of the last purged event; ``signature`` is HMAC-SHA256 under the
    audit key over chain, seq and mac, so a forged checkpoint cannot hide a rewritten chain.
    """

    __tablename__ = "audit_checkpoints"

    chain: str = _f(_audit("which chain"), primary_key=True, max_length=40)
    seq: int = _f(_audit("last purged position"))
    mac: str = _f(
        Inventory(_TECH, "last purged link", "legal obligation", "keyed mac", _AUDIT), max_length=64
    )
    audit_key_id: str = _f(_audit("which audit key signed it"), max_length=40)
    signature: str = _f(
        Inventory(_TECH, "tamper evidence of the checkpoint", "legal obligation", "keyed mac", _AUDIT),
        max_length=64,
    )
    created_at: datetime = _ts(_audit("when the purge ran", "a timestamp"))


_BREACHES = "5 years after closure (accountability, GDPR Art. 33(5))"


def _breach(purpose: str) -> Inventory:
    return _bookkeeping(
        purpose,
        _BREACHES,
        "legal obligation",
        why="free text about the incident; the register is told to hold no personal data",
    )


class Breach(SQLModel, table=True):
    """A personal-data breach: when it became known, and the fields a notification needs.

    GDPR Art. 33: notify the authority within 72 hours of awareness; HIPAA: individuals within 60
    days. The register holds no personal data: subjects are counted, and listed by id on request.
    """

    __tablename__ = "breaches"

    id: str = _f(_row_id(_BREACHES, "legal obligation"), primary_key=True, max_length=40)
    tenant_id: str | None = _f(_TENANT_ID, default=None, max_length=40, index=True)
    aware_at: datetime = _ts(_when("starts the 72-hour deadline", _BREACHES, "legal obligation"))
    nature: str = _f(_breach("what happened"), max_length=2000)
    categories: str | None = _f(_breach("categories of data and subjects"), default=None, max_length=1000)
    approx_subjects: int | None = _f(_breach("how many subjects"), default=None)
    approx_records: int | None = _f(_breach("how many records"), default=None)
    consequences: str | None = _f(_breach("likely consequences"), default=None, max_length=2000)
    measures: str | None = _f(_breach("measures taken"), default=None, max_length=2000)
    suspected_key_id: str | None = _f(_breach("the API key suspected"), default=None, max_length=40)
    created_at: datetime = _ts(_when("recorded", _BREACHES, "legal obligation"))
    closed_at: datetime | None = _ts(_when("closed", _BREACHES, "legal obligation"), nullable=True)
