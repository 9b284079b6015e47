"""token hygiene: expiries on tokens, versions and grants; tt_token_usage (last use)

Revision ID: 0007
Revises: 0006
Create Date: 2027-01-10
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_EXPIRING = ("tt_tokens", "tt_token_versions", "tt_scope_grants")


def upgrade() -> None:
    # No event of a ledger older than this migration sets an expiry: NULL (never) is right for
    # every existing row, and `rebuild --verify` agrees.
    for table in _EXPIRING:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("expires_at", sa.BigInteger(), nullable=True))
    # Last use: a read-model fact written by the servers themselves, not projected from events.
    op.create_table(
        "tt_token_usage",
        sa.Column("token_id", sa.String(length=36), primary_key=True),
        sa.Column("last_used_at", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tt_token_usage")
    for table in _EXPIRING:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("expires_at")
