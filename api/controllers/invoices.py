"""``/v1/invoices``: drafts, finalization and state changes (booking role)."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from litestar import Controller, Response, get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from api.auth import requires_role
from api.deps import ActorDep, BillingDep
from billing import (
    InvoiceInput,
    InvoicePage,
    InvoicePatch,
    InvoiceQuery,
    InvoiceStatus,
    InvoiceView,
)


class InvoiceController(Controller):
    path = "/v1/invoices"
    tags = ["invoices"]
    guards = [requires_role("booking")]

    @post(sync_to_thread=True, summary="Create a draft invoice")
    def create_invoice(
        self, data: JSONBody[InvoiceInput], billing: BillingDep, actor: ActorDep
    ) -> InvoiceView:
        return billing.invoices.create_draft(actor, data)

    @get("/{invoice_id:str}", sync_to_thread=True, summary="Read an invoice (decrypts; audited)")
    def read_invoice(self, invoice_id: FromPath[str], billing: BillingDep, actor: ActorDep) -> InvoiceView:
        return billing.invoices.read(actor, invoice_id)

    @get(
        "/{invoice_id:str}/pdf",
        sync_to_thread=True,
        media_type="application/pdf",
        summary="The invoice as PDF (rendered on request; audited)",
    )
    def invoice_pdf(self, invoice_id: FromPath[str], billing: BillingDep, actor: ActorDep) -> Response[bytes]:
        name, pdf = billing.invoice_pdf(actor, invoice_id)
        return Response(
            pdf,
            media_type="application/pdf",
            headers={
                "Content-Disposition": f'inline; filename="{name}.pdf"',
                "Cache-Control": "no-store",
            },
        )

    @patch("/{invoice_id:str}", sync_to_thread=True, summary="Edit a draft invoice")
    def update_invoice(
        self, invoice_id: FromPath[str], data: JSONBody[InvoicePatch], billing: BillingDep, actor: ActorDep
    ) -> InvoiceView:
        return billing.invoices.update_draft(actor, invoice_id, data)

    @get(sync_to_thread=True, summary="List invoices (newest first, cursor-paginated; no content)")
    def list_invoices(
        self,
        billing: BillingDep,
        actor: ActorDep,
        customer_id: Annotated[str | None, QueryParameter(max_length=40)] = None,
        booking_ref: Annotated[str | None, QueryParameter(max_length=100)] = None,
        status: FromQuery[InvoiceStatus | None] = None,
        issued_from: Annotated[date | None, QueryParameter(name="from")] = None,
        issued_to: Annotated[date | None, QueryParameter(name="to")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> InvoicePage:
        query = InvoiceQuery(
            customer_id=customer_id,
            booking_ref=booking_ref,
            status=status,
            issued_from=issued_from,
            issued_to=issued_to,
            limit=limit,
            cursor=cursor,
        )
        return billing.invoices.list_invoices(actor, query)

    @post(
        "/{invoice_id:str}/finalize",
        status_code=200,
        sync_to_thread=True,
        summary="Finalize: number and open",
    )
    def finalize_invoice(
        self, invoice_id: FromPath[str], billing: BillingDep, actor: ActorDep
    ) -> InvoiceView:
        return billing.invoices.finalize(actor, invoice_id)

    @post("/{invoice_id:str}/void", status_code=200, sync_to_thread=True, summary="Void an open invoice")
    def void_invoice(self, invoice_id: FromPath[str], billing: BillingDep, actor: ActorDep) -> InvoiceView:
        return billing.invoices.void(actor, invoice_id)

    @post(
        "/{invoice_id:str}/mark-uncollectible",
        status_code=200,
        sync_to_thread=True,
        summary="Mark an open invoice uncollectible",
    )
    def mark_invoice_uncollectible(
        self, invoice_id: FromPath[str], billing: BillingDep, actor: ActorDep
    ) -> InvoiceView:
        return billing.invoices.mark_uncollectible(actor, invoice_id)
