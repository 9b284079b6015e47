"""Compliance reads: the audit trail, token histories, the token table as of an instant, and who
could access a resource at an instant (or what changed between two).

"As of T" means every event whose effective time is ≤ T: a prefix of the log, because effective
times never decrease in log order. Temporal rows are valid on [valid_from, valid_to).
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain, islice
from typing import Any

from sqlalchemy import Engine, and_, or_, select, union_all

from tokentrail.domain.clock import format_instant
from tokentrail.domain.errors import InvalidInput
from tokentrail.domain.scopes import Grant, grant_for, read_scope
from tokentrail.projections import schema as s
from tokentrail.projections.queries import TokenRow, origin_of

MAX_PAGE = 1000
EXPORT_PAGE = 5000  # rows per read of an export (keyset on position)
# The columns of an export's raw rows, in this order (`History.audit_rows`).
AUDIT_COLUMNS = (
    "position",
    "at",
    "type",
    "workspace_id",
    "token_id",
    "token_name",
    "actor_token_id",
    "actor_name",
    "request_id",
    "origin",
    "deployment_id",
    "scopes_before",
    "scopes_after",
    "details",
    "hash",
    "aggregate",
    "client_address",
    "user_agent",
    "claimed_origin",
    "claimed_request_id",
)
AUDIT_FILTERS = ("from", "to", "actor", "token_id", "token_name", "resource", "event", "deployment", "revocation")


# -- audit trail ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditQuery:
    workspace_id: str
    start: int | None = None  # effective time, inclusive
    end: int | None = None  # effective time, exclusive
    actor: str | None = None  # actor token id or name
    token_id: str | None = None
    token_name: str | None = None
    resource: str | None = None
    events: tuple[str, ...] = ()
    deployment: str | None = None
    # The workspace owner's user id: the owner's own events (the user's creation, the user
    # token's) are part of the workspace's trail.
    owner_user_id: str | None = None
    revocation: str | None = None  # the deletions of one bulk revocation


# A cursor is `{"p": <position>}` in unpadded base64url: 64 characters hold every position below
# 2**63 with room to spare, so anything longer is refused before it is decoded or parsed.
MAX_CURSOR_LENGTH = 64
MAX_POSITION = 2**63 - 1
_CURSOR_TEXT = re.compile(r"[A-Za-z0-9_-]+")


def encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"p": position}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    """The position a `next_cursor` names. Total: a cursor that is too long, not base64url, not
    exactly `{"p": <int>}`, or whose position is negative, 2**63 or more, a float, NaN, Infinity or
    a boolean is InvalidInput (a 400), never an error further down."""
    if not cursor:
        return 0
    invalid = InvalidInput("invalid cursor: pass the next_cursor of the previous page unchanged")
    if len(cursor) > MAX_CURSOR_LENGTH or not _CURSOR_TEXT.fullmatch(cursor):
        raise invalid
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant, parse_float=_no_float)
    except (ValueError, binascii.Error, RecursionError):
        raise invalid from None
    if not isinstance(data, dict) or set(data) != {"p"}:
        raise invalid
    position = data["p"]
    if type(position) is not int or not 0 <= position <= MAX_POSITION:
        raise invalid
    return position


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} in a cursor")


def _no_float(text: str) -> Any:
    raise ValueError("a float in a cursor")


def audit_event(row: Any) -> dict[str, Any]:
    """One audit row in its wire shape (docs/api.md, `GET /v0/audit`)."""
    out = {
        "position": row["position"],
        "at": format_instant(row["at"]),
        "type": row["type"],
        "workspace_id": row["workspace_id"],
        "token_id": row["token_id"],
        "token_name": row["token_name"],
        "actor": {"token_id": row["actor_token_id"], "name": row["actor_name"]},
        "request_id": row["request_id"],
        "origin": row["origin"],
        "deployment_id": row["deployment_id"],
        "scopes_before": json.loads(row["scopes_before"]) if row["scopes_before"] is not None else None,
        "scopes_after": json.loads(row["scopes_after"]) if row["scopes_after"] is not None else None,
        "details": json.loads(row["details"]) if row["details"] else None,
        "hash": row["hash"],
        **request_fields(row),
    }
    return out


def request_fields(row: Any) -> dict[str, Any]:
    """What an audit event adds about its subject and its request: `aggregate` (token,
    workspace, user, jwt, deployment), `client` as the server saw it and `claimed`, what the client
    said about itself; both null for events written before they were recorded."""
    client = claimed = None
    if row["client_address"] is not None or row["user_agent"] is not None:
        client = {"address": row["client_address"], "user_agent": row["user_agent"]}
    if row["claimed_origin"] is not None or row["claimed_request_id"] is not None:
        claimed = {"origin": row["claimed_origin"], "request_id": row["claimed_request_id"]}
    return {"aggregate": row["aggregate"], "client": client, "claimed": claimed}


def _driver_sql(engine: Engine, statement: Any) -> tuple[str, Any]:
    """`statement` as the driver's own SQL text and parameters (qmark or pyformat): the values stay
    bound parameters, never spliced into the text."""
    compiled = statement.compile(dialect=engine.dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.params
    if compiled.positional:
        return str(compiled), tuple(params[name] for name in compiled.positiontup)
    return str(compiled), params


def _realms(q: AuditQuery) -> list[str]:
    """The `workspace_id`s of a workspace's trail: its own, and its owner's (the user's events)."""
    return [q.workspace_id] + ([q.owner_user_id] if q.owner_user_id else [])


class History:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _audit_select(self, q: AuditQuery, after: int, limit: int) -> Any:
        """The first `limit` matching rows after position `after`, in log order. One ordered,
        limited branch per realm (the workspace, its owner), merged: each branch walks its index
        (workspace_id, position) in order, where one `workspace_id IN (...)` would sort every
        remaining row of the workspace for every page."""
        a = s.audit
        conditions = self._audit_conditions(q, after)
        branches = [
            select(a).where(a.c.workspace_id == realm, *conditions).order_by(a.c.position).limit(limit)
            for realm in _realms(q)
        ]
        if len(branches) == 1:
            return branches[0]
        merged = union_all(*(select(*b.subquery().c) for b in branches)).subquery()
        return select(*merged.c).order_by(merged.c.position).limit(limit)

    def _audit_conditions(self, q: AuditQuery, after: int) -> list[Any]:
        """What a row of the trail must satisfy beyond its realm (its workspace or owner)."""
        a = s.audit
        conditions = [a.c.visible.is_(True), a.c.position > after]
        if q.start is not None:
            conditions.append(a.c.at >= q.start)
        if q.end is not None:
            conditions.append(a.c.at < q.end)
        if q.actor:
            conditions.append(or_(a.c.actor_token_id == q.actor, a.c.actor_name == q.actor))
        if q.token_id:
            conditions.append(a.c.token_id == q.token_id)
        if q.token_name:
            conditions.append(a.c.token_name == q.token_name)
        if q.events:
            conditions.append(a.c.type.in_(q.events))
        if q.deployment:
            conditions.append(a.c.deployment_id == q.deployment)
        if q.revocation:
            conditions.append(a.c.revocation_id == q.revocation)
        if q.resource:
            r = s.audit_resources
            conditions.append(
                a.c.position.in_(
                    select(r.c.position).where(
                        and_(r.c.workspace_id == q.workspace_id, r.c.resource == q.resource, r.c.position > after)
                    )
                )
            )
        return conditions

    def audit_page(self, q: AuditQuery, cursor: str | None, limit: int) -> tuple[list[dict[str, Any]], str | None]:
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be from 1 to {MAX_PAGE}")
        after = decode_cursor(cursor)
        with self.engine.connect() as conn:
            rows = list(conn.execute(self._audit_select(q, after, limit + 1)).mappings())
        more = len(rows) > limit
        rows = rows[:limit]
        events = [audit_event(r) for r in rows]
        return events, encode_cursor(rows[-1]["position"]) if more and rows else None

    def audit_stream(self, q: AuditQuery, chunk: int = 1000) -> Iterator[dict[str, Any]]:
        """Every matching event, fetched a page at a time (bounded memory, keyset paging)."""
        after = 0
        while True:
            with self.engine.connect() as conn:
                rows = list(conn.execute(self._audit_select(q, after, chunk)).mappings())
            for row in rows:
                yield audit_event(row)
            if len(rows) < chunk:
                return
            after = rows[-1]["position"]

    def audit_rows(self, q: AuditQuery, page: int = EXPORT_PAGE) -> Iterator[list[tuple[Any, ...]]]:
        """Every matching row as a plain tuple of `AUDIT_COLUMNS`, in log order, in lists of up to
        `page` rows. Each realm (the workspace, its owner) is read on its own, keyset-paged on
        position down its index (workspace_id, position), and the realms are merged here: one
        `workspace_id IN (...)` query would sort the workspace's remaining rows for every page.
        Pages are read through the driver's own cursor (no SQLAlchemy row objects) on a connection
        that is given back before the rows are yielded, so a slow reader of an export holds no
        transaction open; the next page of a realm is read in a helper thread while the caller
        works on this one (the drivers let go of the GIL while the database works). Memory holds a
        few pages at most, whatever the size of the trail."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-rows") as reader:
            streams = [chain.from_iterable(self._realm_pages(reader, q, realm, page)) for realm in _realms(q)]
            rows = streams[0] if len(streams) == 1 else heapq.merge(*streams)  # positions are unique
            while batch := list(islice(rows, page)):
                yield batch

    def _realm_pages(
        self, reader: ThreadPoolExecutor, q: AuditQuery, realm: str, page: int
    ) -> Iterator[list[tuple[Any, ...]]]:
        pending: Future[list[tuple[Any, ...]]] | None = reader.submit(self._realm_rows_after, q, realm, 0, page)
        while pending is not None:
            rows = pending.result()
            pending = reader.submit(self._realm_rows_after, q, realm, rows[-1][0], page) if len(rows) == page else None
            yield rows

    def _realm_rows_after(self, q: AuditQuery, realm: str, after: int, page: int) -> list[tuple[Any, ...]]:
        a = s.audit
        statement = (
            select(*(a.c[c] for c in AUDIT_COLUMNS))
            .where(a.c.workspace_id == realm, *self._audit_conditions(q, after))
            .order_by(a.c.position)
            .limit(page)
        )
        sql, params = _driver_sql(self.engine, statement)
        with self.engine.connect() as conn:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(sql, params)
                return list(cursor.fetchall())
            finally:
                cursor.close()

    def token_history(self, token_id: str) -> list[dict[str, Any]]:
        a = s.audit
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(a).where(and_(a.c.token_id == token_id, a.c.visible.is_(True))).order_by(a.c.position)
            ).mappings()
            return [audit_event(r) for r in rows]

    def token_ids_named(self, workspace_id: str, name: str) -> list[str]:
        """Tokens that ever had this name, most recent first (deleted ones included)."""
        v = s.token_versions
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(v.c.token_id, v.c.from_position)
                .where(and_(v.c.workspace_id == workspace_id, v.c.name == name))
                .order_by(v.c.from_position.desc())
            ).all()
        seen: list[str] = []
        for token_id, _ in rows:
            if token_id not in seen:
                seen.append(token_id)
        return seen

    # -- point in time -------------------------------------------------------------------------

    def tokens_as_of(self, workspace_id: str, at: int) -> list[TokenRow]:
        return [row for _, row in self.tokens_as_of_page(workspace_id, at, 0, None)]

    def tokens_as_of_page(
        self, workspace_id: str, at: int, after: int, limit: int | None
    ) -> list[tuple[int, TokenRow]]:
        """The tokens alive at `at`, in the order of their version's `from_position` (unique),
        each with it: the `limit` rows (all: None) after position `after`, and each row's
        position for the next page's cursor."""
        v = s.token_versions
        query = select(v).where(and_(*_alive_versions(v, workspace_id, at), v.c.from_position > after))
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(v.c.from_position).limit(limit)).mappings()
            return [(r["from_position"], _version_row(r)) for r in rows]

    def token_as_of(
        self, workspace_id: str, at: int, token_id: str | None = None, name: str | None = None
    ) -> TokenRow | None:
        v = s.token_versions
        conditions = [
            *_alive_versions(v, workspace_id, at),
            v.c.token_id == token_id if token_id is not None else v.c.name == name,
        ]
        with self.engine.connect() as conn:
            row = conn.execute(select(v).where(and_(*conditions))).mappings().first()
        return _version_row(row) if row else None

    def grants_at(self, workspace_id: str, at: int, resource: str | None = None) -> list[dict[str, Any]]:
        """Scope rows valid at `at` that could matter for `resource` (all rows when None)."""
        g = s.scope_grants
        conditions = [
            g.c.workspace_id == workspace_id,
            g.c.valid_from <= at,
            or_(g.c.valid_to.is_(None), g.c.valid_to > at),
            _alive(g, at),
        ]
        if resource is None:
            with self.engine.connect() as conn:
                return [dict(r) for r in conn.execute(select(g).where(and_(*conditions))).mappings()]
        candidates = [resource]
        if resource.endswith("_quarantine"):
            candidates.append(resource[: -len("_quarantine")])
        # One indexed lookup per kind of row (named resource, workspace-wide, user): an OR across
        # columns would scan every grant of the workspace.
        rows: dict[tuple[str, str, int], dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for extra in (g.c.resource.in_(candidates), g.c.kind.is_(None), g.c.kind == "user"):
                for r in conn.execute(select(g).where(and_(*conditions, extra))).mappings():
                    rows[(r["token_id"], r["scope"], r["from_position"])] = dict(r)
        return list(rows.values())

    def names_at(self, workspace_id: str, at: int, token_ids: set[str]) -> dict[str, str]:
        if not token_ids:
            return {}
        v = s.token_versions
        out: dict[str, str] = {}
        ids = sorted(token_ids)
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                rows = conn.execute(
                    select(v.c.token_id, v.c.name).where(
                        and_(
                            v.c.token_id.in_(ids[start : start + 500]),
                            v.c.valid_from <= at,
                            or_(v.c.valid_to.is_(None), v.c.valid_to > at),
                        )
                    )
                )
                out.update({token_id: name for token_id, name in rows})
        return out

    def jwts_at(self, workspace_id: str, at: int) -> list[dict[str, Any]]:
        j = s.jwts
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(j).where(
                    and_(
                        j.c.workspace_id == workspace_id,
                        j.c.issued_at <= at,
                        j.c.expires_at > at,
                        or_(j.c.invalidated_at.is_(None), j.c.invalidated_at > at),
                    )
                )
            ).mappings()
            return [dict(r) for r in rows]

    def access(self, workspace_id: str, resource: str, kind: str, permission: str, at: int) -> list[dict[str, Any]]:
        """Every token and JWT that held `permission` on the `kind` `resource` at `at`."""
        snapshot = self.snapshot(workspace_id, at, resource)
        return snapshot.grants(kind, permission, resource)

    def snapshot(self, workspace_id: str, at: int, resource: str | None = None) -> AccessSnapshot:
        """Everything needed to answer access questions at `at` (for one resource, or all)."""
        by_token: dict[str, list[Any]] = {}
        for row in self.grants_at(workspace_id, at, resource):
            by_token.setdefault(row["token_id"], []).append(read_scope(row["scope"]))
        names = self.names_at(workspace_id, at, set(by_token))
        jwts = []
        for jwt in self.jwts_at(workspace_id, at):
            scopes = []
            for item in json.loads(jwt["scopes"]):
                text = f"{item['type']}:{item['resource']}" + (f":{item['filter']}" if item.get("filter") else "")
                scopes.append(read_scope(text))
            jwts.append((jwt["id"], jwt["name"], scopes))
        return AccessSnapshot(by_token, names, jwts)

    def access_diff(
        self,
        workspace_id: str,
        start: int,
        end: int,
        resource: str | None = None,
        kind: str | None = None,
        permission: str | None = None,
    ) -> dict[str, list[dict[str, Any]]]:
        """Permissions gained, lost and changed (another via or filter) between two instants."""
        if resource is not None:
            kinds = [kind] if kind else ["datasource", "pipe"]
            targets = sorted({(k, resource) for k in kinds})
        else:
            targets = sorted(t for t in self.known_resources(workspace_id, start, end) if kind in (None, t[0]))
        before = self.snapshot(workspace_id, start, resource)
        after = self.snapshot(workspace_id, end, resource)
        out: dict[str, list[dict[str, Any]]] = {"gained": [], "lost": [], "changed": []}
        for k, r in targets:
            permissions = [permission] if permission else list(PERMISSIONS_BY_KIND[k])
            for p in permissions:
                key = {"resource": r, "kind": k, "permission": p}
                old = {(g["jwt"], g["token_id"]): g for g in before.grants(k, p, r)}
                new = {(g["jwt"], g["token_id"]): g for g in after.grants(k, p, r)}
                for ident in sorted(new.keys() - old.keys()):
                    out["gained"].append({**new[ident], **key})
                for ident in sorted(old.keys() - new.keys()):
                    out["lost"].append({**old[ident], **key})
                for ident in sorted(old.keys() & new.keys()):
                    a, b = old[ident], new[ident]
                    if (a["via"], a["filter"]) != (b["via"], b["filter"]):
                        out["changed"].append({"before": {**a, **key}, "after": {**b, **key}})
        return out

    def known_resources(self, workspace_id: str, start: int, end: int) -> set[tuple[str, str]]:
        """(kind, resource) pairs named by any scope or JWT valid at some point in [start, end]."""
        g, j = s.scope_grants, s.jwts
        out: set[tuple[str, str]] = set()
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(g.c.kind, g.c.resource)
                .where(
                    and_(
                        g.c.workspace_id == workspace_id,
                        g.c.kind.in_(("datasource", "pipe")),
                        g.c.valid_from <= end,
                        # Held at some instant: an interval closed where it opened (created and
                        # removed within one instant) was never in force; nor one that ends (at
                        # its expiry) before it starts or before the window does.
                        or_(g.c.valid_to.is_(None), and_(g.c.valid_to > start, g.c.valid_to > g.c.valid_from)),
                        or_(g.c.expires_at.is_(None), and_(g.c.expires_at > start, g.c.expires_at > g.c.valid_from)),
                    )
                )
                .distinct()
            )
            out.update((k, r) for k, r in rows)
            for (scopes,) in conn.execute(
                select(j.c.scopes).where(
                    and_(j.c.workspace_id == workspace_id, j.c.issued_at <= end, j.c.expires_at > start)
                )
            ):
                for item in json.loads(scopes):
                    out.add(("datasource" if item["type"].startswith("DATASOURCES") else "pipe", item["resource"]))
        for kind, resource in list(out):
            if kind == "datasource" and not resource.endswith("_quarantine"):
                out.add((kind, f"{resource}_quarantine"))
        return out


