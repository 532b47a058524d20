"""``/v1/admin/webhook-endpoints`` and ``/v1/events``: outbound webhooks and the event log (admin).

Endpoints receive signed events (Standard Webhooks); the signing secret is in the answer that
creates or rotates an endpoint, and never again. The event log lists what was emitted and where it
was delivered; ``redeliver`` sends an event again with its original id.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

import msgspec
from litestar import Controller, delete, get, post
from litestar.params import FromPath, JSONBody, QueryParameter

from api.auth import requires_role
from api.deps import ActorDep, BillingDep
from billing import EndpointView, EventPage, EventView

EventType = Literal[
    "invoice.finalized",
    "invoice.paid",
    "invoice.voided",
    "invoice.uncollectible",
    "payment.succeeded",
    "payment.failed",
    "payment.requires_action",
    "refund.succeeded",
    "dispute.opened",
    "customer.erased",
]


class EndpointRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
    event_types: Annotated[list[EventType], msgspec.Meta(min_length=1, max_length=20)]


class RotateSecretRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    overlap_hours: Annotated[int, msgspec.Meta(ge=0, le=168)] = 24


class RedeliverRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    endpoint_id: Annotated[str, msgspec.Meta(max_length=40)] | None = None


class EndpointList(msgspec.Struct, kw_only=True):
    data: list[EndpointView]


class WebhookEndpointController(Controller):
    path = "/v1/admin/webhook-endpoints"
    tags = ["events"]
    guards = [requires_role("admin")]

    @post(sync_to_thread=True, summary="Register a webhook endpoint (its secret is shown once)")
    def create_webhook_endpoint(
        self, data: JSONBody[EndpointRequest], billing: BillingDep, actor: ActorDep
    ) -> EndpointView:
        return billing.events.create_endpoint(actor, data.url, list(data.event_types))

    @get(sync_to_thread=True, summary="List webhook endpoints (never their secrets)")
    def list_webhook_endpoints(self, billing: BillingDep, actor: ActorDep) -> EndpointList:
        return EndpointList(data=billing.events.list_endpoints(actor))

    @get("/{endpoint_id:str}", sync_to_thread=True, summary="A webhook endpoint")
    def read_webhook_endpoint(
        self, endpoint_id: FromPath[str], billing: BillingDep, actor: ActorDep
    ) -> EndpointView:
        return billing.events.get_endpoint(actor, endpoint_id)

    @delete("/{endpoint_id:str}", status_code=200, sync_to_thread=True, summary="Delete a webhook endpoint")
    def delete_webhook_endpoint(
        self, endpoint_id: FromPath[str], billing: BillingDep, actor: ActorDep
    ) -> EndpointView:
        return billing.events.delete_endpoint(actor, endpoint_id)

    @post(
        "/{endpoint_id:str}/rotate-secret",
        status_code=200,
        sync_to_thread=True,
        summary="A new signing secret (shown once); the old one keeps signing during the overlap",
    )
    def rotate_webhook_secret(
        self,
        endpoint_id: FromPath[str],
        data: JSONBody[RotateSecretRequest],
        billing: BillingDep,
        actor: ActorDep,
    ) -> EndpointView:
        return billing.events.rotate_secret(actor, endpoint_id, timedelta(hours=data.overlap_hours))

    @post(
        "/{endpoint_id:str}/enable",
        status_code=200,
        sync_to_thread=True,
        summary="Enable an endpoint disabled after repeated failures",
    )
    def enable_webhook_endpoint(
        self, endpoint_id: FromPath[str], billing: BillingDep, actor: ActorDep
    ) -> EndpointView:
        return billing.events.enable_endpoint(actor, endpoint_id)


class EventController(Controller):
    path = "/v1/events"
    tags = ["events"]
    guards = [requires_role("admin")]

    @get(sync_to_thread=True, summary="The event log, newest first")
    def list_events(
        self,
        billing: BillingDep,
        actor: ActorDep,
        event_type: Annotated[EventType | None, QueryParameter(name="type")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 50,
        cursor: Annotated[str | None, QueryParameter(max_length=40)] = None,
    ) -> EventPage:
        return billing.events.list_events(actor, type=event_type, cursor=cursor, limit=limit)

    @get("/{event_id:str}", sync_to_thread=True, summary="An event and its deliveries")
    def read_event(self, event_id: FromPath[str], billing: BillingDep, actor: ActorDep) -> EventView:
        return billing.events.get_event(actor, event_id)

    @post(
        "/{event_id:str}/redeliver",
        status_code=202,
        sync_to_thread=True,
        summary="Send an event again (same id) to one or every subscribed endpoint",
    )
    def redeliver_event(
        self,
        event_id: FromPath[str],
        billing: BillingDep,
        actor: ActorDep,
        data: JSONBody[RedeliverRequest | None] = None,
    ) -> EventView:
        endpoint_id = data.endpoint_id if data is not None else None
        return billing.events.redeliver(actor, event_id, endpoint_id)
