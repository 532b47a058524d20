"""Events for booking apps: the outbox, webhook endpoints, the event log and redelivery.

**The outbox.** :meth:`EventOutbox.record` is called inside the transaction of the state change
that causes the event (finalizing, voiding or paying an invoice, a payment outcome, a refund, a
dispute, an erasure). The event row and one delivery row per subscribed endpoint commit
with that change or not at all: no event is lost when the process dies after the commit, and none
exists for a change that rolled back. Delivery happens later, by :class:`~billing._webhook_delivery.
WebhookDelivery`, from these rows.

**No PII.** Payloads carry ids, amounts, currencies, statuses, numbers and booking references,
allow-listed field by field (:data:`PAYLOAD_FIELDS`); a receiver that needs a client's details
fetches them through the API with its own key, which is authorized and audited.

**Ordering.** Events of one invoice share its id as ``ordering_key`` and are written under the
invoice's row lock, so their ``seq`` is their commit order; a delivery waits while an earlier
event of the same key to the same endpoint is still pending.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec
from sqlalchemy import update
from sqlmodel import Session, col, select

from billing._actor import Actor
from billing._audit import AuditTrail
from billing._db import Database, get_for_tenant
from billing._envelope import FieldContext, open_sealed_text, seal_text
from billing._event_models import EventDelivery, EventRecord, WebhookEndpoint
from billing._idempotency import IdempotencyStore
from billing._keyring import Keyring
from billing._keys import SubjectKeys
from billing._models import new_id
from billing._webhook_signing import SigningSecret, generate_secret
from billing._webhook_urls import DestinationPolicy
from billing.errors import InvalidStateTransition, NotFound, ValidationFailed

__all__ = [
    "DEFAULT_ROTATION_OVERLAP",
    "EVENT_TYPES",
    "PAYLOAD_FIELDS",
    "DeliveryView",
    "EndpointView",
    "EventOutbox",
    "EventPage",
    "EventService",
    "EventView",
    "endpoint_secrets",
]

EVENT_TYPES: Final = (
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
)

# Every field an event's ``data`` may carry. None of them is client PII: ids are opaque, booking
# references are the booking app's own ids, amounts and statuses are accounting data.
PAYLOAD_FIELDS: Final = frozenset(
    {
        "invoice_id",
        "customer_id",
        "payment_id",
        "refund_id",
        "dispute_id",
        "booking_ref",
        "number",
        "status",
        "currency",
        "total",
        "amount",
        "amount_paid",
        "amount_refunded",
        "decline_code",
        "reason",
        "credit_note_number",
        "issue_date",
        "due_date",
        "erased_at",
    }
)

DEFAULT_ROTATION_OVERLAP: Final = timedelta(hours=24)
MAX_ROTATION_OVERLAP: Final = timedelta(days=7)
MAX_ENDPOINTS_PER_TENANT: Final = 16
MAX_PAGE: Final = 100

PayloadValue = str | int | None


class EndpointView(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A webhook endpoint; ``secret`` is present only in the answer that creates or rotates it."""

    id: str
    url: str
    event_types: list[str]
    status: str
    disabled_reason: str | None = None
    previous_secret_expires_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    secret: str | None = None

    def __repr__(self) -> str:
        return f"EndpointView(id={self.id!r}, status={self.status!r}, secret=<redacted>)"


class DeliveryView(msgspec.Struct, kw_only=True):
    id: str
    event_id: str
    event_type: str
    endpoint_id: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime


class EventView(msgspec.Struct, kw_only=True):
    id: str
    type: str
    created_at: datetime
    ordering_key: str | None
    data: dict[str, Any]
    deliveries: list[DeliveryView] | None = None


class EventPage(msgspec.Struct, kw_only=True):
    data: list[EventView]
    has_more: bool
    next_cursor: str | None


