"""One projector follows the notification log in order and, per batch of events, writes every read
model and the tracking row in one transaction: the token table, the temporal tables, the audit rows
with their hash chain. A batch either lands whole with its tracking position or not at all, and the
conditional update of the tracking row refuses a batch that another process already applied, so
each event is applied exactly once, across crashes and across processes.
"""

from __future__ import annotations

import gc
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import psycopg
from eventsourcing.persistence import Notification
from psycopg import sql
from psycopg.rows import tuple_row
from sqlalchemy import Engine, select

from tokentrail.domain import clock
from tokentrail.domain.chain import GENESIS, event_bytes, next_hash
from tokentrail.domain.errors import ProjectionFailed
from tokentrail.domain.ledger import Ledger
from tokentrail.domain.model import (
    DeploymentLog,
    Jwt,
    Lookup,
    Token,
    TokenName,
    User,
    Workspace,
    WorkspaceName,
    grace_after_refresh,
)
from tokentrail.domain.scopes import read_scope
from tokentrail.projections import schema as s

TRACKING_NAME = "ledger"
BATCH_SIZE = 1000
BACKLOG_BATCH_SIZE = 10_000  # once a batch comes back full: a backlog (a new server, a restore)
_ADVISORY_KEY = 0x746F6B656E  # "token"

_AGGREGATES = {
    Token: "token",
    TokenName: "token_name",
    Workspace: "workspace",
    WorkspaceName: "workspace_name",
    User: "user",
    Jwt: "jwt",
    DeploymentLog: "deployment",
    Lookup: "lookup",
}
HIDDEN_AGGREGATES = frozenset({"token_name", "workspace_name"})


class StaleBatch(Exception):
    """Another process applied these events first; the transaction is rolled back."""


_encode = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode  # json.dumps, minus its set-up
_MEMO_SIZE = 65_536
_scope_lists: dict[tuple[str, ...], str] = {}


_dumps = _encode


def _scopes_json(scopes: list[str]) -> str:
    """`_dumps` of a list of scope strings, remembered: the same few lists recur in every event."""
    key = tuple(scopes)
    text_ = _scope_lists.get(key)
    if text_ is None:
        text_ = _scope_lists[key] = _encode(scopes)
        if len(_scope_lists) > _MEMO_SIZE:
            _scope_lists.clear()
    return text_


_decoded: dict[str, tuple[str, ...]] = {}
_between: dict[tuple[str, str], list[str]] = {}


def _scope_list(text_: str) -> list[str]:
    """`json.loads` of a token's scopes column, remembered (a fresh list each time)."""
    found = _decoded.get(text_)
    if found is None:
        found = _decoded[text_] = tuple(json.loads(text_))
        if len(_decoded) > _MEMO_SIZE:
            _decoded.clear()
    return list(found)


def _resources_between(before_json: str, after_json: str, before: list[str], after: list[str]) -> list[str]:
    """`_resources` of the scopes before and after an event, remembered by their JSON texts."""
    key = (before_json, after_json)
    found = _between.get(key)
    if found is None:
        found = _between[key] = _resources(set(before) | set(after))
        if len(_between) > _MEMO_SIZE:
            _between.clear()
    return list(found)


def _resources(scopes: Iterable[str]) -> list[str]:
    out: list[str] = []
    for text_ in scopes:
        scope = read_scope(text_)
        if scope.kind in ("datasource", "pipe") and scope.resource not in out:
            out.append(scope.resource)
    return out


class _Sql:
    """The projector's statements as driver SQL, built once per table and column list, and run on
    the transaction's DBAPI cursor: SQLAlchemy's per-row parameter processing was a quarter of the
    projection's time, and these tables hold plain strings, integers and booleans only."""

    def __init__(self, backend: str) -> None:
        self.mark = "%s" if backend == "postgres" else "?"
        self._cache: dict[Any, str] = {}

    def insert(self, table: str, columns: Sequence[str]) -> str:
        key = ("insert", table, tuple(columns))
        sql = self._cache.get(key)
        if sql is None:
            marks = ", ".join([self.mark] * len(columns))
            sql = self._cache[key] = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
        return sql

    def update(self, table: str, columns: Sequence[str], where: Sequence[str], extra: str = "") -> str:
        key = ("update", table, tuple(columns), tuple(where), extra)
        sql = self._cache.get(key)
        if sql is None:
            sets = ", ".join(f"{c} = {self.mark}" for c in columns)
            conds = " AND ".join([f"{c} = {self.mark}" for c in where] + ([extra] if extra else []))
            sql = self._cache[key] = f"UPDATE {table} SET {sets} WHERE {conds}"
        return sql

    def insert_many(self, table: str, columns: Sequence[str], count: int) -> str:
        """One INSERT of `count` rows (multi-row VALUES)."""
        key = ("insert_many", table, tuple(columns), count)
        sql = self._cache.get(key)
        if sql is None:
            row = f"({', '.join([self.mark] * len(columns))})"
            sql = self._cache[key] = f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([row] * count)}"
        return sql

    def in_list(self, count: int) -> str:
        return ", ".join([self.mark] * count)


