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
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tokentrail.domain.clock import format_instant, now, to_micros
from tokentrail.domain.errors import InvalidInput, NotFound
from tokentrail.domain.policy import Caller, Op, allows, authorize, own_user_id, require_reach
from tokentrail.domain.refs import parse_ref
from tokentrail.domain.scopes import KINDS, PERMISSIONS, RESOURCE_NAME
from tokentrail.projections.history import AuditQuery, History
from tokentrail.projections.queries import TokenRow, UserRow, WorkspaceRow
from tokentrail.verify import ChainReport, make_checkpoint, verify_chain, workspace_view

if TYPE_CHECKING:
    from tokentrail.service import Service


class Reads:
    """Answers reads for a caller: permission first, then the reference, then the read model."""

    def __init__(self, service: Service, history: History | None = None) -> None:
        self.service = service
        self.queries = service.queries
        self.history = history if history is not None else History(service.read_engine)

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

    # -- the past -------------------------------------------------------------------------------

    def tokens_as_of(self, who: Caller, at: int) -> list[TokenRow]:
        """The workspace's token table as it stood at `at` (ADMIN or TOKENS)."""
        authorize(who, Op.LIST)
        return self.history.tokens_as_of(who.workspace_id, at)

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
        """The whole filtered trail, a page at a time (for exports). Permission is asked now,
        not when the stream is first read."""
        authorize(who, Op.READ_AUDIT)
        return self.history.audit_stream(self._own(who, query))

    def _own(self, who: Caller, query: AuditQuery) -> AuditQuery:
        """The query confined to the caller's workspace, and its owner's own events (the user's
        creation and the user token's changes), which belong to no workspace."""
        workspace = self.queries.workspace(who.workspace_id)
        owner = workspace.owner_user_id if workspace is not None else None
        return dataclasses.replace(query, workspace_id=who.workspace_id, owner_user_id=owner)

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
