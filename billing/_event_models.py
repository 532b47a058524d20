"""Tables of outbound events: webhook endpoints, the event log (the outbox) and deliveries.

Kept apart from ``_models`` (same metadata, same conventions). Nothing here holds client PII:
events carry ids, amounts, statuses and booking references; endpoint URLs belong to the business's
booking app; signing secrets are sealed under the tenant's ``webhooks`` key and never stored clear.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

from billing._inventory import Inventory, Sealed, note
from billing._models import _f, _ts  # the annotated-column helpers of every table

__all__ = ["EventDelivery", "EventRecord", "WebhookEndpoint"]

_TECH: Final = "technical"
_ENDPOINTS = "until the endpoint is deleted (then kept, secrets unreadable, for the event log)"
_EVENTS = (
    "30 days (as Stripe keeps events), then purged by the retention run with the event's deliveries, "
    "once none is pending"
)


def _plain(purpose: str, retention: str, why: str = "no personal data") -> Inventory:
    return Inventory(_TECH, purpose, "contract", "clear", retention, why=why)


def _secret(column: str, *, nullable: bool) -> Any:
    sealed = Sealed("webhooks", column, subject="tenant_id")
    inventory = Inventory(
        _TECH,
        "signs deliveries to the booking app (Standard Webhooks)",
        "contract",
        "encrypted",
        _ENDPOINTS,
        sealed=sealed,
    )
    stored = Column(LargeBinary, nullable=nullable, info=note(inventory))
    return Field(default=None, sa_column=stored) if nullable else Field(sa_column=stored)


class WebhookEndpoint(SQLModel, table=True):
    """Where a tenant's booking app receives events, and the secret(s) its deliveries are signed with.

    ``secret_ct`` is the current ``whsec_…`` secret sealed under the tenant's ``webhooks`` key;
    during a rotation ``previous_secret_ct`` stays valid (deliveries carry both signatures) until
    ``previous_secret_expires_at``. ``failing_since`` marks the first failed attempt after the last
    success; an endpoint failing for long enough is ``disabled`` until an admin enables it again.
    """

    __tablename__ = "webhook_endpoints"

    id: str = _f(_plain("row identifier", _ENDPOINTS), primary_key=True, max_length=40)
    tenant_id: str = Field(
        sa_column=Column(
            String(40),
            ForeignKey("tenants.id"),
            nullable=False,
            index=True,
            info=note(_plain("the business the endpoint belongs to", _ENDPOINTS)),
        )
    )
    url: str = _f(
        _plain("where events are delivered", _ENDPOINTS, why="the booking app's own address, not a client's"),
        max_length=2000,
    )
    event_types: str = _f(_plain("which events the endpoint receives", _ENDPOINTS), max_length=1000)
    status: str = _f(_plain("enabled or disabled", _ENDPOINTS), max_length=20)
    secret_ct: bytes = _secret("secret", nullable=False)
    previous_secret_ct: bytes | None = _secret("previous_secret", nullable=True)
    previous_secret_expires_at: datetime | None = _ts(
        _plain("end of the rotation overlap", _ENDPOINTS), nullable=True
    )
    consecutive_failures: int = _f(_plain("failed attempts in a row", _ENDPOINTS), default=0)
    failing_since: datetime | None = _ts(
        _plain("first failure since the last success", _ENDPOINTS), nullable=True
    )
    disabled_reason: str | None = _f(_plain("why it was disabled", _ENDPOINTS), default=None, max_length=40)
    created_at: datetime = _ts(_plain("registration", _ENDPOINTS))
    updated_at: datetime = _ts(_plain("last change", _ENDPOINTS))
    deleted_at: datetime | None = _ts(_plain("deletion", _ENDPOINTS), nullable=True)


class EventRecord(SQLModel, table=True):
    """One event in the log: written in the transaction of the change that causes it (the outbox).

    ``seq`` orders events; events of one ``ordering_key`` (an invoice id) are written under that
    invoice's row lock, so their ``seq`` order is their commit order. ``payload`` is the exact JSON
    body delivered (ids, amounts, statuses, booking refs — never PII).
    """

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_tenant_seq", "tenant_id", "seq"),)

    seq: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
            info=note(_plain("order of the event log", _EVENTS)),
        ),
    )
    id: str = _f(_plain("the event id (webhook-id, deduplication)", _EVENTS), max_length=40, unique=True)
    tenant_id: str = _f(_plain("the business the event belongs to", _EVENTS), max_length=40)
    type: str = _f(_plain("the event type", _EVENTS), max_length=60)
    ordering_key: str | None = _f(
        _plain("the invoice whose events are ordered", _EVENTS), default=None, max_length=40
    )
    payload: str = Field(
        sa_column=Column(
            Text,
            nullable=False,
            info=note(
                Inventory(
                    "financial",
                    "the delivered body: ids, amounts, statuses, booking refs",
                    "contract",
                    "clear",
                    _EVENTS,
                    why="an allow-list of fields without client PII (tests scan every payload)",
                )
            ),
        )
    )
    created_at: datetime = _ts(_plain("when the change happened", _EVENTS))


class EventDelivery(SQLModel, table=True):
    """One event to one endpoint: status, attempts, when to try next, how the last attempt ended.

    Response bodies are never stored: only the status code and an error class.
    """

    __tablename__ = "event_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "endpoint_id"),
        Index("ix_event_deliveries_due", "status", "next_attempt_at"),
        Index("ix_event_deliveries_order", "endpoint_id", "ordering_key", "event_seq"),
    )

    id: str = _f(_plain("row identifier", _EVENTS), primary_key=True, max_length=40)
    tenant_id: str = _f(_plain("the business", _EVENTS), max_length=40, index=True)
    event_id: str = Field(
        sa_column=Column(
            String(40), ForeignKey("events.id"), nullable=False, info=note(_plain("the event", _EVENTS))
        )
    )
    event_seq: int = Field(
        sa_column=Column(BigInteger, nullable=False, info=note(_plain("the event's order", _EVENTS)))
    )
    endpoint_id: str = Field(
        sa_column=Column(
            String(40),
            ForeignKey("webhook_endpoints.id"),
            nullable=False,
            info=note(_plain("the endpoint", _EVENTS)),
        )
    )
    ordering_key: str | None = _f(
        _plain("the invoice whose events are ordered", _EVENTS), default=None, max_length=40
    )
    status: str = _f(_plain("pending, delivered or failed", _EVENTS), max_length=20)
    attempts: int = _f(_plain("attempts so far", _EVENTS), default=0)
    next_attempt_at: datetime = _ts(_plain("when to try next", _EVENTS))
    first_attempt_at: datetime | None = _ts(_plain("first attempt", _EVENTS), nullable=True)
    last_attempt_at: datetime | None = _ts(_plain("last attempt", _EVENTS), nullable=True)
    last_status_code: int | None = _f(_plain("HTTP status of the last attempt", _EVENTS), default=None)
    last_error: str | None = _f(
        _plain("error class of the last attempt (never a body)", _EVENTS), default=None, max_length=40
    )
    delivered_at: datetime | None = _ts(_plain("delivery", _EVENTS), nullable=True)
    created_at: datetime = _ts(_plain("queued", _EVENTS))
