"""Reads of the current read models: tokens, workspaces, users."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

from sqlalchemy import Engine, and_, select

from tokentrail.domain.model import accepts, expired
from tokentrail.domain.policy import TokenFacts
from tokentrail.domain.scopes import Scope, read_scope
from tokentrail.projections import schema as s


def origin_of(row: Any) -> dict[str, Any]:
    """A token's `origin` wire object from its `origin_type` / `origin_resource_id` columns."""
    origin: dict[str, Any] = {"type": row["origin_type"]}
    if row["origin_resource_id"]:
        origin["resource_id"] = row["origin_resource_id"]
    return origin


def grace_pairs(text: str | None) -> tuple[tuple[str, int], ...]:
    """The `grace` column (a JSON object generation -> valid until, µs) as sorted pairs."""
    if not text:
        return ()
    return tuple(sorted((str(g), int(until)) for g, until in json.loads(text).items()))


@dataclass(frozen=True)
class TokenRow:
    id: str
    workspace_id: str
    name: str
    description: str
    kind: str
    origin: dict[str, Any]
    scopes: tuple[str, ...]
    generation: str
    previous_generation: str | None
    previous_valid_until: int
    deleted: bool
    created_at: int
    updated_at: int
    # (generation, valid until µs) of every generation refreshed out with a grace window that
    # was still open at the token's last refresh: each keeps its own window to its end.
    grace: tuple[tuple[str, int], ...] = ()
    deleted_at: int | None = None  # effective time of the deletion
    expires_at: int | None = None  # µs: stops authenticating at this instant (None: never)

    @cached_property
    def parsed_scopes(self) -> tuple[Scope, ...]:
        # Parsed once per row (a cached row serves every request of its token), and each distinct
        # scope string once per process: a filter's parse is the dear part.
        return tuple([read_scope(x) for x in self.scopes])

    @cached_property
    def facts(self) -> TokenFacts:
        """What the policy table needs to know of this token."""
        return TokenFacts(self.id, self.kind, self.workspace_id, self.parsed_scopes)

    def accepts(self, generation: str, now_micros: int) -> bool:
        return accepts(generation, self.generation, self.grace_windows, self.deleted, now_micros, self.expires_at)

    def expired(self, now_micros: int) -> bool:
        return expired(self.expires_at, now_micros)

    @cached_property
    def grace_windows(self) -> dict[str, int]:
        return dict(self.grace)

    def accepted_generations(self, now_micros: int) -> list[str]:
        """The generations whose values are valid now: the current one first, then those in grace."""
        if self.deleted or self.expired(now_micros):
            return []
        return [self.generation] + [g for g, until in self.grace if now_micros < until]

    @classmethod
    def from_row(cls, row: Any) -> TokenRow:
        return cls(
            id=row["id"],
            workspace_id=row["workspace_id"],
            name=row["name"],
            description=row["description"],
            kind=row["kind"],
            origin=origin_of(row),
            scopes=tuple(json.loads(row["scopes"])),
            generation=row["generation"],
            previous_generation=row["previous_generation"],
            previous_valid_until=row["previous_valid_until"],
            deleted=bool(row["deleted"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            grace=grace_pairs(row["grace"]),
            deleted_at=row["deleted_at"],
            expires_at=row["expires_at"],
        )


class ListedKey(NamedTuple):
    """A live token's place in the token list, and which state of it is current: its row changes
    only with a new event of the token, which moves `position`."""

    id: str
    position: int  # the token's last event
    created_position: int  # the list's order, and its cursor


class ListedToken(NamedTuple):
    """A live token as the token list shows it: only the columns its wire object needs, plain
    (scopes still the column's JSON text), so that listing ten thousand costs little."""

    id: str
    workspace_id: str
    name: str
    description: str
    kind: str
    origin_type: str
    origin_resource_id: str | None
    scopes: str  # JSON list of canonical scope strings, as stored
    generation: str
    expires_at: int | None
    position: int  # the token's last event (as ListedKey)

    @property
    def scope_texts(self) -> tuple[str, ...]:
        return tuple(json.loads(self.scopes))


@dataclass(frozen=True)
class WorkspaceRow:
    id: str
    name: str
    owner_email: str
    owner_user_id: str
    admin_token_id: str
    created_at: int


@dataclass(frozen=True)
class DeploymentRow:
    """One deployment of a workspace; `live` is set by the query (the applied one numbered last)."""

    id: str
    workspace_id: str
    number: int
    status: str  # staged | applied | discarded
    at: int  # when it was recorded
    updated_at: int | None  # when it was applied or discarded
    token_changes: list[dict[str, Any]]
    files: list[str]
    live: bool = False


@dataclass(frozen=True)
class UserRow:
    id: str
    email: str
    user_token_id: str


class Queries:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def token(self, token_id: str) -> TokenRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(s.tokens).where(s.tokens.c.id == token_id)).mappings().first()
        return TokenRow.from_row(row) if row else None

    def token_by_name(self, workspace_id: str, name: str) -> TokenRow | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(s.tokens).where(
                        and_(
                            s.tokens.c.workspace_id == workspace_id,
                            s.tokens.c.deleted.is_(False),
                            s.tokens.c.name == name,
                        )
                    )
                )
                .mappings()
                .first()
            )
        return TokenRow.from_row(row) if row else None

    def tokens(self, workspace_id: str) -> list[TokenRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(s.tokens)
                .where(and_(s.tokens.c.workspace_id == workspace_id, s.tokens.c.deleted.is_(False)))
                .order_by(s.tokens.c.created_position)
            ).mappings()
            return [TokenRow.from_row(r) for r in rows]

    def token_list(self, workspace_id: str, after: int = 0, limit: int | None = None) -> list[ListedKey]:
        """The workspace's live tokens in creation order (`created_position`, unique), those after
        `after` only, at most `limit` of them: their keys only, read from the index
        `ix_tt_tokens_workspace_created` alone."""
        t = s.tokens.c
        query = (
            select(t.id, t.position, t.created_position)
            .where(and_(t.workspace_id == workspace_id, t.deleted.is_(False), t.created_position > after))
            .order_by(t.created_position)
        )
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return list(map(ListedKey._make, conn.execute(query).all()))

    def listed_tokens(self, workspace_id: str, ids: list[str]) -> dict[str, ListedToken]:
        """`ListedToken` of these live tokens of the workspace, by id (a token deleted meanwhile,
        or of another workspace, is not there)."""
        t = s.tokens.c
        columns = [getattr(t, name) for name in ListedToken._fields]
        found: dict[str, ListedToken] = {}
        live = and_(t.workspace_id == workspace_id, t.deleted.is_(False))
        with self.engine.connect() as conn:
            if len(ids) > 1000:  # many (a first listing): one pass over the workspace's rows
                wanted = set(ids)
                for r in conn.execute(select(*columns).where(live)).all():
                    if r[0] in wanted:
                        found[r[0]] = ListedToken._make(r)
                return found
            for start in range(0, len(ids), 500):
                query = select(*columns).where(live, t.id.in_(ids[start : start + 500]))
                for r in conn.execute(query).all():
                    found[r[0]] = ListedToken._make(r)
        return found

    def workspace(self, workspace_id: str) -> WorkspaceRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(s.workspaces).where(s.workspaces.c.id == workspace_id)).mappings().first()
        return _workspace(row) if row else None

    def workspace_by_name(self, name: str) -> WorkspaceRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(s.workspaces).where(s.workspaces.c.name == name)).mappings().first()
        return _workspace(row) if row else None

    def workspaces_of(self, user_id: str) -> list[WorkspaceRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(s.workspaces).where(s.workspaces.c.owner_user_id == user_id).order_by(s.workspaces.c.created_at)
            ).mappings()
            return [_workspace(r) for r in rows]

    def all_workspaces(self) -> list[WorkspaceRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(s.workspaces).order_by(s.workspaces.c.created_at)).mappings()
            return [_workspace(r) for r in rows]

    def user(self, user_id: str) -> UserRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(s.users).where(s.users.c.id == user_id)).mappings().first()
        return UserRow(row["id"], row["email"], row["user_token_id"]) if row else None

    def deployments(self, workspace_id: str, everything: bool = False) -> list[DeploymentRow]:
        """The workspace's deployments by number: the live one and any staged one, or all of them."""
        d = s.deployments.c
        with self.engine.connect() as conn:
            live = conn.execute(
                select(d.number)
                .where(and_(d.workspace_id == workspace_id, d.status == "applied"))
                .order_by(d.number.desc())
                .limit(1)
            ).scalar()
            query = select(s.deployments).where(d.workspace_id == workspace_id)
            if not everything:
                query = query.where((d.status == "staged") | (d.number == live))
            rows = conn.execute(query.order_by(d.number)).mappings().all()
        return [_deployment(r, live) for r in rows]

    def deployment(self, workspace_id: str, number: int) -> DeploymentRow | None:
        d = s.deployments.c
        with self.engine.connect() as conn:
            row = (
                conn.execute(select(s.deployments).where(and_(d.workspace_id == workspace_id, d.number == number)))
                .mappings()
                .first()
            )
            if row is None:
                return None
            live = conn.execute(
                select(d.number)
                .where(and_(d.workspace_id == workspace_id, d.status == "applied"))
                .order_by(d.number.desc())
                .limit(1)
            ).scalar()
        return _deployment(row, live)


def _deployment(row: Any, live: int | None) -> DeploymentRow:
    return DeploymentRow(
        row["id"],
        row["workspace_id"],
        row["number"],
        row["status"],
        row["at"],
        row["updated_at"],
        json.loads(row["token_changes"]),
        json.loads(row["files"]),
        live=row["status"] == "applied" and row["number"] == live,
    )


def _workspace(row: Any) -> WorkspaceRow:
    return WorkspaceRow(
        row["id"], row["name"], row["owner_email"], row["owner_user_id"], row["admin_token_id"], row["created_at"]
    )
