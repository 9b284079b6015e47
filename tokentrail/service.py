"""The assembled ledger: write side, projector, queries and authentication over one database.

`Service.command` runs a use case and catches the read models up to exactly the position it wrote
before returning (read-your-writes). `Service.sync` is called before serving a read: one cheap
"what is the log's head" check, and when other processes have written, their events are projected
and the affected tokens evicted from the authentication cache.

The head check stays exact (a read that starts after another process's commit sees it) but cheap:
on SQLite `PRAGMA data_version` on a dedicated connection says whether anything was committed since
the last check, so the log is only queried when it may have moved; on PostgreSQL concurrent
requests share one query (a request reuses a check that started after it arrived).
"""

from __future__ import annotations

import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from eventsourcing.persistence import InterfaceError as StoreInterfaceError
from eventsourcing.persistence import Notification
from eventsourcing.persistence import OperationalError as StoreOperationalError
from sqlalchemy.exc import InterfaceError as SQLInterfaceError
from sqlalchemy.exc import OperationalError as SQLOperationalError
from sqlalchemy.exc import SQLAlchemyError

from tokentrail import keys
from tokentrail.auth import Authenticator
from tokentrail.domain import clock
from tokentrail.domain.errors import ConfigurationError, LedgerError, ProjectionFailed, StoreUnavailable
from tokentrail.domain.ledger import Change, Ledger
from tokentrail.domain.model import Token
from tokentrail.domain.values import TokenSigner
from tokentrail.projections.projector import Projector
from tokentrail.projections.queries import Queries
from tokentrail.reads import Reads
from tokentrail.stats import ProcessStats
from tokentrail.storage import pgstore
from tokentrail.storage.database import Database, data_dir, database_url
from tokentrail.storage.migrate import upgrade
from tokentrail.usage import DEFAULT_FLUSH_SECONDS, UsageRecorder

T = TypeVar("T")

# What a store that is down, unreachable or timing out raises (not a projection's own bug).
_UNREACHABLE = (StoreOperationalError, StoreInterfaceError, SQLOperationalError, SQLInterfaceError)

# Events after which a token's old value must stop working: their visibility here is measured.
REVOKING_TOPICS = frozenset({Token.Refreshed.TOPIC, Token.Deleted.TOPIC})


def _last_use_seconds(env: dict[str, str]) -> float:
    """How often last use is written (seconds, at most 60 so it is never more than a minute late);
    0 or `off` records no use at all."""
    raw = env.get("TOKENTRAIL_LAST_USE_SECONDS", "").strip().lower()
    if not raw:
        return DEFAULT_FLUSH_SECONDS
    if raw in ("0", "off", "false", "no"):
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigurationError(f"TOKENTRAIL_LAST_USE_SECONDS must be seconds from 0 to 60, not {raw!r}") from None
    if not 0 <= seconds <= 60:
        raise ConfigurationError(f"TOKENTRAIL_LAST_USE_SECONDS must be seconds from 0 to 60, not {raw!r}")
    return seconds


