"""Last use of each token: when one of its values last authenticated, on this server or another.

Usage is a read-model fact, not a change to the token: no event is written per use. Each
authentication stores an instant in a dict in memory (no lock, no I/O on the request's path); a
background thread writes the instants that moved, in one batch, every `TOKENTRAIL_LAST_USE_SECONDS`
(30 by default, so the table is at most that late), and once more when the service closes. The
write merges with `max()` (`INSERT … ON CONFLICT DO UPDATE`), so several servers sharing a
PostgreSQL database each write their own figures and the latest use wins; a restart loses nothing
that was flushed. The table (`tt_token_usage`) is not projected from the log: `tokentrail rebuild`
neither drops nor rebuilds it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError

from tokentrail.projections import schema as s

DEFAULT_FLUSH_SECONDS = 30.0
_CHUNK = 500

log = logging.getLogger(__name__)


class UsageRecorder:
    def __init__(
        self, engine: Engine, backend: str, flush_seconds: float = DEFAULT_FLUSH_SECONDS, reader: Engine | None = None
    ) -> None:
        self.engine = engine  # writes
        # Reads go through the read models' reading engine, whose pool checks a connection before
        # lending it: a request must not fail on a connection the database dropped (a restart).
        self.reader = reader or engine
        self.backend = backend
        self.flush_seconds = flush_seconds
        self.enabled = flush_seconds > 0
        # token id -> last use seen by this process (µs). Entries are never removed (one per token
        # used, bounded by the token table), so a flush never races a use into oblivion.
        self._seen: dict[str, int] = {}
        self._written: dict[str, int] = {}  # what this process last wrote for each token
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    # -- the hot path -------------------------------------------------------------------------

    def used(self, token_id: str, at: int) -> None:
        """A value of `token_id` authenticated at `at` (µs). Two racing threads may keep either
        instant (they are microseconds apart): last use is a figure to the minute, not an account."""
        if not self.enabled:
            return
        if self._seen.get(token_id, 0) < at:
            self._seen[token_id] = at
        if self._thread is None:
            self._start()

    # -- writing ------------------------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="tokentrail-last-use", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception:  # the store is down: the figures stay in memory for the next flush
                log.warning("last use: could not write to the store; will retry", exc_info=True)

    def flush(self) -> int:
        """Write every instant that moved since the last flush; how many tokens were written."""
        with self._flush_lock:
            seen = self._seen.copy()  # atomic under the GIL, whatever the request threads do
            moved = [(token_id, at) for token_id, at in seen.items() if self._written.get(token_id, 0) < at]
            if not moved:
                return 0
            moved.sort()  # one lock order for every server: no deadlock between two flushes
            greatest = "GREATEST" if self.backend == "postgres" else "max"
            mark = "%s" if self.backend == "postgres" else "?"
            sql = (
                f"INSERT INTO {s.token_usage.name} (token_id, last_used_at) VALUES ({mark}, {mark}) "
                f"ON CONFLICT (token_id) DO UPDATE SET last_used_at = "
                f"{greatest}({s.token_usage.name}.last_used_at, excluded.last_used_at)"
            )
            for attempt in (1, 2):
                try:
                    with self.engine.begin() as conn:
                        for start in range(0, len(moved), _CHUNK):
                            conn.exec_driver_sql(sql, moved[start : start + _CHUNK])
                    break
                except DBAPIError as error:
                    # A connection the database dropped (the pool discards them all): once more.
                    if attempt == 2 or not error.connection_invalidated:
                        raise
            self._written.update(moved)
            return len(moved)

    def close(self) -> None:
        """Stop the thread and write what is left (on shutdown)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
        if self.enabled:
            try:
                self.flush()
            except Exception:
                log.warning("last use: the final write failed; figures since the last flush are lost", exc_info=True)

    # -- reading ------------------------------------------------------------------------------

    def last_used(self, token_ids: Iterable[str]) -> dict[str, int]:
        """The last use of each token known to the store or to this process (absent: never used)."""
        ids = sorted(set(token_ids))
        out: dict[str, int] = {}
        u = s.token_usage
        with self.reader.connect() as conn:
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                out.update(conn.execute(select(u.c.token_id, u.c.last_used_at).where(u.c.token_id.in_(chunk))).all())
        for token_id in ids:
            mine = self._seen.get(token_id)
            if mine is not None and mine > out.get(token_id, 0):
                out[token_id] = mine
        return out

    def last_used_of(self, token_ids: Iterable[str]) -> dict[str, int]:
        """`last_used` for a few tokens, or every token's for many (one query either way)."""
        ids = list(token_ids)
        return self.last_used(ids) if len(ids) <= _CHUNK else self.all_last_used()

    def all_last_used(self) -> dict[str, Any]:
        """Every token's last use (for the stale-token and review reads of a whole workspace)."""
        u = s.token_usage
        with self.reader.connect() as conn:
            out: dict[str, int] = dict(conn.execute(select(u.c.token_id, u.c.last_used_at)).all())
        for token_id, mine in self._seen.copy().items():
            if mine > out.get(token_id, 0):
                out[token_id] = mine
        return out
