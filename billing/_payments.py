"""Cards, charges, refunds and gateway events: the billing side of the payment gateway.

Card data never reaches this module: the browser gives the gateway the card, the gateway gives us a
token (``pm_…``) and a card summary. What this module guarantees, with the database's transactions
and row locks rather than process memory:

- **At most one charge per invoice.** A payment row is written (``pending``) in a transaction that
  locks the invoice *before* the gateway is called; a second payment of the same invoice is refused
  (``PaymentInProgress``) while one is unfinished. The gateway call carries an idempotency key
  derived from the caller's ``Idempotency-Key``; a retry of a request whose outcome was lost
  (timeout, crash) first looks the intent up at the gateway by our payment id (metadata) and
  adopts it, so even a gateway that ignores idempotency keys charges once.
- **Never refunding more than was paid.** A refund reserves its amount (``pending`` row) in a
  transaction that locks the invoice and counts every pending and succeeded refund.
- **Consistent states whatever the gateway answers.** A decline marks the payment failed and leaves
  the invoice open; an unavailable gateway leaves the payment ``pending`` for the retry to resolve.
- **Gateway events applied idempotently.** Each event id is stored once; applying an event that
  repeats a known state changes nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec
from sqlalchemy import func
from sqlmodel import Session, col, select

from billing._actor import Actor
from billing._audit import AuditTrail
from billing._db import Database, get_for_tenant, insert_ignore
from billing._events import EventOutbox
from billing._invoices import CREDIT_NOTE_SERIES, get_invoice, next_number, record_invoice_event
from billing._models import (
    CreditNote,
    Customer,
    Dispute,
    GatewayCustomer,
    Payment,
    PaymentMethod,
    Refund,
    WebhookEvent,
    new_id,
)
from billing.errors import (
    GatewayNotConfigured,
    InvalidStateTransition,
    NotFound,
    PaymentDeclined,
    PaymentInProgress,
    RefundExceedsPaid,
    ValidationFailed,
)
from tokenization import (
    CardDeclined,
    CardSummary,
    GatewayEvent,
    GatewayRejected,
    PaymentGateway,
    PaymentResult,
    PaymentStatus,
    derive_idempotency_key,
)

__all__ = [
    "HANDLED_EVENT_TYPES",
    "CardView",
    "PaymentService",
    "PaymentView",
    "RefundView",
    "SetupIntentView",
]

UNFINISHED = ("pending", "processing", "requires_action")
# A pending payment older than this, unknown to the gateway, was abandoned by a crashed request.
ABANDONED_AFTER = timedelta(minutes=2)
HANDLED_EVENT_TYPES = frozenset(
    {
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.canceled",
        "charge.refunded",
        "refund.updated",
        "charge.dispute.created",
        "charge.dispute.updated",
        "charge.dispute.closed",
    }
)


class CardView(msgspec.Struct, kw_only=True):
    id: str
    customer_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    funding: str | None
    country: str | None
    created_at: datetime


class SetupIntentView(msgspec.Struct, kw_only=True):
    setup_intent_id: str
    client_secret: str

    def __repr__(self) -> str:
        return f"SetupIntentView(setup_intent_id={self.setup_intent_id!r}, client_secret=<redacted>)"


class PaymentView(msgspec.Struct, kw_only=True, omit_defaults=True):
    payment_id: str
    invoice_id: str
    status: str
    amount: int
    currency: str
    client_secret: str | None = None
    decline_code: str | None = None

    def __repr__(self) -> str:
        return f"PaymentView(payment_id={self.payment_id!r}, status={self.status!r})"


class RefundView(msgspec.Struct, kw_only=True):
    id: str
    invoice_id: str
    payment_id: str
    amount: int
    currency: str
    status: str
    reason: str | None
    credit_note_number: str | None


@dataclass(frozen=True, slots=True)
class _Charge:
    payment_id: str
    gateway_customer: str
    gateway_payment_method: str
    amount: int
    currency: str
    idempotency_key: str
    resumed: bool
    settled: Payment | None = None


class PaymentService:
    def __init__(
        self,
        db: Database,
        audit: AuditTrail,
        gateway: PaymentGateway | None,
        *,
        clock: Callable[[], datetime],
        rng: Callable[[int], bytes] = os.urandom,
        events: EventOutbox | None = None,
    ) -> None:
        self._db = db
        self._audit = audit
        self._gateway = gateway
        self._clock = clock
        self._rng = rng
        self._events = events or EventOutbox(clock=clock)

    @property
    def gateway_or_none(self) -> PaymentGateway | None:
        return self._gateway

    @property
    def gateway(self) -> PaymentGateway:
        if self._gateway is None:
            raise GatewayNotConfigured()
        return self._gateway

    def gateway_customer_id(self, customer_id: str) -> str | None:
        """The gateway's id of our client, if one was created (for operators and tests)."""
        with self._db.read() as session:
            linked = session.get(GatewayCustomer, customer_id)
            return linked.gateway_customer_id if linked else None

    # --- cards ----------------------------------------------------------------------------

    def create_setup_intent(
        self, actor: Actor, customer_id: str, idempotency_key: str | None = None
    ) -> SetupIntentView:
        """A SetupIntent whose client secret lets the browser give the gateway a card.

        With the caller's ``idempotency_key``, the intent carries a key derived from it in its
        metadata (``veilbill_request``), and the gateway is first asked for an intent of the client
        with that key: the same key again — a retry whose first answer was lost when its process
        died or the gateway's answer timed out — gets the same intent, even from a gateway that
        ignores idempotency keys. That costs one listing of the client's setup intents per keyed
        request. Without a key, each call makes a new intent (the hosted page's card setup).
        """
        gateway_customer = self._gateway_customer(actor, customer_id)
        request = idempotency_key or new_id("si")
        key = derive_idempotency_key("setup_intent", actor.tenant_id, customer_id, request)
        marker = _letters_only(key)
        intent = (
            self.gateway.find_setup_intent(
                customer=gateway_customer, metadata_key="veilbill_request", metadata_value=marker
            )
            if idempotency_key is not None
            else None
        )
        if intent is None:
            intent = self.gateway.create_setup_intent(
                customer=gateway_customer,
                idempotency_key=key,
                metadata={"veilbill_request": marker, "veilbill_tenant_id": actor.tenant_id},
            )
        return SetupIntentView(setup_intent_id=intent.id, client_secret=intent.client_secret)

    def attach_payment_method(self, actor: Actor, customer_id: str, token: str) -> CardView:
        """Attach a gateway token (``pm_…``) to the client and keep its card summary."""
        if not token.startswith("pm_") or len(token) > 255:
            raise ValidationFailed("Expected a gateway payment method token (pm_…).", field="token")
        gateway_customer = self._gateway_customer(actor, customer_id)
        key = derive_idempotency_key("attach", actor.tenant_id, customer_id, token)
        card = self.gateway.attach_payment_method(
            customer=gateway_customer, payment_method=token, idempotency_key=key
        )
        return self._store_card(actor, customer_id, card)

    def list_payment_methods(self, actor: Actor, customer_id: str) -> list[CardView]:
        with self._db.read() as session:
            _customer(session, actor.tenant_id, customer_id)
            rows = session.exec(
                select(PaymentMethod)
                .where(
                    PaymentMethod.tenant_id == actor.tenant_id,
                    PaymentMethod.customer_id == customer_id,
                    col(PaymentMethod.detached_at).is_(None),
                )
                .order_by(col(PaymentMethod.created_at))
            ).all()
            return [_card_view(r) for r in rows]

    def detach_payment_method(self, actor: Actor, customer_id: str, payment_method_id: str) -> CardView:
        with self._db.read() as session:
            method = _payment_method(session, actor.tenant_id, customer_id, payment_method_id)
        if method.detached_at is None:
            key = derive_idempotency_key("detach", actor.tenant_id, method.id)
            self.gateway.detach_payment_method(
                payment_method=method.gateway_payment_method_id, idempotency_key=key
            )
            with self._db.transaction() as session:
                method = _payment_method(session, actor.tenant_id, customer_id, payment_method_id)
                method.detached_at = self._clock()
                session.add(method)
                self._audit.record(
                    session,
                    actor=actor,
                    action="payment_method.detached",
                    resource_type="payment_method",
                    resource_id=method.id,
                    subject_id=customer_id,
                )
        return _card_view(method)

    # --- charges --------------------------------------------------------------------------

    def pay_invoice(
        self, actor: Actor, invoice_id: str, payment_method_id: str, idempotency_key: str
    ) -> PaymentView:
        """Charge the invoice's amount due to a saved card.

        The same ``idempotency_key`` again gives the same outcome, without a second charge: a
        payment it left unfinished is resumed (adopting the gateway's intent, if one was made), and
        one it finished — a request whose answer was lost when its process died after the payment
        was recorded — is answered again (``succeeded``, or the decline) without asking the gateway.

        Raises:
            PaymentDeclined: the issuer declined (the payment is ``failed``, the invoice open).
            PaymentInProgress: another payment of this invoice is unfinished.
            InvalidStateTransition: the invoice is not open.
            GatewayUnavailable / GatewayTimeout: the outcome is unknown; retry with the same key.
        """
        gateway_key = derive_idempotency_key("pay", actor.tenant_id, invoice_id, idempotency_key)
        charge = self._reserve_charge(actor, invoice_id, payment_method_id, gateway_key)
        if charge.settled is not None:  # this request was carried out before; its answer was lost
            view = _payment_view(charge.settled)
            if view.status == "failed":
                raise PaymentDeclined(
                    decline_code=view.decline_code or "generic_decline", payment_id=view.payment_id
                )
            return view
        result: PaymentResult | None = None
        if charge.resumed:
            result = self.gateway.find_payment(
                customer=charge.gateway_customer,
                metadata_key="veilbill_payment_id",
                metadata_value=charge.payment_id,
            )
        if result is None:
            try:
                result = self.gateway.create_payment(
                    customer=charge.gateway_customer,
                    payment_method=charge.gateway_payment_method,
                    amount=charge.amount,
                    currency=charge.currency,
                    metadata={
                        "veilbill_payment_id": charge.payment_id,
                        "veilbill_invoice_id": invoice_id,
                        "veilbill_tenant_id": actor.tenant_id,
                    },
                    idempotency_key=charge.idempotency_key,
                )
            except CardDeclined as declined:
                self._record_decline(actor, charge.payment_id, declined)
                raise PaymentDeclined(
                    decline_code=declined.decline_code or "generic_decline", payment_id=charge.payment_id
                ) from None
        view = self._apply_payment_result(charge.payment_id, result, actor=actor)
        if result.status == "requires_action":
            view.client_secret = result.client_secret
        if view.status == "failed":
            raise PaymentDeclined(
                decline_code=view.decline_code or "generic_decline", payment_id=view.payment_id
            )
        return view

    def refresh_payment(self, actor: Actor, invoice_id: str, payment_id: str) -> PaymentView:
        """Ask the gateway for the payment's current state and apply it (after 3-D Secure)."""
        with self._db.read() as session:
            payment = _payment(session, actor.tenant_id, payment_id)
            if payment.invoice_id != invoice_id:
                raise NotFound(resource="payment")
        if payment.gateway_intent_id is None or payment.status not in UNFINISHED:
            return _payment_view(payment)
        result = self.gateway.retrieve_payment(intent_id=payment.gateway_intent_id)
        return self._apply_payment_result(payment.id, result, actor=actor)

    def list_payments(self, actor: Actor, invoice_id: str) -> tuple[list[PaymentView], list[RefundView]]:
        with self._db.read() as session:
            get_invoice(session, actor.tenant_id, invoice_id)
            payments = session.exec(
                select(Payment)
                .where(Payment.tenant_id == actor.tenant_id, Payment.invoice_id == invoice_id)
                .order_by(col(Payment.created_at))
            ).all()
            refunds = session.exec(
                select(Refund)
                .where(Refund.tenant_id == actor.tenant_id, Refund.invoice_id == invoice_id)
                .order_by(col(Refund.created_at))
            ).all()
            notes = {
                n.refund_id: n.number
                for n in session.exec(select(CreditNote).where(CreditNote.invoice_id == invoice_id))
            }
            return [_payment_view(p) for p in payments], [_refund_view(r, notes.get(r.id)) for r in refunds]

    # --- refunds --------------------------------------------------------------------------

    def refund_invoice(
        self, actor: Actor, invoice_id: str, amount: int | None, reason: str | None, idempotency_key: str
    ) -> RefundView:
        """Refund ``amount`` (default: all that is left) and issue a numbered credit note.

        Raises:
            RefundExceedsPaid: more than was paid and not already refunded or being refunded.
            InvalidStateTransition: the invoice was not paid.
        """
        gateway_key = derive_idempotency_key("refund", actor.tenant_id, invoice_id, idempotency_key)
        refund, intent_id, resumed = self._reserve_refund(actor, invoice_id, amount, reason, gateway_key)
        if resumed and refund.status != "pending":
            return self._refund_view(refund.id)
        found = (
            self.gateway.find_refund(
                intent_id=intent_id, metadata_key="veilbill_refund_id", metadata_value=refund.id
            )
            if resumed
            else None
        )
        if found is not None:
            self._finish_refund(actor, refund.id, _refund_status(found.status), found.refund_id)
            return self._refund_view(refund.id)
        try:
            result = self.gateway.refund(
                intent_id=intent_id,
                amount=refund.amount,
                reason=reason,
                metadata={"veilbill_refund_id": refund.id, "veilbill_tenant_id": actor.tenant_id},
                idempotency_key=gateway_key,
            )
        except (CardDeclined, GatewayRejected):
            self._finish_refund(actor, refund.id, "failed", None)
            raise
        self._finish_refund(actor, refund.id, _refund_status(result.status), result.refund_id)
        return self._refund_view(refund.id)

    # --- gateway events -------------------------------------------------------------------

    def record_gateway_event(self, event: GatewayEvent) -> bool:
        """Store the event once by id; True when it is new (and should be processed)."""
        with self._db.transaction() as session:
            return insert_ignore(
                session,
                WebhookEvent,
                {
                    "id": event.id,
                    "type": event.type,
                    "object_id": event.object_id,
                    "payload": json.dumps(dict(event.object), sort_keys=True, default=str)[:8000],
                    "received_at": self._clock(),
                },
            )

    def process_gateway_event(self, event: GatewayEvent) -> str:
        """Apply a stored event; returns what happened (``applied``, ``ignored``, ``unknown_object``)."""
        outcome = self._apply_event(event)
        with self._db.transaction() as session:
            stored = session.get(WebhookEvent, event.id)
            if stored is not None:
                stored.processed_at = self._clock()
                stored.outcome = outcome
                session.add(stored)
        return outcome

    def _apply_event(self, event: GatewayEvent) -> str:
        obj = event.object
        if event.type.startswith("payment_intent."):
            payment_id = self._payment_id_for_intent(event.object_id, obj)
            if payment_id is None:
                return "unknown_object"
            result = _result_from_event(event)
            self._apply_payment_result(payment_id, result, actor=None)
            return "applied"
        if event.type in {"charge.refunded", "refund.updated"}:
            return self._apply_refund_event(event)
        if event.type.startswith("charge.dispute."):
            return self._apply_dispute_event(event)
        return "ignored"

    # --- internals ------------------------------------------------------------------------

    def _gateway_customer(self, actor: Actor, customer_id: str) -> str:
        with self._db.read() as session:
            _customer(session, actor.tenant_id, customer_id)
            existing = session.get(GatewayCustomer, customer_id)
        if existing is not None:
            return existing.gateway_customer_id
        key = derive_idempotency_key("customer", actor.tenant_id, customer_id)
        created = self.gateway.create_customer(reference=customer_id, idempotency_key=key)
        with self._db.transaction() as session:
            insert_ignore(
                session,
                GatewayCustomer,
                {
                    "customer_id": customer_id,
                    "tenant_id": actor.tenant_id,
                    "gateway_customer_id": created,
                    "created_at": self._clock(),
                },
            )
            stored = session.get(GatewayCustomer, customer_id)
            assert stored is not None
            return stored.gateway_customer_id

    def _store_card(self, actor: Actor, customer_id: str, card: CardSummary) -> CardView:
        with self._db.transaction() as session:
            existing = session.exec(
                select(PaymentMethod).where(
                    PaymentMethod.tenant_id == actor.tenant_id,
                    PaymentMethod.gateway_payment_method_id == card.payment_method_id,
                )
            ).one_or_none()
            if existing is not None:
                if existing.customer_id != customer_id:
                    raise ValidationFailed("This card belongs to another client.", field="token")
                existing.detached_at = None
                session.add(existing)
                return _card_view(existing)
            method = PaymentMethod(
                id=new_id("pmt"),
                tenant_id=actor.tenant_id,
                customer_id=customer_id,
                gateway_payment_method_id=card.payment_method_id,
                brand=card.brand,
                last4=card.last4,
                exp_month=card.exp_month,
                exp_year=card.exp_year,
                fingerprint=card.fingerprint,
                funding=card.funding,
                country=card.country,
                created_at=self._clock(),
            )
            session.add(method)
            self._audit.record(
                session,
                actor=actor,
                action="payment_method.attached",
                resource_type="payment_method",
                resource_id=method.id,
                subject_id=customer_id,
                detail={"brand": card.brand},
            )
            return _card_view(method)

    def _reserve_charge(
        self, actor: Actor, invoice_id: str, payment_method_id: str, gateway_key: str
    ) -> _Charge:
        with self._db.read() as session:
            invoice = get_invoice(session, actor.tenant_id, invoice_id)
            method = _payment_method(session, actor.tenant_id, invoice.customer_id, payment_method_id)
            if method.detached_at is not None:
                raise NotFound(resource="payment_method")
        gateway_customer = self._gateway_customer(actor, invoice.customer_id)
        for _ in range(2):
            with self._db.transaction() as session:
                invoice = get_invoice(session, actor.tenant_id, invoice_id, for_update=True)
                done = session.exec(
                    select(Payment)
                    .where(
                        Payment.tenant_id == actor.tenant_id,
                        Payment.invoice_id == invoice_id,
                        Payment.gateway_idempotency_key == gateway_key,
                        col(Payment.status).in_(("succeeded", "failed")),
                    )
                    .order_by(col(Payment.created_at).desc())
                ).first()
                if done is not None:
                    return _charge(done, gateway_customer, method, resumed=True, settled=True)
                unfinished = session.exec(
                    select(Payment).where(
                        Payment.tenant_id == actor.tenant_id,
                        Payment.invoice_id == invoice_id,
                        col(Payment.status).in_(UNFINISHED),
                    )
                ).first()
                if unfinished is not None and unfinished.gateway_idempotency_key == gateway_key:
                    return _charge(unfinished, gateway_customer, method, resumed=True)
                if unfinished is None:
                    if invoice.status != "open":
                        raise InvalidStateTransition(current_status=invoice.status, action="pay")
                    payment = Payment(
                        id=new_id("pay"),
                        tenant_id=actor.tenant_id,
                        invoice_id=invoice_id,
                        customer_id=invoice.customer_id,
                        payment_method_id=method.id,
                        amount=invoice.total - invoice.amount_paid,
                        currency=invoice.currency,
                        status="pending",
                        gateway_idempotency_key=gateway_key,
                        created_at=self._clock(),
                        updated_at=self._clock(),
                    )
                    session.add(payment)
                    self._audit.record(
                        session,
                        actor=actor,
                        action="payment.started",
                        resource_type="payment",
                        resource_id=payment.id,
                        subject_id=invoice.customer_id,
                        detail={"invoice_id": invoice_id, "amount": payment.amount},
                    )
                    return _charge(payment, gateway_customer, method, resumed=False)
            # Another request's payment is unfinished: settle it with the gateway, then look again.
            if not self._settle_unfinished(unfinished, gateway_customer):
                raise PaymentInProgress(payment_id=unfinished.id)
        raise PaymentInProgress()

    def _settle_unfinished(self, payment: Payment, gateway_customer: str) -> bool:
        """Resolve a payment another request left unfinished; True when it no longer blocks."""
        if payment.status == "requires_action":
            return False
        result: PaymentResult | None
        if payment.gateway_intent_id is not None:
            result = self.gateway.retrieve_payment(intent_id=payment.gateway_intent_id)
        else:
            result = self.gateway.find_payment(
                customer=gateway_customer, metadata_key="veilbill_payment_id", metadata_value=payment.id
            )
        if result is not None:
            view = self._apply_payment_result(payment.id, result, actor=None)
            return view.status not in UNFINISHED
        if self._clock() - payment.created_at < ABANDONED_AFTER:
            return False
        with self._db.transaction() as session:
            stale = session.get(Payment, payment.id, with_for_update=True)
            if stale is not None and stale.status == "pending":
                stale.status = "canceled"
                stale.updated_at = self._clock()
                session.add(stale)
        return True

    def _record_decline(self, actor: Actor, payment_id: str, declined: CardDeclined) -> None:
        with self._db.transaction() as session:
            payment = session.get(Payment, payment_id)
            assert payment is not None
            invoice = get_invoice(session, payment.tenant_id, payment.invoice_id, for_update=True)
            payment = session.get(Payment, payment_id, with_for_update=True, populate_existing=True)
            assert payment is not None
            payment.status = "failed"
            payment.decline_code = (declined.decline_code or "generic_decline")[:60]
            if declined.intent_id and payment.gateway_intent_id is None:
                payment.gateway_intent_id = declined.intent_id
            payment.updated_at = self._clock()
            session.add(payment)
            self._audit.record(
                session,
                actor=actor,
                action="payment.failed",
                resource_type="payment",
                resource_id=payment.id,
                subject_id=payment.customer_id,
                outcome="declined",
                detail={"decline_code": payment.decline_code},
            )
            self._record_payment_event(session, payment, invoice.booking_ref)

    def _apply_payment_result(
        self, payment_id: str, result: PaymentResult, *, actor: Actor | None
    ) -> PaymentView:
        """Move the payment (and its invoice) to the state the gateway reports; idempotent."""
        with self._db.transaction() as session:
            payment = session.get(Payment, payment_id)
            assert payment is not None
            invoice = get_invoice(session, payment.tenant_id, payment.invoice_id, for_update=True)
            payment = session.get(Payment, payment_id, with_for_update=True, populate_existing=True)
            assert payment is not None
            if payment.gateway_intent_id is None:
                payment.gateway_intent_id = result.intent_id
            before = payment.status
            if before in ("succeeded", "failed", "canceled"):
                return _payment_view(payment)
            payment.status = result.status
            payment.updated_at = self._clock()
            if result.status == "failed":
                payment.decline_code = (result.decline_code or "generic_decline")[:60]
            payment.updated_at = self._clock()
            session.add(payment)
            became_paid = False
            if result.status == "succeeded":
                invoice.amount_paid += payment.amount
                if invoice.status in ("open", "uncollectible") and invoice.amount_paid >= invoice.total:
                    became_paid = True
                    invoice.status = "paid"
                    invoice.paid_at = self._clock()
                invoice.updated_at = self._clock()
                session.add(invoice)
            if before != payment.status:
                self._audit.record(
                    session,
                    actor=actor,
                    tenant_id=payment.tenant_id,
                    action=f"payment.{payment.status}",
                    resource_type="payment",
                    resource_id=payment.id,
                    subject_id=payment.customer_id,
                    detail={"invoice_id": payment.invoice_id, "source": "api" if actor else "gateway_event"},
                )
                self._record_payment_event(session, payment, invoice.booking_ref)
                if became_paid:
                    record_invoice_event(self._events, session, invoice, "invoice.paid")
            return _payment_view(payment)

    def _record_payment_event(self, session: Session, payment: Payment, booking_ref: str | None) -> None:
        """``payment.succeeded|failed|requires_action`` in the transaction that set the status."""
        if payment.status not in ("succeeded", "failed", "requires_action"):
            return
        self._events.record(
            session,
            tenant_id=payment.tenant_id,
            type=f"payment.{payment.status}",
            ordering_key=payment.invoice_id,
            data={
                "payment_id": payment.id,
                "invoice_id": payment.invoice_id,
                "customer_id": payment.customer_id,
                "booking_ref": booking_ref,
                "status": payment.status,
                "amount": payment.amount,
                "currency": payment.currency,
                "decline_code": payment.decline_code,
            },
        )

    def _reserve_refund(
        self, actor: Actor, invoice_id: str, amount: int | None, reason: str | None, gateway_key: str
    ) -> tuple[Refund, str, bool]:
        with self._db.transaction() as session:
            invoice = get_invoice(session, actor.tenant_id, invoice_id, for_update=True)
            existing = session.exec(
                select(Refund).where(
                    Refund.tenant_id == actor.tenant_id,
                    Refund.invoice_id == invoice_id,
                    Refund.gateway_idempotency_key == gateway_key,
                )
            ).first()
            if existing is not None:
                payment = session.get(Payment, existing.payment_id)
                assert payment is not None
                assert payment.gateway_intent_id is not None
                return existing, payment.gateway_intent_id, True
            if invoice.status not in ("paid", "partially_refunded"):
                raise InvalidStateTransition(current_status=invoice.status, action="refund")
            payment = session.exec(
                select(Payment)
                .where(
                    Payment.tenant_id == actor.tenant_id,
                    Payment.invoice_id == invoice_id,
                    Payment.status == "succeeded",
                )
                .order_by(col(Payment.created_at).desc())
            ).first()
            if payment is None or payment.gateway_intent_id is None:
                raise InvalidStateTransition(current_status=invoice.status, action="refund")
            reserved = session.exec(
                select(func.coalesce(func.sum(Refund.amount), 0)).where(
                    Refund.invoice_id == invoice_id, col(Refund.status).in_(("pending", "succeeded"))
                )
            ).one()
            refundable = invoice.amount_paid - int(reserved)
            wanted = refundable if amount is None else amount
            if wanted <= 0 or wanted > refundable:
                raise RefundExceedsPaid(field="amount")
            refund = Refund(
                id=new_id("re"),
                tenant_id=actor.tenant_id,
                invoice_id=invoice_id,
                payment_id=payment.id,
                amount=wanted,
                currency=invoice.currency,
                status="pending",
                reason=reason,
                gateway_idempotency_key=gateway_key,
                created_at=self._clock(),
                updated_at=self._clock(),
            )
            session.add(refund)
            return refund, payment.gateway_intent_id, False

    def _finish_refund(
        self, actor: Actor | None, refund_id: str, status: str, gateway_refund_id: str | None
    ) -> None:
        with self._db.transaction() as session:
            refund = session.get(Refund, refund_id)
            assert refund is not None
            invoice = get_invoice(session, refund.tenant_id, refund.invoice_id, for_update=True)
            refund = session.get(Refund, refund_id, with_for_update=True, populate_existing=True)
            assert refund is not None
            if gateway_refund_id and refund.gateway_refund_id is None:
                refund.gateway_refund_id = gateway_refund_id
            if refund.status in ("succeeded", "failed") or status == refund.status:
                session.add(refund)
                return
            refund.status = status
            refund.updated_at = self._clock()
            session.add(refund)
            if status == "succeeded":
                now = self._clock()
                seq = next_number(session, refund.tenant_id, CREDIT_NOTE_SERIES, now.year)
                credit_note_number = f"{CREDIT_NOTE_SERIES}-{now.year}-{seq:06d}"
                session.add(
                    CreditNote(
                        id=new_id("cn"),
                        tenant_id=refund.tenant_id,
                        invoice_id=refund.invoice_id,
                        refund_id=refund.id,
                        number=credit_note_number,
                        number_year=now.year,
                        number_seq=seq,
                        amount=refund.amount,
                        currency=refund.currency,
                        issued_at=now,
                    )
                )
                invoice.amount_refunded += refund.amount
                invoice.status = (
                    "refunded" if invoice.amount_refunded >= invoice.amount_paid else "partially_refunded"
                )
                invoice.updated_at = now
                session.add(invoice)
                self._events.record(
                    session,
                    tenant_id=refund.tenant_id,
                    type="refund.succeeded",
                    ordering_key=refund.invoice_id,
                    data={
                        "refund_id": refund.id,
                        "payment_id": refund.payment_id,
                        "invoice_id": refund.invoice_id,
                        "booking_ref": invoice.booking_ref,
                        "status": refund.status,
                        "amount": refund.amount,
                        "currency": refund.currency,
                        "credit_note_number": credit_note_number,
                    },
                )
            self._audit.record(
                session,
                actor=actor,
                tenant_id=refund.tenant_id,
                action=f"refund.{status}",
                resource_type="refund",
                resource_id=refund.id,
                detail={"invoice_id": refund.invoice_id, "amount": refund.amount},
            )

    def _refund_view(self, refund_id: str) -> RefundView:
        with self._db.read() as session:
            refund = session.get(Refund, refund_id)
            assert refund is not None
            note = session.exec(select(CreditNote).where(CreditNote.refund_id == refund_id)).one_or_none()
            return _refund_view(refund, note.number if note else None)

    def _payment_id_for_intent(self, intent_id: str | None, obj: object) -> str | None:
        with self._db.read() as session:
            if intent_id:
                found = session.exec(select(Payment.id).where(Payment.gateway_intent_id == intent_id)).first()
                if found:
                    return found
            metadata = obj.get("metadata") if isinstance(obj, dict) else None
            candidate = metadata.get("veilbill_payment_id") if isinstance(metadata, dict) else None
            if isinstance(candidate, str) and session.get(Payment, candidate) is not None:
                return candidate
        return None

    def _apply_refund_event(self, event: GatewayEvent) -> str:
        obj = event.object
        refunds: Sequence[object] = []
        if event.type == "refund.updated":
            refunds = [obj]
        else:
            nested = obj.get("refunds")
            data = nested.get("data") if isinstance(nested, dict) else None
            refunds = data if isinstance(data, list) else []
        applied = False
        for item in refunds:
            if not isinstance(item, dict):
                continue
            gateway_refund_id, status = item.get("id"), item.get("status")
            metadata = item.get("metadata") if isinstance(item.get("metadata"), dict) else {}
            with self._db.read() as session:
                refund = None
                if isinstance(gateway_refund_id, str):
                    refund = session.exec(
                        select(Refund).where(Refund.gateway_refund_id == gateway_refund_id)
                    ).first()
                ours = metadata.get("veilbill_refund_id") if isinstance(metadata, dict) else None
                if refund is None and isinstance(ours, str):
                    refund = session.get(Refund, ours)
            if refund is not None and isinstance(status, str):
                self._finish_refund(
                    None,
                    refund.id,
                    _refund_status(status),
                    gateway_refund_id if isinstance(gateway_refund_id, str) else None,
                )
                applied = True
        return "applied" if applied else "unknown_object"

    def _apply_dispute_event(self, event: GatewayEvent) -> str:
        obj = event.object
        intent_id = obj.get("payment_intent")
        payment_id = self._payment_id_for_intent(intent_id if isinstance(intent_id, str) else None, obj)
        if payment_id is None or not event.object_id:
            return "unknown_object"
        with self._db.transaction() as session:
            payment = session.get(Payment, payment_id)
            assert payment is not None
            invoice = get_invoice(session, payment.tenant_id, payment.invoice_id, for_update=True)
            amount = obj.get("amount")
            status = obj.get("status")
            reason = obj.get("reason")
            dispute = session.get(Dispute, event.object_id)
            now = self._clock()
            opened = dispute is None
            if dispute is None:
                dispute = Dispute(
                    id=event.object_id,
                    tenant_id=payment.tenant_id,
                    payment_id=payment.id,
                    amount=amount if isinstance(amount, int) else payment.amount,
                    status=status if isinstance(status, str) else "needs_response",
                    reason=reason if isinstance(reason, str) else None,
                    created_at=now,
                    updated_at=now,
                )
            elif isinstance(status, str):
                dispute.status = status
                dispute.updated_at = now
            session.add(dispute)
            self._audit.record(
                session,
                tenant_id=payment.tenant_id,
                action=f"dispute.{event.type.rsplit('.', 1)[1]}",
                resource_type="dispute",
                resource_id=dispute.id,
                subject_id=payment.customer_id,
                detail={"payment_id": payment.id, "status": dispute.status},
            )
            if opened:
                self._events.record(
                    session,
                    tenant_id=payment.tenant_id,
                    type="dispute.opened",
                    ordering_key=payment.invoice_id,
                    data={
                        "dispute_id": dispute.id,
                        "payment_id": payment.id,
                        "invoice_id": payment.invoice_id,
                        "booking_ref": invoice.booking_ref,
                        "status": dispute.status,
                        "amount": dispute.amount,
                        "currency": payment.currency,
                        "reason": dispute.reason,
                    },
                )
        return "applied"


