"""Invoices: drafts, lines, totals, gapless numbering and state changes.

Amounts are integer minor units (see ``_money``); totals are computed here, never taken from the
caller. Line descriptions, notes and the client snapshot are sealed under the client's ``record``
key, so they outlive an erasure of the client's profile for as long as the law keeps invoices.

States: ``draft → open`` (finalize), ``open → void``, ``open → uncollectible``,
``uncollectible → void``; payments and refunds add ``paid``, ``partially_refunded`` and
``refunded``. Only drafts can be edited; a finalized invoice is corrected by a credit note.

Numbering: ``{series}-{year}-{seq:06d}``, gapless per tenant, series and year. The number is taken
in the finalizing transaction from ``invoice_sequences`` by an ``UPDATE … RETURNING`` that locks the
row, so concurrent finalizations in any number of processes queue on that row and a rolled-back
finalization gives its number back.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Annotated, Literal

import msgspec
from sqlalchemy import bindparam, delete, update
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import Select, SelectOfScalar

from billing._actor import Actor
from billing._audit import Along, AuditTrail
from billing._customers import CustomerService
from billing._db import Database, get_for_tenant, insert_ignore, shareable
from billing._envelope import DataKey, FieldContext, open_sealed_text, seal_text
from billing._events import EventOutbox
from billing._idempotency import IdempotencyStore
from billing._keyring import Keyring
from billing._keys import SubjectKeys, locked_subject_along, open_across_a_rotation
from billing._models import Customer, DataKeyRecord, Invoice, InvoiceLine, InvoiceSequence, Tenant, new_id
from billing._money import compute_line, compute_totals, currency_exponent
from billing.errors import (
    DecryptionError,
    InvalidStateTransition,
    NotFound,
    RecordExpired,
    RecordRestricted,
    ValidationFailed,
)

__all__ = [
    "SEALED_INVOICE_COLUMNS",
    "SEALED_LINE_COLUMNS",
    "InvoiceInput",
    "InvoiceLineInput",
    "InvoiceLineView",
    "InvoicePage",
    "InvoicePatch",
    "InvoiceQuery",
    "InvoiceService",
    "InvoiceStatus",
    "InvoiceSummary",
    "InvoiceView",
    "TaxLine",
]

InvoiceStatus = Literal["draft", "open", "paid", "partially_refunded", "refunded", "void", "uncollectible"]
Description = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
Category = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")]
Series = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2,10}$")]
Currency = Annotated[str, msgspec.Meta(min_length=3, max_length=3)]
BookingRef = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Notes = Annotated[str, msgspec.Meta(max_length=2000)]
Lines = Annotated[list["InvoiceLineInput"], msgspec.Meta(max_length=200)]

MAX_PAGE = 100
# Columns sealed under the client's ``record`` key (``{name}_ct``); DEK rotation re-seals them all.
SEALED_INVOICE_COLUMNS = ("notes", "customer_snapshot")
SEALED_LINE_COLUMNS = ("description",)
# Roles that may read an erased client's invoices, stating a reason.
RESTRICTED_READERS = frozenset({"admin", "auditor"})
# Credit notes are numbered in their own gapless series; invoices may not use it.
CREDIT_NOTE_SERIES = "CN"
_TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "void": (frozenset({"open", "uncollectible"}), "void"),
    "mark_uncollectible": (frozenset({"open"}), "uncollectible"),
}


class _Masked(msgspec.Struct, forbid_unknown_fields=True):
    def __repr__(self) -> str:
        return f"{type(self).__name__}(<{len(self.__struct_fields__)} fields redacted>)"


class InvoiceLineInput(_Masked, kw_only=True):
    description: Description
    quantity: int = 1
    unit_amount: int
    tax_rate_bps: int = 0
    category: Category = "general"


class InvoiceInput(_Masked, kw_only=True):
    customer_id: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
    currency: Currency
    lines: Lines = msgspec.field(default_factory=list)
    booking_ref: BookingRef | None = None
    series: Series = "INV"
    due_date: date | None = None
    notes: Notes | None = None


class InvoicePatch(_Masked, kw_only=True):
    """Edits of a draft: fields left out are unchanged; ``lines`` replaces all lines."""

    currency: Currency | msgspec.UnsetType = msgspec.UNSET
    lines: Lines | msgspec.UnsetType = msgspec.UNSET
    booking_ref: BookingRef | msgspec.UnsetType | None = msgspec.UNSET
    series: Series | msgspec.UnsetType = msgspec.UNSET
    due_date: date | msgspec.UnsetType | None = msgspec.UNSET
    notes: Notes | msgspec.UnsetType | None = msgspec.UNSET


class InvoiceQuery(msgspec.Struct, kw_only=True, frozen=True):
    """Filters for listing; ``issued_from``/``issued_to`` bound the issue date (inclusive)."""

    customer_id: str | None = None
    booking_ref: str | None = None
    status: InvoiceStatus | None = None
    issued_from: date | None = None
    issued_to: date | None = None
    limit: int = 20
    cursor: str | None = None


class TaxLine(msgspec.Struct, kw_only=True):
    tax_rate_bps: int
    net: int
    tax: int


class InvoiceLineView(_Masked, kw_only=True):
    id: str
    position: int
    description: str
    quantity: int
    unit_amount: int
    tax_rate_bps: int
    category: str
    net: int
    tax: int
    total: int


class InvoiceSummary(msgspec.Struct, kw_only=True):
    """An invoice without its sealed content: what lists return (no PII, so not audited)."""

    id: str
    customer_id: str
    booking_ref: str | None
    status: str
    number: str | None
    currency: str
    currency_exponent: int
    series: str
    subtotal: int
    tax: int
    total: int
    issue_date: date | None
    due_date: date | None
    created_at: datetime
    finalized_at: datetime | None


class InvoiceView(InvoiceSummary, kw_only=True):
    tax_breakdown: list[TaxLine]
    lines: list[InvoiceLineView]
    customer: dict[str, object] | None
    notes: str | None
    updated_at: datetime

    def __repr__(self) -> str:
        return f"InvoiceView(id={self.id!r}, status={self.status!r}, <content redacted>)"


class InvoicePage(msgspec.Struct, kw_only=True):
    data: list[InvoiceSummary]
    has_more: bool
    next_cursor: str | None


class InvoiceService:
    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        audit: AuditTrail,
        customers: CustomerService,
        *,
        clock: Callable[[], datetime],
        rng: Callable[[int], bytes] = os.urandom,
        events: EventOutbox | None = None,
        idempotency: IdempotencyStore | None = None,
    ) -> None:
        self._db = db
        self._keyring = keyring
        self._audit = audit
        self._customers = customers
        self._clock = clock
        self._rng = rng
        self._events = events or EventOutbox(clock=clock)
        self._idempotency = idempotency

    def _answered(self, session: Session, actor: Actor, view: InvoiceView) -> InvoiceView:
        """``view``, stored as the answer of the keyed request being served (same transaction)."""
        if self._idempotency is not None:
            self._idempotency.record_outcome(session, actor.tenant_id, view)
        return view

    def create_draft(self, actor: Actor, data: InvoiceInput) -> InvoiceView:
        currency_exponent(data.currency)
        _check_series(data.series)
        totals = compute_totals((ln.quantity, ln.unit_amount, ln.tax_rate_bps) for ln in data.lines)
        now = self._clock()
        with self._db.transaction() as session:
            invoice_id = new_id("inv")
            # The subject lock (see _subject_rotation), the client's two keys and the draft's audit
            # link: one round trip on PostgreSQL, the locks taken before the chain's head. The link
            # is written before the invoice's rows, and all of them stand or fall together.
            _, subject = self._audit.record_along(
                session,
                locked_subject_along(actor.tenant_id, data.customer_id, _DRAFT_KEYS),
                actor=actor,
                action="invoice.created",
                resource_type="invoice",
                resource_id=invoice_id,
                subject_id=data.customer_id,
            )
            if subject:
                customer, key_rows = subject[0][0], [key for _, key in subject]
            else:
                # Nothing was appended: no such client in the tenant (NotFound here), or one without
                # key rows (only by tampering), whose draft then fails at its record key.
                customer = get_for_tenant(
                    session, Customer, actor.tenant_id, data.customer_id, resource="customer"
                )
                key_rows = []
            keys = self._keys(session)
            keys.adopt_all(key_rows)
            invoice = Invoice(
                id=invoice_id,
                tenant_id=actor.tenant_id,
                customer_id=data.customer_id,
                booking_ref=data.booking_ref,
                currency=data.currency,
                series=data.series,
                status="draft",
                due_date=data.due_date,
                subtotal=totals.subtotal,
                tax=totals.tax,
                total=totals.total,
                created_at=now,
                updated_at=now,
            )
            key = self._record_key(session, invoice, keys)
            invoice.notes_ct = self._seal(key, invoice, "notes", data.notes)
            snapshot = self._customers.snapshot_for_invoice(session, customer, keys)
            invoice.customer_snapshot_ct = self._seal(key, invoice, "customer_snapshot", _json(snapshot))
            session.add(invoice)
            session.flush()
            lines = self._insert_lines(session, key, invoice, data.lines)
            view = _view(
                invoice, lines, data.notes, snapshot, descriptions=[ln.description for ln in data.lines]
            )
            return self._answered(session, actor, view)

    def read(self, actor: Actor, invoice_id: str) -> InvoiceView:
        """The invoice with its decrypted content; audited as a read of the client's data.

        Raises:
            RecordRestricted: the client was erased (see :meth:`read_restricted`).
        """
        with self._db.transaction() as session:
            keys = self._keys(session)
            invoice = _get_unrestricted(session, actor.tenant_id, invoice_id, keys)
            # The read's audit link and the invoice's lines in one round trip (on PostgreSQL): the
            # link is written before the content is opened, and both stand or fall with the commit.
            _, lines = self._audit.record_along(
                session,
                Along(_lines_query(), {"lines_of": invoice.id}),
                actor=actor,
                action="invoice.read",
                resource_type="invoice",
                resource_id=invoice.id,
                subject_id=invoice.customer_id,
            )
            return self._open(session, invoice, keys, lines=lines)

    def read_restricted(self, actor: Actor, invoice_id: str, reason: str) -> InvoiceView:
        """An erased client's invoice, for an admin or auditor who states why; audited with the reason.

        The content stays readable while the client's ``record`` key is kept (the invoice retention
        period); after that it is shredded and this raises ``DecryptionError``.
        """
        if actor.role not in RESTRICTED_READERS:
            raise RecordRestricted(resource="invoice")
        reason = reason.strip()
        if not 5 <= len(reason) <= 200:
            raise ValidationFailed("State the reason for reading a restricted record.", field="reason")
        with self._db.transaction() as session:
            invoice = get_invoice(session, actor.tenant_id, invoice_id)
            view = self._open(session, invoice)
            self._audit.record(
                session,
                actor=actor,
                action="invoice.restricted_read",
                resource_type="invoice",
                resource_id=invoice.id,
                subject_id=invoice.customer_id,
                detail={"reason": reason},
            )
            return view

    def views_for_customer(self, session: Session, tenant_id: str, customer_id: str) -> list[InvoiceView]:
        """Every invoice of a client, decrypted, oldest first (in the caller's transaction)."""
        invoices = session.exec(
            select(Invoice)
            .where(Invoice.tenant_id == tenant_id, Invoice.customer_id == customer_id)
            .order_by(col(Invoice.created_at))
        ).all()
        keys = self._keys(session)
        return [self._open(session, invoice, keys) for invoice in invoices]

    def read_for_document(self, actor: Actor, invoice_id: str) -> tuple[InvoiceView, str]:
        """The decrypted invoice and the seller's name, to render a document; audited as a read."""
        with self._db.transaction() as session:
            keys = self._keys(session)
            invoice = _get_unrestricted(session, actor.tenant_id, invoice_id, keys)
            view = self._open(session, invoice, keys)
            tenant = session.get(Tenant, actor.tenant_id)
            assert tenant is not None
            self._audit.record(
                session,
                actor=actor,
                action="invoice.document_rendered",
                resource_type="invoice",
                resource_id=invoice.id,
                subject_id=invoice.customer_id,
            )
            return view, tenant.name

    def update_draft(self, actor: Actor, invoice_id: str, patch: InvoicePatch) -> InvoiceView:
        with self._db.transaction() as session:
            _, invoice = _lock_for_sealing(session, actor.tenant_id, invoice_id)
            if invoice.status != "draft":
                raise InvalidStateTransition(
                    "Only draft invoices can be edited.", current_status=invoice.status
                )
            keys = self._keys(session)
            key = self._record_key(session, invoice, keys)
            if not isinstance(patch.currency, msgspec.UnsetType):
                currency_exponent(patch.currency)
                invoice.currency = patch.currency
            if not isinstance(patch.series, msgspec.UnsetType):
                _check_series(patch.series)
                invoice.series = patch.series
            if not isinstance(patch.booking_ref, msgspec.UnsetType):
                invoice.booking_ref = patch.booking_ref
            if not isinstance(patch.due_date, msgspec.UnsetType):
                invoice.due_date = patch.due_date
            if not isinstance(patch.notes, msgspec.UnsetType):
                invoice.notes_ct = self._seal(key, invoice, "notes", patch.notes)
            if not isinstance(patch.lines, msgspec.UnsetType):
                totals = compute_totals((ln.quantity, ln.unit_amount, ln.tax_rate_bps) for ln in patch.lines)
                invoice.subtotal, invoice.tax, invoice.total = totals.subtotal, totals.tax, totals.total
                self._replace_lines(session, key, invoice, patch.lines)
            invoice.updated_at = self._clock()
            invoice.version += 1
            session.add(invoice)
            session.flush()
            self._audit.record(
                session,
                actor=actor,
                action="invoice.updated",
                resource_type="invoice",
                resource_id=invoice.id,
                subject_id=invoice.customer_id,
            )
            return self._open(session, invoice, keys)

    def finalize(self, actor: Actor, invoice_id: str) -> InvoiceView:
        """Assign the next number and open the invoice, in one transaction (with the answer of a
        keyed request: a retry after a crash gets this answer, not ``InvalidStateTransition``)."""
        with self._db.transaction() as session:
            customer, invoice = _lock_for_sealing(session, actor.tenant_id, invoice_id)
            if invoice.status != "draft":
                raise InvalidStateTransition(
                    "Only draft invoices can be finalized.", current_status=invoice.status
                )
            if not _has_lines(session, invoice.id):
                raise ValidationFailed("An invoice needs at least one line to be finalized.", field="lines")
            now = self._clock()
            year = now.year
            seq = next_number(session, invoice.tenant_id, invoice.series, year)
            invoice.number = f"{invoice.series}-{year}-{seq:06d}"
            invoice.number_year, invoice.number_seq = year, seq
            invoice.status = "open"
            invoice.issue_date = now.date()
            invoice.finalized_at = invoice.updated_at = now
            invoice.version += 1
            keys = self._keys(session)
            keys.load(invoice.tenant_id, invoice.customer_id, ("profile", "record"))
            key = self._record_key(session, invoice, keys)
            snapshot = self._customers.snapshot_for_invoice(session, customer, keys)
            invoice.customer_snapshot_ct = self._seal(key, invoice, "customer_snapshot", _json(snapshot))
            session.add(invoice)
            session.flush()
            self._audit.record(
                session,
                actor=actor,
                action="invoice.finalized",
                resource_type="invoice",
                resource_id=invoice.id,
                subject_id=invoice.customer_id,
                detail={"number": invoice.number},
            )
            record_invoice_event(self._events, session, invoice, "invoice.finalized")
            return self._answered(session, actor, self._open(session, invoice, keys))

    def void(self, actor: Actor, invoice_id: str) -> InvoiceView:
        return self._transition(actor, invoice_id, "void")

    def mark_uncollectible(self, actor: Actor, invoice_id: str) -> InvoiceView:
        return self._transition(actor, invoice_id, "mark_uncollectible")

    def list_invoices(self, actor: Actor, query: InvoiceQuery) -> InvoicePage:
        if not 1 <= query.limit <= MAX_PAGE:
            raise ValidationFailed(f"limit must be between 1 and {MAX_PAGE}.", field="limit")
        stmt = select(Invoice).where(Invoice.tenant_id == actor.tenant_id)
        if query.customer_id is not None:
            stmt = stmt.where(Invoice.customer_id == query.customer_id)
        if query.booking_ref is not None:
            stmt = stmt.where(Invoice.booking_ref == query.booking_ref)
        if query.status is not None:
            stmt = stmt.where(Invoice.status == query.status)
        if query.issued_from is not None:
            stmt = stmt.where(Invoice.issue_date >= query.issued_from)  # type: ignore[operator]
        if query.issued_to is not None:
            stmt = stmt.where(Invoice.issue_date <= query.issued_to)  # type: ignore[operator]
        if query.cursor is not None:
            created, last_id = _decode_cursor(query.cursor)
            stmt = stmt.where(
                (Invoice.created_at < created) | ((Invoice.created_at == created) & (Invoice.id < last_id))
            )
        stmt = stmt.order_by(Invoice.created_at.desc(), Invoice.id.desc()).limit(query.limit + 1)  # type: ignore[attr-defined]
        with self._db.read() as session:
            rows = list(session.exec(stmt))
        has_more = len(rows) > query.limit
        rows = rows[: query.limit]
        return InvoicePage(
            data=[_summary(r) for r in rows],
            has_more=has_more,
            next_cursor=_encode_cursor(rows[-1]) if has_more else None,
        )

    def _transition(self, actor: Actor, invoice_id: str, action: str) -> InvoiceView:
        allowed, target = _TRANSITIONS[action]
        with self._db.transaction() as session:
            invoice = get_invoice(session, actor.tenant_id, invoice_id, for_update=True)
            if invoice.status not in allowed:
                raise InvalidStateTransition(current_status=invoice.status, action=action)
            invoice.status = target
            invoice.closed_at = invoice.updated_at = self._clock()
            invoice.version += 1
            session.add(invoice)
            session.flush()
            self._audit.record(
                session,
                actor=actor,
                action=f"invoice.{target}",
                resource_type="invoice",
                resource_id=invoice.id,
                subject_id=invoice.customer_id,
            )
            event_type = "invoice.voided" if target == "void" else f"invoice.{target}"
            record_invoice_event(self._events, session, invoice, event_type)
            return self._answered(session, actor, self._open(session, invoice))

    def _keys(self, session: Session) -> SubjectKeys:
        return SubjectKeys(session, self._keyring, clock=self._clock, rng=self._rng)

    def _record_key(self, session: Session, invoice: Invoice, keys: SubjectKeys | None = None) -> DataKey:
        """The client's ``record`` key (from ``keys``, the caller's unit, when given).

        Raises:
            RecordExpired: the key was shredded at the end of the retention period.
            DecryptionError: the key is missing or does not unwrap.
        """
        try:
            return (keys or self._keys(session)).get(invoice.tenant_id, invoice.customer_id, "record")
        except DecryptionError:
            # Only on this failure path: was it shredded (expected) rather than broken?
            destroyed = session.exec(
                select(DataKeyRecord.destroyed_at).where(
                    DataKeyRecord.tenant_id == invoice.tenant_id,
                    DataKeyRecord.subject_id == invoice.customer_id,
                    DataKeyRecord.purpose == "record",
                )
            ).one_or_none()
            if destroyed is not None:
                raise RecordExpired(resource="invoice") from None
            raise

    def _seal(self, key: DataKey, invoice: Invoice, column: str, text: str | None) -> bytes | None:
        if text is None:
            return None
        return seal_text(
            key, text, FieldContext(invoice.tenant_id, "invoices", column, invoice.id), rng=self._rng
        )

    def _replace_lines(
        self, session: Session, key: DataKey, invoice: Invoice, lines: Sequence[InvoiceLineInput]
    ) -> list[InvoiceLine]:
        session.execute(delete(InvoiceLine).where(InvoiceLine.invoice_id == invoice.id))  # type: ignore[arg-type]
        return self._insert_lines(session, key, invoice, lines)

    def _insert_lines(
        self, session: Session, key: DataKey, invoice: Invoice, lines: Sequence[InvoiceLineInput]
    ) -> list[InvoiceLine]:
        """Seal and insert ``lines`` (the invoice has none yet)."""
        rows = []
        for position, line in enumerate(lines, start=1):
            amounts = compute_line(line.quantity, line.unit_amount, line.tax_rate_bps)
            row = InvoiceLine(
                id=new_id("il"),
                tenant_id=invoice.tenant_id,
                invoice_id=invoice.id,
                position=position,
                quantity=line.quantity,
                unit_amount=line.unit_amount,
                tax_rate_bps=line.tax_rate_bps,
                category=line.category,
                net=amounts.net,
                tax=amounts.tax,
                total=amounts.total,
            )
            row.description_ct = seal_text(
                key,
                line.description,
                FieldContext(invoice.tenant_id, "invoice_lines", "description", row.id),
                rng=self._rng,
            )
            session.add(row)
            rows.append(row)
        session.flush()
        return rows

    def _open(
        self,
        session: Session,
        invoice: Invoice,
        keys: SubjectKeys | None = None,
        *,
        lines: Sequence[InvoiceLine] | None = None,
    ) -> InvoiceView:
        """The invoice decrypted, with its ``lines`` (read here if not given; read again after a
        reload)."""

        def open_values(reloaded: bool) -> InvoiceView:
            # After a reload the key is looked up afresh: ``keys`` caches the one read before.
            key = self._record_key(session, invoice, None if reloaded else keys)
            rows: Sequence[InvoiceLine]
            if lines is not None and not reloaded:
                rows = sorted(lines, key=_position)
            else:
                query = _lines_query()
                if reloaded:  # lines already in the session are refreshed from the database too
                    query = query.execution_options(populate_existing=True)
                rows = list(session.exec(query, params={"lines_of": invoice.id}))
            descriptions = [
                open_sealed_text(
                    key,
                    ln.description_ct or b"",
                    FieldContext(invoice.tenant_id, "invoice_lines", "description", ln.id),
                )
                for ln in rows
            ]
            notes = self._open_column(key, invoice, "notes", invoice.notes_ct)
            snapshot_json = self._open_column(key, invoice, "customer_snapshot", invoice.customer_snapshot_ct)
            snapshot = msgspec.json.decode(snapshot_json) if snapshot_json else None
            return _view(invoice, rows, notes, snapshot, descriptions=descriptions)

        return open_across_a_rotation(open_values, lambda: session.refresh(invoice))

    def _open_column(self, key: DataKey, invoice: Invoice, column: str, sealed: bytes | None) -> str | None:
        if sealed is None:
            return None
        return open_sealed_text(key, sealed, FieldContext(invoice.tenant_id, "invoices", column, invoice.id))


def record_invoice_event(events: EventOutbox, session: Session, invoice: Invoice, event_type: str) -> None:
    """Append an ``invoice.*`` event (ids, amounts, status, booking ref) in ``session``'s transaction."""
    events.record(
        session,
        tenant_id=invoice.tenant_id,
        type=event_type,
        ordering_key=invoice.id,
        data={
            "invoice_id": invoice.id,
            "customer_id": invoice.customer_id,
            "booking_ref": invoice.booking_ref,
            "number": invoice.number,
            "status": invoice.status,
            "currency": invoice.currency,
            "total": invoice.total,
            "amount_paid": invoice.amount_paid,
            "amount_refunded": invoice.amount_refunded,
            "issue_date": invoice.issue_date.isoformat() if invoice.issue_date else None,
            "due_date": invoice.due_date.isoformat() if invoice.due_date else None,
        },
    )


def next_number(session: Session, tenant_id: str, series: str, year: int) -> int:
    insert_ignore(
        session, InvoiceSequence, {"tenant_id": tenant_id, "series": series, "year": year, "last_value": 0}
    )
    result = session.execute(
        update(InvoiceSequence)
        .where(
            InvoiceSequence.tenant_id == tenant_id,  # type: ignore[arg-type]
            InvoiceSequence.series == series,  # type: ignore[arg-type]
            InvoiceSequence.year == year,  # type: ignore[arg-type]
        )
        .values(last_value=InvoiceSequence.last_value + 1)
        .returning(col(InvoiceSequence.last_value))
    )
    return int(result.scalar_one())


def _lock_for_sealing(session: Session, tenant_id: str, invoice_id: str) -> tuple[Customer, Invoice]:
    """The client locked ``FOR SHARE`` and then the invoice locked ``FOR UPDATE``.

    The client's row is the subject lock that DEK rotation takes ``FOR UPDATE`` before it re-seals
    anything; taking it first (never after the invoice's lock) means a draft edit or a finalization
    never seals under a record key being replaced, and the two never deadlock.
    """
    customer_id = session.exec(
        select(Invoice.customer_id).where(Invoice.id == invoice_id, Invoice.tenant_id == tenant_id)
    ).one_or_none()
    if customer_id is None:
        raise NotFound(resource="invoice")
    customer = get_for_tenant(session, Customer, tenant_id, customer_id, resource="customer", for_share=True)
    return customer, get_invoice(session, tenant_id, invoice_id, for_update=True)


def _get_unrestricted(session: Session, tenant_id: str, invoice_id: str, keys: SubjectKeys) -> Invoice:
    """The invoice, for reading: one query brings it with its client's erasure mark and its
    client's ``record`` key, which is unwrapped into ``keys`` (a shredded or missing key is left
    for ``_record_key`` to report).

    Raises:
        NotFound: no such invoice in this tenant.
        RecordRestricted: its client was erased (see :meth:`InvoiceService.read_restricted`).
    """
    row = session.exec(
        _unrestricted_query(), params={"invoice_id": invoice_id, "tenant_id": tenant_id}
    ).one_or_none()
    if row is None:
        raise NotFound(resource="invoice")
    invoice, erased_at, record_key = row
    if erased_at is not None:
        raise RecordRestricted(resource="invoice")
    if record_key is not None:
        keys.adopt(record_key)
    return invoice


@functools.cache
def _unrestricted_query() -> Select[Invoice, datetime | None, DataKeyRecord]:
    """``_get_unrestricted``'s query, built once with bound parameters: a join of three tables
    costs about 0.1 ms to build, on every read of an invoice (measured against the plaintext
    benchmark's one-table query, docs/benchmarks.md)."""
    return shareable(
        select(Invoice, Customer.erased_at, DataKeyRecord)
        .join(Customer, col(Customer.id) == col(Invoice.customer_id))
        .outerjoin(
            DataKeyRecord,
            (col(DataKeyRecord.tenant_id) == col(Invoice.tenant_id))
            & (col(DataKeyRecord.subject_id) == col(Invoice.customer_id))
            & (col(DataKeyRecord.purpose) == "record"),
        )
        .where(col(Invoice.id) == bindparam("invoice_id"), col(Invoice.tenant_id) == bindparam("tenant_id"))
    )


@functools.cache
def _lines_query() -> SelectOfScalar[InvoiceLine]:
    """An invoice's lines in order (``lines_of``: the invoice's id), built once."""
    return shareable(
        select(InvoiceLine)
        .where(col(InvoiceLine.invoice_id) == bindparam("lines_of"))
        .order_by(col(InvoiceLine.position))
    )


def _position(line: InvoiceLine) -> int:
    return line.position


_DRAFT_KEYS = ("profile", "record")  # the client snapshot is opened with one, sealed with the other


def _check_series(series: str) -> None:
    if series == CREDIT_NOTE_SERIES:
        raise ValidationFailed("The series CN is reserved for credit notes.", field="series")


def get_invoice(session: Session, tenant_id: str, invoice_id: str, *, for_update: bool = False) -> Invoice:
    return get_for_tenant(session, Invoice, tenant_id, invoice_id, resource="invoice", for_update=for_update)


def _has_lines(session: Session, invoice_id: str) -> bool:
    return (
        session.exec(select(InvoiceLine.id).where(InvoiceLine.invoice_id == invoice_id).limit(1)).first()
        is not None
    )


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()


def _encode_cursor(invoice: Invoice) -> str:
    # base32 (letters and 2-7), not base64: a cursor travels in the query string, which the
    # card-data guard scans, and base32 text practically never holds a 13-digit run.
    raw = f"{invoice.created_at.isoformat()}|{invoice.id}".encode()
    return base64.b32encode(raw).decode().rstrip("=").lower()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.b32decode(cursor.upper() + "=" * (-len(cursor) % 8)).decode()
        created, invoice_id = raw.split("|", 1)
        parsed = datetime.fromisoformat(created)
        if parsed.tzinfo is None or not invoice_id.startswith("inv_"):
            raise ValueError
        return parsed, invoice_id
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise ValidationFailed("The cursor is not one this service issued.", field="cursor") from None


def _summary(invoice: Invoice) -> InvoiceSummary:
    return InvoiceSummary(
        id=invoice.id,
        customer_id=invoice.customer_id,
        booking_ref=invoice.booking_ref,
        status=invoice.status,
        number=invoice.number,
        currency=invoice.currency,
        currency_exponent=currency_exponent(invoice.currency),
        series=invoice.series,
        subtotal=invoice.subtotal,
        tax=invoice.tax,
        total=invoice.total,
        issue_date=invoice.issue_date,
        due_date=invoice.due_date,
        created_at=invoice.created_at,
        finalized_at=invoice.finalized_at,
    )


def _view(
    invoice: Invoice,
    lines: Sequence[InvoiceLine],
    notes: str | None,
    snapshot: dict[str, object] | None,
    *,
    descriptions: Sequence[str],
) -> InvoiceView:
    totals = compute_totals((ln.quantity, ln.unit_amount, ln.tax_rate_bps) for ln in lines)
    summary = msgspec.structs.asdict(_summary(invoice))
    return InvoiceView(
        **summary,
        tax_breakdown=[TaxLine(tax_rate_bps=t.tax_rate_bps, net=t.net, tax=t.tax) for t in totals.breakdown],
        lines=[
            InvoiceLineView(
                id=ln.id,
                position=ln.position,
                description=text,
                quantity=ln.quantity,
                unit_amount=ln.unit_amount,
                tax_rate_bps=ln.tax_rate_bps,
                category=ln.category,
                net=ln.net,
                tax=ln.tax,
                total=ln.total,
            )
            for ln, text in zip(lines, descriptions, strict=True)
        ],
        customer=snapshot,
        notes=notes,
        updated_at=invoice.updated_at,
    )
