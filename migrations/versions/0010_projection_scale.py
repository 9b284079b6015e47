"""projection at scale: fewer B-trees for the projector to maintain per audit row

- tt_audit.deployment_id and tt_audit.revocation_id are NULL on almost every row: their indexes
  become partial (WHERE ... IS NOT NULL). The reads filter on `column = value`, which implies NOT
  NULL, so both SQLite and PostgreSQL still use them.
- SQLite only: tt_audit.position becomes the table's rowid (INTEGER PRIMARY KEY) instead of a
  BIGINT key with its own index beside the rowid. Same values (SQLite integers are 64-bit).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_PARTIAL = (("ix_tt_audit_deployment", "deployment_id"), ("ix_tt_audit_revocation", "revocation_id"))


def upgrade() -> None:
    for name, _column in _PARTIAL:
        op.drop_index(name, table_name="tt_audit")
    if op.get_bind().dialect.name == "sqlite":
        # Recreates the table (rows copied in position order) and its other indexes.
        with op.batch_alter_table("tt_audit", schema=None, recreate="always") as batch_op:
            batch_op.alter_column("position", existing_type=sa.BigInteger(), type_=sa.Integer(), autoincrement=False)
    for name, column in _PARTIAL:
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(name, "tt_audit", [column], sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    for name, _column in _PARTIAL:
        op.drop_index(name, table_name="tt_audit")
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("tt_audit", schema=None, recreate="always") as batch_op:
            batch_op.alter_column("position", existing_type=sa.Integer(), type_=sa.BigInteger(), autoincrement=False)
    for name, column in _PARTIAL:
        op.create_index(name, "tt_audit", [column])
