"""``/v1/audit``: the tenant's audit trail and its verification (auditor role)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, get
from litestar.params import QueryParameter

from api.auth import requires_role
from api.deps import ActorDep, BillingDep


class AuditBreakResponse(msgspec.Struct, kw_only=True):
    chain: str
    seq: int
    event_id: int | None
    reason: str


class AuditVerifyResponse(msgspec.Struct, kw_only=True):
    ok: bool
    events: int
    first_break: AuditBreakResponse | None


class AuditEventResponse(msgspec.Struct, kw_only=True):
    id: int | None
    seq: int
    occurred_at: datetime
    actor_key_id: str | None
    actor_role: str | None
    action: str
    resource_type: str | None
    resource_id: str | None
    subject_id: str | None
    outcome: str
    request_id: str | None
    client_ip: str | None
    user_agent: str | None
    detail: str | None
    mac: str


class AuditEventPage(msgspec.Struct, kw_only=True):
    data: list[AuditEventResponse]
    next_after: int | None


class AuditController(Controller):
    path = "/v1/audit"
    tags = ["audit"]
    guards = [requires_role("auditor")]

    @get("/verify", sync_to_thread=True, summary="Verify this tenant's audit chain")
    def verify_audit_chain(self, billing: BillingDep, actor: ActorDep) -> AuditVerifyResponse:
        result = billing.verify_audit(chain=actor.tenant_id)
        broken = result.first_break
        return AuditVerifyResponse(
            ok=result.ok,
            events=result.events,
            first_break=AuditBreakResponse(
                chain=broken.chain, seq=broken.seq, event_id=broken.event_id, reason=broken.reason
            )
            if broken
            else None,
        )

    @get("/events", sync_to_thread=True, summary="This tenant's audit events, oldest first")
    def list_audit_events(
        self,
        billing: BillingDep,
        actor: ActorDep,
        after: Annotated[
            int,
            QueryParameter(
                ge=0,
                le=2**63 - 1,  # a 64-bit sequence: larger values would overflow the database's integer
                description="return events with seq greater than this",
            ),
        ] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    ) -> AuditEventPage:
        events = billing.audit_events(actor, after=after, limit=limit)
        data = [msgspec.convert(e, AuditEventResponse, from_attributes=True) for e in events]
        return AuditEventPage(data=data, next_after=data[-1].seq if len(data) == limit else None)
