"""seller details of tenants

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 07:41:30.777434
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("legal_name", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("address_lines", sa.String(length=1000), nullable=True))
        batch_op.add_column(sa.Column("vat_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("billing_email", sa.String(length=320), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("billing_email")
        batch_op.drop_column("vat_id")
        batch_op.drop_column("address_lines")
        batch_op.drop_column("legal_name")
