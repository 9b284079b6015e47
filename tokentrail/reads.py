"""The read side's one door: every question a caller may ask of the read models.

The ledger (`domain/ledger.py`) is the one door for writes; this is its counterpart for reads.
Each method takes the authenticated `Caller` first and does, in one place, what every entrypoint
would otherwise repeat: it asks the policy table (`domain/policy.py`) whether the caller may ask at
all, resolves a token reference (a value, an id or a name) within the caller's reach, and confines
the answer to the caller's workspace. The HTTP routes, the web console and the CLI only translate:
they read their parameters, call one method here, and render what it returns.

Two ways to name a token:

- `token(who, ref)`: a *live* token, as Tinybird's Token API resolves `{ref}`. A value designates
  its token only while it authenticates (a refreshed-out value is "not found", as on Tinybird).
- `token_id_ever(who, ref, at)`: any token the workspace ever had, as an investigation asks: a
  refreshed-out value still names its token, and a name names whoever held it (at `at`, or last).

Refusals come in the order that leaks nothing: a caller that may not read other tokens gets the same
403 whether or not a name exists.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

import jwt as pyjwt

from tokentrail import paging
from tokentrail.domain.clock import format_instant, now, to_micros
from tokentrail.domain.errors import InvalidInput, NotFound
from tokentrail.domain.exposure import Interval, Reach, escalation, intersect_all, merge, reach
from tokentrail.domain.model import Token
from tokentrail.domain.policy import Caller, Op, allows, authorize, own_user_id, require_reach
from tokentrail.domain.refs import parse_ref
from tokentrail.domain.scopes import KINDS, PERMISSIONS, RESOURCE_NAME, SCOPE_TYPES, read_scope
from tokentrail.jwts import MAX_JWT_LENGTH
from tokentrail.projections.history import AuditQuery, History, Trail
from tokentrail.projections.queries import DeploymentRow, ListedKey, ListedToken, TokenRow, UserRow, WorkspaceRow
from tokentrail.projections.review import Review, review
from tokentrail.verify import ChainReport, make_checkpoint, verify_chain, workspace_view

if TYPE_CHECKING:
    from tokentrail.service import Service


@dataclass(frozen=True)
class Exposure:
    """What `Reads.exposure` found: intervals are `(from, to)` in µs, `to` None while open."""

    token: TokenRow
    generation: int | None  # the value traced (refreshes before it), or None for the whole token
    start: int | None
    end: int | None
    lives: list[Interval]  # when the token (or the value) was accepted, within the window
    exposure: list[tuple[Reach, list[Interval]]]
    escalation: dict[str, list[Interval]]  # TOKENS / WORKSPACE:DEPLOY: could mint tokens reaching more
    jwts: list[dict[str, Any]]


@dataclass(frozen=True)
class Stale:
    """Tokens not used for a while: the rows, and every token's last use (µs) for their objects."""

    rows: list[TokenRow]
    last_used: dict[str, int]


@dataclass(frozen=True)
class Identified:
    """What a value is: which token (or JWT), which of its values, when that value was accepted."""

    token_id: str
    name: str
    workspace_id: str
    generation: int | None  # refreshes before this value (0: as created); None for a JWT
    valid_from: int
    valid_until: int | None
    valid_now: bool
    reason: str  # current, grace, refreshed, deleted, expired
    jwt: bool