_HEX_DIGITS_AS_LETTERS = str.maketrans("0123456789", "ghijklmnop")


def _letters_only(derived_key: str) -> str:
    """A derived key with its decimal digits spelled as letters (one to one), for gateway metadata.

    Metadata refuses anything that reads as a card number, and 48 hex digits hold a run of 13+
    decimal digits passing the Luhn check about once in a thousand keys; our ids are letters for
    the same reason.
    """
    return derived_key.translate(_HEX_DIGITS_AS_LETTERS)


def _refund_status(status: str) -> str:
    return {"succeeded": "succeeded", "failed": "failed", "canceled": "failed"}.get(status, "pending")


def _result_from_event(event: GatewayEvent) -> PaymentResult:
    obj = event.object
    statuses: dict[str, PaymentStatus] = {
        "payment_intent.succeeded": "succeeded",
        "payment_intent.payment_failed": "failed",
        "payment_intent.canceled": "canceled",
    }
    status = statuses[event.type]
    error = obj.get("last_payment_error")
    decline = error.get("decline_code") if isinstance(error, dict) else None
    amount = obj.get("amount")
    currency = obj.get("currency")
    return PaymentResult(
        intent_id=event.object_id or "",
        status=status,
        amount=amount if isinstance(amount, int) else 0,
        currency=(currency if isinstance(currency, str) else "").upper(),
        decline_code=decline if isinstance(decline, str) else None,
        metadata={},
    )


