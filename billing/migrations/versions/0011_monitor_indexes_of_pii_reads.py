"""the access monitor's indexes hold PII reads only

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 12:30:00.000000

The monitor only asks about a key's reads of decrypted PII; every other link (a draft's
``invoice.created``, a payment, a key operation) was indexed for nothing, and the probe "did this
key read this client in the window?" filtered the key's other events on the client out row by row.
On a large ``audit_events`` the rebuild takes a write lock for its duration: build the new indexes
``CONCURRENTLY`` by hand first if that matters (the names are the same).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As billing._models.PII_READ_WHERE (a migration does not import the models, which change).
_PII_READS = (
    "action IN ('customer.exported', 'customer.read', 'invoice.document_rendered', 'invoice.read', "
    "'invoice.restricted_read')"
)
_INDEXES = {
    "ix_audit_events_actor_time": ["actor_key_id", "occurred_at"],
    "ix_audit_events_actor_subject_time": ["actor_key_id", "subject_id", "occurred_at"],
}


def upgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        for name, columns in _INDEXES.items():
            batch_op.drop_index(name)
            batch_op.create_index(
                name,
                columns,
                unique=False,
                postgresql_where=sa.text(_PII_READS),
                sqlite_where=sa.text(_PII_READS),
            )


def downgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        for name, columns in _INDEXES.items():
            batch_op.drop_index(name)
            batch_op.create_index(name, columns, unique=False)
