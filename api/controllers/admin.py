"""``/v1/admin``: API keys and roles, seller details, retention, master keys (admin role).

Master keys serve every tenant of the deployment: ``GET /keys`` shows the versions and ages, but
counts only the caller's tenant's data keys, so that no tenant learns how many another holds.
``POST /keys/rotate`` starts a rotation of those shared keys, so it is the operator's: a tenant's
admin may call it only where the operator turned ``VEILBILL_TENANT_ADMIN_MASTER_KEY_ROTATION`` on
(a deployment serving one business); otherwise it answers ``403 master_key_rotation_reserved``
(docs/decisions.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, delete, get, post, put
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, JSONBody

from api.auth import requires_role
from api.deps import ActorDep, BillingDep
from api.errors import ProblemError
from api.idempotency import idempotency_key_of
from api.settings import Settings
from billing import (
    AccessPolicy,
    ApiKeyView,
    BusinessDetails,
    IssuedApiKeyView,
    KeyStatus,
    RetentionPolicy,
    RetentionPolicyInput,
    RetentionReport,
    RotationStepView,
)

Role = Literal["booking", "accountant", "admin", "auditor"]

# A rotation started or continued over HTTP re-wraps at most this many batches per request
# (at the default size, 10 000 data keys); call again until "complete" is true.
ROTATION_BATCHES_PER_REQUEST = 20


class ApiKeyRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    role: Role
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class RetentionRun(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    dry_run: bool = True


class ApiKeyResponse(msgspec.Struct, kw_only=True):
    id: str
    name: str
    role: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    suspended_at: datetime | None
    last_used_at: datetime | None
    last_used_ip: str | None
    last_used_user_agent: str | None


class ApiKeyList(msgspec.Struct, kw_only=True):
    data: list[ApiKeyResponse]


class MasterKeyVersionResponse(msgspec.Struct, kw_only=True):
    """A master key version: never its material. ``tenant_deks`` counts this tenant's keys only."""

    id: str
    created_at: datetime | None
    age_days: int | None
    active: bool
    tenant_deks: int


class MasterKeysResponse(msgspec.Struct, kw_only=True):
    """Master key versions and the re-wrapping progress of this tenant's data keys.

    ``rotation_in_progress`` is true while any data key (of any tenant) awaits re-wrapping.
    """

    active: str
    versions: list[MasterKeyVersionResponse]
    rotation_in_progress: bool
    tenant_pending_deks: int
    tenant_progress: float


def tenant_master_key_rotation_enabled(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Guard: the operator let tenant admins rotate the (shared) master keys."""
    settings: Settings = connection.app.state.settings
    if not settings.tenant_admin_master_key_rotation:
        raise ProblemError(
            403,
            "master_key_rotation_reserved",
            "Master keys are shared by every tenant; their rotation is run by the operator.",
        )


def _shape_keys(status: KeyStatus) -> MasterKeysResponse:
    return MasterKeysResponse(
        active=status.active_key_id,
        versions=[
            MasterKeyVersionResponse(
                id=version.key_id,
                created_at=version.created_at,
                age_days=version.age_days,
                active=version.active,
                tenant_deks=version.live_deks,
            )
            for version in status.versions
        ],
        rotation_in_progress=status.rotation_in_progress,
        tenant_pending_deks=status.pending_deks,
        tenant_progress=round(status.progress, 4),
    )


def _shape(view: ApiKeyView) -> ApiKeyResponse:
    return msgspec.convert(view, ApiKeyResponse, from_attributes=True)


class AdminController(Controller):
    path = "/v1/admin"
    tags = ["admin"]
    guards = [requires_role("admin")]

    @post("/api-keys", sync_to_thread=True, summary="Issue an API key (shown once)")
    def issue_api_key(
        self, data: JSONBody[ApiKeyRequest], billing: BillingDep, actor: ActorDep
    ) -> IssuedApiKeyView:
        return billing.tenants.issue_api_key(actor, role=data.role, name=data.name).view()

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

    @post(
        "/api-keys/{key_id:str}/reinstate",
        status_code=200,
        sync_to_thread=True,
        summary="Lift a key's suspension",
    )
    def reinstate_api_key(
        self, key_id: FromPath[str], billing: BillingDep, actor: ActorDep
    ) -> ApiKeyResponse:
        return _shape(billing.tenants.reinstate_api_key(actor, key_id))

    @get("/access-policy", sync_to_thread=True, summary="When a key reading many clients' data is flagged")
    def read_access_policy(self, billing: BillingDep, actor: ActorDep) -> AccessPolicy:
        return billing.tenants.access_policy(actor.tenant_id)

    @put("/access-policy", sync_to_thread=True, summary="Set the PII-read threshold, window and suspension")
    def set_access_policy(
        self, data: JSONBody[AccessPolicy], billing: BillingDep, actor: ActorDep
    ) -> AccessPolicy:
        return billing.tenants.set_access_policy(actor, data)

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

    @get("/keys", sync_to_thread=True, summary="Master key versions, ages and rotation progress")
    def read_master_keys(self, billing: BillingDep, actor: ActorDep) -> MasterKeysResponse:
        return _shape_keys(billing.rotation.key_status(tenant_id=actor.tenant_id))

    @post(
        "/keys/rotate",
        guards=[tenant_master_key_rotation_enabled],
        status_code=200,
        sync_to_thread=True,
        summary="Start or continue a master key rotation (a bounded number of batches per call)",
    )
    def rotate_master_key(
        self, request: Request[Any, Any, Any], billing: BillingDep, actor: ActorDep
    ) -> RotationStepView:
        report = billing.rotation.rotate_master_key(
            max_batches=ROTATION_BATCHES_PER_REQUEST,
            actor=actor,
            idempotency_key=idempotency_key_of(request.headers),
        )
        return report.view()

    @delete("/api-keys/{key_id:str}", status_code=200, sync_to_thread=True, summary="Revoke an API key")
    def revoke_api_key(self, key_id: FromPath[str], billing: BillingDep, actor: ActorDep) -> ApiKeyResponse:
        return _shape(billing.tenants.revoke_api_key(actor, key_id))
