"""``POST /v1/webhooks/stripe``: gateway events, verified on the raw bytes, stored once.

The pattern: verify ``Stripe-Signature`` over the exact bytes received (300 s tolerance; every
configured secret is tried, for rotation), allow-list the event types, insert the event once keyed
by its id, answer 202 at once, and apply it in a background task — idempotently, so a redelivery
or a replay changes nothing. Authenticity comes from the signature, so this route carries no API
key; it is also exempt from the card-data guard, which would refuse the gateway's own payloads
if one ever tripped a false positive (only whitelisted fields of each event are kept).
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import anyio.to_thread
from litestar import Controller, Request, Response, post
from litestar.background_tasks import BackgroundTask

from api.deps import BillingDep
from api.errors import ProblemError
from api.logging import get_logger
from billing import HANDLED_EVENT_TYPES, Billing
from billing.errors import GatewayNotConfigured
from tokenization import GatewayEvent, WebhookSignatureInvalid, parse_event, verify_signature

_log = get_logger("veilbill.webhooks")


async def _process(billing: Billing, event: GatewayEvent) -> None:
    try:
        outcome = await anyio.to_thread.run_sync(partial(billing.payments.process_gateway_event, event))
        _log.info("gateway_event_processed", event_id=event.id, type=event.type, outcome=outcome)
    except Exception:
        _log.exception("gateway_event_failed", event_id=event.id, type=event.type)


class WebhookController(Controller):
    path = "/v1/webhooks"
    tags = ["webhooks"]
    opt = {"exclude_from_auth": True, "skip_card_guard": True}
    security = [{}]

    @post("/stripe", status_code=202, summary="Gateway events (Stripe-Signature verified)")
    async def receive_stripe_event(
        self, request: Request[Any, Any, Any], billing: BillingDep
    ) -> Response[dict[str, Any]]:
        secrets: tuple[str, ...] = request.app.state.settings.webhook_secrets
        if not secrets or billing.payments.gateway_or_none is None:
            raise GatewayNotConfigured()
        payload = await request.body()
        try:
            verify_signature(
                payload, request.headers.get("stripe-signature", ""), secrets, now=int(time.time())
            )
        except WebhookSignatureInvalid:
            raise ProblemError(
                400, "webhook_signature_invalid", "The webhook signature is not valid."
            ) from None
        event = parse_event(payload)
        if event.type not in HANDLED_EVENT_TYPES:
            return Response({"received": True, "handled": False}, status_code=200)
        is_new = await anyio.to_thread.run_sync(partial(billing.payments.record_gateway_event, event))
        if not is_new:
            return Response({"received": True, "duplicate": True}, status_code=200)
        return Response(
            {"received": True},
            status_code=202,
            background=BackgroundTask(_process, billing, event),
        )
