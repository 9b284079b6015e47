"""Bring the read-model schema up to date with Alembic (`tokentrail migrate`, and on every start)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

import tokentrail.migrations as migrations

MIGRATIONS_DIR = Path(migrations.__file__).parent
_LOCK_KEY = 0x6D696772  # "migr"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url)
    return config


def upgrade(engine: Engine) -> str | None:
    """Apply pending migrations; safe when several processes start at once. Returns the head."""
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # One process migrates at a time; a migration may rewrite big tables, so the
            # connections' statement_timeout does not apply to it.
            conn.execute(text("SET LOCAL statement_timeout = 0"))
            conn.execute(text("SET LOCAL idle_in_transaction_session_timeout = 0"))
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    return current(engine)


def current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": "tt_alembic_version"})
        return context.get_current_revision()


def head() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
