"""The one door to the write side: an eventsourcing Application whose methods are the use cases.

Each command reads the aggregates it needs, checks the caller's rights against them, triggers
events and saves every touched aggregate in one transaction. A version conflict (another writer
got there first) re-reads and retries a bounded number of times, then becomes `Conflict`.
Commands return a `Change` whose `position` is the last notification id written, so the read side
can catch up to exactly that point before answering (read-your-writes).
"""

from __future__ import annotations

import contextlib
import random
import re
import time
import uuid
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, OperationalError

from tokentrail.domain import clock
from tokentrail.domain.datafiles import parse_project
from tokentrail.domain.deploy import CreateToken, CurrentToken, DeleteToken, ModifyToken, plan_deployment
from tokentrail.domain.errors import (
    Conflict,
    DeploymentInProgress,
    Forbidden,
    InvalidInput,
    NameTaken,
    NotFound,
    ScopeError,
    StoreUnavailable,
    Unauthenticated,
)
from tokentrail.domain.model import (
    DeploymentLog,
    Jwt,
    Lookup,
    Token,
    TokenKind,
    TokenName,
    User,
    Workspace,
    WorkspaceName,
    deployment_log_id,
    token_name_id,
    user_id_for,
    workspace_name_id,
)
from tokentrail.domain.names import MAX_NAME_LENGTH, validate_custom_name, validate_name
from tokentrail.domain.policy import (
    GRACE_REFUSAL,
    Caller,
    Op,
    TokenFacts,
    authorize,
    require_may_grant,
    require_reach,
)
from tokentrail.domain.refs import parse_ref
from tokentrail.domain.scopes import ADMIN, AUTH, Scope, parse_scope, parse_scopes, read_scope
from tokentrail.domain.staged import Deployed, StagedDeployments
from tokentrail.domain.values import TokenSigner, new_generation

MAX_DESCRIPTION_LENGTH = 2048
MAX_SCOPES = 256
MAX_GRACE_SECONDS = 7 * 86_400
# The longest a workspace may cap token lifetimes at, and the latest expiry a token may carry.
MAX_LIFETIME_SECONDS = 100 * 366 * 86_400
MAX_EXPIRY_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z, the last instant the ledger names
MAX_ATTEMPTS = 10
# A write command (all its attempts) prepares its change within this many seconds or writes nothing.
# The largest deployment accepted (MAX_DEPLOY_TOKENS) prepares in well under half of it.
COMMAND_SECONDS = 25.0
_DEADLINE: ContextVar[float | None] = ContextVar("tokentrail_command_deadline", default=None)
# Aggregates an attempt read in one query before it began (`Ledger._prefetch`), by id; None when
# it did not. Each attempt starts without any: a retry after a lost race reads everything again.
# The domain events of the save under way (from `Ledger._record` until its insert returns): the
# projector of a command takes them as they are rather than decoding what was just encoded.
_SAVING: ContextVar[Sequence[Any] | None] = ContextVar("tokentrail_saving", default=None)
_PREFETCHED: ContextVar[dict[UUID, Any] | None] = ContextVar("tokentrail_prefetched", default=None)
DEFAULT_TOKEN_NAMES = ("admin token", "create datasource token")
USER_TOKEN_NAME = "user token"
ORIGIN_TYPES = {"C", "DS", "P"}
_EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f]{1,128}@[^@\s\x00-\x1f\x7f]{1,128}")


T = TypeVar("T")


@dataclass
class Change:
    """What a command did: the aggregates it saved and the last log position it wrote."""

    position: int
    aggregates: list[Aggregate] = field(default_factory=list)

    @property
    def token(self) -> Token:
        return next(a for a in self.aggregates if isinstance(a, Token))


@dataclass
class JwtIssue:
    jwt: Jwt
    admin: Token  # the workspace's admin token: its value is the JWT's signing secret
    position: int


@dataclass
class Revoked:
    """A bulk revocation: the tokens it deleted, under one id, in one transaction."""

    revocation_id: str
    tokens: list[Token]
    position: int


@dataclass
class WorkspaceSetup:
    workspace: Workspace
    user: User
    tokens: list[Token]
    position: int
    created: bool


MAX_REASON_LENGTH = 1000


