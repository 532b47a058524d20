"""Reconciliation: do the books agree with themselves and with the gateway?

Run after an incident (a crash, a restore, a gateway outage) or on a schedule, by
``veilbill reconcile``. Reads only; it changes nothing, so it is safe to run at any time, and what
it reports is for a person to resolve (most often by ``POST /v1/invoices/{id}/payments/{id}/refresh``,
which applies the gateway's answer).

Against the gateway, for every payment of the tenant(s):

- ``intent_status_differs`` / ``intent_amount_differs``: the gateway's intent says another status
  (succeeded vs not) or another amount than the local row;
- ``intent_not_recorded``: the local row has no intent id (the process died between the gateway
  call and the write of its answer) but the gateway has an intent for it (found by the
  ``veilbill_payment_id`` metadata) — money may have moved that the books do not show;
- ``intent_missing``: the row names an intent the gateway does not know;
- for an intent that succeeded, its refunds at the gateway against the payment's local refunds
  (matched by the gateway's refund id, or our ``veilbill_refund_id`` metadata):
  ``refund_not_recorded`` — money returned at the gateway that the books do not show (a refund
  made in the gateway's dashboard, or a crash between the gateway call and its record);
  ``refund_status_differs`` / ``refund_amount_differs`` — recorded otherwise than it happened;
  ``refund_missing`` — a refund the books call succeeded that the gateway does not have.
  ``gateway`` names the gateway's refund id and amount (``re_…:500``); ``refunds_unchecked`` when
  the gateway could not list them.

Refunds left pending (the request's process died, or the gateway failed, and its client never
retried with the same key):

- ``refund_pending_stale``: a refund still ``pending`` :data:`STALE_PENDING_REFUND` (15 minutes)
  or more after it was requested — a live refund request takes seconds, and pay's own
  ``ABANDONED_AFTER`` is 2 minutes. Its amount stays reserved, so nothing more of the invoice can be
  refunded until it is settled. ``local`` is ``refund_id:amount:requested_at``; ``gateway`` is what
  the gateway says of it, found by its ``veilbill_refund_id`` metadata: ``re_…:amount:status`` (it
  went through: the refund's own retry, or a ``refund.updated`` event, would record it), ``absent``
  (it never reached the gateway: nothing was given back), or ``None`` when it could not be asked
  (no gateway, or the gateway failed).

Within the books:

- ``paid_amount_differs``: an invoice's ``amount_paid`` is not the sum of its succeeded payments;
- ``refunded_amount_differs``: ``amount_refunded`` is not the sum of its succeeded refunds;
- ``refunds_exceed_payment``: refunds above what was paid;
- ``refund_without_credit_note``: a succeeded refund without its numbered credit note;
- ``status_inconsistent``: ``paid``/``refunded`` without the money, or money on an ``open`` invoice;
- ``numbering_gap`` / ``numbering_duplicate``: a series of a year that is not exactly 1..N.

Findings carry ids and statuses, never PII.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, TypeVar

from sqlmodel import Session, col, select

from billing._db import Database
from billing._models import CreditNote, GatewayCustomer, Invoice, Payment, Refund, utcnow
from tokenization import GatewayError, PaymentGateway, PaymentResult

__all__ = ["STALE_PENDING_REFUND", "Discrepancy", "Reconciler", "ReconciliationReport"]

_PAID_STATUSES = frozenset({"paid", "partially_refunded", "refunded"})
STALE_PENDING_REFUND: Final = timedelta(minutes=15)
"""A refund still pending this long after it was requested is reported (``refund_pending_stale``)."""


@dataclass(frozen=True)
class Discrepancy:
    kind: str
    tenant_id: str
    invoice_id: str | None = None
    payment_id: str | None = None
    local: str | None = None
    gateway: str | None = None


@dataclass
class ReconciliationReport:
    payments_checked: int = 0
    invoices_checked: int = 0
    gateway_checked: bool = False
    discrepancies: list[Discrepancy] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.discrepancies


class Reconciler:
    """Compares local payments with the gateway's, and the books with themselves (reads only)."""

    def __init__(
        self, db: Database, gateway: PaymentGateway | None, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._db = db
        self._gateway = gateway
        self._clock = clock

    def reconcile(
        self, *, tenant_id: str | None = None, stale_refund_after: timedelta = STALE_PENDING_REFUND
    ) -> ReconciliationReport:
        """Every finding for ``tenant_id`` (default: every tenant); a refund pending for
        ``stale_refund_after`` or more is one.

        Raises:
            ValueError: ``stale_refund_after`` is negative.
        """
        if stale_refund_after < timedelta(0):
            raise ValueError("stale_refund_after must not be negative")
        stale_before = self._clock() - stale_refund_after
        report = ReconciliationReport(gateway_checked=self._gateway is not None)
        with self._db.read() as session:
            payments = _rows(session, Payment, tenant_id)
            invoices = _rows(session, Invoice, tenant_id)
            refunds = _rows(session, Refund, tenant_id)
            credit_notes = _rows(session, CreditNote, tenant_id)
            customers = {
                row.customer_id: row.gateway_customer_id for row in _rows(session, GatewayCustomer, tenant_id)
            }
        report.payments_checked = len(payments)
        report.invoices_checked = len(invoices)
        if self._gateway is not None:
            refunds_of: dict[str, list[Refund]] = defaultdict(list)
            for refund in refunds:
                refunds_of[refund.payment_id].append(refund)
            for payment in payments:
                found = _against_gateway(
                    self._gateway, payment, customers.get(payment.customer_id), refunds_of[payment.id]
                )
                report.discrepancies.extend(found)
        intents = {payment.id: payment.gateway_intent_id for payment in payments}
        report.discrepancies.extend(
            _stale_refund(self._gateway, refund, intents.get(refund.payment_id))
            for refund in refunds
            if refund.status == "pending" and refund.created_at <= stale_before
        )
        report.discrepancies.extend(_books(invoices, payments, refunds, credit_notes))
        report.discrepancies.extend(_numbering(invoices, credit_notes))
        return report


def _against_gateway(
    gateway: PaymentGateway, payment: Payment, gateway_customer: str | None, refunds: list[Refund]
) -> list[Discrepancy]:
    found: PaymentResult | None
    try:
        if payment.gateway_intent_id is not None:
            found = gateway.retrieve_payment(intent_id=payment.gateway_intent_id)
        elif gateway_customer is not None:
            found = gateway.find_payment(
                customer=gateway_customer, metadata_key="veilbill_payment_id", metadata_value=payment.id
            )
        else:
            found = None
    except GatewayError:
        found = None
        if payment.gateway_intent_id is not None:
            return [_about(payment, "intent_missing", payment.status, None)]
    if found is None:
        return []
    if payment.gateway_intent_id is None:
        return [_about(payment, "intent_not_recorded", payment.status, found.status)]
    differences = []
    if (found.status == "succeeded") != (payment.status == "succeeded"):
        differences.append(_about(payment, "intent_status_differs", payment.status, found.status))
    if found.amount != payment.amount:
        differences.append(_about(payment, "intent_amount_differs", str(payment.amount), str(found.amount)))
    if found.status == "succeeded" or payment.status == "succeeded":
        differences.extend(_refunds_against_gateway(gateway, payment, found.intent_id, refunds))
    return differences


def _refunds_against_gateway(
    gateway: PaymentGateway, payment: Payment, intent_id: str, refunds: list[Refund]
) -> list[Discrepancy]:
    try:
        at_gateway = gateway.list_refunds(intent_id=intent_id)
    except GatewayError:
        return [_about(payment, "refunds_unchecked", None, None)]
    by_gateway_id = {refund.gateway_refund_id: refund for refund in refunds if refund.gateway_refund_id}
    by_id = {refund.id: refund for refund in refunds}
    differences = []
    matched: set[str] = set()
    for theirs in at_gateway:
        if theirs.status in ("failed", "canceled"):
            continue
        named = f"{theirs.refund_id}:{theirs.amount}"
        ours = by_gateway_id.get(theirs.refund_id) or by_id.get(theirs.metadata.get("veilbill_refund_id", ""))
        if ours is None:
            differences.append(_about(payment, "refund_not_recorded", None, named))
            continue
        matched.add(ours.id)
        if ours.status != theirs.status:
            differences.append(_about(payment, "refund_status_differs", ours.status, theirs.status))
        if ours.amount != theirs.amount:
            differences.append(_about(payment, "refund_amount_differs", str(ours.amount), named))
    differences.extend(
        _about(payment, "refund_missing", ours.status, None)
        for ours in refunds
        if ours.status == "succeeded" and ours.id not in matched
    )
    return differences


def _stale_refund(gateway: PaymentGateway | None, refund: Refund, intent_id: str | None) -> Discrepancy:
    """A refund left pending, with what the gateway says of it (see the module's docstring)."""
    theirs: str | None = None
    if gateway is not None and intent_id is not None:
        try:
            found = gateway.find_refund(
                intent_id=intent_id, metadata_key="veilbill_refund_id", metadata_value=refund.id
            )
        except GatewayError:
            pass
        else:
            theirs = "absent" if found is None else f"{found.refund_id}:{found.amount}:{found.status}"
    local = f"{refund.id}:{refund.amount}:{refund.created_at.isoformat()}"
    return Discrepancy(
        "refund_pending_stale", refund.tenant_id, refund.invoice_id, refund.payment_id, local, theirs
    )


_Row = TypeVar("_Row", Payment, Invoice, Refund, CreditNote, GatewayCustomer)


def _rows(session: Session, model: type[_Row], tenant_id: str | None) -> list[_Row]:
    query = select(model)
    if tenant_id is not None:
        query = query.where(col(model.tenant_id) == tenant_id)
    return list(session.exec(query))


def _about(payment: Payment, kind: str, local: str | None, gateway: str | None) -> Discrepancy:
    return Discrepancy(kind, payment.tenant_id, payment.invoice_id, payment.id, local, gateway)


def _books(
    invoices: list[Invoice], payments: list[Payment], refunds: list[Refund], credit_notes: list[CreditNote]
) -> list[Discrepancy]:
    paid: dict[str, int] = defaultdict(int)
    for payment in payments:
        if payment.status == "succeeded":
            paid[payment.invoice_id] += payment.amount
    refunded: dict[str, int] = defaultdict(int)
    for refund in refunds:
        if refund.status == "succeeded":
            refunded[refund.invoice_id] += refund.amount
    noted = {note.refund_id for note in credit_notes}
    found = [
        Discrepancy("refund_without_credit_note", refund.tenant_id, refund.invoice_id, refund.payment_id)
        for refund in refunds
        if refund.status == "succeeded" and refund.id not in noted
    ]
    for invoice in invoices:
        found.extend(_invoice_books(invoice, paid[invoice.id], refunded[invoice.id]))
    return found


def _invoice_books(invoice: Invoice, paid: int, refunded: int) -> list[Discrepancy]:
    def finding(kind: str, local: object, expected: object) -> Discrepancy:
        return Discrepancy(kind, invoice.tenant_id, invoice.id, None, str(local), str(expected))

    found = []
    if invoice.amount_paid != paid:
        found.append(finding("paid_amount_differs", invoice.amount_paid, paid))
    if invoice.amount_refunded != refunded:
        found.append(finding("refunded_amount_differs", invoice.amount_refunded, refunded))
    if refunded > paid:
        found.append(finding("refunds_exceed_payment", refunded, paid))
    has_money = paid > 0
    if (invoice.status in _PAID_STATUSES) != has_money:
        found.append(finding("status_inconsistent", invoice.status, "paid" if has_money else "unpaid"))
    return found


def _numbering(invoices: list[Invoice], credit_notes: list[CreditNote]) -> list[Discrepancy]:
    series: dict[tuple[str, str, int], list[int]] = defaultdict(list)
    for invoice in invoices:
        if invoice.number_seq is not None and invoice.number_year is not None:
            series[(invoice.tenant_id, invoice.series, invoice.number_year)].append(invoice.number_seq)
    for note in credit_notes:
        series[(note.tenant_id, "CN", note.number_year)].append(note.number_seq)
    found = []
    for (tenant_id, name, year), numbers in sorted(series.items()):
        label = f"{name}-{year}"
        if len(set(numbers)) != len(numbers):
            found.append(Discrepancy("numbering_duplicate", tenant_id, local=label))
        if sorted(set(numbers)) != list(range(1, len(set(numbers)) + 1)):
            found.append(Discrepancy("numbering_gap", tenant_id, local=label, gateway=None))
    return found
