"""Where the ledger lives: one database holds the event store and the read models.

`TOKENTRAIL_DATABASE_URL` selects it: `sqlite:///path/to/file.db` (default: a file in
`TOKENTRAIL_DATA_DIR`, itself `./tokentrail-data/` by default) or `postgresql://user@host:port/db`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from tokentrail.domain.errors import InvalidInput, StoreUnavailable
from tokentrail.storage import pgstore

DEFAULT_DATA_DIR = "tokentrail-data"
SQLITE_BUSY_MS = 15_000
WRITER_WAL_AUTOCHECKPOINT_PAGES = 10_000  # SQLite's default: 1,000


def data_dir(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("TOKENTRAIL_DATA_DIR") or DEFAULT_DATA_DIR)


def database_url(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    url = env.get("TOKENTRAIL_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{data_dir(env) / 'tokentrail.db'}"


@dataclass(frozen=True)
class Database:
    url: str

    @property
    def backend(self) -> str:
        scheme = self.url.split(":", 1)[0].split("+", 1)[0]
        if scheme == "sqlite":
            return "sqlite"
        if scheme in ("postgresql", "postgres"):
            return "postgres"
        raise InvalidInput(f"unsupported database URL {self.url!r}: use sqlite:/// or postgresql://")

    @property
    def sqlite_path(self) -> Path:
        path = self.url.split(":///", 1)[1] if ":///" in self.url else ""
        if not path or path == ":memory:":
            raise InvalidInput("a SQLite database needs a file path: sqlite:///path/to/file.db")
        return Path(path)

    def eventsourcing_env(self) -> dict[str, str]:
        if self.backend == "sqlite":
            path = self.sqlite_path
            _private_file(path)
            return {
                "PERSISTENCE_MODULE": "tokentrail.storage.sqlitestore:Factory",
                "SQLITE_DBNAME": str(path),
                "SQLITE_LOCK_TIMEOUT": str(SQLITE_BUSY_MS // 1000),
            }
        url = make_url(self.url)
        return {
            # eventsourcing's PostgreSQL recorder without pipeline mode, with bounded waits and
            # retries, creating its tables under a lock (see pgstore.py).
            "PERSISTENCE_MODULE": "tokentrail.storage.pgstore:Factory",
            "POSTGRES_DBNAME": url.database or "postgres",
            "POSTGRES_HOST": url.host or "127.0.0.1",
            "POSTGRES_PORT": str(url.port or 5432),
            "POSTGRES_USER": url.username or "postgres",
            "POSTGRES_PASSWORD": url.password or "",
            # Finite waits: a stuck lock becomes an error (and a retry), never a hung request; a
            # transaction left open by a vanished client is ended by the server; a request waits
            # for a pooled connection at most POOL_WAIT_SECONDS (statement_timeout and the TCP
            # timeouts are set on every connection by pgstore.connection_options).
            "POSTGRES_LOCK_TIMEOUT": str(pgstore.LOCK_TIMEOUT),
            "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": str(pgstore.IDLE_IN_TRANSACTION_TIMEOUT),
            "POSTGRES_CONNECT_TIMEOUT": str(pgstore.POOL_WAIT_SECONDS),
            "POSTGRES_POOL_SIZE": "5",
            "POSTGRES_MAX_OVERFLOW": "10",
        }

    def sqlalchemy_url(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.sqlite_path}"
        url = make_url(self.url).set(drivername="postgresql+psycopg")
        return url.render_as_string(hide_password=False)

    def engine(self, *, writer: bool) -> Engine:
        """An engine for the read models. On SQLite the writer begins IMMEDIATE transactions,
        so a projector holds the write lock from its first read of the tracking row, and commits
        with `synchronous=NORMAL`: in WAL mode a power loss can then lose only the last read-model
        transactions, and since each carries its tracking position, the projector re-applies
        their events from the log (which keeps the library's durable commits)."""
        if self.backend == "sqlite":
            _private_file(self.sqlite_path)
            engine = create_engine(
                self.sqlalchemy_url(),
                connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_MS / 1000},
            )
            _sqlite_transactions(engine, "BEGIN IMMEDIATE" if writer else "BEGIN", writer)
            return engine
        # The projector (the writer) checks its DBAPI connections itself: it discards a broken one
        # and retries the batch, instead of a ping round trip before every batch.
        kwargs: dict[str, Any] = {
            "pool_pre_ping": not writer,
            "pool_size": 5,
            "max_overflow": 10,
            "pool_timeout": pgstore.POOL_WAIT_SECONDS,
            "connect_args": pgstore.connection_options(),
        }
        return create_engine(self.sqlalchemy_url(), **kwargs)

    def probe(self) -> None:
        """Fail within seconds, with the real reason, when the database cannot be reached.

        Raises `StoreUnavailable` naming the cause (the server's message: no such database, bad
        password; or the system's: connection refused on host:port)."""
        if self.backend == "sqlite":
            return
        env = self.eventsourcing_env()
        try:
            pgstore.probe(
                env["POSTGRES_HOST"],
                env["POSTGRES_PORT"],
                env["POSTGRES_DBNAME"],
                env["POSTGRES_USER"],
                env["POSTGRES_PASSWORD"],
            )
        except Exception as error:  # noqa: BLE001 - psycopg's errors, reworded for the operator
            raise StoreUnavailable(
                f"cannot reach the PostgreSQL database {env['POSTGRES_DBNAME']!r} on "
                f"{env['POSTGRES_HOST']}:{env['POSTGRES_PORT']}: {pgstore.reason(error)}"
            ) from None


def _private_file(path: Path) -> None:
    """Create the SQLite file readable by its owner only (0600), as the key files are: it holds
    the whole audit trail. SQLite gives its -wal and -shm files the database file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _sqlite_transactions(engine: Engine, begin: str, writer: bool = False) -> None:
    """Take transaction control from pysqlite, whose implicit BEGIN is deferred and late.
    Connections are pooled (the PRAGMAs run once per connection, not once per transaction)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA cache_size=-32768")  # 32 MiB: the audit table's indexes stay in memory
        if writer:
            cursor.execute("PRAGMA synchronous=NORMAL")
            # The projector's commits rewrite pages all over its token-keyed B-trees: checkpoint
            # (copy the WAL into the database and fsync) every ~40 MiB of WAL rather than every
            # 4 MiB, i.e. after every batch of a backlog, so a page rewritten by several batches
            # is copied once.
            cursor.execute(f"PRAGMA wal_autocheckpoint={WRITER_WAL_AUTOCHECKPOINT_PAGES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql(begin)