@dataclass(frozen=True)
class Selectors:
    """Which tokens a bulk revocation selects: every given selector must match."""

    created_by: str | None = None  # id or name of the token that created it
    created_from: int | None = None  # created at or after (µs)
    created_to: int | None = None  # created before (µs)
    deployment: str | None = None  # created or changed by this deployment
    resource: str | None = None  # holds a scope on this datasource or pipe
    scope_type: str | None = None  # holds a scope of this type

    def query(self) -> dict[str, Any]:
        if all(value is None for value in dataclasses.astuple(self)):
            raise InvalidInput(
                "name at least one selector: created_by, created_from, created_to, deployment, resource, scope_type"
            )
        if self.resource is not None and not RESOURCE_NAME.fullmatch(self.resource):
            raise InvalidInput("resource must name a datasource or pipe")
        if self.scope_type is not None and self.scope_type not in SCOPE_TYPES:
            raise InvalidInput(f"scope_type must be one of {', '.join(sorted(SCOPE_TYPES))}")
        for name, text in (("created_by", self.created_by), ("deployment", self.deployment)):
            if text is not None and (not text or len(text) > 256):
                raise InvalidInput(f"{name} must be 1 to 256 characters")
        if self.created_from is not None and self.created_to is not None and self.created_from > self.created_to:
            raise InvalidInput("created_from must not be after created_to")
        return dataclasses.asdict(self)


def _verifies(value: str, secret: str) -> bool:
    try:
        pyjwt.decode(value, secret, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False})
    except pyjwt.PyJWTError:
        return False
    return True


def _jwt_reason(valid: bool, until: int, expires: int, ended: int | None) -> str:
    """Why a JWT is or is not accepted: its signing value still current (or in its grace window),
    or ended by its own expiry first, or by the refresh of the value that signed it."""
    if valid:
        return "current" if ended is None else "grace"
    return "expired" if until == expires else "refreshed"


def _jwt_scope_text(item: dict[str, Any]) -> str:
    return f"{item['type']}:{item['resource']}" + (f":{item['filter']}" if item.get("filter") else "")


def _reach_over(held: Iterable[tuple[str, Interval]], lives: list[Interval]) -> list[tuple[Reach, list[Interval]]]:
    """What scopes held over intervals reach while the token lives: one entry per reach, with its
    intervals merged. Each distinct scope is read and expanded once, however often it was held."""
    by_scope: dict[str, list[Interval]] = {}
    for scope_text, span in held:
        by_scope.setdefault(scope_text, []).append(span)
    spans: dict[Reach, list[Interval]] = {}
    for scope_text, intervals in by_scope.items():
        clipped = intersect_all(merge(intervals), lives)
        if clipped:
            for item in reach(read_scope(scope_text)):
                spans.setdefault(item, []).extend(clipped)
    return [(item, merge(found)) for item, found in sorted(spans.items())]


