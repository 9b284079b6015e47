"""where each change came from (tt_audit: client address, user agent, claimed origin and request
id) and audit sinks' delivery positions (tt_audit_sinks)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Events written before carry none of these: NULL, as a projection of them gives.
    with op.batch_alter_table("tt_audit", schema=None) as batch_op:
        batch_op.add_column(sa.Column("client_address", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("user_agent", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("claimed_origin", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("claimed_request_id", sa.Text(), nullable=True))
    op.create_table(
        "tt_audit_sinks",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("delivered_at", sa.BigInteger(), nullable=True),
        sa.Column("deliverer", sa.Text(), nullable=True),
        sa.Column("failing_since", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("tt_audit_sinks")
    with op.batch_alter_table("tt_audit", schema=None) as batch_op:
        batch_op.drop_column("claimed_request_id")
        batch_op.drop_column("claimed_origin")
        batch_op.drop_column("user_agent")
        batch_op.drop_column("client_address")
