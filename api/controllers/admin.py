"""``/v1/admin``: API keys and roles (admin role)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from litestar import Controller, delete, get, post, put
from litestar.params import FromPath, JSONBody

from api.auth import requires_role
from api.deps import ActorDep, BillingDep
from billing import ApiKeyView, BusinessDetails, RetentionPolicy, RetentionPolicyInput, RetentionReport

Role = Literal["booking", "accountant", "admin", "auditor"]


class ApiKeyRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    role: Role
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class RetentionRun(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    dry_run: bool = True


class IssuedApiKeyResponse(msgspec.Struct, kw_only=True):
    """The key is shown here once; only its hash is kept."""

    id: str
    key: str
    role: str
    name: str


class ApiKeyResponse(msgspec.Struct, kw_only=True):
    id: str
    name: str
    role: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyList(msgspec.Struct, kw_only=True):
    data: list[ApiKeyResponse]


def _shape(view: ApiKeyView) -> ApiKeyResponse:
    return ApiKeyResponse(
        id=view.id,
        name=view.name,
        role=view.role,
        prefix=view.prefix,
        created_at=view.created_at,
        revoked_at=view.revoked_at,
    )


class AdminController(Controller):
    path = "/v1/admin"
    tags = ["admin"]
    guards = [requires_role("admin")]

    @post("/api-keys", sync_to_thread=True, summary="Issue an API key (shown once)")
    def issue_api_key(
        self, data: JSONBody[ApiKeyRequest], billing: BillingDep, actor: ActorDep
    ) -> IssuedApiKeyResponse:
        issued = billing.tenants.issue_api_key(actor, role=data.role, name=data.name)
        return IssuedApiKeyResponse(id=issued.id, key=issued.key, role=issued.role, name=issued.name)

    @get("/api-keys", sync_to_thread=True, summary="List API keys (never the secrets)")
    def list_api_keys(self, billing: BillingDep, actor: ActorDep) -> ApiKeyList:
        return ApiKeyList(data=[_shape(v) for v in billing.tenants.list_api_keys(actor)])

    @get("/business", sync_to_thread=True, summary="The seller details printed on invoices")
    def read_business_details(self, billing: BillingDep, actor: ActorDep) -> BusinessDetails:
        return billing.tenants.business_details(actor.tenant_id)

    @put("/business", sync_to_thread=True, summary="Set the seller details printed on invoices")
    def update_business_details(
        self, data: JSONBody[BusinessDetails], billing: BillingDep, actor: ActorDep
    ) -> BusinessDetails:
        return billing.tenants.update_business_details(actor, data)

    @get("/retention", sync_to_thread=True, summary="The tenant's retention policy")
    def read_retention_policy(self, billing: BillingDep, actor: ActorDep) -> RetentionPolicy:
        return billing.retention.policy(actor.tenant_id)

    @put("/retention", sync_to_thread=True, summary="Set the retention policy (country preset or years)")
    def set_retention_policy(
        self, data: JSONBody[RetentionPolicyInput], billing: BillingDep, actor: ActorDep
    ) -> RetentionPolicy:
        return billing.retention.set_policy(actor, data)

    @post(
        "/retention/run",
        status_code=200,
        sync_to_thread=True,
        summary="Enforce retention (dry_run lists only)",
    )
    def run_retention(
        self, data: JSONBody[RetentionRun], billing: BillingDep, actor: ActorDep
    ) -> RetentionReport:
        return billing.retention.run(dry_run=data.dry_run, tenant_id=actor.tenant_id, actor=actor)

    @delete("/api-keys/{key_id:str}", status_code=200, sync_to_thread=True, summary="Revoke an API key")
    def revoke_api_key(self, key_id: FromPath[str], billing: BillingDep, actor: ActorDep) -> ApiKeyResponse:
        return _shape(billing.tenants.revoke_api_key(actor, key_id))
