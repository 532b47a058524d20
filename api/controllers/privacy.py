"""Data-subject rights: access export (booking, admin), erasure (admin), restricted reads, and the
rotation of one client's data keys (admin)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, get, post
from litestar.params import FromPath, JSONBody

from api.auth import requires_role
from api.deps import ActorDep, BillingDep
from billing import ErasureReceipt, InvoiceView, SubjectExport, SubjectPurpose, inventory_entries


class InventoryField(msgspec.Struct, kw_only=True):
    table: str
    column: str
    category: str
    purpose: str
    lawful_basis: str
    protection: str
    key_purpose: str | None
    why: str
    retention: str
    card_rule: str | None


class DataInventory(msgspec.Struct, kw_only=True):
    fields: list[InventoryField]


def data_inventory_document() -> DataInventory:
    """The data inventory as served by the API and printed by ``veilbill privacy inventory``."""
    return DataInventory(
        fields=[
            InventoryField(
                table=entry.table,
                column=entry.column,
                category=entry.inventory.category,
                purpose=entry.inventory.purpose,
                lawful_basis=entry.inventory.lawful_basis,
                protection=entry.inventory.protection,
                key_purpose=entry.inventory.key_purpose,
                why=entry.inventory.why,
                retention=entry.inventory.retention,
                card_rule=entry.inventory.card,
            )
            for entry in inventory_entries()
        ]
    )


class RestrictedRead(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    reason: Annotated[str, msgspec.Meta(min_length=5, max_length=200)]


class SubjectKeyRotationRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    purpose: SubjectPurpose = "all"


class SubjectKeyRotationResponse(msgspec.Struct, kw_only=True):
    """``rotated``: purpose → the new data key's id (an opaque id, never key material)."""

    customer_id: str
    rotated: dict[str, str]
    skipped: list[str]
    values_reencrypted: int
    rotated_at: datetime


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

    @get(
        "/v1/privacy/inventory",
        guards=[requires_role("auditor", "admin")],
        sync_to_thread=False,
        summary="Every stored field: category, purpose, lawful basis, protection, retention",
    )
    def data_inventory(self) -> DataInventory:
        return data_inventory_document()

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

    @post(
        "/v1/customers/{customer_id:str}/rotate-keys",
        guards=[requires_role("admin")],
        status_code=200,
        sync_to_thread=True,
        summary="Rotate a client's data keys: re-encrypt their values, destroy the old keys (audited)",
    )
    def rotate_customer_keys(
        self,
        customer_id: FromPath[str],
        data: JSONBody[SubjectKeyRotationRequest],
        billing: BillingDep,
        actor: ActorDep,
    ) -> SubjectKeyRotationResponse:
        result = billing.subject_rotation.rotate_subject_keys(actor, customer_id, purpose=data.purpose)
        return SubjectKeyRotationResponse(
            customer_id=result.customer_id,
            rotated=result.rotated,
            skipped=list(result.skipped),
            values_reencrypted=result.values,
            rotated_at=result.rotated_at,
        )
