"""staged deployments: tt_deployments.number, status, updated_at

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tt_deployments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("number", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("status", sa.String(length=16), nullable=False, server_default="applied"))
        batch_op.add_column(sa.Column("updated_at", sa.BigInteger(), nullable=True))
    # Every deployment recorded before staging existed was applied at once, and numbered in its
    # workspace by the order of the log, as a projection of the same events numbers it.
    op.execute(
        "UPDATE tt_deployments SET updated_at = at, number = (SELECT count(*) FROM tt_deployments d "
        "WHERE d.workspace_id = tt_deployments.workspace_id AND d.position <= tt_deployments.position)"
    )
    with op.batch_alter_table("tt_deployments", schema=None) as batch_op:
        batch_op.create_index("ix_tt_deployments_number", ["workspace_id", "number"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("tt_deployments", schema=None) as batch_op:
        batch_op.drop_index("ix_tt_deployments_number")
        batch_op.drop_column("updated_at")
        batch_op.drop_column("status")
        batch_op.drop_column("number")
