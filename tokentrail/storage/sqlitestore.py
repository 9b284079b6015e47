"""The SQLite event store as tokentrail runs it: eventsourcing's recorder, which can project a
command's events in the transaction that inserts them.

`Database.eventsourcing_env` selects this module's `Factory` for SQLite. It differs from the
library's in two ways:

- **One transaction per command.** When `within` is set (by `Service`, for its commands) the
  recorder hands the new notifications and the open connection to the projector before the commit,
  so the events, the read models and the tracking row are one transaction, one commit (see
  `storage/within.py`).
- **Connections that keep their statements.** The library opens its connections with a statement
  cache of one (`cached_statements=True`), so every statement is compiled again each time; with the
  projector's dozen statements on the same connection that cost more than the inserts. Here each
  connection keeps 256, and has the read-model writer's 32 MiB page cache.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import InterfaceError, StoredEvent
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteConnection, SQLiteConnectionPool, SQLiteFactory

from tokentrail.storage.within import Within, notifications_of

CACHE_PAGES = -32768  # 32 MiB of page cache (negative: KiB), as the read models' writer has


class Recorder(SQLiteApplicationRecorder):
    within: Within | None = None

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        within = self.within
        projected = None
        with self.datastore.transaction(commit=True) as c:
            ids = self._insert_events(c, stored_events, **kwargs)
            if within is not None and ids and within.active():
                notifications = notifications_of(stored_events, ids)
                if within.project(c.sqlite_cursor.connection, notifications):
                    projected = notifications
        if within is not None and projected is not None:
            within.committed(projected)
        return ids

    def select_events_of(self, originator_ids: Sequence[UUID]) -> dict[UUID, list[StoredEvent]]:
        """The stored events of many aggregates, by id, in version order: one query per 500 ids
        (by the events table's primary key) instead of one transaction each."""
        found: dict[UUID, list[StoredEvent]] = {}
        ids = list(originator_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            with self.datastore.transaction(commit=False) as c:
                c.execute(
                    f"SELECT originator_id, originator_version, topic, state FROM {self.events_table_name} "
                    f"WHERE originator_id IN ({marks}) ORDER BY originator_id, originator_version",
                    [i.hex for i in chunk],
                )
                for row in c.fetchall():
                    originator_id = UUID(row["originator_id"])
                    found.setdefault(originator_id, []).append(
                        StoredEvent(
                            originator_id=originator_id,
                            originator_version=row["originator_version"],
                            topic=row["topic"],
                            state=row["state"],
                        )
                    )
        return found


class Pool(SQLiteConnectionPool):
    def _create_connection(self) -> SQLiteConnection:
        """The library's connection (autocommit, WAL, `sqlite3.Row`), keeping its statements."""
        try:
            c = sqlite3.connect(
                database=self.db_name,
                uri=True,
                check_same_thread=False,
                isolation_level=None,
                cached_statements=256,
                timeout=self.lock_timeout or 5,
            )
        except (sqlite3.Error, TypeError) as e:
            raise InterfaceError(e) from e
        if not self.is_sqlite_memory_mode and not self.is_journal_mode_wal:
            if c.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                c.execute("PRAGMA journal_mode=WAL")
            self.is_journal_mode_wal = True
        c.execute(f"PRAGMA cache_size={CACHE_PAGES}")
        c.row_factory = sqlite3.Row
        return SQLiteConnection(sqlite_conn=c, max_age=self.max_age)


class Factory(SQLiteFactory):
    application_recorder_class = Recorder

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        library = self.datastore.pool  # not connected yet: replaced by one of the same settings
        self.datastore.pool = Pool(
            db_name=library.db_name,
            lock_timeout=library.lock_timeout,
            pool_size=library.pool_size,
            max_overflow=library.max_overflow,
            pool_timeout=library.pool_timeout,
            max_age=library.max_age,
            pre_ping=library.pre_ping,
        )
        library.close()
