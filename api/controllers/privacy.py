"""Data-subject rights: access export (booking, admin), erasure (admin), restricted reads."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, get, post
from litestar.params import FromPath, JSONBody

from api.auth import requires_role
from api.deps import ActorDep, BillingDep
from billing import ErasureReceipt, InvoiceView, SubjectExport


class RestrictedRead(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    reason: Annotated[str, msgspec.Meta(min_length=5, max_length=200)]


class PrivacyController(Controller):
    tags = ["privacy"]

    @get(
        "/v1/customers/{customer_id:str}/export",
        guards=[requires_role("booking", "admin")],
        sync_to_thread=True,
        summary="Everything held about a client (GDPR access and portability; audited)",
    )
    def export_customer(
        self, customer_id: FromPath[str], billing: BillingDep, actor: ActorDep
    ) -> SubjectExport:
        return billing.privacy.export_customer(actor, customer_id)

    @post(
        "/v1/customers/{customer_id:str}/erase",
        guards=[requires_role("admin")],
        status_code=200,
        sync_to_thread=True,
        summary="Erase a client: crypto-shred their profile, restrict their invoices; returns a receipt",
    )
    def erase_customer(
        self, customer_id: FromPath[str], billing: BillingDep, actor: ActorDep
    ) -> ErasureReceipt:
        return billing.privacy.erase_customer(actor, customer_id)

    @post(
        "/v1/invoices/{invoice_id:str}/restricted-read",
        guards=[requires_role("admin", "auditor")],
        status_code=200,
        sync_to_thread=True,
        summary="Read an erased client's invoice, stating a reason (audited)",
    )
    def read_restricted_invoice(
        self, invoice_id: FromPath[str], data: JSONBody[RestrictedRead], billing: BillingDep, actor: ActorDep
    ) -> InvoiceView:
        return billing.invoices.read_restricted(actor, invoice_id, data.reason)
