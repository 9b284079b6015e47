"""the revocation a deletion belongs to (tt_audit.revocation_id), for `GET /v0/audit?revocation=`

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No event written before this version belongs to a revocation: NULL is the right value for
    # every existing row, and nothing needs to be replayed.
    with op.batch_alter_table("tt_audit", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revocation_id", sa.String(length=36), nullable=True))
        batch_op.create_index("ix_tt_audit_revocation", ["revocation_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tt_audit", schema=None) as batch_op:
        batch_op.drop_index("ix_tt_audit_revocation")
        batch_op.drop_column("revocation_id")
