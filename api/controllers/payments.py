"""Cards, charges and refunds (booking role). Card data never reaches these routes: only tokens."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.params import FromPath, JSONBody

from api.auth import requires_role
from api.deps import ActorDep, BillingDep
from api.idempotency import idempotency_key_of
from billing import CardView, IssuedPaymentSession, PaymentView, RefundView, SetupIntentView
from billing.errors import IdempotencyKeyRequired

RefundReason = Literal["requested_by_customer", "duplicate", "fraudulent"]


class AttachPaymentMethod(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    token: Annotated[str, msgspec.Meta(min_length=4, max_length=255, pattern=r"^pm_[A-Za-z0-9_]+$")]


class PayInvoice(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    payment_method_id: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]


class RefundRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    amount: int | None = None
    reason: RefundReason | None = None


class SetupIntentResponse(msgspec.Struct, kw_only=True):
    setup_intent_id: str
    client_secret: str
    publishable_key: str | None


class CardList(msgspec.Struct, kw_only=True):
    data: list[CardView]


class PaymentList(msgspec.Struct, kw_only=True):
    payments: list[PaymentView]
    refunds: list[RefundView]


def _required_key(request: Request[Any, Any, Any]) -> str:
    key = idempotency_key_of(request.headers)
    if key is None:
        raise IdempotencyKeyRequired(field="Idempotency-Key")
    return key


class CardController(Controller):
    path = "/v1/customers/{customer_id:str}"
    tags = ["payment methods"]
    guards = [requires_role("booking")]

    @post("/setup-intents", status_code=201, sync_to_thread=True, summary="Client secret to save a card")
    def create_setup_intent(
        self,
        customer_id: FromPath[str],
        request: Request[Any, Any, Any],
        billing: BillingDep,
        actor: ActorDep,
    ) -> SetupIntentResponse:
        intent: SetupIntentView = billing.payments.create_setup_intent(
            actor, customer_id, idempotency_key_of(request.headers)
        )
        settings = request.app.state.settings
        return SetupIntentResponse(
            setup_intent_id=intent.setup_intent_id,
            client_secret=intent.client_secret,
            publishable_key=settings.stripe_publishable_key,
        )

    @post("/payment-methods", status_code=201, sync_to_thread=True, summary="Attach a gateway card token")
    def attach_payment_method(
        self,
        customer_id: FromPath[str],
        data: JSONBody[AttachPaymentMethod],
        billing: BillingDep,
        actor: ActorDep,
    ) -> CardView:
        return billing.payments.attach_payment_method(actor, customer_id, data.token)

    @get("/payment-methods", sync_to_thread=True, summary="List saved cards (summaries only)")
    def list_payment_methods(
        self, customer_id: FromPath[str], billing: BillingDep, actor: ActorDep
    ) -> CardList:
        return CardList(data=billing.payments.list_payment_methods(actor, customer_id))

    @delete(
        "/payment-methods/{payment_method_id:str}",
        status_code=200,
        sync_to_thread=True,
        summary="Detach a card",
    )
    def detach_payment_method(
        self,
        customer_id: FromPath[str],
        payment_method_id: FromPath[str],
        billing: BillingDep,
        actor: ActorDep,
    ) -> CardView:
        return billing.payments.detach_payment_method(actor, customer_id, payment_method_id)


class PaymentController(Controller):
    path = "/v1/invoices/{invoice_id:str}"
    tags = ["payments"]
    guards = [requires_role("booking")]

    @post(
        "/pay",
        status_code=200,
        sync_to_thread=True,
        summary="Charge a saved card (Idempotency-Key required)",
    )
    def pay_invoice(
        self,
        invoice_id: FromPath[str],
        data: JSONBody[PayInvoice],
        request: Request[Any, Any, Any],
        billing: BillingDep,
        actor: ActorDep,
    ) -> PaymentView:
        key = _required_key(request)
        return billing.payments.pay_invoice(actor, invoice_id, data.payment_method_id, key)

    @get("/payments", sync_to_thread=True, summary="Payments and refunds of an invoice")
    def list_invoice_payments(
        self, invoice_id: FromPath[str], billing: BillingDep, actor: ActorDep
    ) -> PaymentList:
        payments, refunds = billing.payments.list_payments(actor, invoice_id)
        return PaymentList(payments=payments, refunds=refunds)

    @post(
        "/payments/{payment_id:str}/refresh",
        status_code=200,
        sync_to_thread=True,
        summary="Ask the gateway for a payment's state (after 3-D Secure)",
    )
    def refresh_payment(
        self, invoice_id: FromPath[str], payment_id: FromPath[str], billing: BillingDep, actor: ActorDep
    ) -> PaymentView:
        return billing.payments.refresh_payment(actor, invoice_id, payment_id)

    @post(
        "/payment-sessions",
        status_code=201,
        sync_to_thread=True,
        summary="A short-lived link to the hosted payment page",
    )
    def create_payment_session(
        self, invoice_id: FromPath[str], request: Request[Any, Any, Any], billing: BillingDep, actor: ActorDep
    ) -> IssuedPaymentSession:
        base_url = request.app.state.settings.public_url
        return billing.sessions.create(actor, invoice_id, base_url=base_url)

    @post(
        "/refunds",
        status_code=201,
        sync_to_thread=True,
        summary="Refund (Idempotency-Key required); issues a numbered credit note",
    )
    def refund_invoice(
        self,
        invoice_id: FromPath[str],
        data: JSONBody[RefundRequest],
        request: Request[Any, Any, Any],
        billing: BillingDep,
        actor: ActorDep,
    ) -> RefundView:
        key = _required_key(request)
        return billing.payments.refund_invoice(actor, invoice_id, data.amount, data.reason, key)
