"""Hosted payment sessions: a short-lived link through which the client pays one invoice.

The link carries a random token (200 bits, letters only — it travels in a URL path, which the
card-data guard scans, so it must never contain a digit run). Only its SHA-256 is stored, with the
invoice and an expiry (30 minutes). The page behind it acts as the ``payer`` of that one invoice:
it can read the amount and the business's name, start a card setup, and pay — nothing else.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec
from sqlmodel import col, select

from billing._actor import Actor
from billing._audit import AuditTrail
from billing._db import Database
from billing._idempotency import IdempotencyStore
from billing._models import Invoice, Payment, PaymentSession, Tenant, new_id
from billing._money import currency_exponent
from billing._payments import UNFINISHED, PaymentService, PaymentView, SetupIntentView
from billing.errors import InvalidStateTransition, NotFound, PaymentSessionInvalid

__all__ = ["SESSION_TTL", "HostedInvoice", "IssuedPaymentSession", "PaymentSessionService"]

SESSION_TTL = timedelta(minutes=30)
REFRESH_INTERVAL = timedelta(seconds=2)
_TOKEN_ALPHABET = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ"  # noqa: S105 - an alphabet, not a secret
_TOKEN_LENGTH = 36


class IssuedPaymentSession(msgspec.Struct, kw_only=True):
    id: str
    url: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"IssuedPaymentSession(id={self.id!r}, url=<redacted>)"


class HostedInvoice(msgspec.Struct, kw_only=True):
    """What the hosted page shows: no client data beyond what the payer already knows."""

    business_name: str
    invoice_number: str | None
    amount_due: int
    currency: str
    currency_exponent: int
    status: str
    payment_status: str | None


@dataclass(frozen=True, slots=True)
class _Session:
    id: str
    tenant_id: str
    invoice_id: str
    customer_id: str

    @property
    def actor(self) -> Actor:
        return Actor(tenant_id=self.tenant_id, role="payer", key_id=None, request_id=None)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class PaymentSessionService:
    def __init__(
        self,
        db: Database,
        audit: AuditTrail,
        payments: PaymentService,
        *,
        clock: Callable[[], datetime],
        idempotency: IdempotencyStore | None = None,
    ) -> None:
        self._db = db
        self._audit = audit
        self._payments = payments
        self._clock = clock
        self._idempotency = idempotency

    def create(self, actor: Actor, invoice_id: str, *, base_url: str) -> IssuedPaymentSession:
        """A link to pay an open invoice, valid for 30 minutes.

        In a keyed request the answer — the link, with its token — is stored (sealed) in the
        transaction that records the session, so a retry after a crash gets this link rather than
        a second session.
        """
        token = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(_TOKEN_LENGTH))
        now = self._clock()
        with self._db.transaction() as session:
            invoice = session.exec(
                select(Invoice).where(Invoice.id == invoice_id, Invoice.tenant_id == actor.tenant_id)
            ).one_or_none()
            if invoice is None:
                raise NotFound(resource="invoice")
            if invoice.status != "open":
                raise InvalidStateTransition(current_status=invoice.status, action="payment_session")
            record = PaymentSession(
                id=new_id("ps"),
                tenant_id=actor.tenant_id,
                invoice_id=invoice_id,
                token_hash=_hash(token),
                created_at=now,
                expires_at=now + SESSION_TTL,
            )
            session.add(record)
            self._audit.record(
                session,
                actor=actor,
                action="payment_session.created",
                resource_type="invoice",
                resource_id=invoice_id,
                subject_id=invoice.customer_id,
            )
            issued = IssuedPaymentSession(
                id=record.id, url=f"{base_url.rstrip('/')}/pay/{token}", expires_at=record.expires_at
            )
            if self._idempotency is not None:
                self._idempotency.record_outcome(session, actor.tenant_id, issued)
            return issued

    def describe(self, token: str) -> HostedInvoice:
        found = self._resolve(token)
        with self._db.read() as session:
            invoice = session.get(Invoice, found.invoice_id)
            tenant = session.get(Tenant, found.tenant_id)
            assert invoice is not None
            assert tenant is not None
            latest = session.exec(
                select(Payment)
                .where(Payment.invoice_id == invoice.id)
                .order_by(col(Payment.created_at).desc())
            ).first()
            return HostedInvoice(
                business_name=tenant.name,
                invoice_number=invoice.number,
                amount_due=max(invoice.total - invoice.amount_paid, 0),
                currency=invoice.currency,
                currency_exponent=currency_exponent(invoice.currency),
                status=invoice.status,
                payment_status=latest.status if latest else None,
            )

    def start_card_setup(self, token: str) -> SetupIntentView:
        found = self._resolve(token, require_open=True)
        return self._payments.create_setup_intent(found.actor, found.customer_id)

    def pay(self, token: str, gateway_payment_method: str) -> PaymentView:
        """Save the card the browser gave the gateway, then charge it (once per session and card)."""
        found = self._resolve(token, require_open=True)
        card = self._payments.attach_payment_method(found.actor, found.customer_id, gateway_payment_method)
        return self._payments.pay_invoice(
            found.actor, found.invoice_id, card.id, idempotency_key=f"{found.id}:{card.id}"
        )

    def refresh(self, token: str) -> HostedInvoice:
        """Ask the gateway about an unfinished payment (after 3-D Secure), then describe."""
        found = self._resolve(token)
        with self._db.read() as session:
            unfinished = session.exec(
                select(Payment).where(
                    Payment.invoice_id == found.invoice_id, col(Payment.status).in_(UNFINISHED)
                )
            ).first()
        # At most one gateway look-up per payment every REFRESH_INTERVAL, however often a page polls.
        if unfinished is not None and self._clock() - unfinished.updated_at >= REFRESH_INTERVAL:
            self._payments.refresh_payment(found.actor, found.invoice_id, unfinished.id)
        return self.describe(token)

    def _resolve(self, token: str, *, require_open: bool = False) -> _Session:
        if not 16 <= len(token) <= 64:
            raise PaymentSessionInvalid()
        with self._db.read() as session:
            record = session.exec(
                select(PaymentSession).where(PaymentSession.token_hash == _hash(token))
            ).one_or_none()
            if record is None or record.expires_at <= self._clock():
                raise PaymentSessionInvalid()
            invoice = session.get(Invoice, record.invoice_id)
            assert invoice is not None
            if require_open and invoice.status != "open":
                raise InvalidStateTransition(current_status=invoice.status, action="pay")
            return _Session(record.id, record.tenant_id, record.invoice_id, invoice.customer_id)