class EventOutbox:
    """Writes events in the caller's transaction (see the module docstring)."""

    def __init__(self, *, clock: Callable[[], datetime]) -> None:
        self._clock = clock

    def record(
        self,
        session: Session,
        *,
        tenant_id: str,
        type: str,
        data: Mapping[str, PayloadValue],
        ordering_key: str | None = None,
    ) -> str:
        """Append an event and its pending deliveries in ``session``'s transaction; returns its id.

        Raises:
            ValueError: an unknown event type, or a payload field outside :data:`PAYLOAD_FIELDS` (a
                programming error: it keeps PII out of payloads by construction).
        """
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        unknown = set(data) - PAYLOAD_FIELDS
        if unknown:
            raise ValueError(f"payload fields not allowed in events: {sorted(unknown)}")
        now = self._clock()
        event_id = new_id("evt")
        body = {"id": event_id, "type": type, "timestamp": _iso(now), "data": dict(data)}
        record = EventRecord(
            id=event_id,
            tenant_id=tenant_id,
            type=type,
            ordering_key=ordering_key,
            payload=json.dumps(body, sort_keys=True, separators=(",", ":")),
            created_at=now,
        )
        session.add(record)
        session.flush()
        assert record.seq is not None
        endpoints = session.exec(
            # Disabled endpoints get deliveries too: they wait, and flow in order once re-enabled.
            select(WebhookEndpoint).where(
                WebhookEndpoint.tenant_id == tenant_id,
                col(WebhookEndpoint.deleted_at).is_(None),
            )
        ).all()
        for endpoint in endpoints:
            if type in endpoint.event_types.split(","):
                session.add(_new_delivery(record, endpoint.id, now))
        return event_id


