"""access monitoring and breach register

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 08:04:04.514631
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "breaches",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=True),
        sa.Column("aware_at", sa.DateTime(), nullable=False),
        sa.Column("nature", sa.String(length=2000), nullable=False),
        sa.Column("categories", sa.String(length=1000), nullable=True),
        sa.Column("approx_subjects", sa.Integer(), nullable=True),
        sa.Column("approx_records", sa.Integer(), nullable=True),
        sa.Column("consequences", sa.String(length=2000), nullable=True),
        sa.Column("measures", sa.String(length=2000), nullable=True),
        sa.Column("suspected_key_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_breaches")),
    )
    with op.batch_alter_table("breaches", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_breaches_tenant_id"), ["tenant_id"], unique=False)

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("suspended_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("last_used_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("last_used_ip", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("last_used_user_agent", sa.String(length=200), nullable=True))

    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index("ix_audit_events_actor_time", ["actor_key_id", "occurred_at"], unique=False)

    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pii_read_threshold", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("pii_read_window_minutes", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("suspend_on_alert", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("suspend_on_alert")
        batch_op.drop_column("pii_read_window_minutes")
        batch_op.drop_column("pii_read_threshold")

    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_actor_time")

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("last_used_user_agent")
        batch_op.drop_column("last_used_ip")
        batch_op.drop_column("last_used_at")
        batch_op.drop_column("suspended_at")

    with op.batch_alter_table("breaches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_breaches_tenant_id"))

    op.drop_table("breaches")
