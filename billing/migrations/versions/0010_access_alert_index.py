"""the access monitor's partial index of access alerts, by key and time

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 01:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As billing._models.ACCESS_ALERT_WHERE (a migration does not import the models, which change).
_ALERTS = "action = 'access.alert'"


def upgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_audit_events_alerts",
            ["resource_id", "occurred_at"],
            unique=False,
            postgresql_where=sa.text(_ALERTS),
            sqlite_where=sa.text(_ALERTS),
        )


def downgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_alerts")