@dataclass
class _Batch:
    """In-memory state of one batch; flushed to the database at its end."""

    conn: Any  # the DBAPI connection of the batch's transaction
    cursor: Any = None  # and its cursor
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    new_tokens: set[str] = field(default_factory=set)
    changed_tokens: set[str] = field(default_factory=set)
    indexed: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # (name, deleted) as loaded
    audit_rows: list[dict[str, Any]] = field(default_factory=list)
    audit_resources: list[dict[str, Any]] = field(default_factory=list)
    version_inserts: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    version_closes: list[dict[str, Any]] = field(default_factory=list)
    grant_inserts: list[dict[str, Any]] = field(default_factory=list)
    open_grants: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    grant_closes: list[dict[str, Any]] = field(default_factory=list)
    generation_inserts: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    generation_seqs: dict[str, int] = field(default_factory=dict)
    generation_closes: list[dict[str, Any]] = field(default_factory=list)
    workspaces: list[dict[str, Any]] = field(default_factory=list)
    users: list[dict[str, Any]] = field(default_factory=list)
    jwts: list[dict[str, Any]] = field(default_factory=list)
    jwt_invalidations: list[dict[str, Any]] = field(default_factory=list)
    deployments: list[dict[str, Any]] = field(default_factory=list)
    deployment_updates: list[dict[str, Any]] = field(default_factory=list)

    def token(self, token_id: str) -> dict[str, Any]:
        return self.tokens[token_id]