class EventService:
    """Webhook endpoints (admin), the event log and redelivery."""

    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        audit: AuditTrail,
        *,
        policy: DestinationPolicy,
        clock: Callable[[], datetime],
        rng: Callable[[int], bytes] = os.urandom,
        idempotency: IdempotencyStore | None = None,
    ) -> None:
        self._db = db
        self._keyring = keyring
        self._audit = audit
        self._policy = policy
        self._clock = clock
        self._rng = rng
        self._idempotency = idempotency

    # --- endpoints ------------------------------------------------------------------------

    def create_endpoint(self, actor: Actor, url: str, event_types: list[str]) -> EndpointView:
        """Register an endpoint; the answer carries its signing secret, shown this once.

        In a keyed request that answer is stored (sealed) in the transaction that registers the
        endpoint, so a retry after a crash gets this endpoint and secret, not a second endpoint.

        Raises:
            WebhookUrlInvalid / WebhookUrlRefused: see :class:`~billing._webhook_urls.DestinationPolicy`.
            ValidationFailed: no or unknown event types, or too many endpoints.
        """
        types = _check_types(event_types)
        self._policy.check(url)
        secret = generate_secret(self._rng)
        now = self._clock()
        with self._db.transaction() as session:
            count = len(
                session.exec(
                    select(WebhookEndpoint.id).where(
                        WebhookEndpoint.tenant_id == actor.tenant_id,
                        col(WebhookEndpoint.deleted_at).is_(None),
                    )
                ).all()
            )
            if count >= MAX_ENDPOINTS_PER_TENANT:
                raise ValidationFailed(
                    f"A tenant may have at most {MAX_ENDPOINTS_PER_TENANT} webhook endpoints.", field="url"
                )
            endpoint_id = new_id("we")
            endpoint = WebhookEndpoint(
                id=endpoint_id,
                tenant_id=actor.tenant_id,
                url=url,
                event_types=",".join(types),
                status="enabled",
                secret_ct=self._seal_secret(session, actor.tenant_id, endpoint_id, "secret", secret),
                created_at=now,
                updated_at=now,
            )
            session.add(endpoint)
            self._audit.record(
                session,
                actor=actor,
                action="webhook_endpoint.created",
                resource_type="webhook_endpoint",
                resource_id=endpoint_id,
                detail={"event_types": endpoint.event_types},
            )
            return self._answered(session, actor, endpoint, secret)

    def _answered(
        self, session: Session, actor: Actor, endpoint: WebhookEndpoint, secret: SigningSecret
    ) -> EndpointView:
        """The endpoint with its new ``secret``, stored as the answer of the keyed request being
        served (same transaction)."""
        view = _endpoint_view(endpoint)
        view.secret = secret.value
        if self._idempotency is not None:
            self._idempotency.record_outcome(session, actor.tenant_id, view)
        return view

    def list_endpoints(self, actor: Actor) -> list[EndpointView]:
        with self._db.read() as session:
            rows = session.exec(
                select(WebhookEndpoint)
                .where(
                    WebhookEndpoint.tenant_id == actor.tenant_id, col(WebhookEndpoint.deleted_at).is_(None)
                )
                .order_by(col(WebhookEndpoint.created_at), col(WebhookEndpoint.id))
            ).all()
            return [_endpoint_view(row) for row in rows]

    def get_endpoint(self, actor: Actor, endpoint_id: str) -> EndpointView:
        with self._db.read() as session:
            return _endpoint_view(_endpoint(session, actor.tenant_id, endpoint_id))

    def delete_endpoint(self, actor: Actor, endpoint_id: str) -> EndpointView:
        """Stop sending to the endpoint; its pending deliveries are canceled, its log kept."""
        now = self._clock()
        with self._db.transaction() as session:
            endpoint = _endpoint(session, actor.tenant_id, endpoint_id, for_update=True)
            endpoint.status = "deleted"
            endpoint.deleted_at = endpoint.updated_at = now
            endpoint.previous_secret_ct = None
            session.add(endpoint)
            session.execute(
                update(EventDelivery)
                .where(col(EventDelivery.endpoint_id) == endpoint_id, col(EventDelivery.status) == "pending")
                .values(status="canceled")
            )
            self._audit.record(
                session,
                actor=actor,
                action="webhook_endpoint.deleted",
                resource_type="webhook_endpoint",
                resource_id=endpoint_id,
            )
            return _endpoint_view(endpoint)

    def rotate_secret(
        self, actor: Actor, endpoint_id: str, overlap: timedelta = DEFAULT_ROTATION_OVERLAP
    ) -> EndpointView:
        """A new secret (shown once); the old one stays valid, and signs too, for ``overlap``.

        In a keyed request the answer is stored in the rotation's transaction: a retry after a
        crash must not rotate again, which would make the undelivered secret the previous one and
        drop, at once, the one the receiver still verifies with.

        Raises:
            ValidationFailed: ``overlap`` is negative or longer than seven days.
        """
        if overlap < timedelta(0) or overlap > MAX_ROTATION_OVERLAP:
            raise ValidationFailed("The overlap must be between 0 and 168 hours.", field="overlap_hours")
        secret = generate_secret(self._rng)
        now = self._clock()
        with self._db.transaction() as session:
            endpoint = _endpoint(session, actor.tenant_id, endpoint_id, for_update=True)
            keys = SubjectKeys(session, self._keyring, clock=self._clock, rng=self._rng)
            current = _open_secret(keys, endpoint, "secret", endpoint.secret_ct)
            endpoint.previous_secret_ct = (
                self._seal_secret(session, actor.tenant_id, endpoint_id, "previous_secret", current)
                if overlap
                else None
            )
            endpoint.previous_secret_expires_at = now + overlap if overlap else None
            endpoint.secret_ct = self._seal_secret(session, actor.tenant_id, endpoint_id, "secret", secret)
            endpoint.updated_at = now
            session.add(endpoint)
            self._audit.record(
                session,
                actor=actor,
                action="webhook_endpoint.secret_rotated",
                resource_type="webhook_endpoint",
                resource_id=endpoint_id,
                detail={"overlap_seconds": int(overlap.total_seconds())},
            )
            return self._answered(session, actor, endpoint, secret)

    def enable_endpoint(self, actor: Actor, endpoint_id: str) -> EndpointView:
        """Enable an endpoint disabled after repeated failures; its pending deliveries resume now."""
        now = self._clock()
        with self._db.transaction() as session:
            endpoint = _endpoint(session, actor.tenant_id, endpoint_id, for_update=True)
            endpoint.status = "enabled"
            endpoint.disabled_reason = None
            endpoint.consecutive_failures = 0
            endpoint.failing_since = None
            endpoint.updated_at = now
            session.add(endpoint)
            session.execute(
                update(EventDelivery)
                .where(col(EventDelivery.endpoint_id) == endpoint_id, col(EventDelivery.status) == "pending")
                .values(next_attempt_at=now)
            )
            self._audit.record(
                session,
                actor=actor,
                action="webhook_endpoint.enabled",
                resource_type="webhook_endpoint",
                resource_id=endpoint_id,
            )
            return _endpoint_view(endpoint)

    # --- the event log --------------------------------------------------------------------

    def list_events(
        self, actor: Actor, *, type: str | None = None, cursor: str | None = None, limit: int = 50
    ) -> EventPage:
        """The tenant's events, newest first; ``cursor`` is the ``next_cursor`` of the previous page."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationFailed(f"limit must be between 1 and {MAX_PAGE}.", field="limit")
        if type is not None and type not in EVENT_TYPES:
            raise ValidationFailed("Unknown event type.", field="type")
        query = select(EventRecord).where(EventRecord.tenant_id == actor.tenant_id)
        if type is not None:
            query = query.where(EventRecord.type == type)
        if cursor is not None:
            query = query.where(col(EventRecord.seq) < _decode_cursor(cursor))
        query = query.order_by(col(EventRecord.seq).desc()).limit(limit + 1)
        with self._db.read() as session:
            rows = list(session.exec(query))
        has_more = len(rows) > limit
        rows = rows[:limit]
        return EventPage(
            data=[_event_view(row) for row in rows],
            has_more=has_more,
            next_cursor=_encode_cursor(rows[-1]) if has_more else None,
        )

    def get_event(self, actor: Actor, event_id: str) -> EventView:
        """One event with its deliveries."""
        with self._db.read() as session:
            event = get_for_tenant(session, EventRecord, actor.tenant_id, event_id, resource="event")
            view = _event_view(event)
            view.deliveries = [_delivery_view(d, event.type) for d in _deliveries_of(session, event.id)]
            return view

    def redeliver(self, actor: Actor, event_id: str, endpoint_id: str | None = None) -> EventView:
        """Send the event again, now, to ``endpoint_id`` or to every enabled endpoint subscribed to it.

        The event keeps its id (receivers deduplicate on ``webhook-id``). An endpoint registered
        after the event gets it too, so an admin can replay the log to a new receiver. The answer
        is stored as that of the keyed request being served, in the transaction that queues the
        deliveries: a retry after a crash replays it instead of queueing them again.

        Raises:
            NotFound: no such event, or no such endpoint, in this tenant.
            InvalidStateTransition: the endpoint is disabled or deleted.
        """
        now = self._clock()
        with self._db.transaction() as session:
            event = get_for_tenant(session, EventRecord, actor.tenant_id, event_id, resource="event")
            if endpoint_id is not None:
                endpoint = _endpoint(session, actor.tenant_id, endpoint_id)
                if endpoint.status != "enabled":
                    raise InvalidStateTransition(current_status=endpoint.status, action="redeliver")
                targets = [endpoint]
            else:
                targets = [
                    e
                    for e in session.exec(
                        select(WebhookEndpoint).where(
                            WebhookEndpoint.tenant_id == actor.tenant_id, WebhookEndpoint.status == "enabled"
                        )
                    ).all()
                    if event.type in e.event_types.split(",")
                ]
            existing = {d.endpoint_id: d for d in _deliveries_of(session, event.id)}
            for endpoint in targets:
                delivery = existing.get(endpoint.id)
                if delivery is None:
                    session.add(_new_delivery(event, endpoint.id, now))
                    continue
                # attempts keeps counting: a worker still sending an older attempt cannot record over it
                delivery.status = "pending"
                delivery.first_attempt_at = None
                delivery.next_attempt_at = now
                delivery.delivered_at = None
                session.add(delivery)
            self._audit.record(
                session,
                actor=actor,
                action="event.redelivered",
                resource_type="event",
                resource_id=event.id,
                detail={"endpoints": len(targets)},
            )
            session.flush()
            view = _event_view(event)
            view.deliveries = [_delivery_view(d, event.type) for d in _deliveries_of(session, event.id)]
            if self._idempotency is not None:
                self._idempotency.record_outcome(session, actor.tenant_id, view)
            return view

    def list_deliveries(
        self, *, tenant_id: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[DeliveryView]:
        """Deliveries, newest first (for operators: ``veilbill webhooks``)."""
        query = select(EventDelivery, EventRecord.type).join(
            EventRecord, col(EventRecord.id) == col(EventDelivery.event_id)
        )
        if tenant_id is not None:
            query = query.where(EventDelivery.tenant_id == tenant_id)
        if status is not None:
            query = query.where(EventDelivery.status == status)
        query = query.order_by(col(EventDelivery.event_seq).desc(), col(EventDelivery.id)).limit(limit)
        with self._db.read() as session:
            return [_delivery_view(delivery, event_type) for delivery, event_type in session.exec(query)]

    def _seal_secret(
        self, session: Session, tenant_id: str, endpoint_id: str, column: str, secret: SigningSecret
    ) -> bytes:
        keys = SubjectKeys(session, self._keyring, clock=self._clock, rng=self._rng)
        dek = keys.get_or_create(tenant_id, tenant_id, "webhooks")
        return seal_text(dek, secret.value, _secret_context(tenant_id, endpoint_id, column), rng=self._rng)


def endpoint_secrets(keys: SubjectKeys, endpoint: WebhookEndpoint, now: datetime) -> list[SigningSecret]:
    """The secrets a delivery is signed with now: the current one, then the previous one in overlap."""
    secrets = [_open_secret(keys, endpoint, "secret", endpoint.secret_ct)]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret_ct is not None and expires is not None and now < expires:
        secrets.append(_open_secret(keys, endpoint, "previous_secret", endpoint.previous_secret_ct))
    return secrets


def _open_secret(keys: SubjectKeys, endpoint: WebhookEndpoint, column: str, sealed: bytes) -> SigningSecret:
    dek = keys.get(endpoint.tenant_id, endpoint.tenant_id, "webhooks")
    return SigningSecret(
        open_sealed_text(dek, sealed, _secret_context(endpoint.tenant_id, endpoint.id, column))
    )


def _secret_context(tenant_id: str, endpoint_id: str, column: str) -> FieldContext:
    return FieldContext(tenant_id, "webhook_endpoints", column, endpoint_id)


def _check_types(event_types: list[str]) -> list[str]:
    types = list(dict.fromkeys(event_types))
    if not types or any(t not in EVENT_TYPES for t in types):
        raise ValidationFailed("Name one or more known event types.", field="event_types")
    return types


def _new_delivery(event: EventRecord, endpoint_id: str, now: datetime) -> EventDelivery:
    assert event.seq is not None
    return EventDelivery(
        id=new_id("wd"),
        tenant_id=event.tenant_id,
        event_id=event.id,
        event_seq=event.seq,
        endpoint_id=endpoint_id,
        ordering_key=event.ordering_key,
        status="pending",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )


def _endpoint(
    session: Session, tenant_id: str, endpoint_id: str, *, for_update: bool = False
) -> WebhookEndpoint:
    endpoint = get_for_tenant(
        session, WebhookEndpoint, tenant_id, endpoint_id, resource="webhook_endpoint", for_update=for_update
    )
    if endpoint.deleted_at is not None:
        raise NotFound(resource="webhook_endpoint")
    return endpoint


def _deliveries_of(session: Session, event_id: str) -> list[EventDelivery]:
    return list(
        session.exec(
            select(EventDelivery)
            .where(EventDelivery.event_id == event_id)
            .order_by(col(EventDelivery.created_at), col(EventDelivery.id))
        )
    )


def _endpoint_view(endpoint: WebhookEndpoint) -> EndpointView:
    return EndpointView(
        id=endpoint.id,
        url=endpoint.url,
        event_types=endpoint.event_types.split(","),
        status=endpoint.status,
        disabled_reason=endpoint.disabled_reason,
        previous_secret_expires_at=endpoint.previous_secret_expires_at,
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
    )


def _event_view(event: EventRecord) -> EventView:
    body = json.loads(event.payload)
    return EventView(
        id=event.id,
        type=event.type,
        created_at=event.created_at,
        ordering_key=event.ordering_key,
        data=body["data"],
    )


def _delivery_view(delivery: EventDelivery, event_type: str) -> DeliveryView:
    return DeliveryView(
        id=delivery.id,
        event_id=delivery.event_id,
        event_type=event_type,
        endpoint_id=delivery.endpoint_id,
        status=delivery.status,
        attempts=delivery.attempts,
        next_attempt_at=delivery.next_attempt_at if delivery.status == "pending" else None,
        last_attempt_at=delivery.last_attempt_at,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        delivered_at=delivery.delivered_at,
        created_at=delivery.created_at,
    )


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _encode_cursor(event: EventRecord) -> str:
    return f"s{event.seq}"


def _decode_cursor(cursor: str) -> int:
    if not cursor.startswith("s") or not cursor[1:].isdigit() or len(cursor) > 20:
        raise ValidationFailed("Unknown cursor.", field="cursor")
    return int(cursor[1:])