def _charge(
    payment: Payment, gateway_customer: str, method: PaymentMethod, *, resumed: bool, settled: bool = False
) -> _Charge:
    return _Charge(
        payment_id=payment.id,
        gateway_customer=gateway_customer,
        gateway_payment_method=method.gateway_payment_method_id,
        amount=payment.amount,
        currency=payment.currency,
        idempotency_key=payment.gateway_idempotency_key,
        resumed=resumed,
        settled=payment if settled else None,
    )


def _customer(session: Session, tenant_id: str, customer_id: str) -> Customer:
    return get_for_tenant(session, Customer, tenant_id, customer_id, resource="customer")


def _payment(session: Session, tenant_id: str, payment_id: str) -> Payment:
    return get_for_tenant(session, Payment, tenant_id, payment_id, resource="payment")


def _payment_method(
    session: Session, tenant_id: str, customer_id: str, payment_method_id: str
) -> PaymentMethod:
    method = session.exec(
        select(PaymentMethod).where(
            PaymentMethod.id == payment_method_id,
            PaymentMethod.tenant_id == tenant_id,
            PaymentMethod.customer_id == customer_id,
        )
    ).one_or_none()
    if method is None:
        raise NotFound(resource="payment_method")
    return method


def _card_view(method: PaymentMethod) -> CardView:
    return CardView(
        id=method.id,
        customer_id=method.customer_id,
        brand=method.brand,
        last4=method.last4,
        exp_month=method.exp_month,
        exp_year=method.exp_year,
        funding=method.funding,
        country=method.country,
        created_at=method.created_at,
    )


def _payment_view(payment: Payment) -> PaymentView:
    return PaymentView(
        payment_id=payment.id,
        invoice_id=payment.invoice_id,
        status=payment.status,
        amount=payment.amount,
        currency=payment.currency,
        decline_code=payment.decline_code,
    )


def _refund_view(refund: Refund, credit_note_number: str | None) -> RefundView:
    return RefundView(
        id=refund.id,
        invoice_id=refund.invoice_id,
        payment_id=refund.payment_id,
        amount=refund.amount,
        currency=refund.currency,
        status=refund.status,
        reason=refund.reason,
        credit_note_number=credit_note_number,
    )