class Projector:
    """Applies the ledger's events to the read models; `catch_up` is safe to call from anywhere."""

    def __init__(self, ledger: Ledger, engine: Engine, backend: str, reader: Engine | None = None) -> None:
        self.ledger = ledger
        self.engine = engine
        # `tracked_position` reads through a pool that checks its connections (readiness probes
        # must not fail on a connection the database dropped while commands no longer use ours).
        self.reader = reader or engine
        self.backend = backend
        self._lock = threading.Lock()
        self.position = 0  # last position this process knows to be projected
        # Called with each committed batch and the tracked position it followed on from.
        self.listeners: list[Callable[[Sequence[Notification], int], None]] = []
        # Notifications this process has just written (fed by `remember`), so projecting its own
        # commands need not read them back from the log. Used only for a range it covers entirely.
        self._recent: dict[int, Notification] = {}
        self._recent_lock = threading.Lock()
        self._sql = _Sql(backend)
        self._within = threading.local()  # `project_within`'s tracked position before its batch
        # Events per batch (one transaction). A bigger batch amortises each commit's dirty pages
        # over more events: `rebuild` projects into its scratch file with bigger ones.
        self.batch_size = BATCH_SIZE
        self._handlers: dict[type, tuple[str, Callable[..., None], str, bool]] = {}

    # -- driving ------------------------------------------------------------------------------

    def catch_up(self, until: int | None = None, progress: Callable[[int], None] | None = None) -> int:
        """Project every event up to `until` (default: the log's head); return the position."""
        if until is not None and until <= self.position:
            return self.position
        with self._lock:
            collecting = gc.isenabled()
            size = self.batch_size
            try:
                while True:
                    applied = self._project_batch(until, size)
                    if progress is not None and applied:
                        progress(applied)
                    if not applied or (until is not None and self.position >= until):
                        return self.position
                    if applied == size:
                        # A backlog: its batches allocate millions of short-lived, acyclic dicts,
                        # and the cyclic collector's passes over them cost ~10%. Back on at the end.
                        gc.disable()
                        # And each commit writes every page the batch dirtied (random token ids
                        # spread them over every index): bigger batches, fewer commits.
                        size = max(size, BACKLOG_BATCH_SIZE)
            finally:
                if collecting:
                    gc.enable()

    def remember(self, notifications: Sequence[Notification]) -> None:
        """Keep notifications this process wrote (its own recordings) for the next catch-up."""
        with self._recent_lock:
            if len(self._recent) > 4 * BATCH_SIZE:  # nobody is projecting them: do not grow
                self._recent.clear()
            for n in notifications:
                self._recent[n.id] = n

    def _known(self, start: int, until: int | None) -> list[Notification] | None:
        """Notifications start..until from memory, only if memory holds every one of them."""
        if until is None or until < start or until - start >= BATCH_SIZE:
            return None
        with self._recent_lock:
            known = [self._recent.get(i) for i in range(start, until + 1)]
            for i in [k for k in self._recent if k < start]:
                del self._recent[i]
        if any(n is None for n in known):
            return None
        return known  # type: ignore[return-value]

    def tracked_position(self) -> int:
        with self.reader.connect() as conn:
            row = conn.execute(select(s.tracking.c.position).where(s.tracking.c.name == TRACKING_NAME)).first()
        return row[0] if row else 0

    def _project_batch(self, until: int | None, size: int) -> int:
        """One batch in one transaction, on a pooled DBAPI connection. A connection found broken
        (PostgreSQL restarted, say) is discarded and the batch tried once more on a fresh one:
        the tracking row makes the retry safe."""
        for attempt in (1, 2):
            raw = self.engine.raw_connection()
            try:
                return self._project_batch_on(raw.dbapi_connection, until, size)
            except Exception:
                broken = self.backend == "postgres" and (raw.dbapi_connection.broken or raw.dbapi_connection.closed)
                if broken:
                    raw.invalidate()
                if not broken or attempt == 2:
                    raise
            finally:
                raw.close()
        raise AssertionError("unreachable")

    def _project_batch_on(self, dbapi: Any, until: int | None, size: int) -> int:
        sql, mark, postgres = self._sql, self._sql.mark, self.backend == "postgres"
        cursor = dbapi.cursor()
        try:
            if postgres:
                # Pipelined: one round trip. The select runs after the lock is granted, with a
                # snapshot taken then (READ COMMITTED), so it sees the last holder's commit.
                lock = dbapi.cursor()
                with dbapi.pipeline():
                    # Not waiting for the WAL flush is safe here: a read-model transaction lost
                    # in a crash takes its tracking position with it, so its events are applied
                    # again from the event store (whose commits stay synchronous).
                    lock.execute("SET LOCAL synchronous_commit TO OFF")
                    lock.execute(f"SELECT pg_advisory_xact_lock({mark})", (_ADVISORY_KEY,))
                    cursor.execute(
                        f"SELECT position, at, head FROM {s.tracking.name} WHERE name = {mark}", (TRACKING_NAME,)
                    )
            else:
                cursor.execute("BEGIN IMMEDIATE")  # the write lock from the tracking read on
                cursor.execute(
                    f"SELECT position, at, head FROM {s.tracking.name} WHERE name = {mark}", (TRACKING_NAME,)
                )
            state = cursor.fetchone()
            if state is None:
                cursor.execute(
                    sql.insert(s.tracking.name, ("name", "position", "at", "head")), (TRACKING_NAME, 0, 0, GENESIS)
                )
                position, at, head = 0, 0, GENESIS
            else:
                position, at, head = state
            notifications = self._known(position + 1, until)
            if notifications is None:
                notifications = self.ledger.recorder.select_notifications(start=position + 1, limit=size, stop=until)
            if not notifications:
                self._commit(dbapi, cursor)
                self.position = max(self.position, position)
                return 0
            self._apply_batch(dbapi, cursor, notifications, position, at, head)
            self._commit(dbapi, cursor)
        except BaseException:
            if postgres:
                dbapi.rollback()
            elif dbapi.in_transaction:
                cursor.execute("ROLLBACK")
            raise
        self.committed(notifications, position)
        return len(notifications)

    def _apply_batch(
        self,
        dbapi: Any,
        cursor: Any,
        notifications: Sequence[Notification],
        position: int,
        at: int,
        head: str,
        events: Sequence[Any] | None = None,
    ) -> None:
        """Apply `notifications` (which follow on from the tracked `position`) to every read model
        and move the tracking row on, in the caller's open transaction. The tracking update is
        conditional on `position`: a batch another process applied first is `StaleBatch`."""
        batch = _Batch(dbapi, cursor)
        self._load_tokens(batch, notifications)
        if events is None:
            for notification in notifications:
                at, head = self._apply(batch, notification, at, head, self.ledger.mapper.to_domain_event(notification))
        else:
            for notification, event in zip(notifications, events, strict=True):
                at, head = self._apply(batch, notification, at, head, event)
        track = self._sql.update(s.tracking.name, ("position", "at", "head"), ("name", "position"))
        values = (notifications[-1].id, at, head, TRACKING_NAME, position)
        if self.backend == "postgres":
            with dbapi.pipeline():  # every write of the batch in one round trip
                self._flush(batch)
                cursor.execute(track, values)
        else:
            self._flush(batch)
            cursor.execute(track, values)
        if cursor.rowcount != 1:
            raise StaleBatch(f"tracking moved past {position} while projecting")

    def committed_within(self, notifications: Sequence[Notification]) -> None:
        """The transaction in which `project_within` projected `notifications` has committed."""
        self.committed(notifications, self._within.after)

    def project_within(
        self, dbapi: Any, notifications: Sequence[Notification], events: Sequence[Any] | None = None
    ) -> bool:
        """Project a command's own events inside the event store's transaction that inserts them,
        on its connection: one transaction and one commit for the events, the read models and the
        tracking row. Call `committed_within` once that transaction has committed.

        Returns False, having written nothing, when the events do not follow on from the tracked
        position (another writer's events are not projected yet), when another projector holds
        the lock (PostgreSQL: never wait for it while holding the events table's lock), or for a
        batch larger than BATCH_SIZE (a big deployment would hold the event store's write lock
        for the length of its projection): the caller then catches up after the commit, as
        before. An error raises, and the insert rolls back with the projection.

        `events` are the domain events the notifications encode, when the caller has them (the
        save under way): used as they are, they spare a decode of what was just encoded."""
        if not notifications or len(notifications) > BATCH_SIZE:
            return False
        mark, postgres = self._sql.mark, self.backend == "postgres"
        if postgres:
            cursor = dbapi.cursor(row_factory=tuple_row)
            # The lock and the tracking row in one round trip (the lock is taken, or not, either way).
            cursor.execute(
                f"SELECT position, at, head, pg_try_advisory_xact_lock({mark}) FROM {s.tracking.name} "
                f"WHERE name = {mark}",
                (_ADVISORY_KEY, TRACKING_NAME),
            )
            state = cursor.fetchone()
            if state is None or not state[3]:
                return False
        else:
            cursor = dbapi.cursor()
            cursor.row_factory = None  # the event store's connection answers sqlite3.Row
            cursor.execute(f"SELECT position, at, head FROM {s.tracking.name} WHERE name = {mark}", (TRACKING_NAME,))
            state = cursor.fetchone()
            if state is None:
                return False
        position, at, head = state[:3]
        if position != notifications[0].id - 1 and not (
            postgres and self._none_between(cursor, position, notifications[0].id)
        ):
            return False
        try:
            if events is not None and not _same_events(events, notifications):
                events = None
            self._apply_batch(dbapi, cursor, notifications, position, at, head, events)
            self._within.after = position
        except (sqlite3.OperationalError, psycopg.OperationalError):
            raise  # the store's trouble (a lost connection, a timeout): the store layer's 503
        except Exception as error:
            # A defect of ours, not a lost race: the insert rolls back, and nothing is written.
            raise ProjectionFailed(
                f"the change was not written: the read models could not take it in ({type(error).__name__})"
            ) from error
        return True

    def _none_between(self, cursor: Any, position: int, first: int) -> bool:
        """PostgreSQL: no stored event lies between the tracked `position` and `first`. Its ids come
        from a sequence, and an insert that rolled back (a lost race) leaves a gap in them. The
        insert holds the events table's lock, so every event with a smaller id has committed and
        is visible to this statement."""
        recorder = self.ledger.recorder
        table = sql.Identifier(recorder.datastore.schema, recorder.events_table_name)  # type: ignore[attr-defined]
        cursor.execute(
            sql.SQL("SELECT 1 FROM {} WHERE notification_id > %s AND notification_id < %s LIMIT 1").format(table),
            (position, first),
        )
        return cursor.fetchone() is None

    def committed(self, notifications: Sequence[Notification], after: int) -> None:
        """These notifications, which followed on from the tracked position `after` (no event
        lies between), have been projected and committed: move this process's position on and
        tell the listeners (the auth cache's eviction)."""
        self.position = max(self.position, notifications[-1].id)
        for listener in self.listeners:
            listener(notifications, after)

    def _commit(self, dbapi: Any, cursor: Any) -> None:
        if self.backend == "postgres":
            dbapi.commit()
        else:
            cursor.execute("COMMIT")

    # -- applying events ----------------------------------------------------------------------

    def _load_tokens(self, batch: _Batch, notifications: Sequence[Notification]) -> None:
        """The current rows of the batch's tokens that existed before it (a token whose first
        event here is its creation cannot be in the table), with their last generation number."""
        first: dict[str, int] = {}
        for n in notifications:
            if n.topic.startswith("tokentrail.token."):
                first.setdefault(str(n.originator_id), n.originator_version)
        ids = sorted(t for t, version in first.items() if version > 1)
        cursor, columns = batch.cursor, [c.name for c in s.tokens.columns]
        select_list = ", ".join(f"t.{c}" for c in columns)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            cursor.execute(
                f"SELECT {select_list}, (SELECT max(g.seq) FROM {s.generations.name} g WHERE g.token_id = t.id) "
                f"FROM {s.tokens.name} t WHERE t.id IN ({self._sql.in_list(len(chunk))})",
                chunk,
            )
            for row in cursor.fetchall():
                token = dict(zip(columns, row))
                token["deleted"] = bool(token["deleted"])
                batch.tokens[token["id"]] = token
                batch.indexed[token["id"]] = (token["name"], token["deleted"])
                if row[-1] is not None:
                    batch.generation_seqs[token["id"]] = row[-1]

    def _handler(self, event_type: type) -> tuple[str, Callable[..., None], str, bool]:
        found = self._handlers.get(event_type)
        if found is None:
            aggregate = next(v for k, v in _AGGREGATES.items() if issubclass(event_type, k.Event))
            found = self._handlers[event_type] = (
                aggregate,
                getattr(self, f"_on_{aggregate}"),
                event_type.__name__,
                aggregate not in HIDDEN_AGGREGATES,
            )
        return found

    def _apply(self, batch: _Batch, n: Notification, at: int, head: str, event: Any) -> tuple[int, str]:
        recorded = clock.to_micros(event.timestamp)
        if recorded > at:
            at = recorded
        position = n.id
        head = next_hash(head, event_bytes(position, n.originator_id, n.originator_version, n.topic, n.state))
        aggregate, handler, type_name, visible = self._handler(type(event))
        actor = getattr(event, "actor", None) or _NOTHING
        client = actor.get("client") or _NOTHING
        claimed = actor.get("claimed") or _NOTHING
        # (Keys in the order of the audit INSERT's columns; `resources` is popped before.)
        row: dict[str, Any] = {
            "position": position,
            "at": at,
            "recorded_at": recorded,
            "type": type_name,
            "aggregate": aggregate,
            "visible": visible,
            "workspace_id": None,
            "token_id": None,
            "token_name": None,
            "actor_token_id": actor.get("token_id"),
            "actor_name": actor.get("name"),
            "request_id": actor.get("request_id"),
            "origin": actor.get("origin"),
            "deployment_id": actor.get("deployment_id"),
            "revocation_id": actor.get("revocation_id"),
            "scopes_before": None,
            "scopes_after": None,
            "resources": (),
            "details": None,
            "hash": head,
            # Where the change came from (the server's view) and what its client claimed: NULL
            # for events written before they were recorded.
            "client_address": client.get("address"),
            "user_agent": client.get("user_agent"),
            "claimed_origin": claimed.get("origin"),
            "claimed_request_id": claimed.get("request_id"),
        }
        handler(batch, event, n, at, row)
        resources = row.pop("resources")
        if resources:
            workspace_id = row["workspace_id"]
            batch.audit_resources += [
                {"position": position, "resource": resource, "workspace_id": workspace_id} for resource in resources
            ]
        batch.audit_rows.append(row)
        return at, head

    def _on_token(self, batch: _Batch, event: Any, n: Notification, at: int, row: dict[str, Any]) -> None:
        token_id = str(n.originator_id)
        if isinstance(event, Token.Created):
            token = {
                "id": token_id,
                "workspace_id": event.workspace_id,
                "name": event.name,
                "description": event.description,
                "kind": event.kind,
                "origin_type": event.origin.get("type", "C"),
                "origin_resource_id": event.origin.get("resource_id"),
                "scopes": _scopes_json(list(event.scopes)),
                "generation": event.generation,
                "previous_generation": None,
                "previous_valid_until": 0,
                "grace": "{}",
                "created_at": at,
                "created_position": n.id,
                "updated_at": at,
                "deleted": False,
                "deleted_at": None,
                "version": n.originator_version,
                "position": n.id,
                "expires_at": None,
            }
            batch.tokens[token_id] = token
            batch.new_tokens.add(token_id)
            before: list[str] = []
            before_json = "[]"
            self._open_generation(batch, token, 1, at, 0)
        else:
            token = batch.token(token_id)
            before_json = token["scopes"]
            before = _scope_list(before_json)
        after = list(event.scopes) if isinstance(event, Token.Created) else list(before)
        details: dict[str, Any] | None = None
        if isinstance(event, Token.ScopeAdded):
            after.append(event.scope)
        elif isinstance(event, Token.ScopeRemoved):
            after = [sc for sc in after if sc != event.scope]
        elif isinstance(event, Token.Renamed):
            details = {"from": token["name"], "to": event.name}
            token["name"] = event.name
        elif isinstance(event, Token.DescriptionChanged):
            details = {"from": token["description"], "to": event.description}
            token["description"] = event.description
        elif isinstance(event, Token.Refreshed):
            grace_until = at + event.grace_seconds * 1_000_000
            details = {"grace_seconds": event.grace_seconds, "previous_valid_until": grace_until}
            seq = self._current_generation_seq(batch, token_id)
            self._close_generation(batch, token_id, seq, grace_until)
            self._open_generation(batch, token, seq + 1, at, event.grace_seconds)
            token["previous_generation"] = token["generation"]
            token["previous_valid_until"] = clock.to_micros(event.timestamp) + event.grace_seconds * 1_000_000
            token["grace"] = _grace_json(
                grace_after_refresh(
                    json.loads(token["grace"] or "{}"),
                    token["generation"],
                    clock.to_micros(event.timestamp),
                    event.grace_seconds,
                )
            )
            token["generation"] = event.generation
            if token["kind"] == "default" and "ADMIN" in before:
                # JWTs are signed with the admin token's value: they die with its generation.
                batch.jwt_invalidations.append(
                    {"b_admin": token_id, "b_generation": token["previous_generation"], "b_until": grace_until}
                )
        elif isinstance(event, Token.Deleted):
            if event.actor and event.actor.get("revocation_id"):
                details = {"revocation_id": event.actor["revocation_id"], "reason": event.actor.get("reason")}
            token["deleted"] = True
            token["deleted_at"] = at
            seq = self._current_generation_seq(batch, token_id)
            self._close_generation(batch, token_id, seq, at)
        elif isinstance(event, Token.ExpirySet):
            old = token["expires_at"]
            details = {"from": None if old is None else old // 1_000_000, "to": event.expires_at}
            token["expires_at"] = None if event.expires_at is None else event.expires_at * 1_000_000
            # Each grant row carries the expiry in force while it is open: reopen them under the new one.
            for scope in before:
                pending = batch.open_grants.get((token_id, scope))
                if pending is not None and pending["valid_from"] == at:  # opened at this instant
                    pending["expires_at"] = token["expires_at"]
                else:
                    self._close_grant(batch, token_id, scope, at, n.id)
                    self._open_grant(batch, token, scope, at, n.id)
        after_json = token["scopes"] = _scopes_json(after)
        if not isinstance(event, Token.Created):
            self._close_version(batch, token_id, token["version"], at, n.id)
        token["version"] = n.originator_version
        token["updated_at"] = at
        token["position"] = n.id
        if not token["deleted"]:
            self._open_version(batch, token, at, n.id)
        removed = [sc for sc in before if sc not in after] if not token["deleted"] else before
        added = [sc for sc in after if sc not in before] if not token["deleted"] else []
        for scope in removed:
            self._close_grant(batch, token_id, scope, at, n.id)
        for scope in added:
            self._open_grant(batch, token, scope, at, n.id)
        if token_id not in batch.new_tokens:
            batch.changed_tokens.add(token_id)
        row.update(
            workspace_id=token["workspace_id"],
            token_id=token_id,
            token_name=token["name"],
            scopes_before=before_json if isinstance(event, Token.Created) else _scopes_json(before),
            scopes_after="[]" if token["deleted"] else after_json,
            resources=_resources_between(before_json, after_json, before, after),
            details=_dumps(details) if details else None,
        )

    def _on_token_name(self, batch: _Batch, event: Any, n: Notification, at: int, row: dict[str, Any]) -> None:
        details: dict[str, Any] = {"index": str(n.originator_id)}
        if isinstance(event, TokenName.Created):
            row.update(workspace_id=event.workspace_id, token_id=event.token_id, token_name=event.name)
        elif isinstance(event, TokenName.Claimed):
            row.update(token_id=event.token_id)
        row["details"] = _dumps(details)

    def _on_workspace(self, batch: _Batch, event: Any, n: Notification, at: int, row: dict[str, Any]) -> None:
        ws = str(n.originator_id)
        if isinstance(event, Workspace.SettingsChanged):
            row.update(workspace_id=ws, details=_dumps({"max_token_lifetime": event.max_token_lifetime}))
            return
        batch.workspaces.append(
            {
                "id": ws,
                "name": event.name,
                "owner_email": event.owner_email,
                "owner_user_id": event.owner_user_id,
                "admin_token_id": event.admin_token_id,
                "created_at": at,
                "position": n.id,
            }
        )
        row.update(workspace_id=ws, details=_dumps({"name": event.name, "owner_email": event.owner_email}))

    def _on_workspace_name(self, batch: _Batch, event: Any, n: Notification, at: int, row: dict[str, Any]) -> None:
        row.update(workspace_id=event.workspace_id, details=_dumps({"name": event.name}))

    def _on_user(self, batch: _Batch, event: Any, n: Notification, at: int, row: dict[str, Any]) -> None:
        user_id = str(n.originator_id)
        batch.users.append(
            {"id": user_id, "email": event.email, "user_token_id": event.user_token_id, "created_at": at}
        )
        row.update(workspace_id=user_id, token_id=event.user_token_id, details=_dumps({"email": event.email}))

    def _on_jwt(self, batch: _Batch, event: Any, n: Notification, at: int, row: dict[str, Any]) -> None:
        jwt_id = str(n.originator_id)
        scope_strings = [_jwt_scope_string(sc) for sc in event.scopes]
        batch.jwts.append(
            {
                "id": jwt_id,
                "workspace_id": event.workspace_id,
                "name": event.name,
                "scopes": _dumps(event.scopes),
                "limits": _dumps(event.limits),
                "issued_at": at,
                "expires_at": event.expires_at * 1_000_000,
                "admin_token_id": event.admin_token_id,
                "admin_generation": event.admin_generation,
                "invalidated_at": None,
                "position": n.id,
            }
        )
        row.update(
            workspace_id=event.workspace_id,
            token_id=jwt_id,
            token_name=event.name,
            scopes_before=_dumps([]),
            scopes_after=_dumps(scope_strings),
            resources=_resources(scope_strings),
            details=_dumps({"expires_at": event.expires_at, "limits": event.limits, "scopes": event.scopes}),
        )

    def _on_lookup(self, batch: _Batch, event: Any, n: Notification, at: int, row: dict[str, Any]) -> None:
        row.update(
            workspace_id=event.workspace_id,
            token_id=event.token_id,
            token_name=event.name,
            details=_dumps({"jwt": event.jwt, "generation": event.generation, "outcome": event.outcome}),
        )

    def _on_deployment(self, batch: _Batch, event: Any, n: Notification, at: int, row: dict[str, Any]) -> None:
        if isinstance(event, DeploymentLog.Opened):  # bookkeeping: the log of a first staged deployment
            row.update(type="DeploymentLogOpened", visible=False, workspace_id=event.workspace_id)
            return
        deployment_id, workspace_id = event.deployment_id, event.workspace_id
        # Legacy events number their deployment implicitly: Created is the first, Applied its version.
        number = getattr(event, "number", None) or n.originator_version
        details = _deployment_details(event)
        if hasattr(event, "number"):  # (the legacy rows stay as they were projected)
            details["number"] = number
        row.update(
            type=_DEPLOYMENT_ROW_TYPES.get(type(event), "Deployed"),
            workspace_id=workspace_id,
            deployment_id=deployment_id,
            details=_dumps(details),
        )
        if isinstance(event, DeploymentLog.Promoted | DeploymentLog.Discarded):
            status = "applied" if isinstance(event, DeploymentLog.Promoted) else "discarded"
            changes = _dumps(event.token_changes) if isinstance(event, DeploymentLog.Promoted) else None
            pending = next((d for d in batch.deployments if d["id"] == deployment_id), None)
            if pending is not None:
                pending.update(status=status, updated_at=at, **({"token_changes": changes} if changes else {}))
            else:
                batch.deployment_updates.append({"id": deployment_id, "status": status, "at": at, "changes": changes})
            return
        staged = isinstance(event, DeploymentLog.Staged)
        batch.deployments.append(
            {
                "id": deployment_id,
                "workspace_id": workspace_id,
                "at": at,
                "position": n.id,
                "actor_token_id": (event.actor or {}).get("token_id"),
                "token_changes": _dumps(event.token_changes),
                "files": _dumps(event.files),
                "number": number,
                "status": "staged" if staged else "applied",
                "updated_at": None if staged else at,
            }
        )

    # -- temporal rows ------------------------------------------------------------------------

    def _open_version(self, batch: _Batch, token: dict[str, Any], at: int, position: int) -> None:
        key = (token["id"], token["version"])
        batch.version_inserts[key] = {
            "token_id": token["id"],
            "version": token["version"],
            "workspace_id": token["workspace_id"],
            "name": token["name"],
            "description": token["description"],
            "kind": token["kind"],
            "origin_type": token["origin_type"],
            "origin_resource_id": token["origin_resource_id"],
            "scopes": token["scopes"],
            "valid_from": at,
            "valid_to": None,
            "from_position": position,
            "to_position": None,
            "expires_at": token["expires_at"],
        }

    def _close_version(self, batch: _Batch, token_id: str, version: int, at: int, position: int) -> None:
        pending = batch.version_inserts.get((token_id, version))
        if pending is not None:
            pending.update(valid_to=at, to_position=position)
        else:
            batch.version_closes.append({"b_token": token_id, "b_version": version, "b_at": at, "b_position": position})

    def _open_grant(self, batch: _Batch, token: dict[str, Any], scope_text: str, at: int, position: int) -> None:
        scope = read_scope(scope_text)
        row = {
            "token_id": token["id"],
            "scope": scope_text,
            "from_position": position,
            "workspace_id": token["workspace_id"],
            "type": scope.type,
            "kind": scope.kind,
            "resource": scope.resource,
            "permission": scope.permission,
            "filter": scope.filter,
            "valid_from": at,
            "valid_to": None,
            "to_position": None,
            "expires_at": token["expires_at"],
        }
        batch.grant_inserts.append(row)
        batch.open_grants[(token["id"], scope_text)] = row

    def _close_grant(self, batch: _Batch, token_id: str, scope_text: str, at: int, position: int) -> None:
        pending = batch.open_grants.pop((token_id, scope_text), None)
        if pending is not None:
            pending.update(valid_to=at, to_position=position)
            return
        batch.grant_closes.append({"b_token": token_id, "b_scope": scope_text, "b_at": at, "b_position": position})

    def _current_generation_seq(self, batch: _Batch, token_id: str) -> int:
        # Loaded for every pre-existing token of the batch by `_load_tokens`, kept up to date by
        # `_open_generation`: no query per event.
        return batch.generation_seqs.get(token_id, 0)

    def _open_generation(self, batch: _Batch, token: dict[str, Any], seq: int, at: int, grace: int) -> None:
        batch.generation_inserts[(token["id"], seq)] = {
            "token_id": token["id"],
            "seq": seq,
            "workspace_id": token["workspace_id"],
            "valid_from": at,
            "valid_to": None,
            "grace_seconds": grace,
        }
        batch.generation_seqs[token["id"]] = seq

    def _close_generation(self, batch: _Batch, token_id: str, seq: int, until: int) -> None:
        pending = batch.generation_inserts.get((token_id, seq))
        if pending is not None:
            pending["valid_to"] = until
        elif seq:
            batch.generation_closes.append({"b_token": token_id, "b_seq": seq, "b_until": until})

    # -- writing ------------------------------------------------------------------------------

    def _flush(self, batch: _Batch) -> None:
        cursor, sql = batch.cursor, self._sql

        postgres = self.backend == "postgres"

        def insert(table: Any, rows: Sequence[dict[str, Any]]) -> None:
            if not rows:
                return
            columns = list(rows[0])
            values = itemgetter(*columns)
            if postgres and len(rows) > 1:
                # PostgreSQL executes (parses, plans, runs) each statement of an executemany on
                # its own: rows go in groups of up to _PG_ROWS per statement instead.
                tuples = [values(r) for r in rows]
                full, rest = divmod(len(tuples), _PG_ROWS)
                if full:
                    statement = sql.insert_many(table.name, columns, _PG_ROWS)
                    cursor.executemany(
                        statement,
                        [[v for t in tuples[i : i + _PG_ROWS] for v in t] for i in range(0, full * _PG_ROWS, _PG_ROWS)],
                    )
                if rest:
                    tail = tuples[full * _PG_ROWS :]
                    cursor.execute(sql.insert_many(table.name, columns, rest), [v for t in tail for v in t])
                return
            cursor.executemany(sql.insert(table.name, columns), [values(r) for r in rows])

        def update(
            table: Any, columns: Sequence[str], where: Sequence[str], rows: list[tuple[Any, ...]], extra: str = ""
        ) -> None:
            if rows:
                cursor.executemany(sql.update(table.name, columns, where, extra), rows)

        insert(s.tokens, [batch.tokens[t] for t in sorted(batch.new_tokens)])
        if batch.changed_tokens:
            # Only the columns an event can change; the name index's columns only for the tokens
            # whose name or deletion changed (setting them rewrites that index's entry).
            plain: list[dict[str, Any]] = []
            reindexed: list[dict[str, Any]] = []
            for token_id in sorted(batch.changed_tokens):
                token = batch.tokens[token_id]
                same = batch.indexed.get(token_id) == (token["name"], token["deleted"])
                (plain if same else reindexed).append(token)
            for rows, columns in ((plain, _TOKEN_CHANGES), (reindexed, (*_TOKEN_CHANGES, "name", "deleted"))):
                values = itemgetter(*columns, "id")
                update(s.tokens, columns, ("id",), [values(t) for t in rows])
        update(
            s.token_versions,
            ("valid_to", "to_position"),
            ("token_id", "version"),
            sorted(
                [(r["b_at"], r["b_position"], r["b_token"], r["b_version"]) for r in batch.version_closes], key=_last2
            ),
        )
        # In key order (tokens' ids are random): consecutive rows land on the same B-tree pages.
        insert(s.token_versions, [row for _, row in sorted(batch.version_inserts.items())])
        update(
            s.scope_grants,
            ("valid_to", "to_position"),
            ("token_id", "scope"),
            sorted([(r["b_at"], r["b_position"], r["b_token"], r["b_scope"]) for r in batch.grant_closes], key=_last2),
            "valid_to IS NULL",
        )
        insert(s.scope_grants, sorted(batch.grant_inserts, key=_grant_key))
        update(
            s.generations,
            ("valid_to",),
            ("token_id", "seq"),
            [(r["b_until"], r["b_token"], r["b_seq"]) for r in batch.generation_closes],
        )
        insert(s.generations, [row for _, row in sorted(batch.generation_inserts.items())])
        insert(s.workspaces, batch.workspaces)
        insert(s.users, batch.users)
        insert(s.jwts, batch.jwts)
        insert(s.deployments, batch.deployments)
        updated = batch.deployment_updates
        update(s.deployments, ("status", "updated_at"), ("id",), [(u["status"], u["at"], u["id"]) for u in updated])
        update(s.deployments, ("token_changes",), ("id",), [(u["changes"], u["id"]) for u in updated if u["changes"]])
        update(
            s.jwts,
            ("invalidated_at",),
            ("admin_token_id", "admin_generation"),
            [(r["b_until"], r["b_admin"], r["b_generation"]) for r in batch.jwt_invalidations],
            "invalidated_at IS NULL",
        )
        insert(s.audit, batch.audit_rows)
        insert(s.audit_resources, batch.audit_resources)


_PG_ROWS = 100  # rows per multi-row INSERT on PostgreSQL (x 23 audit columns: well under 65,535 parameters)
_grant_key = itemgetter("token_id", "scope", "from_position")
_last2 = itemgetter(2, 3)

# The token columns an event after its creation may change (never its workspace, kind, origin or
# creation); `name` and `deleted` (in the workspace-name index) are handled apart.
_TOKEN_CHANGES = (
    "scopes",
    "description",
    "generation",
    "previous_generation",
    "previous_valid_until",
    "grace",
    "updated_at",
    "deleted_at",
    "version",
    "position",
    "expires_at",
)

_NOTHING: dict[str, Any] = {}  # (never written to)

_DEPLOYMENT_ROW_TYPES = {
    DeploymentLog.Staged: "DeploymentStaged",
    DeploymentLog.Promoted: "DeploymentPromoted",
    DeploymentLog.Discarded: "DeploymentDiscarded",
}


def _same_events(events: Sequence[Any], notifications: Sequence[Notification]) -> bool:
    """Whether `events` are, one for one, the domain events `notifications` record."""
    return len(events) == len(notifications) and all(
        e.originator_id == n.originator_id and e.originator_version == n.originator_version
        for e, n in zip(events, notifications, strict=True)
    )


def _deployment_details(event: Any) -> dict[str, Any]:
    """What a deployment's audit row shows: its token changes and files (never declarations)."""
    return {k: getattr(event, k) for k in ("token_changes", "files") if hasattr(event, k)}


def _grace_json(grace: dict[str, int]) -> str:
    return json.dumps(dict(sorted(grace.items())), separators=(",", ":"))


def _jwt_scope_string(scope: dict[str, Any]) -> str:
    parts = [str(scope.get("type", ""))]
    if scope.get("resource"):
        parts.append(str(scope["resource"]))
        if scope.get("filter"):
            parts.append(str(scope["filter"]))
    return ":".join(parts)