class Service:
    def __init__(
        self,
        url: str | None = None,
        *,
        data: Path | None = None,
        environ: dict[str, str] | None = None,
        migrate: bool = True,
        host: str | None = None,
    ) -> None:
        env = dict(os.environ if environ is None else environ)
        self.data_dir = Path(data) if data is not None else data_dir(env)
        self.database = Database(url or database_url(env))
        self.database.probe()  # a wrong URL fails now, naming why, not after the pool's wait
        self.environ = env
        key = keys.server_key(self.data_dir, env)
        self.signer = TokenSigner(key, host=host)
        self.ledger = Ledger(env=self.database.eventsourcing_env(), signer=self.signer)
        self.write_engine = self.database.engine(writer=True)
        self.read_engine = self.database.engine(writer=False)
        if migrate:
            upgrade(self.write_engine)
        # One key per store: a server with another key would hand out values the others refuse.
        self.key_fingerprint = keys.check_fingerprint(
            self.write_engine, key, rotate=env.get("TOKENTRAIL_ROTATE_KEY", "").lower() in ("1", "true", "yes")
        )
        self.projector = Projector(self.ledger, self.write_engine, self.database.backend, reader=self.read_engine)
        self.queries = Queries(self.read_engine)
        # Last use of each token: coalesced here, written in batches (`TOKENTRAIL_LAST_USE_SECONDS`,
        # 0 turns it off), flushed on close.
        self.usage = UsageRecorder(
            self.write_engine, self.database.backend, _last_use_seconds(env), reader=self.read_engine
        )
        self.auth = Authenticator(self.queries, self.signer, self.usage.used)
        self.reads = Reads(self)  # the read side's one door (the ledger is the write side's)
        self._seen = 0  # every event up to here is projected and its tokens evicted from the cache
        self._seen_lock = threading.Lock()
        # The auth cache starts empty and is filled from read models that already hold every event
        # up to the projector's position now: those events never need evicting. (Without this, a
        # new process read the whole log back once, ~6 s at a million events.)
        self._cache_floor = self._initial_floor(migrate)
        # SQLite has one writer at a time: queue this process's writers here, not on the file lock.
        self._write_lock = threading.Lock() if self.backend == "sqlite" else None
        self._head = _LogHead(self)
        self.stats = ProcessStats()
        # Log positions of revoking events: written here (not measured: this process never had
        # them in flight) and already measured (an event can reach both eviction paths).
        self._own_revocations: set[int] = set()
        self._measured_revocations: set[int] = set()
        # The projector is handed what this process writes (no read-back of its own events) and
        # tells us what it applied (no read-back to evict the cache).
        self.ledger._notify = self._recorded  # type: ignore[method-assign]  # eventsourcing's hook
        self.projector.listeners.append(self._applied)
        # A command's events are projected in the transaction that inserts them (one commit).
        self._commanding = threading.local()
        self.ledger.recorder.within = _CommandProjection(self)  # type: ignore[attr-defined]

    @property
    def backend(self) -> str:
        return self.database.backend

    def command(self, use_case: Callable[[], T]) -> T:
        """Run a write; when it returns, this process's read models include its events.

        Its saves are projected inside the event store's own transaction (one connection, one
        commit for the events, the read models and the tracking row); a save the projector
        declines (another writer's events not projected yet, a batch over a thousand events) is
        caught up after its commit, as is anything another process wrote."""
        outer = getattr(self._commanding, "active", False)
        self._commanding.active = True
        try:
            if self._write_lock is not None:
                with self._write_lock:
                    result = use_case()
            else:
                result = use_case()
        finally:
            self._commanding.active = outer
        position = getattr(result, "position", None)
        if position:
            try:
                self.sync(until=position)
            except LedgerError as error:
                # The events are stored: whatever the projector said, it is not the caller's 4xx.
                raise ProjectionFailed(
                    f"the change was committed (log position {position}) but the read models could "
                    f"not be updated: {error.message}"
                ) from error
        return result

    def sync(self, until: int | None = None) -> int:
        """Catch the read models and the auth cache up to the log's head (or `until`).

        A store that cannot be reached is `StoreUnavailable` (503): a server that cannot prove
        its view is fresh refuses rather than answer from stale state."""
        try:
            head = until if until is not None else self._head.position()
            if head <= self._seen:
                return self._seen
            self.projector.catch_up(until=head)
            self._evict_through(head)
        except _UNREACHABLE as error:
            raise StoreUnavailable("the store cannot be reached; try again shortly") from error
        return head

    def fresh(self) -> bool:
        """True when, without waiting on anything, the read models are known to include the
        log's head (SQLite: nothing committed since the last check). False means: call `sync`."""
        head = self._head.known()
        return head is not None and head <= self._seen

    def _recorded(self, recordings: Sequence[Any]) -> None:
        self.stats.written([type(r.domain_event).__qualname__ for r in recordings])
        if recordings and recordings[-1].notification.id > self.projector.position:  # not projected in its insert
            self._note_own([r.notification for r in recordings])
            self.projector.remember([r.notification for r in recordings])

    def _note_own(self, notifications: Sequence[Notification]) -> None:
        """Revocations this process wrote: never measured as seen from elsewhere."""
        own = [n.id for n in notifications if n.topic in REVOKING_TOPICS]
        if own:
            with self._seen_lock:
                self._own_revocations.update(own)

    def _measure_revocations(self, notifications: Sequence[Notification]) -> None:
        """For each Refreshed or Deleted token event another process wrote, observe how long
        after its timestamp this process evicted the token: the time a revoked value could still
        have been accepted here. Called with `_seen_lock` held.

        Catching up happens when a request arrives, so after an idle spell the figure includes the
        idle time (an upper bound). An own write that another thread of this process projects
        between its commit and `_recorded` is counted as foreign (with a figure of milliseconds)."""
        for n in notifications:
            if n.topic not in REVOKING_TOPICS:
                continue
            if n.id in self._own_revocations:
                self._own_revocations.discard(n.id)
                continue
            if n.id in self._measured_revocations:
                continue
            try:
                written = self.ledger.mapper.to_domain_event(n).timestamp  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - a measurement must never fail an eviction
                continue
            self._measured_revocations.add(n.id)
            self.stats.revocation_visibility.observe(max(0.0, (clock.now() - written).total_seconds()))
        # Positions at or below `_seen` never reach either path again; own ones nobody projected
        # (a crash between write and projection) must not pile up either.
        if len(self._measured_revocations) > 1000:
            self._measured_revocations = {i for i in self._measured_revocations if i > self._seen}
        if len(self._own_revocations) > 10_000:
            self._own_revocations = {i for i in self._own_revocations if i > self._seen}

    def _initial_floor(self, migrated: bool) -> int:
        try:
            return self.projector.tracked_position()
        except SQLAlchemyError:
            if migrated:
                raise
            return 0  # read models not created yet (migrate=False): nothing is projected

    def _applied(self, notifications: Sequence[Notification], after: int) -> None:
        """The projector committed these, which follow on from log position `after`: evict their
        tokens; when they follow on from what the cache already reflects, the cache now reflects
        them too (no read-back of the log)."""
        self.auth.tokens.evict({str(n.originator_id) for n in notifications})
        with self._seen_lock:
            self._measure_revocations(notifications)
            if notifications and after == max(self._seen, self._cache_floor):
                self._seen = notifications[-1].id

    def _evict_through(self, head: int) -> None:
        """Evict the tokens of events up to `head` that this process did not project itself
        (another process did): only those are read back from the log."""
        with self._seen_lock:
            if self._seen < self._cache_floor:
                self._seen = min(self._cache_floor, head)
            while self._seen < head:
                notes = self.ledger.recorder.select_notifications(start=self._seen + 1, limit=1000, stop=head)
                if not notes:
                    break
                self.auth.tokens.evict({str(n.originator_id) for n in notes})
                self._measure_revocations(notes)
                self._seen = notes[-1].id

    def readiness(self) -> dict[str, int]:
        """The log's head and the projector's position, read from the store now; raises
        `StoreUnavailable` naming the cause when the store does not answer."""
        try:
            head = self.ledger.recorder.max_notification_id() or 0
            projected = self.projector.tracked_position()
        except Exception as error:  # noqa: BLE001 - any failure to answer is the reason to report
            try:
                self.database.probe()  # a fresh connection says why (refused, closed, no such database)
            except StoreUnavailable as down:
                raise StoreUnavailable(f"the database does not answer: {down.message}") from None
            raise StoreUnavailable(f"the database does not answer: {pgstore.reason(error)}") from None
        return {"head": head, "projected": projected}

    def projection_lag(self) -> tuple[int, float]:
        """How far the read models are behind the log, read from the store now: events, and the
        age in seconds of the oldest event not yet projected (0 when caught up)."""
        head = self.ledger.recorder.max_notification_id() or 0
        projected = self.projector.tracked_position()
        if head <= projected:
            return 0, 0.0
        oldest = self.ledger.recorder.select_notifications(start=projected + 1, limit=1)
        if not oldest:
            return head - projected, 0.0
        written = self.ledger.mapper.to_domain_event(oldest[0]).timestamp  # type: ignore[attr-defined]
        return head - projected, max(0.0, (clock.now() - written).total_seconds())

    @property
    def listener_live(self) -> bool | None:
        """PostgreSQL: has the LISTEN connection proved itself alive within the last half second?
        (It starts with a server's first read.) None on SQLite, which has no listener."""
        return None if self.backend == "sqlite" else self._head.listener_live

    def close(self) -> None:
        self.usage.close()
        self._head.close()

        self.ledger.close()
        self.write_engine.dispose()
        self.read_engine.dispose()

    def checkpoint_key(self):  # noqa: ANN201 - cryptography's Ed25519PrivateKey
        return keys.checkpoint_key(self.data_dir, self.environ)