PERMISSIONS_BY_KIND = {"datasource": ("READ", "APPEND", "DROP"), "pipe": ("READ", "DROP")}


@dataclass
class AccessSnapshot:
    """The scopes each token (and JWT) held at one instant."""

    scopes_by_token: dict[str, list[Any]]
    names: dict[str, str]
    jwts: list[tuple[str, str, list[Any]]]

    def grants(self, kind: str, permission: str, resource: str) -> list[dict[str, Any]]:
        out = []
        for token_id, scopes in self.scopes_by_token.items():
            grant = grant_for(scopes, kind, permission, resource)
            if grant is not None:
                out.append(_grant(token_id, self.names.get(token_id, ""), grant, jwt=False))
        for jwt_id, name, scopes in self.jwts:
            grant = grant_for(scopes, kind, permission, resource)
            if grant is not None:
                out.append(_grant(jwt_id, name, grant, jwt=True))
        out.sort(key=lambda g: (g["jwt"], g["name"], g["token_id"]))
        return out


def _grant(token_id: str, name: str, grant: Grant, jwt: bool) -> dict[str, Any]:
    return {"token_id": token_id, "name": name, "via": grant.via, "filter": grant.filter, "jwt": jwt}


def _alive_versions(v: Any, workspace_id: str, at: int) -> list[Any]:
    """The versions of a workspace's tokens in force, and alive (not expired), at `at`."""
    return [
        v.c.workspace_id == workspace_id,
        v.c.valid_from <= at,
        or_(v.c.valid_to.is_(None), v.c.valid_to > at),
        _alive(v, at),
    ]


