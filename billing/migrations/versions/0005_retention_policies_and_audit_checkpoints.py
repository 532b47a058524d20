"""retention policies and audit checkpoints

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 07:57:23.290866
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("chain", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("mac", sa.String(length=64), nullable=False),
        sa.Column("audit_key_id", sa.String(length=40), nullable=False),
        sa.Column("signature", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("chain", name=op.f("pk_audit_checkpoints")),
    )
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retention_country", sa.String(length=2), nullable=True))
        batch_op.add_column(sa.Column("invoice_retention_years", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("audit_retention_years", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("audit_retention_years")
        batch_op.drop_column("invoice_retention_years")
        batch_op.drop_column("retention_country")

    op.drop_table("audit_checkpoints")