class Reads:
    """Answers reads for a caller: permission first, then the reference, then the read model."""

    def __init__(self, service: Service, history: History | None = None) -> None:
        self.service = service
        self.queries = service.queries
        self.history = history if history is not None else History(service.read_engine)
        self.trail = Trail(service.read_engine)

    # -- resolving a reference ------------------------------------------------------------------

    def _live(self, who: Caller, ref: str) -> TokenRow:
        """A live token within the caller's reach, by value, id or name."""
        parsed = parse_ref(ref, self.service.signer)
        if parsed is None:
            raise NotFound("Token not found")
        if parsed.kind == "name":
            row = self.queries.token_by_name(who.workspace_id, parsed.text)
        else:
            row = self.queries.token(parsed.text)
        if row is None or row.deleted:
            raise NotFound("Token not found")
        require_reach(who, row.facts)
        if parsed.kind == "value" and (
            parsed.workspace_id != row.workspace_id or not row.accepts(parsed.generation or "", to_micros(now()))
        ):
            raise NotFound("Token not found")
        return row

    def token_id_ever(self, who: Caller, ref: str, at: int | None = None) -> str | None:
        """The id of a token the caller's workspace has ever had, from a value (current or not: the
        history of a refreshed-out value is what an investigation asks for), an id, or a name
        (held at `at`, else now, else most recently). None when nothing matches."""
        parsed = parse_ref(ref, self.service.signer)
        if parsed is None:
            return None
        if parsed.kind == "value":
            return parsed.token_id if parsed.workspace_id == who.workspace_id else None
        if parsed.kind == "id":
            row = self.queries.token(parsed.text)
            return parsed.text if row is not None and row.workspace_id == who.workspace_id else None
        current = self.queries.token_by_name(who.workspace_id, ref)
        if current is not None and at is None:
            return current.id
        ids = self.history.token_ids_named(who.workspace_id, ref)
        return ids[0] if ids else (current.id if current else None)

    # -- the token table, now -------------------------------------------------------------------

    def tokens(self, who: Caller) -> list[TokenRow]:
        """The workspace's live tokens (ADMIN or TOKENS)."""
        authorize(who, Op.LIST)
        return self.queries.tokens(who.workspace_id)

    def token_page(
        self, who: Caller, limit: int | None = None, cursor: str | None = None
    ) -> tuple[list[ListedKey], str | None]:
        """The workspace's live tokens (ADMIN or TOKENS) in creation order, as keys (`ListedKey`;
        their rows from `listed_tokens`): all of them, or the `limit` after `cursor` and the
        cursor of the next page (None after the last). A token created while a client pages
        appears on a later page (the order is by creation); one deleted before its page is
        fetched does not appear; the others appear exactly once, renamed or changed or not."""
        authorize(who, Op.LIST)
        signer = self.service.signer
        after = paging.decode(signer, who.workspace_id, "now", cursor)
        if limit is None and cursor is None:
            return self.queries.token_list(who.workspace_id), None
        size = limit if limit is not None else paging.DEFAULT_LIMIT
        keys = self.queries.token_list(who.workspace_id, after, size + 1)
        if len(keys) <= size:
            return keys, None
        keys = keys[:size]
        return keys, paging.encode(signer, who.workspace_id, "now", keys[-1].created_position)

    def listed_tokens(self, who: Caller, ids: list[str]) -> dict[str, ListedToken]:
        """The rows of listed tokens (ADMIN or TOKENS), of the caller's workspace only."""
        authorize(who, Op.LIST)
        return self.queries.listed_tokens(who.workspace_id, ids)

    def visible_tokens(self, who: Caller) -> list[TokenRow]:
        """What the token list shows this caller: every token to a manager; to any other static
        token, itself alone (as the API lets it read only itself); nothing to a JWT."""
        if allows(who, Op.LIST):
            return self.queries.tokens(who.workspace_id)
        own = self.queries.token(who.token_id) if who.token_id and not who.is_jwt else None
        return [own] if own is not None and not own.deleted else []

    def token(self, who: Caller, ref: str) -> TokenRow:
        """One live token by value, id or name. Any static token may read itself; reading others
        needs ADMIN or TOKENS, and a caller that may not learns nothing of which others exist."""
        try:
            row = self._live(who, ref)
        except NotFound:
            authorize(who, Op.LIST)
            raise
        if row.id != who.token_id:
            authorize(who, Op.LIST)
        authorize(who, Op.READ, row.facts)
        return row

    def token_by_id(self, who: Caller, token_id: str) -> TokenRow:
        """A token the caller may look at by its id, deleted ones included (for their history)."""
        row = self.queries.token(token_id)
        if row is None:
            raise NotFound("Token not found")
        require_reach(who, row.facts)
        authorize(who, Op.READ, row.facts)
        return row

    def own_user_token(self, who: Caller) -> TokenRow | None:
        """The user token of the person whose `admin <email>` token (or user token) is the caller:
        Tinybird's token page shows the signed-in user their own user token beside the
        workspace's. Only that person's own session qualifies; any other ADMIN sees none."""
        user_id = own_user_id(who)  # None for JWTs and grace-window values
        if user_id is None or who.token_id is None:
            return None
        user = self.queries.user(user_id)
        if user is None:
            return None
        if who.token_id != user.user_token_id:
            workspace = self.queries.workspace(who.workspace_id)
            if workspace is None or workspace.owner_user_id != user_id:
                return None
        row = self.queries.token(user.user_token_id)
        return row if row is not None and not row.deleted else None

    def stale_tokens(self, who: Caller, unused_seconds: int) -> Stale:
        """Live tokens not used for `unused_seconds` (ADMIN or TOKENS); a never-used token counts
        from its creation. Oldest use first."""
        authorize(who, Op.LIST)
        rows = self.queries.tokens(who.workspace_id)
        used = self.service.usage.last_used_of(r.id for r in rows)
        before = to_micros(now()) - unused_seconds * 1_000_000
        stale = [r for r in rows if used.get(r.id, r.created_at) <= before]
        stale.sort(key=lambda r: (used.get(r.id, r.created_at), r.id))
        return Stale(stale, used)

    def access_review(self, who: Caller, at: int) -> Review:
        """The access review as of `at`: every token alive then, with its facts and a summary
        (ADMIN or TOKENS: it reads token metadata, never a value)."""
        authorize(who, Op.READ_AUDIT)
        return review(self.service.read_engine, self.history, who.workspace_id, at, self.service.usage.all_last_used())

    def workspace_settings(self, who: Caller) -> dict[str, Any]:
        """The caller's workspace's settings (anyone of the workspace may read them), from the
        event store: the source of truth, read only when asked."""
        workspace = self.service.ledger.workspace(who.workspace_id)
        return {"max_token_lifetime": workspace.max_token_lifetime}

    # -- the past -------------------------------------------------------------------------------

    def tokens_as_of(self, who: Caller, at: int) -> list[TokenRow]:
        """The workspace's token table as it stood at `at` (ADMIN or TOKENS)."""
        authorize(who, Op.LIST)
        return self.history.tokens_as_of(who.workspace_id, at)

    def tokens_as_of_page(
        self, who: Caller, at: int, limit: int | None = None, cursor: str | None = None
    ) -> tuple[list[TokenRow], str | None]:
        """`tokens_as_of`, a page at a time (as `token_page`); a cursor is good only for the same
        workspace and the same instant. The past does not change, so neither do its pages (those
        of an instant not yet past can: a token changed meanwhile could then show twice)."""
        authorize(who, Op.LIST)
        signer = self.service.signer
        listing = f"as_of:{at}"
        after = paging.decode(signer, who.workspace_id, listing, cursor)
        if limit is None and cursor is None:
            return self.history.tokens_as_of(who.workspace_id, at), None
        size = limit if limit is not None else paging.DEFAULT_LIMIT
        keyed = self.history.tokens_as_of_page(who.workspace_id, at, after, size + 1)
        if len(keyed) <= size:
            return [row for _, row in keyed], None
        keyed = keyed[:size]
        return [row for _, row in keyed], paging.encode(signer, who.workspace_id, listing, keyed[-1][0])

    def token_as_of(self, who: Caller, ref: str, at: int) -> TokenRow:
        """One token as it stood at `at`, by value, id or (past or present) name."""
        authorize(who, Op.READ_AUDIT)
        token_id = self.token_id_ever(who, ref, at)
        row = self.history.token_as_of(who.workspace_id, at, token_id=token_id) if token_id else None
        parsed = parse_ref(ref, self.service.signer)
        if row is None and parsed is not None and parsed.kind == "name":
            row = self.history.token_as_of(who.workspace_id, at, name=ref)
        if row is None:
            raise NotFound(f"Token not found as of {format_instant(at)}")
        return row

    def token_history(self, who: Caller, ref: str) -> tuple[str, list[dict[str, Any]]]:
        """Every event of one token, deleted ones too. A static token may read its own history;
        anyone else's needs the right to read the trail, asked before "not found" so that a caller
        that may not read it learns nothing of which names and ids exist."""
        token_id = self.token_id_ever(who, ref)
        if token_id is not None and token_id == who.token_id:
            own = self.queries.token(token_id)
            authorize(who, Op.READ, own.facts if own is not None else None)
        else:
            authorize(who, Op.READ_AUDIT)
        if token_id is None:
            raise NotFound("Token not found")
        events = self.history.token_history(token_id)
        if not events or events[0]["workspace_id"] != who.workspace_id:
            raise NotFound("Token not found")
        return token_id, events

    def events_of(self, who: Caller, row: TokenRow) -> list[dict[str, Any]]:
        """The events of a token the caller already holds (from `token_by_id`): its timeline."""
        require_reach(who, row.facts)
        authorize(who, Op.READ, row.facts)
        return self.history.token_history(row.id)

    # -- the audit trail ------------------------------------------------------------------------

    def audit_page(
        self, who: Caller, query: AuditQuery, cursor: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the caller's workspace's trail, filtered by `query` (whatever workspace it
        names: the caller's own is the only one it reads)."""
        authorize(who, Op.READ_AUDIT)
        return self.history.audit_page(self._own(who, query), cursor, limit)

    def audit_stream(self, who: Caller, query: AuditQuery) -> Iterator[dict[str, Any]]:
        """The whole filtered trail as wire objects, a page at a time. Permission is asked now,
        not when the stream is first read. (The exports read `audit_rows` instead; this is the
        definition their bytes are checked against in tests/test_export.py.)"""
        authorize(who, Op.READ_AUDIT)
        return self.history.audit_stream(self._own(who, query))

    def audit_rows(self, who: Caller, query: AuditQuery) -> Iterator[list[tuple[Any, ...]]]:
        """The whole filtered trail as raw rows (`history.AUDIT_COLUMNS`), a page at a time, for the
        export encoders (`api/export.py`). Permission is asked now, not when the pages are read."""
        authorize(who, Op.READ_AUDIT)
        return self.history.audit_rows(self._own(who, query))

    def _own(self, who: Caller, query: AuditQuery) -> AuditQuery:
        """The query confined to the caller's workspace, with its owner's own events (the user's
        creation and the user token's changes, which belong to no workspace); a deployment named by
        its number (Forward's deployment id) is the workspace's deployment of that number."""
        deployment = query.deployment
        if deployment and deployment.isascii() and deployment.isdigit() and len(deployment) < 19:
            row = self.queries.deployment(who.workspace_id, int(deployment))
            deployment = row.id if row is not None else deployment
        workspace = self.queries.workspace(who.workspace_id)
        owner = workspace.owner_user_id if workspace is not None else None
        return dataclasses.replace(query, workspace_id=who.workspace_id, deployment=deployment, owner_user_id=owner)

    # -- deployments ----------------------------------------------------------------------------

    def deployments(self, who: Caller, everything: bool = False) -> list[DeploymentRow]:
        """The caller's workspace's deployments (the live one and any staged one, or all): for
        callers that may deploy."""
        authorize(who, Op.DEPLOY)
        return self.queries.deployments(who.workspace_id, everything)

    def deployment(self, who: Caller, number: int) -> DeploymentRow | None:
        authorize(who, Op.DEPLOY)
        return self.queries.deployment(who.workspace_id, number)

    # -- access ---------------------------------------------------------------------------------

    def access(self, who: Caller, resource: str, kind: str, permission: str, at: int) -> list[dict[str, Any]]:
        """Who held `permission` on a datasource or pipe at `at`, through which token, scope and filter."""
        authorize(who, Op.READ_AUDIT)
        check_access(resource, kind, permission)
        return self.history.access(who.workspace_id, resource, kind, permission, at)

    def access_diff(
        self,
        who: Caller,
        start: int | None,
        end: int,
        resource: str | None = None,
        kind: str | None = None,
        permission: str | None = None,
    ) -> dict[str, Any]:
        """Permissions gained, lost and changed between two instants, optionally for one resource,
        kind or permission (a kind or permission left out means all of them)."""
        authorize(who, Op.READ_AUDIT)
        if start is None:
            raise InvalidInput("from is required")
        if start > end:
            raise InvalidInput("from must not be after to")
        if resource is not None:
            check_access(resource, kind or "datasource", permission or "READ")
        elif kind not in (None, *KINDS) or permission not in (None, *PERMISSIONS):
            raise InvalidInput("kind must be datasource or pipe; permission READ, APPEND or DROP")
        return self.history.access_diff(who.workspace_id, start, end, resource, kind, permission)

    def known_resources(self, who: Caller, start: int, end: int) -> set[tuple[str, str]]:
        """The datasources and pipes any scope named between two instants (the access page's list)."""
        authorize(who, Op.READ_AUDIT)
        return self.history.known_resources(who.workspace_id, start, end)

    # -- proof ----------------------------------------------------------------------------------

    def verify(self, who: Caller) -> ChainReport:
        """Recompute the hash chain from the event store; the report tells of the caller's workspace."""
        authorize(who, Op.VERIFY)
        return workspace_view(self.service, who.workspace_id, verify_chain(self.service))

    def checkpoint(self, who: Caller) -> dict[str, Any]:
        """A signed checkpoint of the chain's head, for the caller's workspace."""
        authorize(who, Op.VERIFY)
        return make_checkpoint(self.service, self.service.checkpoint_key(), workspace_id=who.workspace_id)

    # -- incident response ----------------------------------------------------------------------

    def exposure(self, who: Caller, ref: str, start: int | None = None, end: int | None = None) -> Exposure:
        """Everything token `ref` could reach over its life, or over `[start, end)`: each datasource
        and pipe with the permission, the scope and filter, and the intervals, closed where the
        token lost the scope, was deleted, or (for a value) where that value stopped being accepted
        (at a refresh without grace, or at the end of its grace window). A value as `ref` traces that
        value alone; an id or a name, every value the token ever had. For the workspace's admin
        token, the JWTs signed with its values (with that value's, for a value) are traced too."""
        authorize(who, Op.INVESTIGATE)
        if start is not None and end is not None and start > end:
            raise InvalidInput("from must not be after to")
        token_id = self.token_id_ever(who, ref)
        row = self.queries.token(token_id) if token_id is not None else None
        if row is None or row.workspace_id != who.workspace_id:
            raise NotFound("Token not found")
        parsed = parse_ref(ref, self.service.signer)
        value_generation: tuple[int, str] | None = None
        if parsed is not None and parsed.kind == "value":
            seq = self.value_generation(row.id, parsed.generation or "")
            if seq is None:
                raise NotFound("Token not found")
            value_generation = (seq, parsed.generation or "")
        window: Interval = (start if start is not None else 0, end)
        life = intersect_all(self._lives(row, value_generation), [window])
        grants = self.trail.grants_of(row.id)
        exposure = _reach_over(((scope, (vf, vt)) for scope, vf, vt in grants), life)
        escalations: dict[str, list[Interval]] = {}
        for scope_text in {scope for scope, _, _ in grants}:
            if escalation(read_scope(scope_text)):
                held = [(vf, vt) for scope, vf, vt in grants if scope == scope_text]
                escalations[scope_text] = intersect_all(merge(held), life)
        jwts = []
        workspace = self.queries.workspace(row.workspace_id)
        if workspace is not None and workspace.admin_token_id == row.id:
            nonce = value_generation[1] if value_generation is not None else None
            for jwt in self.trail.jwts_signed_by(row.id, nonce):
                ends = [e for e in (jwt["expires_at"], jwt["invalidated_at"]) if e is not None]
                jwt_life = intersect_all([(jwt["issued_at"], min(ends))], [window])
                scopes = [
                    (read_scope(_jwt_scope_text(item)), (jwt["issued_at"], min(ends)))
                    for item in json.loads(jwt["scopes"])
                ]
                jwts.append(
                    {
                        "id": jwt["id"],
                        "name": jwt["name"],
                        "issued_at": jwt["issued_at"],
                        "expires_at": jwt["expires_at"],
                        "invalidated_at": jwt["invalidated_at"],
                        "exposure": _reach_over(((str(sc), span) for sc, span in scopes), jwt_life),
                    }
                )
        return Exposure(
            token=row,
            generation=value_generation[0] - 1 if value_generation is not None else None,
            start=window[0] if start is not None else None,
            end=end,
            lives=life,
            exposure=exposure,
            escalation={k: merge(v) for k, v in sorted(escalations.items()) if v},
            jwts=jwts,
        )

    def _lives(self, row: TokenRow, value: tuple[int, str] | None) -> list[Interval]:
        """When the token (or one of its values) was accepted, ended at its deletion and at its
        expiry (the expiry in force at each instant: a change of expiry moves the end)."""
        generations = self.trail.generations_of(row.id)
        if value is not None:
            generations = [g for g in generations if g[0] == value[0]]
        spans = [(vf, vt) for _seq, vf, vt in generations]
        alive = self.trail.alive_of(row.id)
        if row.deleted_at is not None:
            alive = intersect_all(alive, [(0, row.deleted_at)])
        return intersect_all(spans, alive)

    def value_generation(self, token_id: str, nonce: str) -> int | None:
        """Which of a token's values (1: as created, +1 per refresh) has this nonce. (The value's
        signature has been checked before; the nonces are compared in constant time all the same.)"""
        wanted = nonce.encode()
        for seq, generation in enumerate(self._nonces(token_id), start=1):
            if hmac.compare_digest(generation.encode(), wanted):
                return seq
        return None

    def _nonces(self, token_id: str) -> list[str]:
        """The nonce of each of a token's values in order, from its own events in the event store
        (the source of truth; the read models keep only the current one)."""
        return [
            str(event.generation)
            for event in self.service.ledger.events.get(UUID(token_id))
            if isinstance(event, (Token.Created, Token.Refreshed))
        ]

    def identify(self, who: Caller, value: str) -> Identified:
        """Which token (and which of its values) a value is or was, and whether it is valid now and
        why not. A value this server's key did not sign, or of another workspace, is "not found"
        and nothing more."""
        authorize(who, Op.INVESTIGATE)
        missing = NotFound("Token not found")
        if not isinstance(value, str) or not value or len(value) > MAX_JWT_LENGTH:
            raise missing
        current = to_micros(now())
        if value.startswith("p."):
            claims = self.service.signer.read(value)
            if claims is None or claims.workspace_id != who.workspace_id:
                raise missing
            row = self.queries.token(claims.token_id)
            if row is None or row.workspace_id != who.workspace_id:
                raise missing
            seq = self.value_generation(row.id, claims.generation)
            span = next((g for g in self.trail.generations_of(row.id) if g[0] == seq), None)
            if seq is None or span is None:
                raise missing
            until = span[2]
            if row.deleted_at is not None and (until is None or row.deleted_at < until):
                until = row.deleted_at
            # An expiry (the one in force now) ends every value still accepted when it comes.
            expires = row.expires_at
            if expires is not None and (until is None or expires < until) and expires > span[1]:
                until = expires
            valid = row.accepts(claims.generation, current)
            if valid:
                reason = "current" if claims.generation == row.generation else "grace"
            elif expires is not None and until == expires:
                reason = "expired"
            else:
                reason = "deleted" if row.deleted and until == row.deleted_at else "refreshed"
            return Identified(row.id, row.name, row.workspace_id, seq - 1, span[1], until, valid, reason, False)
        return self._identify_jwt(who, value, current)

    def _identify_jwt(self, who: Caller, value: str, current: int) -> Identified:
        missing = NotFound("Token not found")
        try:
            header = pyjwt.get_unverified_header(value)
            unverified = pyjwt.decode(value, options={"verify_signature": False})
        except pyjwt.PyJWTError:
            raise missing from None
        if header.get("alg") != "HS256" or not isinstance(unverified, dict):
            raise missing
        if unverified.get("workspace_id") != who.workspace_id:
            raise missing
        jti = unverified.get("jti")
        jwt = self.trail.jwt(jti) if isinstance(jti, str) and len(jti) == 36 else None
        if jwt is not None and jwt["workspace_id"] == who.workspace_id:
            secret = self.service.signer.make(jwt["workspace_id"], jwt["admin_token_id"], jwt["admin_generation"])
            if _verifies(value, secret):
                expires, invalidated = jwt["expires_at"], jwt["invalidated_at"]
                until = expires if invalidated is None else min(expires, invalidated)
                valid = jwt["issued_at"] <= current < until
                reason = _jwt_reason(valid, until, expires, invalidated)
                return Identified(
                    jwt["id"], jwt["name"], jwt["workspace_id"], None, jwt["issued_at"], until, valid, reason, True
                )
        return self._identify_signed_elsewhere(who, value, unverified, current)

    def _identify_signed_elsewhere(self, who: Caller, value: str, claims: dict[str, Any], current: int) -> Identified:
        """A JWT the server never issued but that one of the admin token's values signed (Tinybird
        lets clients sign their own): it lives while that value does, and until its `exp`."""
        missing = NotFound("Token not found")
        workspace = self.queries.workspace(who.workspace_id)
        exp = claims.get("exp")
        if workspace is None or isinstance(exp, bool) or not isinstance(exp, int):
            raise missing
        admin_id = workspace.admin_token_id
        for seq, nonce in enumerate(self._nonces(admin_id), start=1):
            if not _verifies(value, self.service.signer.make(who.workspace_id, admin_id, nonce)):
                continue
            span = next((g for g in self.trail.generations_of(admin_id) if g[0] == seq), None)
            if span is None:
                raise missing
            expires = exp * 1_000_000
            until = expires if span[2] is None else min(expires, span[2])
            valid = span[1] <= current < until
            reason = _jwt_reason(valid, until, expires, span[2])
            name = str(claims.get("name", "jwt"))[:256]
            return Identified(admin_id, name, who.workspace_id, seq - 1, span[1], until, valid, reason, True)
        raise missing

    def revocation_plan(self, who: Caller, selectors: Selectors) -> list[TokenRow]:
        """The live tokens a bulk revocation with these selectors would delete (all selectors must
        match; default and user tokens never do)."""
        authorize(who, Op.REVOKE)
        rows = self.trail.revocation_candidates(who.workspace_id, **selectors.query())
        return [r for r in rows if allows(who, Op.DELETE, r.facts)]

    # -- workspaces -----------------------------------------------------------------------------

    def workspace(self, who: Caller) -> WorkspaceRow | UserRow:
        """The caller's workspace; for a user token, its user (whose realm it is)."""
        found = self.queries.user(who.workspace_id) if who.user else self.queries.workspace(who.workspace_id)
        if found is None:
            raise NotFound("Workspace not found")
        return found

    def workspaces(self, who: Caller) -> list[WorkspaceRow]:
        """The workspaces of a user token's user."""
        authorize(who, Op.WORKSPACES)
        return self.queries.workspaces_of(who.workspace_id)

    def user(self, who: Caller) -> UserRow:
        """The user behind a user token."""
        authorize(who, Op.WORKSPACES)
        user = self.queries.user(who.workspace_id)
        if user is None:
            raise NotFound("User not found")
        return user


def check_access(resource: str, kind: str, permission: str) -> None:
    """A well-formed access question: a datasource or pipe name, its kind, a permission it has."""
    if not RESOURCE_NAME.fullmatch(resource):
        raise InvalidInput("resource must name a datasource or pipe")
    if kind not in KINDS:
        raise InvalidInput("kind must be datasource or pipe")
    if permission not in PERMISSIONS or (kind == "pipe" and permission == "APPEND"):
        raise InvalidInput("permission must be READ, APPEND (datasources) or DROP")


__all__ = ["Reads", "check_access"]