def validate_reason(reason: Any) -> str:
    """Why tokens are being revoked: required, one paragraph of printable text."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput("reason is required: say why these tokens are revoked")
    text: str = reason.strip()
    if len(text) > MAX_REASON_LENGTH:
        raise InvalidInput(f"reason must be at most {MAX_REASON_LENGTH} characters")
    if any(not c.isprintable() for c in text):
        raise InvalidInput("reason must be printable text (no control characters)")
    return text


def validate_description(description: Any) -> str:
    if description is None:
        return ""
    if not isinstance(description, str):
        raise InvalidInput("description must be a string")
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidInput(f"description is longer than {MAX_DESCRIPTION_LENGTH} characters")
    if "\x00" in description:
        raise InvalidInput("description must not contain NUL characters")
    return description


def validate_origin(origin: dict[str, Any] | None) -> dict[str, Any]:
    origin = dict(origin or {"type": "C"})
    if origin.get("type") not in ORIGIN_TYPES:
        raise InvalidInput("origin must be one of C, DS, P")
    if origin["type"] == "C":
        return {"type": "C"}
    resource_id = origin.get("resource_id")
    if not isinstance(resource_id, str) or not resource_id or len(resource_id) > MAX_NAME_LENGTH:
        raise InvalidInput(f"origin {origin['type']} needs a resource_id")
    if any(ord(c) < 32 or ord(c) == 127 for c in resource_id):
        raise InvalidInput("origin resource_id must not contain control characters")
    return {"type": origin["type"], "resource_id": resource_id}


def validate_expiry(expires_at: Any, now_micros: int) -> int | None:
    """A static token's expiry: Unix seconds strictly in the future, or None (never)."""
    if expires_at is None:
        return None
    if isinstance(expires_at, bool) or not isinstance(expires_at, int):
        raise InvalidInput("expiration_time must be Unix seconds (a whole number) or none")
    if expires_at * 1_000_000 <= now_micros:
        raise InvalidInput("expiration_time must be in the future")
    if expires_at > MAX_EXPIRY_SECONDS:
        raise InvalidInput("expiration_time is too far in the future")
    result: int = expires_at
    return result