class _LogHead:
    """The notification log's head, checked cheaply.

    `position()` asks the database (exact: a check that starts after a commit sees it). On SQLite
    it asks only when `PRAGMA data_version` on a dedicated connection says that something was
    committed since the last check; on PostgreSQL concurrent callers share one query (a caller
    reuses a query that started after it arrived).

    `known()` answers without any I/O, or says it cannot (None). On SQLite it is as exact as
    `position()`. On PostgreSQL it relies on the NOTIFY that the event store sends with every
    insert: a thread LISTENs, and while no notification has arrived since the last query, the
    head is known, but only while the listening connection proves it is live.

    Liveness is proved through the connection itself, not by the thread being alive: every
    `HEARTBEAT_NS` the listener sends a NOTIFY on a channel of its own and, when that notification
    comes back, records the instant it was sent. PostgreSQL delivers notifications to a listener
    in commit order, so receiving our heartbeat sent at S proves that every insert committed
    before S has been notified to us (and counted). `known()` answers only while the last
    heartbeat that came back was sent less than `LIVENESS_NS` ago; hence:

      a request that arrives more than LIVENESS_NS (0.5 s) after a commit (by any process) either
      has that commit's notification counted, and queries the store, or finds no fresh heartbeat,
      and queries the store. Either way it sees the commit.

    Inside that half second a request may still be answered from the state before the commit
    while the notification is in flight (typically a few milliseconds). A connection that stalls
    (socket open, no traffic: a NAT or firewall idle timeout) stops returning heartbeats, so
    `known()` says None within LIVENESS_NS and every caller queries; a watchdog shuts the stalled
    socket down after `STALL_NS` so that the listener reconnects. The listener starts on the first
    `known()` call (a server's), not for CLI commands.
    """

    HEARTBEAT_NS = 250_000_000  # how often the listener proves its connection
    LIVENESS_NS = 500_000_000  # a heartbeat older than this: the head is not known, query
    STALL_NS = 2_000_000_000  # no heartbeat back for this long: drop the connection, reconnect

    def __init__(self, service: Service) -> None:
        self._service = service
        self._recorder = service.ledger.recorder
        self._lock = threading.Lock()
        self._started = 0  # monotonic start time of the last completed query
        self._value = 0
        self._watch: sqlite3.Connection | None = None
        self._version: int | None = None
        # PostgreSQL: notifications counted by the listener; the count seen before the last query.
        self._notified = 0
        self._checked = -1
        self._alive = 0  # monotonic send time of the last heartbeat that came back
        self._connected = 0  # monotonic time the current listening connection was opened
        self._socket_fd: int | None = None
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()
        if service.backend == "sqlite":
            self._watch = sqlite3.connect(
                str(service.database.sqlite_path), check_same_thread=False, isolation_level=None
            )

    def position(self) -> int:
        arrived = time.monotonic_ns()
        with self._lock:
            if self._watch is not None:
                # Changes only when another connection (any process) has committed since the
                # last time this connection asked: until then the head cannot have moved.
                version = self._watch.execute("PRAGMA data_version").fetchone()[0]
                if version == self._version:
                    return self._value
                self._value = self._recorder.max_notification_id() or 0
                self._version = version
                return self._value
            if self._started > arrived:  # a query that began after this caller arrived
                return self._value
            started, notified = time.monotonic_ns(), self._notified
            self._value = self._recorder.max_notification_id() or 0
            self._started, self._checked = started, notified
            return self._value

    def known(self) -> int | None:
        """The head, when it is known not to have moved, without waiting (else None)."""
        if self._watch is None:
            return self._known_by_notifications()
        if not self._lock.acquire(blocking=False):
            return None
        try:
            version = self._watch.execute("PRAGMA data_version").fetchone()[0]
            return self._value if version == self._version else None
        finally:
            self._lock.release()

    @property
    def listener_live(self) -> bool:
        """Did a heartbeat come back through the listening connection within LIVENESS_NS?"""
        return time.monotonic_ns() - self._alive <= self.LIVENESS_NS

    def _known_by_notifications(self) -> int | None:
        if self._listener is None:
            with self._lock:
                if self._listener is None and not self._stop.is_set():
                    self._listener = threading.Thread(target=self._listen, name="tokentrail-log-listener", daemon=True)
                    self._listener.start()
                    threading.Thread(target=self._watchdog, name="tokentrail-log-watchdog", daemon=True).start()
            return None
        if self._notified != self._checked or not self.listener_live:
            return None
        return self._value

    def _listen_env(self) -> dict[str, str]:
        """Where the LISTEN connection goes: TOKENTRAIL_LISTEN_URL if set (say, straight to
        PostgreSQL when the pool goes through a transaction-pooling proxy), else the store's URL."""
        url = self._service.environ.get("TOKENTRAIL_LISTEN_URL")
        return (Database(url) if url else self._service.database).eventsourcing_env()

    def _listen(self) -> None:
        import psycopg
        from psycopg import sql

        env = self._listen_env()
        channel = getattr(self._recorder, "channel_name", None)
        if not channel:
            return
        heartbeat = f"tokentrail_hb_{os.getpid()}_{secrets.token_hex(4)}"
        sent: dict[str, int] = {}
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    host=env["POSTGRES_HOST"],
                    port=env["POSTGRES_PORT"],
                    dbname=env["POSTGRES_DBNAME"],
                    user=env["POSTGRES_USER"],
                    password=env["POSTGRES_PASSWORD"] or None,
                    autocommit=True,
                    connect_timeout=5,
                ) as conn:
                    self._connected = time.monotonic_ns()
                    self._socket_fd = conn.fileno()
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(heartbeat)))
                    self._notified += 1  # anything before LISTEN is unknown: the next caller queries
                    notify = sql.SQL("NOTIFY {}, {}")
                    while not self._stop.is_set():
                        beat = time.monotonic_ns()
                        if len(sent) > 64:  # heartbeats that never came back
                            sent.clear()
                        sent[str(beat)] = beat
                        # Blocks on a stalled connection: then no heartbeat comes back, `known()`
                        # says None, and the watchdog breaks the socket.
                        conn.execute(notify.format(sql.Identifier(heartbeat), sql.Literal(str(beat))))
                        remaining = (beat + self.HEARTBEAT_NS - time.monotonic_ns()) / 1e9
                        # Notifications that arrived during the NOTIFY are queued: yielded here,
                        # in the order PostgreSQL delivered them (commit order).
                        for note in conn.notifies(timeout=max(remaining, 0.001)):
                            if note.channel == heartbeat:
                                came_back = sent.pop(note.payload, None)
                                if came_back is not None and came_back > self._alive:
                                    self._alive = came_back
                            else:
                                self._notified += 1
            except Exception:  # noqa: BLE001 - down or stalled: callers query until it is back
                self._alive = 0
                self._notified += 1
                self._stop.wait(0.5)
            finally:
                self._socket_fd = None

    def _watchdog(self) -> None:
        """Break a listening connection that stopped returning heartbeats (the thread is then
        stuck in a read that would never end): the listener sees the error and reconnects."""
        while not self._stop.wait(self.HEARTBEAT_NS / 1e9):
            fd = self._socket_fd
            now = time.monotonic_ns()
            if fd is None or now - max(self._alive, self._connected) < self.STALL_NS:
                continue
            try:
                stuck = socket.socket(fileno=os.dup(fd))
            except OSError:
                continue
            try:
                stuck.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            finally:
                stuck.close()
            self._connected = now  # give the next connection its own STALL_NS

    def close(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.close()
        # The listener sees the stop flag within a heartbeat and closes its connection; no need
        # to hold up the caller for it (it is a daemon thread).


__all__ = ["Service", "Change"]


class _CommandProjection:
    """What the event store's recorder calls around a save (`storage/within.py`): project the
    events in the insert's transaction, but only for saves made inside `Service.command` (direct
    `ledger` writes, as tools and benchmarks make, are caught up later as before)."""

    def __init__(self, service: Service) -> None:
        self._service = service

    def active(self) -> bool:
        return getattr(self._service._commanding, "active", False)

    def project(self, dbapi: Any, notifications: Sequence[Notification]) -> bool:
        return self._service.projector.project_within(dbapi, notifications, self._service.ledger.events_being_saved())

    def committed(self, notifications: Sequence[Notification]) -> None:
        self._service._note_own(notifications)  # before the listeners measure them
        self._service.projector.committed_within(notifications)
