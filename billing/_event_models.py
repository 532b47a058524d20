"""Tables of outbound events: webhook endpoints, the event log (the outbox) and deliveries.

Kept apart from ``_models`` (same metadata, same conventions). Nothing here holds client PII:
events carry ids, amounts, statuses and booking references; endpoint URLs belong to the business's
booking app; signing secrets are sealed under the tenant's ``webhooks`` key and never stored clear.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

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

from billing._models import UtcDateTime

__all__ = ["EventDelivery", "EventRecord", "WebhookEndpoint"]


def _ts(*, nullable: bool = False) -> Any:
    return Field(sa_column=Column(UtcDateTime(), nullable=nullable))


class WebhookEndpoint(SQLModel, table=True):
    """Where a tenant's booking app receives events, and the secret(s) its deliveries are signed with.

    ``secret_ct`` is the current ``whsec_…`` secret sealed under the tenant's ``webhooks`` key;
    during a rotation ``previous_secret_ct`` stays valid (deliveries carry both signatures) until
    ``previous_secret_expires_at``. ``failing_since`` marks the first failed attempt after the last
    success; an endpoint failing for long enough is ``disabled`` until an admin enables it again.
    """

    __tablename__ = "webhook_endpoints"

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(sa_column=Column(String(40), ForeignKey("tenants.id"), nullable=False, index=True))
    url: str = Field(max_length=2000)
    event_types: str = Field(max_length=1000)
    status: str = Field(max_length=20)
    secret_ct: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    previous_secret_ct: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    previous_secret_expires_at: datetime | None = _ts(nullable=True)
    consecutive_failures: int = Field(default=0)
    failing_since: datetime | None = _ts(nullable=True)
    disabled_reason: str | None = Field(default=None, max_length=40)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    deleted_at: datetime | None = _ts(nullable=True)


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
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    id: str = Field(max_length=40, unique=True)
    tenant_id: str = Field(max_length=40)
    type: str = Field(max_length=60)
    ordering_key: str | None = Field(default=None, max_length=40)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = _ts()


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

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=40, index=True)
    event_id: str = Field(sa_column=Column(String(40), ForeignKey("events.id"), nullable=False))
    event_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    endpoint_id: str = Field(sa_column=Column(String(40), ForeignKey("webhook_endpoints.id"), nullable=False))
    ordering_key: str | None = Field(default=None, max_length=40)
    status: str = Field(max_length=20)
    attempts: int = Field(default=0)
    next_attempt_at: datetime = _ts()
    first_attempt_at: datetime | None = _ts(nullable=True)
    last_attempt_at: datetime | None = _ts(nullable=True)
    last_status_code: int | None = Field(default=None)
    last_error: str | None = Field(default=None, max_length=40)
    delivered_at: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts()