def validate_lifetime(seconds: Any) -> int | None:
    """A workspace's cap on token lifetimes: whole seconds from 60, or None (no cap)."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not 60 <= seconds <= MAX_LIFETIME_SECONDS:
        raise InvalidInput(f"max_token_lifetime must be whole seconds from 60 to {MAX_LIFETIME_SECONDS}, or none")
    result: int = seconds
    return result


def capped_expiry(expires_at: int | None, cap: int | None, now_micros: int, *, explicit: bool) -> int | None:
    """The expiry (Unix seconds) a token gets under a workspace's lifetime cap. With no cap, the one
    asked for. With a cap, no expiry becomes `now + cap`; an explicit expiry beyond it is refused."""
    if cap is None:
        return expires_at
    latest = now_micros // 1_000_000 + cap
    if expires_at is None:
        if explicit:
            raise InvalidInput(f"this workspace caps token lifetimes at {cap} seconds: an expiry is required")
        return latest
    if expires_at > latest:
        raise InvalidInput(f"this workspace caps token lifetimes at {cap} seconds: expire by {latest} at the latest")
    return expires_at


def _removable(text: str) -> str:
    """The stored form of a scope to remove. A scope stored under older rules may no longer parse;
    it can still be removed by its stored text."""
    try:
        return str(parse_scope(text))
    except ScopeError:
        return text


def scopes_of(token: Token) -> tuple[Scope, ...]:
    return tuple(read_scope(s) for s in token.scopes)


def facts_of(token: Token) -> TokenFacts:
    """What the policy table needs to know of a token aggregate."""
    return TokenFacts(str(token.id), token.kind, token.workspace_id, scopes_of(token))


def _any_token(caller: Caller) -> TokenFacts:
    """An ordinary token of the caller's workspace: asking whether the caller may do an operation
    to any token at all, before looking the named one up (so that it cannot probe for names)."""
    return TokenFacts(None, "custom", caller.workspace_id, ())


class Ledger(StagedDeployments, Application[UUID]):
    """Token ledger use cases. Construct with `env=` (persistence settings) and a signer."""

    name = "tokentrail"
    is_snapshotting_enabled = False

    def __init__(self, env: dict[str, str] | None = None, *, signer: TokenSigner) -> None:
        super().__init__(env=env)
        self.signer = signer

    # -- workspaces ---------------------------------------------------------------------------

    def setup_workspace(self, name: str, email: str, caller: Caller) -> WorkspaceSetup:
        """Create a workspace with its default tokens, or return the existing one of that name.

        The system caller (init) may reuse an existing workspace; a user creating one through the
        API gets `NameTaken` for a name already in use.
        """
        authorize(caller, Op.WORKSPACES)
        name = validate_name(name, "workspace")
        if not _EMAIL.fullmatch(email or ""):
            raise InvalidInput("a valid e-mail address is required")

        def attempt() -> WorkspaceSetup:
            self._require_current(caller)
            existing = self._get_or_none(workspace_name_id(name))
            if existing is not None:
                if not caller.is_system:
                    raise NameTaken(f'Workspace with name "{name}" already exists')
                workspace: Workspace = self.repository.get(UUID(existing.workspace_id))
                user: User = self.repository.get(UUID(workspace.owner_user_id))
                return WorkspaceSetup(workspace, user, self._default_tokens(workspace, user), 0, False)
            actor = caller.actor()
            user = self._get_or_none(user_id_for(email))
            to_save: list[Aggregate] = []
            if user is None:
                user_id = user_id_for(email)
                user_token = Token.create(
                    actor=actor,
                    workspace_id=str(user_id),
                    name=USER_TOKEN_NAME,
                    description="",
                    scopes=[AUTH],
                    origin={"type": "C"},
                    kind="user",
                    generation=new_generation(),
                )
                user = User.create(email, str(user_token.id), actor)
                to_save += [
                    user_token,
                    TokenName.create(str(user_id), USER_TOKEN_NAME, str(user_token.id), actor),
                    user,
                ]
            admin = self._new_token_id()
            workspace = Workspace.create(
                actor=actor,
                name=name,
                owner_email=email,
                owner_user_id=str(user.id),
                admin_token_id=str(admin),
            )
            ws = str(workspace.id)
            defaults = [
                (admin, "admin token", [ADMIN]),
                (self._new_token_id(), f"admin {email}", [f"ADMIN_USER:{user.id}"]),
                (self._new_token_id(), "create datasource token", ["DATASOURCES:CREATE"]),
            ]
            tokens = []
            for token_id, token_name, scopes in defaults:
                token = Token._create(
                    Token.Created,
                    id=token_id,
                    actor=actor,
                    workspace_id=ws,
                    name=token_name,
                    description="",
                    scopes=scopes,
                    origin={"type": "C"},
                    kind="default",
                    generation=new_generation(),
                )
                tokens.append(token)
                to_save += [token, TokenName.create(ws, token_name, str(token_id), actor)]
            to_save += [workspace, WorkspaceName.create(name, ws, actor)]
            position = self._save(to_save)
            return WorkspaceSetup(workspace, user, tokens, position, True)

        return self._retrying(attempt)

    def _default_tokens(self, workspace: Workspace, user: User) -> list[Token]:
        names = ["admin token", f"admin {workspace.owner_email}", "create datasource token"]
        tokens = [self.token_by_name(str(workspace.id), n) for n in names]
        return [t for t in tokens if t is not None]

    def user_token(self, user: User) -> Token:
        return self.repository.get(UUID(user.user_token_id))

    def workspace(self, workspace_id: str) -> Workspace:
        try:
            workspace: Any = self.repository.get(UUID(workspace_id))
        except (AggregateNotFoundError, ValueError):
            raise NotFound("Workspace not found") from None
        if not isinstance(workspace, Workspace):
            raise NotFound("Workspace not found")
        return workspace

    def user(self, user_id: str) -> User:
        user = self._get_or_none(UUID(user_id))
        if not isinstance(user, User):
            raise NotFound("User not found")
        return user

    # -- tokens -------------------------------------------------------------------------------

    def create_token(
        self,
        caller: Caller,
        name: str,
        scopes: Sequence[str],
        description: str | None = "",
        origin: dict[str, Any] | None = None,
        kind: str = "custom",
        expires_at: int | None = None,
    ) -> Change:
        """Create a static token; `expires_at` (Unix seconds) makes it expire then. Under the
        workspace's `max_token_lifetime`, a token asked for without an expiry gets `now + cap`."""
        authorize(caller, Op.CREATE, _any_token(caller))
        if expires_at is not None:
            validate_expiry(expires_at, now_micros())
        name = validate_custom_name(name)
        description = validate_description(description)
        origin = validate_origin(origin)
        parsed = self._checked_scopes(caller, scopes)
        workspace_id = caller.workspace_id

        def attempt() -> Change:
            self._prefetch(caller, token_name_id(workspace_id, name), _uuid_or_none(workspace_id))
            self._require_current(caller)
            index = self._get_or_none(token_name_id(workspace_id, name))
            if index is not None and index.token_id is not None:
                raise NameTaken(f'Auth token with name "{name}" already exists')
            now = now_micros()
            expiry = validate_expiry(expires_at, now)
            if not TokenKind(kind).protected:
                expiry = capped_expiry(expiry, self._lifetime_cap(workspace_id), now, explicit=False)
            actor = caller.actor()
            token = Token.create(
                actor=actor,
                workspace_id=workspace_id,
                name=name,
                description=description,
                scopes=[str(s) for s in parsed],
                origin=origin,
                kind=kind,
                generation=new_generation(),
            )
            if expiry is not None:
                token.set_expiry(expiry, actor)
            if index is None:
                index = TokenName.create(workspace_id, name, str(token.id), actor)
            else:
                index.claim(str(token.id), actor)
            return Change(self._save([token, index]), [token])

        return self._retrying(attempt)

    def update_token(
        self,
        caller: Caller,
        ref: str,
        *,
        scopes: Sequence[str] | None = None,
        add: Sequence[str] = (),
        remove: Sequence[str] = (),
        name: str | None = None,
        description: str | None = None,
        expiry: tuple[int | None] | None = None,
    ) -> Change:
        """Replace (`scopes`), add or remove scopes, rename, describe, set or clear the expiry
        (`expiry=(seconds,)` or `(None,)`): all in one transaction. Changing the expiry is a change
        like a rename (never to a default token), and is bounded by the workspace's lifetime cap."""
        authorize(
            caller,
            Op.DESCRIBE if scopes is None and not add and not remove and name is None and expiry is None else Op.UPDATE,
            _any_token(caller),
        )
        if expiry is not None and expiry[0] is not None:
            validate_expiry(expiry[0], now_micros())
        new_scopes = self._checked_scopes(caller, scopes) if scopes is not None else None
        to_add = self._checked_scopes(caller, add, allow_empty=True)
        to_remove = [_removable(text) for text in remove]
        new_name = validate_custom_name(name) if name is not None else None
        new_description = validate_description(description) if description is not None else None

        changes = new_scopes is not None or to_add or to_remove or new_name is not None or expiry is not None

        def attempt() -> Change:
            self._prefetch(caller, _uuid_or_none(ref), _uuid_or_none(caller.workspace_id) if expiry else None)
            self._require_current(caller)
            token = self._token_for_change(caller, ref, Op.UPDATE if changes else Op.DESCRIBE)
            actor = caller.actor()
            touched: list[Aggregate] = [token]
            if new_scopes is not None or to_add or to_remove:
                final = [str(x) for x in new_scopes] if new_scopes is not None else list(token.scopes)
                final = [x for x in final if x not in to_remove]
                final += [str(x) for x in to_add if str(x) not in final]
                token.change_scopes(final, actor)  # refuses an empty list, or a protected token
            if new_name is not None and new_name != token.name:
                touched += self._move_name(token, new_name, actor)
            if new_description is not None:
                token.describe(new_description, actor)
            if expiry is not None:
                now = now_micros()
                wanted = validate_expiry(expiry[0], now)
                token.set_expiry(
                    capped_expiry(wanted, self._lifetime_cap(token.workspace_id), now, explicit=True), actor
                )
            return Change(self._save(touched), [token])

        return self._retrying(attempt)

    def refresh_token(self, caller: Caller, ref: str, grace_seconds: int = 0) -> Change:
        if not isinstance(grace_seconds, int) or not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
            raise InvalidInput(f"grace_seconds must be a whole number from 0 to {MAX_GRACE_SECONDS}")

        def attempt() -> Change:
            self._prefetch(caller, _uuid_or_none(ref), _uuid_or_none(caller.workspace_id))
            self._require_current(caller)
            token = self._token_for_change(caller, ref, Op.REFRESH)
            actor = caller.actor()
            token.refresh(new_generation(), grace_seconds, actor)
            cap = None if token.kind.protected else self._lifetime_cap(token.workspace_id)
            if cap is not None:
                # Under a lifetime cap, a new value never outlives `now + cap`: a longer expiry (or
                # none) is brought down to it; a shorter one is kept (a refresh renews the value,
                # not the lifetime: extend it with an explicit expiry, within the cap).
                now = now_micros()
                latest = now // 1_000_000 + cap
                if token.expires_at is None or token.expires_at > latest * 1_000_000:
                    token.set_expiry(latest, actor)
            return Change(self._save([token]), [token])

        return self._retrying(attempt)

    def delete_token(self, caller: Caller, ref: str) -> Change:
        def attempt() -> Change:
            self._require_current(caller)
            token = self._token_for_change(caller, ref, Op.DELETE)
            actor = caller.actor()
            token.delete(actor)
            index = self._get_or_none(token_name_id(token.workspace_id, token.name))
            touched: list[Aggregate] = [token]
            if index is not None and index.token_id == str(token.id):
                index.release(actor)
                touched.append(index)
            return Change(self._save(touched), [token])

        return self._retrying(attempt)

    def issue_jwt(
        self,
        caller: Caller,
        name: str,
        expires_at: int,
        scopes: list[dict[str, Any]],
        limits: dict[str, Any] | None,
    ) -> JwtIssue:
        """Record a JWT issuance; returns it with the admin token whose value signs it.

        A JWT is signed with the admin token's current value, and `admin_generation` records that
        generation: the JWT is accepted exactly while that generation is (current, or in its own
        grace window after a refresh) and dies with it. A caller authenticated with a value in its
        grace window cannot issue one (it would outlive the rotation that retired its value)."""
        authorize(caller, Op.ISSUE_JWT)
        name = validate_name(name, "JWT")
        workspace = self.workspace(caller.workspace_id)

        def attempt() -> JwtIssue:
            self._require_current(caller)
            admin: Token = self.repository.get(UUID(workspace.admin_token_id))
            jwt = Jwt.issue(
                actor=caller.actor(),
                workspace_id=caller.workspace_id,
                name=name,
                scopes=scopes,
                expires_at=expires_at,
                limits=dict(limits or {}),
                admin_token_id=str(admin.id),
                admin_generation=admin.generation,
            )
            return JwtIssue(jwt, admin, self._save([jwt]))

        return self._retrying(attempt)

    # -- workspace settings -------------------------------------------------------------------

    def configure_workspace(self, caller: Caller, max_token_lifetime: int | None) -> Change:
        """Set (or clear, with None) the workspace's cap on token lifetimes, in seconds. It applies
        to tokens created, refreshed or given an expiry afterwards; existing expiries stay."""
        authorize(caller, Op.CONFIGURE)
        cap = validate_lifetime(max_token_lifetime)

        def attempt() -> Change:
            self._require_current(caller)
            workspace = self.workspace(caller.workspace_id)
            workspace.configure(cap, caller.actor())
            return Change(self._save([workspace]) if workspace.pending_events else 0, [workspace])

        return self._retrying(attempt)

    def _lifetime_cap(self, workspace_id: str) -> int | None:
        workspace = self._get_or_none(UUID(workspace_id)) if workspace_id else None
        return workspace.max_token_lifetime if isinstance(workspace, Workspace) else None

    # -- incident response --------------------------------------------------------------------

    def record_lookup(
        self, caller: Caller, token_id: str, name: str, *, jwt: bool, generation: int | None, outcome: str
    ) -> Change:
        """Put a lookup by value on the record: who asked about which token (or JWT) and which of
        its values, and what the answer was. Never the value."""
        authorize(caller, Op.INVESTIGATE)

        def attempt() -> Change:
            self._require_current(caller)
            lookup = Lookup.record(
                actor=caller.actor(),
                workspace_id=caller.workspace_id,
                token_id=token_id,
                name=name,
                jwt=jwt,
                generation=generation,
                outcome=outcome,
            )
            return Change(self._save([lookup]), [lookup])

        return self._retrying(attempt)

    def revoke(self, caller: Caller, token_ids: Sequence[str], reason: str, revocation_id: str) -> Revoked:
        """Delete every token of `token_ids` as one change: one transaction, and one
        `revocation_id` (with the `reason`) in every deletion's actor, hence in its audit event.

        Tokens deleted meanwhile are skipped; a default or user token is never deleted (the plan
        never selects one; this is the invariant's second line). Each deletion is still one the
        policy lets the caller make."""
        authorize(caller, Op.REVOKE)
        reason = validate_reason(reason)
        ids = [UUID(i) for i in dict.fromkeys(token_ids)]

        def attempt() -> Revoked:
            self._require_current(caller)
            found = self._get_many(ids)
            indexes = self._get_many(
                [token_name_id(t.workspace_id, t.name) for t in found.values() if isinstance(t, Token)]
            )
            actor = {**caller.actor(), "revocation_id": revocation_id, "reason": reason}
            touched: list[Aggregate] = []
            deleted: list[Token] = []
            for token_id in ids:
                token = found.get(token_id)
                if not isinstance(token, Token) or token.deleted or token.workspace_id != caller.workspace_id:
                    continue
                if token.kind.protected:
                    continue
                authorize(caller, Op.DELETE, facts_of(token))
                token.delete(actor)
                touched.append(token)
                deleted.append(token)
                index = indexes.get(token_name_id(token.workspace_id, token.name))
                if index is not None and index.token_id == str(token.id):
                    index.release(actor)
                    touched.append(index)
            return Revoked(revocation_id, deleted, self._save(touched) if touched else 0)

        return self._retrying(attempt)

    # -- deployments --------------------------------------------------------------------------

    def deploy(
        self,
        caller: Caller,
        files: dict[str, str],
        current_tokens: Callable[[], list[CurrentToken]],
        check: bool = False,
        stage: bool = False,
        exclusive: bool = False,
    ) -> Deployed:
        """Reconcile the workspace's datafile tokens with the TOKEN lines of `files`, atomically.

        `current_tokens` reads the live tokens after the log has been caught up; it is called
        after the deployment log is read, so a deployment that committed earlier is in it and one
        that commits later collides with ours on the log's version and makes us re-plan.
        `stage` records the deployment without applying it (`promote_deployment` applies it);
        `exclusive` refuses, instead of re-planning, when another deployment was recorded while
        this one was planned (Forward's CLI: one wins, the other is told to retry).
        """
        authorize(caller, Op.DEPLOY)
        declarations = parse_project(files)
        deployment_id = str(uuid.uuid4())
        workspace_id = caller.workspace_id
        first_seen: list[int] = []

        def attempt() -> Deployed:
            self._require_current(caller)
            log = self._get_or_none(deployment_log_id(workspace_id))
            seen = log.version if log is not None else 0
            if exclusive and first_seen and first_seen[0] != seen:
                raise DeploymentInProgress(
                    "another deployment was recorded while this one was planned; nothing was written: retry"
                )
            first_seen.append(seen)
            if log is not None and not check:
                log.require_none_staged()
            plan = plan_deployment(declarations, current_tokens())
            if check or plan.empty:
                return Deployed(plan, None, 0)
            actor = caller.for_deployment(deployment_id).actor()
            if stage:
                return self._stage(log, workspace_id, deployment_id, plan, sorted(files), declarations, actor)
            touched: list[Aggregate] = []
            # Every aggregate the steps touch, read at once (one query per thousand on PostgreSQL).
            known = self._get_many(
                [token_name_id(workspace_id, step.name) for step in plan.steps if isinstance(step, CreateToken)]
                + [UUID(step.token_id) for step in plan.steps if not isinstance(step, CreateToken)]
            )
            for step in plan.steps:
                touched += self._apply_step(workspace_id, step, actor, caller, known)
            paths = sorted(files)
            if log is None:
                log = DeploymentLog.start(workspace_id, deployment_id, plan.token_changes, paths, actor)
                number = 1
            else:
                number = log.deployed(deployment_id, plan.token_changes, paths, actor)
            return Deployed(plan, deployment_id, self._save([*touched, log]), number)

        return self._retrying(attempt)

    def _apply_step(
        self, workspace_id: str, step: Any, actor: dict[str, Any], caller: Caller, known: dict[UUID, Any]
    ) -> list[Aggregate]:
        if isinstance(step, CreateToken):
            index = known.get(token_name_id(workspace_id, step.name))
            if index is not None and index.token_id is not None:
                # Taken since the plan was made (say by a concurrent deployment): re-plan.
                raise IntegrityError(f'token name "{step.name}" was taken while the deployment was planned')
            token = Token.create(
                actor=actor,
                workspace_id=workspace_id,
                name=validate_name(step.name),
                description="",
                scopes=list(step.scopes),
                origin=dict(step.origin),
                kind="datafile",
                generation=new_generation(),
            )
            if index is None:
                index = TokenName.create(workspace_id, step.name, str(token.id), actor)
            else:
                index.claim(str(token.id), actor)
            return [token, index]
        existing = known.get(UUID(step.token_id))
        if (
            not isinstance(existing, Token)
            or existing.deleted
            or existing.kind != "datafile"
            or existing.workspace_id != workspace_id
        ):
            raise IntegrityError(f'token "{step.name}" changed while the deployment was planned')  # re-plan
        # e.g. ADMIN added by hand: not for a TOKENS caller
        authorize(caller, Op.DEPLOY, facts_of(existing))
        if isinstance(step, ModifyToken):
            existing.replace_scopes(list(step.scopes), actor)
            return [existing]
        assert isinstance(step, DeleteToken)
        existing.delete(actor)
        index = self._get_or_none(token_name_id(workspace_id, existing.name))
        if index is not None and index.token_id == str(existing.id):
            index.release(actor)
            return [existing, index]
        return [existing]

    # -- lookups ------------------------------------------------------------------------------

    def resolve(self, caller: Caller, ref: str) -> Token:
        """A live token of the caller's workspace by value, id or name; NotFound for anything else.
        A value designates its token only while it authenticates (a refreshed-out value is 404)."""
        parsed = parse_ref(ref, self.signer)
        token: Token | None = None
        if parsed is None:
            raise NotFound("Token not found")
        if parsed.kind == "name":
            token = self.token_by_name(caller.workspace_id, parsed.text)
        else:
            token = self._token_or_none(parsed.text)
        if token is None or token.deleted:
            raise NotFound("Token not found")
        if parsed.kind == "value" and (
            parsed.workspace_id != token.workspace_id
            or not token.accepts(parsed.generation or "", clock.to_micros(clock.now()))
        ):
            raise NotFound("Token not found")
        require_reach(caller, facts_of(token))
        return token

    def token_by_name(self, workspace_id: str, name: str) -> Token | None:
        index = self._get_or_none(token_name_id(workspace_id, name))
        if index is None or index.token_id is None:
            return None
        return self._token_or_none(index.token_id)

    def _token_or_none(self, token_id: str) -> Token | None:
        try:
            aggregate = self._get_or_none(UUID(token_id))
        except ValueError:
            return None
        return aggregate if isinstance(aggregate, Token) else None

    def _token_for_change(self, caller: Caller, ref: str, op: Op) -> Token:
        """The token `ref` names, if the policy lets the caller `op` it.

        A caller that may not do `op` to any token is refused with the same 403 whether `ref`
        names a token or nothing at all, so that it cannot probe which names and ids exist."""
        authorize(caller, op, _any_token(caller))
        token = self.resolve(caller, ref)
        authorize(caller, op, facts_of(token))
        if op is not Op.DELETE and token.expired(now_micros()):
            # Expiry is final: an expired token is never changed, refreshed or revived, only deleted.
            raise Conflict(f'token "{token.name}" has expired: it can only be deleted')
        return token

    # -- helpers ------------------------------------------------------------------------------

    def _require_current(self, caller: Caller) -> None:
        """Check the caller's value against the event store itself, in this command attempt.

        Authentication reads a per-process cache that follows the log within a bound; a write
        must not rely on it. Re-reading the caller's token here means that a delete or refresh
        that committed before this attempt began (on any server) refuses the write: 403
        "invalid authentication token" for a value no longer accepted, the grace refusal for a
        value that a refresh has since moved into its grace window."""
        if caller.is_system:
            return
        if caller.is_jwt:
            # A JWT is bound to the admin generation that signed it; JWTs write nothing today,
            # but a command that ever lets one through still checks its key is alive.
            token_id = self._admin_token_id(caller.workspace_id)
        else:
            token_id = caller.token_id
        token = self._token_or_none(token_id) if token_id else None
        now = clock.to_micros(clock.now())
        if token is None or token.deleted or token.expired(now):
            raise Unauthenticated("invalid authentication token")
        if caller.generation is None:
            return  # an in-process caller built without a value (benchmarks): existence checked
        if not token.accepts(caller.generation, now):
            raise Unauthenticated("invalid authentication token")
        if token.generation != caller.generation and not caller.is_jwt:
            raise Forbidden(GRACE_REFUSAL)
        if not caller.is_jwt and {str(x) for x in caller.scopes} != {str(read_scope(x)) for x in token.scopes}:
            # Demoted (or promoted) since this request authenticated: its rights are no longer
            # the ones it was authorised with. Nothing is written; the client tries again.
            raise Forbidden("the calling token's scopes changed while this request ran; try again")

    def _admin_token_id(self, workspace_id: str) -> str | None:
        try:
            return self.workspace(workspace_id).admin_token_id
        except NotFound:
            return None

    def _checked_scopes(
        self, caller: Caller, texts: Sequence[str] | None, allow_empty: bool = False
    ) -> tuple[Scope, ...]:
        if texts is None:
            texts = ()
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) > MAX_SCOPES:
            raise InvalidInput(f"a token may hold at most {MAX_SCOPES} scopes")
        parsed = parse_scopes(texts)
        if not parsed and not allow_empty:
            raise InvalidInput("scope is mandatory")
        require_may_grant(caller, parsed)
        return parsed

    def _move_name(self, token: Token, new_name: str, actor: dict[str, Any]) -> list[Aggregate]:
        target = self._get_or_none(token_name_id(token.workspace_id, new_name))
        if target is not None and target.token_id is not None:
            raise NameTaken(f'Auth token with name "{new_name}" already exists')
        old = self._get_or_none(token_name_id(token.workspace_id, token.name))
        token.rename(new_name, actor)
        if target is None:
            target = TokenName.create(token.workspace_id, new_name, str(token.id), actor)
        else:
            target.claim(str(token.id), actor)
        touched: list[Aggregate] = [target]
        if old is not None and old.token_id == str(token.id):
            old.release(actor)
            touched.append(old)
        return touched

    def _prefetch(self, caller: Caller, *aggregate_ids: UUID | None) -> None:
        """Read the caller's token and `aggregate_ids` in one query, for the rest of this attempt
        (`_get_or_none` answers from them): a write's reads cost one round trip, not one each.
        Without a bulk read in the recorder, nothing is read ahead."""
        if getattr(self.recorder, "select_events_of", None) is None:
            return
        ids = [i for i in aggregate_ids if i is not None]
        if caller.token_id and not caller.is_system and not caller.is_jwt:
            with contextlib.suppress(ValueError):
                ids.append(UUID(caller.token_id))
        _PREFETCHED.set(self._get_many(list(dict.fromkeys(ids))))

    def _get_or_none(self, aggregate_id: UUID) -> Any:
        known = _PREFETCHED.get()
        if known is not None and aggregate_id in known:
            return known[aggregate_id]
        try:
            return self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None

    def _get_many(self, aggregate_ids: Sequence[UUID]) -> dict[UUID, Any]:
        """Aggregates by id (None for those that do not exist), read in bulk when the recorder
        can (PostgreSQL), else one by one."""
        select_many = getattr(self.recorder, "select_events_of", None)
        if select_many is None:
            return {i: self._get_or_none(i) for i in aggregate_ids}
        stored = select_many(aggregate_ids)
        found: dict[UUID, Any] = {}
        for aggregate_id in aggregate_ids:
            aggregate = None
            for stored_event in stored.get(aggregate_id, ()):
                # (`project_aggregate`, without its runtime protocol check: ~30 µs an aggregate)
                aggregate = self.mapper.to_domain_event(stored_event).mutate(aggregate)  # type: ignore[attr-defined]
            found[aggregate_id] = aggregate
        return found

    def _new_token_id(self) -> UUID:
        return uuid.uuid4()

    def _record(self, processing_event: Any) -> Any:
        saving = _SAVING.set(processing_event.events)
        try:
            return super()._record(processing_event)
        finally:
            _SAVING.reset(saving)

    def events_being_saved(self) -> Sequence[Any] | None:
        """The domain events whose stored form this thread is inserting now, in order (or None)."""
        return _SAVING.get()

    def _save(self, aggregates: Sequence[Aggregate]) -> int:
        deadline = _DEADLINE.get()
        if deadline is not None and time.monotonic() > deadline:
            # The caller may have given up long ago: never commit a change this late.
            raise StoreUnavailable(
                f"the change could not be prepared within {COMMAND_SECONDS:g} s (the store is busy); "
                "nothing was written, try again"
            )
        recordings = self.save(*aggregates)
        return max((r.notification.id for r in recordings), default=0)

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """Run `attempt`, again after a lost race or a lock wait, within COMMAND_SECONDS in all.

        No attempt starts, and nothing is saved, once COMMAND_SECONDS have passed since the command
        began: a change is committed while its caller can still be waiting for the answer, or not
        at all."""
        deadline = time.monotonic() + COMMAND_SECONDS
        token = _DEADLINE.set(deadline)
        try:
            busy = False
            for n in range(MAX_ATTEMPTS):
                prefetched = _PREFETCHED.set(None)
                try:
                    with clock.one_instant():
                        return attempt()
                except IntegrityError:
                    # Another writer saved one of our aggregates first: read again and retry, backing
                    # off exponentially (with full jitter) so that contending writers spread out.
                    busy = False
                    pause = random.uniform(0, min(0.2, 0.004 * 2**n))
                except OperationalError as error:
                    if not _waited_for_lock(error):
                        raise
                    busy = True
                    pause = random.uniform(0, 0.01 * (n + 1))
                finally:
                    _PREFETCHED.reset(prefetched)
                if time.monotonic() + pause >= deadline:
                    break
                time.sleep(pause)
        finally:
            _DEADLINE.reset(token)
        if busy:
            raise StoreUnavailable("the store stayed locked by other writers; nothing was written, try again")
        raise Conflict("The token was changed concurrently by another request; try again")


def _uuid_or_none(text: str | None) -> UUID | None:
    """The aggregate id `text` spells, if it spells one (a reference may also be a name or a value)."""
    try:
        return UUID(text) if text and len(text) == 36 else None
    except ValueError:
        return None


def _waited_for_lock(error: Exception) -> bool:
    """A lock wait that timed out (PostgreSQL's lock_timeout, SQLite's busy timeout): worth a retry.
    A statement that ran out of time, or a lost connection, is not."""
    text = str(error).lower()
    return "lock" in text and "statement timeout" not in text


def now_micros() -> int:
    return clock.to_micros(clock.now())
