"""The PostgreSQL event store as tokentrail runs it: eventsourcing's recorder, made safe to share.

`Database.eventsourcing_env` selects this module's `Factory` for PostgreSQL. It differs from the
library's in five ways, four of them for failures seen with several servers on one database:

- **No pipeline on insert.** The library sends the table lock, the NOTIFY and the INSERT in psycopg
  pipeline mode. With a large batch (a deployment of thousands of tokens: one INSERT carrying
  tens of thousands of events and returning their ids) the exchange deadlocks inside psycopg's
  `Pipeline.sync`: the client waits forever while its transaction holds the events table's
  EXCLUSIVE lock, and every writer on every server waits behind it. Here the same three statements
  run one after the other in an ordinary transaction: a batch of any size completes (or times
  out) like any other statement.
- **Bounded waits.** Every connection carries `statement_timeout` and a TCP connect timeout, and a
  request waits at most `POOL_WAIT_SECONDS` for a pooled connection. The library's own retries
  (ten attempts, each one waiting up to the full pool timeout: minutes with the database down)
  become one retry after a broken pooled connection, and none for an insert whose commit may
  have been sent (a retry could then commit it twice, or commit it long after its client left).
- **Tables created once, under a lock.** On start the library runs `CREATE TABLE IF NOT EXISTS`,
  `CREATE TYPE` and `CREATE OR REPLACE FUNCTION`; several servers starting at once collide on the
  catalog (`tuple concurrently updated`). Here creation runs under a session advisory lock and is
  skipped when the table and its row type already exist.
- **One transaction per command.** A command's events are projected inside the transaction that
  inserts them (`within.py`), on its connection: one commit for the events and the read models.
- **A clear first error.** `probe` connects once with a short timeout, so that a wrong host, port,
  database or password is reported as the server's own message within seconds, not as "couldn't
  get a connection after 30 sec".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from eventsourcing.persistence import InterfaceError, Notification, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresFactory
from psycopg.sql import SQL, Identifier

from tokentrail.storage.within import Within, notifications_of

T = TypeVar("T")

# The limits, in seconds. A statement that runs longer than STATEMENT_TIMEOUT is cancelled by the
# server (the largest accepted deployment inserts in about a second); a request waits for a pooled
# connection at most POOL_WAIT_SECONDS, so with the database down it is refused well within 5 s.
STATEMENT_TIMEOUT = 20
LOCK_TIMEOUT = 5  # waiting for the events table's lock (another writer's insert)
IDLE_IN_TRANSACTION_TIMEOUT = 10  # a transaction left open by a stalled client is ended by the server
CONNECT_TIMEOUT = 3
POOL_WAIT_SECONDS = 3
DOWN_SECONDS = 1.0  # after a vain wait for a connection, calls fail at once for this long
RECONNECT_GIVE_UP_SECONDS = 5  # the pool's background reconnection backs off no longer than this
CREATE_LOCK_KEY = 0x74746576  # "ttev": the advisory lock held while the event tables are created


def connection_options() -> dict[str, Any]:
    """libpq parameters for every connection to the store (event store, read models, probe).

    statement_timeout bounds any one statement on the server; idle_in_transaction_session_timeout
    ends a transaction whose client stopped talking (its locks with it); the TCP keepalives and
    tcp_user_timeout make a connection whose peer vanished (no RST) fail in seconds, not hours.
    """
    return {
        "connect_timeout": CONNECT_TIMEOUT,
        "options": f"-c statement_timeout={STATEMENT_TIMEOUT * 1000} "
        f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT * 1000}",
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": 10_000,
    }


def probe(host: str, port: str | int, dbname: str, user: str, password: str | None) -> None:
    """Connect once, or raise `psycopg.OperationalError` carrying the server's (or the OS's) reason."""
    options = connection_options()
    with psycopg.connect(
        host=host,
        port=port,
        dbname=dbname,
        user=user,
        password=password or None,
        connect_timeout=options["connect_timeout"],
        autocommit=True,
    ) as conn:
        conn.execute("SELECT 1")


def reason(error: BaseException) -> str:
    """The useful line of a psycopg connection error: the server's or the system's own words."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if " failed: " in line:
            line = line.rsplit(" failed: ", 1)[1]
        line = line.removeprefix("FATAL:").strip()
        if line and not line.lower().startswith("is the server running"):
            return line
    return type(error).__name__


def is_connection_error(error: BaseException) -> bool:
    """A lost or refused connection, as opposed to a statement the server refused or timed out."""
    text = str(error).lower()
    if "timeout" in text and "canceling statement" in text:
        return False  # lock or statement timeout: the connection is fine
    return "couldn't get a connection" not in text  # the pool already waited its full time


