"""grace per generation (tt_tokens.grace) and installation facts (tt_meta: key fingerprint)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tt_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("grace", sa.Text(), nullable=False, server_default="{}"))
    # Before this column only the latest refreshed-out generation was kept: carry it over when
    # the latest refresh gave it a grace window (its tt_generations row says how long), as a
    # projection of the same events does. (A value whose window an earlier version cut short by
    # a second refresh stays refused here; `tokentrail rebuild` would honour its window.)
    conn = op.get_bind()
    rows = conn.execute(
        sa.text(
            "SELECT t.id, t.previous_generation, t.previous_valid_until FROM tt_tokens t "
            "JOIN tt_generations g ON g.token_id = t.id "
            "AND g.seq = (SELECT max(seq) FROM tt_generations WHERE token_id = t.id) "
            "WHERE t.previous_generation IS NOT NULL AND g.grace_seconds > 0"
        )
    ).fetchall()
    for token_id, generation, until in rows:
        conn.execute(
            sa.text("UPDATE tt_tokens SET grace = :grace WHERE id = :id"),
            {"grace": json.dumps({generation: until}, separators=(",", ":")), "id": token_id},
        )
    op.create_table(
        "tt_meta",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("tt_meta")
    with op.batch_alter_table("tt_tokens", schema=None) as batch_op:
        batch_op.drop_column("grace")
