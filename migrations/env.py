"""Alembic environment for the read-model tables (the event store's table belongs to eventsourcing)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from tokentrail.projections.schema import metadata

config = context.config
url = config.get_main_option("sqlalchemy.url")


def include_object(obj, name, type_, reflected, compare_to):  # noqa: ANN001
    # Leave eventsourcing's tables (stored_events, tracking) alone.
    if type_ == "table":
        return name.startswith("tt_")
    return True


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.begin() as conn:
        _run(conn)


def _run(connection) -> None:  # noqa: ANN001
    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_object=include_object,
        render_as_batch=connection.dialect.name == "sqlite",
        version_table="tt_alembic_version",
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
