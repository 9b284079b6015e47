"""console sessions kept on the server (tt_console_sessions)

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tt_console_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.String(length=36), nullable=False),
        sa.Column("generation_hash", sa.String(length=64), nullable=False),
        sa.Column("workspace_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("last_seen_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id_hash"),
    )
    with op.batch_alter_table("tt_console_sessions", schema=None) as batch_op:
        batch_op.create_index("ix_tt_console_sessions_last_seen", ["last_seen_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tt_console_sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_tt_console_sessions_last_seen")
    op.drop_table("tt_console_sessions")