def _alive(table: Any, at: int) -> Any:
    """The row's token had not expired at `at` (its expiry, when it has one, is after `at`)."""
    return or_(table.c.expires_at.is_(None), table.c.expires_at > at)


def _version_row(row: Any) -> TokenRow:
    return TokenRow(
        id=row["token_id"],
        workspace_id=row["workspace_id"],
        name=row["name"],
        description=row["description"],
        kind=row["kind"],
        origin=origin_of(row),
        scopes=tuple(json.loads(row["scopes"])),
        generation="",
        previous_generation=None,
        previous_valid_until=0,
        deleted=False,
        grace=(),
        created_at=row["valid_from"],
        updated_at=row["valid_from"],
        expires_at=row["expires_at"],
    )


# -- incident response -----------------------------------------------------------------------------


def _until(valid_to: int | None, expires_at: int | None) -> int | None:
    """The end of a temporal row under an expiry: the earlier of the two (None: open)."""
    if expires_at is None:
        return valid_to
    return expires_at if valid_to is None else min(valid_to, expires_at)


class Trail:
    """The rows an investigation reads about one token: when it held each scope, when each of its
    values was accepted, and the JWTs signed with its values."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def grants_of(self, token_id: str) -> list[tuple[str, int, int | None]]:
        """(scope, valid from, valid to) of every scope the token ever held, oldest first."""
        g = s.scope_grants
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(g.c.scope, g.c.valid_from, g.c.valid_to, g.c.expires_at)
                .where(g.c.token_id == token_id)
                .order_by(g.c.valid_from, g.c.scope)
            ).all()
        spans = [(r[0], r[1], _until(r[2], r[3])) for r in rows]
        return [(scope, vf, vt) for scope, vf, vt in spans if vt is None or vt > vf]

    def alive_of(self, token_id: str) -> list[tuple[int, int | None]]:
        """(from, to) of each version of the token, ended at the expiry in force then: when the
        token was alive (not counting its deletion, which closes its last version)."""
        v = s.token_versions
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(v.c.valid_from, v.c.valid_to, v.c.expires_at)
                .where(v.c.token_id == token_id)
                .order_by(v.c.version)
            ).all()
        spans = [(r[0], _until(r[1], r[2])) for r in rows]
        return [(vf, vt) for vf, vt in spans if vt is None or vt > vf]

    def generations_of(self, token_id: str) -> list[tuple[int, int, int | None]]:
        """(seq, valid from, valid to) of every value the token had: seq 1 is the value it was
        created with, each refresh adds one; a refreshed-out value's window ends with its grace."""
        t = s.generations
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.c.seq, t.c.valid_from, t.c.valid_to).where(t.c.token_id == token_id).order_by(t.c.seq)
            ).all()
        return [(r[0], r[1], r[2]) for r in rows]

    def jwts_signed_by(self, admin_token_id: str, generation: str | None = None) -> list[dict[str, Any]]:
        """The JWTs issued with an admin token's values (one generation's, when given)."""
        j = s.jwts
        conditions = [j.c.admin_token_id == admin_token_id]
        if generation is not None:
            conditions.append(j.c.admin_generation == generation)
        with self.engine.connect() as conn:
            rows = conn.execute(select(j).where(and_(*conditions)).order_by(j.c.issued_at, j.c.id)).mappings()
            return [dict(r) for r in rows]

    def jwt(self, jwt_id: str) -> dict[str, Any] | None:
        j = s.jwts
        with self.engine.connect() as conn:
            row = conn.execute(select(j).where(j.c.id == jwt_id)).mappings().first()
        return dict(row) if row else None

    def revocation_candidates(
        self,
        workspace_id: str,
        *,
        created_by: str | None = None,
        created_from: int | None = None,
        created_to: int | None = None,
        deployment: str | None = None,
        resource: str | None = None,
        scope_type: str | None = None,
    ) -> list[TokenRow]:
        """Live custom and datafile tokens of the workspace matching every selector given (default
        and user tokens never match)."""
        t, a, g = s.tokens, s.audit, s.scope_grants
        conditions = [
            t.c.workspace_id == workspace_id,
            t.c.deleted.is_(False),
            t.c.kind.in_(("custom", "datafile")),
        ]
        if created_from is not None:
            conditions.append(t.c.created_at >= created_from)
        if created_to is not None:
            conditions.append(t.c.created_at < created_to)
        if created_by is not None:
            conditions.append(
                t.c.id.in_(
                    select(a.c.token_id).where(
                        and_(
                            a.c.workspace_id == workspace_id,
                            a.c.aggregate == "token",
                            a.c.type == "Created",
                            or_(a.c.actor_token_id == created_by, a.c.actor_name == created_by),
                        )
                    )
                )
            )
        if deployment is not None:
            conditions.append(
                t.c.id.in_(
                    select(a.c.token_id).where(
                        and_(
                            a.c.deployment_id == deployment, a.c.aggregate == "token", a.c.workspace_id == workspace_id
                        )
                    )
                )
            )
        for column, value in ((g.c.resource, resource), (g.c.type, scope_type)):
            if value is not None:
                conditions.append(
                    t.c.id.in_(
                        select(g.c.token_id).where(
                            and_(g.c.workspace_id == workspace_id, column == value, g.c.valid_to.is_(None))
                        )
                    )
                )
        with self.engine.connect() as conn:
            rows = conn.execute(select(t).where(and_(*conditions)).order_by(t.c.name, t.c.id)).mappings()
            return [TokenRow.from_row(r) for r in rows]