class Recorder(PostgresApplicationRecorder):
    """The library's application recorder, without pipeline mode and with bounded retries."""

    _down: tuple[float, str] = (0.0, "")  # (monotonic time until which the store is taken as down, why)

    within: Within | None = None  # projects a command's events in the insert's transaction

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        committing = False
        within = self.within if self.within is not None and self.within.active() else None
        projected: list[Notification] | None = None

        def insert() -> Sequence[int] | None:
            nonlocal committing, projected
            committing, projected = False, None
            with self.datastore.get_connection() as conn:
                with conn.transaction():
                    with conn.cursor() as curs:
                        self._insert_events(curs, stored_events, **kwargs)
                        if not stored_events:
                            ids = None
                        else:
                            # LOCK TABLE (lock_timeout), NOTIFY, INSERT ... RETURNING.
                            self._insert_stored_events(curs, stored_events, **kwargs)
                            ids = self._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
                    if within is not None and ids:
                        notifications = notifications_of(stored_events, ids)
                        if within.project(conn, notifications):
                            projected = notifications
                    committing = True  # leaving the block sends COMMIT: its outcome may be unknown
                return ids

        ids = self._bounded(insert, retry_if=lambda: not committing)
        if within is not None and projected is not None:
            within.committed(projected)
        return ids

    def select_events(self, *args: Any, **kwargs: Any) -> Any:
        return self._bounded(lambda: _unwrapped(PostgresApplicationRecorder.select_events)(self, *args, **kwargs))

    def select_notifications(self, *args: Any, **kwargs: Any) -> Any:
        return self._bounded(
            lambda: _unwrapped(PostgresApplicationRecorder.select_notifications)(self, *args, **kwargs)
        )

    def max_notification_id(self) -> Any:
        return self._bounded(lambda: _unwrapped(PostgresApplicationRecorder.max_notification_id)(self))

    def select_events_of(self, originator_ids: Sequence[Any]) -> dict[Any, list[StoredEvent]]:
        """The stored events of many aggregates, by id, in version order: one query per thousand
        ids instead of one each (a deployment of 10,000 tokens reads 10,000 name indexes)."""
        found: dict[Any, list[StoredEvent]] = {}
        statement = SQL(
            "SELECT * FROM {0}.{1} WHERE originator_id = ANY(%s) ORDER BY originator_id, originator_version"
        ).format(Identifier(self.datastore.schema), Identifier(self.events_table_name))
        ids = list(originator_ids)
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]

            def select(chunk: list[Any] = chunk) -> list[dict[str, Any]]:
                with self.datastore.get_connection() as conn, conn.cursor() as curs:
                    curs.execute(statement, (chunk,))
                    return curs.fetchall()

            for row in self._bounded(select):
                found.setdefault(row["originator_id"], []).append(
                    StoredEvent(
                        originator_id=row["originator_id"],
                        originator_version=row["originator_version"],
                        topic=row["topic"],
                        state=bytes(row["state"]),
                    )
                )
        return found

    def create_table(self) -> None:
        """Create the events table, its row type and function once, whatever starts alongside."""
        with self.datastore.get_connection() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (CREATE_LOCK_KEY,))
            try:
                row = conn.execute(
                    "SELECT to_regclass(%s) IS NOT NULL AS t, to_regtype(%s) IS NOT NULL AS y",
                    (
                        f"{self.datastore.schema}.{self.events_table_name}",
                        f"{self.datastore.schema}.{self.stored_event_type_name}",
                    ),
                ).fetchone()
                if not (row and row["t"] and row["y"]):
                    super().create_table()
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (CREATE_LOCK_KEY,))
        self.datastore.register_type_adapters()

    def _bounded(self, call: Callable[[], T], retry_if: Callable[[], bool] = lambda: True) -> T:
        """Run `call`; after a broken connection, drop the pool's dead connections and try once more.

        Once a caller has waited the pool's full time in vain, the store is taken to be down for
        DOWN_SECONDS: calls meanwhile fail at once instead of each waiting in turn (requests queued
        behind one lock would otherwise wait 3 s, 6 s, 9 s...)."""
        down_until, reason = self._down
        if time.monotonic() < down_until:
            raise OperationalError(f"the database is unavailable: {reason}")
        started = time.monotonic()
        try:
            return self._watched(call)
        except (InterfaceError, OperationalError) as error:
            if not (is_connection_error(error) and retry_if()) or time.monotonic() - started > POOL_WAIT_SECONDS:
                raise
            self.datastore.pool.check()  # an outage leaves every idle connection broken
            return self._watched(call)

    def _watched(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except OperationalError as error:
            if "couldn't get a connection" in str(error).lower():
                self._down = (time.monotonic() + DOWN_SECONDS, reason(error))
            raise


def _unwrapped(method: Any) -> Any:
    """The library method without its retry decorator (ten attempts, each up to the pool timeout)."""
    return getattr(method, "__wrapped__", method)


class Factory(PostgresFactory):
    application_recorder_class = Recorder

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        pool = self.datastore.pool
        assert isinstance(pool.kwargs, dict)
        pool.kwargs.update(connection_options())
        pool.timeout = POOL_WAIT_SECONDS
        # After an outage the library's pool retries each lost connection with a doubling delay
        # for five minutes: a database back after 90 s would then wait up to a minute more. Given
        # up sooner, a connection is re-made on the next request that needs one.
        pool.reconnect_timeout = RECONNECT_GIVE_UP_SECONDS
