"""A brute-force replay of the event store: the slow, obviously-correct answer that the temporal
read models must equal. It shares nothing with the projector but the domain's rules (grant_for)
and the definition of effective time (the running maximum of event timestamps in log order)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokentrail.domain import clock
from tokentrail.domain.model import Jwt, Token, Workspace
from tokentrail.domain.scopes import grant_for, parse_scope
from tokentrail.service import Service


@dataclass
class TokenState:
    id: str
    workspace_id: str
    name: str
    description: str
    scopes: list[str]
    deleted: bool = False
    expires_at: int | None = None  # µs

    def alive(self, at: int) -> bool:
        """Not deleted, and not expired at `at` (an answer at T includes a token only before its expiry)."""
        return not self.deleted and (self.expires_at is None or at < self.expires_at)


@dataclass
class Replayed:
    """The events with their effective times, in log order."""

    events: list[tuple[int, int, Any]] = field(default_factory=list)  # (position, at, event)

    @classmethod
    def load(cls, service: Service) -> Replayed:
        out = cls()
        at = 0
        for n in service.ledger.recorder.select_notifications(start=1, limit=10_000_000):
            event = service.ledger.mapper.to_domain_event(n)
            at = max(at, clock.to_micros(event.timestamp))
            out.events.append((n.id, at, event))
        return out

    def state(self, until: int) -> tuple[dict[str, TokenState], list[dict[str, Any]]]:
        """Tokens (by id) and JWT validity windows after every event with effective time <= until."""
        tokens: dict[str, TokenState] = {}
        admin_of: dict[str, str] = {}
        jwts: list[dict[str, Any]] = []
        for _position, at, event in self.events:
            if at > until:
                break
            oid = str(event.originator_id)
            if isinstance(event, Workspace.Created):
                admin_of[oid] = event.admin_token_id
            elif isinstance(event, Token.Created):
                tokens[oid] = TokenState(oid, event.workspace_id, event.name, event.description, list(event.scopes))
            elif isinstance(event, Token.ScopeAdded):
                tokens[oid].scopes.append(event.scope)
            elif isinstance(event, Token.ScopeRemoved):
                tokens[oid].scopes.remove(event.scope)
            elif isinstance(event, Token.Renamed):
                tokens[oid].name = event.name
            elif isinstance(event, Token.DescriptionChanged):
                tokens[oid].description = event.description
            elif isinstance(event, Token.Deleted):
                tokens[oid].deleted = True
            elif isinstance(event, Token.ExpirySet):
                tokens[oid].expires_at = None if event.expires_at is None else event.expires_at * 1_000_000
            elif isinstance(event, Token.Refreshed):
                for jwt in jwts:
                    if jwt["admin_token_id"] == oid and jwt["invalid_from"] is None:
                        jwt["invalid_from"] = at + event.grace_seconds * 1_000_000
            elif isinstance(event, Jwt.Issued):
                jwts.append(
                    {
                        "id": oid,
                        "workspace_id": event.workspace_id,
                        "name": event.name,
                        "scopes": event.scopes,
                        "issued_at": at,
                        "expires_at": event.expires_at * 1_000_000,
                        "admin_token_id": event.admin_token_id,
                        "invalid_from": None,
                    }
                )
        return tokens, jwts

    def tokens_as_of(self, workspace_id: str, at: int) -> list[tuple[str, str, str, tuple[str, ...]]]:
        tokens, _ = self.state(at)
        return sorted(
            (t.id, t.name, t.description, tuple(t.scopes))
            for t in tokens.values()
            if t.workspace_id == workspace_id and t.alive(at)
        )

    def access(self, workspace_id: str, resource: str, kind: str, permission: str, at: int) -> list[dict[str, Any]]:
        tokens, jwts = self.state(at)
        out = []
        for t in tokens.values():
            if t.workspace_id != workspace_id or not t.alive(at):
                continue
            grant = grant_for([parse_scope(x) for x in t.scopes], kind, permission, resource)
            if grant:
                out.append({"token_id": t.id, "name": t.name, "via": grant.via, "filter": grant.filter, "jwt": False})
        for j in jwts:
            if j["workspace_id"] != workspace_id or not (j["issued_at"] <= at < j["expires_at"]):
                continue
            if j["invalid_from"] is not None and at >= j["invalid_from"]:
                continue
            scopes = [
                parse_scope(f"{s['type']}:{s['resource']}" + (f":{s['filter']}" if s.get("filter") else ""))
                for s in j["scopes"]
            ]
            grant = grant_for(scopes, kind, permission, resource)
            if grant:
                out.append(
                    {"token_id": j["id"], "name": j["name"], "via": grant.via, "filter": grant.filter, "jwt": True}
                )
        return sorted(out, key=lambda g: (g["jwt"], g["name"], g["token_id"]))

    def known_resources(self, workspace_id: str, start: int, end: int) -> set[tuple[str, str]]:
        """(kind, resource) named by a scope some live token held, or by a JWT alive, at some instant
        in [start, end] -- with each datasource's quarantine companion -- found by replaying the
        state at `start` and after every event up to `end`."""
        instants = [start] + sorted({at for _, at, _ in self.events if start < at <= end})
        out: set[tuple[str, str]] = set()
        for at in instants:
            tokens, _ = self.state(at)
            for t in tokens.values():
                if t.workspace_id == workspace_id and t.alive(at):
                    for scope in map(parse_scope, t.scopes):
                        if scope.kind in ("datasource", "pipe"):
                            out.add((scope.kind, scope.resource))
        _, jwts = self.state(end)
        for j in jwts:
            if j["workspace_id"] == workspace_id and j["issued_at"] <= end and j["expires_at"] > start:
                for item in j["scopes"]:
                    out.add(("datasource" if item["type"].startswith("DATASOURCES") else "pipe", item["resource"]))
        for kind, resource in list(out):
            if kind == "datasource" and not resource.endswith("_quarantine"):
                out.add((kind, f"{resource}_quarantine"))
        return out

    def exposure_at(
        self,
        token_id: str,
        at: int,
        universe: list[tuple[str, str, str]],
        state: tuple[dict[str, TokenState], list[dict[str, Any]]] | None = None,
    ) -> tuple[set[tuple[str, str, str, str, str]], dict[str, set[tuple[str, str, str, str, str]]]]:
        """What token `token_id` reached at `at`, one scope at a time, over `universe` (kind,
        resource, permission): {(kind, resource, permission, via, filter)}, and the same for each
        JWT signed with its values (by JWT id) that was alive at `at`. `state` is `self.state(at)`
        when the caller has it already."""
        tokens, jwts = state if state is not None else self.state(at)

        def reached(scopes: list[Any]) -> set[tuple[str, str, str, str, str]]:
            out = set()
            for scope in scopes:
                for kind, resource, permission in universe:
                    grant = grant_for([scope], kind, permission, resource)
                    if grant:
                        out.add((kind, resource, permission, grant.via, grant.filter))
            return out

        token = tokens.get(token_id)
        mine = reached([parse_scope(x) for x in token.scopes]) if token and token.alive(at) else set()
        by_jwt = {}
        for j in jwts:
            if j["admin_token_id"] != token_id or not (j["issued_at"] <= at < j["expires_at"]):
                continue
            if j["invalid_from"] is not None and at >= j["invalid_from"]:
                continue
            scopes = [
                parse_scope(f"{s['type']}:{s['resource']}" + (f":{s['filter']}" if s.get("filter") else ""))
                for s in j["scopes"]
            ]
            by_jwt[j["id"]] = reached(scopes)
        return mine, by_jwt

    def history(self, token_id: str) -> list[tuple[int, str, list[str], list[str]]]:
        out = []
        scopes: list[str] = []
        for position, _at, event in self.events:
            if str(event.originator_id) != token_id or not isinstance(event, Token.Event):
                continue
            before = list(scopes)
            if isinstance(event, Token.Created):
                scopes = list(event.scopes)
            elif isinstance(event, Token.ScopeAdded):
                scopes.append(event.scope)
            elif isinstance(event, Token.ScopeRemoved):
                scopes.remove(event.scope)
            after = [] if isinstance(event, Token.Deleted) else list(scopes)
            out.append((position, type(event).__name__, before, after))
        return out
