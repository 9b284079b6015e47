"""the token list's order: an index on tt_tokens (workspace_id, deleted, created_position, id,
position), so that `GET /v0/tokens` reads the workspace's live tokens' keys in order from the index
alone, without sorting them, and a page after a cursor starts where the cursor points

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_tt_tokens_workspace_created",
        "tt_tokens",
        ["workspace_id", "deleted", "created_position", "id", "position"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_tt_tokens_workspace_created", table_name="tt_tokens")
