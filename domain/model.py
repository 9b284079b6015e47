"""Aggregates and their events. Topics are pinned (`tokentrail.<aggregate>.<Event>.v1`), so renaming
or moving a class never orphans stored events; a schema change adds a new version and an upcaster.

Every event carries `actor`: who made the change and in which request —
`{"token_id", "name", "request_id", "origin", "deployment_id"}`, and, in events written since
they were added, `"client": {"address", "user_agent"}` (as the server saw the request) and
`"claimed": {"origin", "request_id"}` (what the client said about itself). Both are optional: older
events do not have them and load unchanged.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from tokentrail.domain import clock
from tokentrail.domain.errors import DeploymentInProgress, Forbidden, InvalidInput

NAMESPACE = uuid5(NAMESPACE_URL, "https://tokentrail.dev/ns")

ActorDict = dict[str, Any]


class LedgerEvent(Aggregate.Event):
    """Base of every event: timestamps come from the replaceable domain clock."""

    actor: ActorDict

    @staticmethod
    def create_timestamp() -> datetime:
        return clock.now()


class LedgerCreated(LedgerEvent, Aggregate.Created):
    pass


# ---------------------------------------------------------------------------------------------
# Token


class TokenKind(StrEnum):
    """Where a token came from. Stored in events as its plain string value."""

    CUSTOM = "custom"  # made through the API or the console
    DEFAULT = "default"  # a workspace's `admin token`, `admin <email>`, `create datasource token`
    USER = "user"  # a user's user token
    DATAFILE = "datafile"  # declared by a TOKEN line and applied by a deployment

    @property
    def protected(self) -> bool:
        """Default and user tokens are refreshed, never changed or deleted."""
        return self in (TokenKind.DEFAULT, TokenKind.USER)


class Token(Aggregate):
    """A static token: its name, scopes and current generation (the nonce inside its value).

    Its invariants hold here, whoever calls: a token always holds at least one scope, and a
    protected (default or user) token can be refreshed and described, never re-scoped, renamed or
    deleted."""

    TOPIC = "tokentrail.token.Token"
    Kind = TokenKind

    class Event(LedgerEvent):
        pass

    class Created(Event, LedgerCreated):
        TOPIC = "tokentrail.token.Created.v1"
        workspace_id: str
        name: str
        description: str
        scopes: list[str]
        origin: dict[str, Any]
        kind: str
        generation: str

    class ScopeAdded(Event):
        TOPIC = "tokentrail.token.ScopeAdded.v1"
        scope: str

        def apply(self, token: Token) -> None:
            token.scopes.append(self.scope)

    class ScopeRemoved(Event):
        TOPIC = "tokentrail.token.ScopeRemoved.v1"
        scope: str

        def apply(self, token: Token) -> None:
            token.scopes.remove(self.scope)

    class Renamed(Event):
        TOPIC = "tokentrail.token.Renamed.v1"
        name: str

        def apply(self, token: Token) -> None:
            token.name = self.name

    class DescriptionChanged(Event):
        TOPIC = "tokentrail.token.DescriptionChanged.v1"
        description: str

        def apply(self, token: Token) -> None:
            token.description = self.description

    class Refreshed(Event):
        """A new generation; the previous one keeps working for `grace_seconds` (0: stops now).

        Grace is per generation: each refreshed-out generation keeps its own window to its end,
        whatever refreshes follow (`Token.grace`)."""

        TOPIC = "tokentrail.token.Refreshed.v1"
        generation: str
        grace_seconds: int

        def apply(self, token: Token) -> None:
            at = clock.to_micros(self.timestamp)
            token.previous_generation = token.generation
            token.previous_valid_until = at + self.grace_seconds * 1_000_000
            token.grace = grace_after_refresh(token.grace, token.generation, at, self.grace_seconds)
            token.generation = self.generation

    class Deleted(Event):
        TOPIC = "tokentrail.token.Deleted.v1"

        def apply(self, token: Token) -> None:
            token.deleted = True

    class ExpirySet(Event):
        """The token stops authenticating at `expires_at` (Unix seconds), or never (None). A token
        created with an expiry has this event right after its `Created`, in the same command."""

        TOPIC = "tokentrail.token.ExpirySet.v1"
        expires_at: int | None

        def apply(self, token: Token) -> None:
            token.expires_at = None if self.expires_at is None else self.expires_at * 1_000_000

    def __init__(
        self,
        workspace_id: str,
        name: str,
        description: str,
        scopes: list[str],
        origin: dict[str, Any],
        kind: str,
        generation: str,
    ) -> None:
        self.workspace_id = workspace_id
        self.name = name
        self.description = description
        self.scopes = list(scopes)
        self.origin = dict(origin)
        self.kind = TokenKind(kind)
        self.generation = generation
        self.previous_generation: str | None = None
        self.previous_valid_until = 0
        # Generations refreshed out with a grace window still open at the last refresh, with the
        # instant (µs) each stops working. Pruned of ended windows on every refresh.
        self.grace: dict[str, int] = {}
        self.deleted = False
        self.expires_at: int | None = None  # µs: the token stops authenticating at this instant

    @classmethod
    def create(cls, *, actor: ActorDict, **fields: Any) -> Token:
        return cls._create(cls.Created, actor=actor, **fields)

    def change_scopes(self, scopes: list[str], actor: ActorDict) -> None:
        """Make the token hold exactly `scopes` (in that order for the ones it gains)."""
        if set(scopes) == set(self.scopes):
            return
        self._require_changeable()
        if not scopes:
            raise InvalidInput("scope is mandatory")
        for scope in list(self.scopes):
            if scope not in scopes:
                self.trigger_event(self.ScopeRemoved, scope=scope, actor=actor)
        for scope in scopes:
            if scope not in self.scopes:
                self.trigger_event(self.ScopeAdded, scope=scope, actor=actor)

    def add_scope(self, scope: str, actor: ActorDict) -> None:
        if scope not in self.scopes:
            self.change_scopes([*self.scopes, scope], actor)

    def remove_scope(self, scope: str, actor: ActorDict) -> None:
        if scope in self.scopes:
            self.change_scopes([s for s in self.scopes if s != scope], actor)

    def replace_scopes(self, scopes: list[str], actor: ActorDict) -> None:
        self.change_scopes(list(dict.fromkeys(scopes)), actor)

    def rename(self, name: str, actor: ActorDict) -> None:
        if name != self.name:
            self._require_changeable()
            self.trigger_event(self.Renamed, name=name, actor=actor)

    def describe(self, description: str, actor: ActorDict) -> None:
        if description != self.description:
            self.trigger_event(self.DescriptionChanged, description=description, actor=actor)

    def refresh(self, generation: str, grace_seconds: int, actor: ActorDict) -> None:
        self.trigger_event(self.Refreshed, generation=generation, grace_seconds=grace_seconds, actor=actor)

    def delete(self, actor: ActorDict) -> None:
        if not self.deleted:
            if self.kind.protected:
                raise Forbidden("default tokens cannot be deleted")
            self.trigger_event(self.Deleted, actor=actor)

    def set_expiry(self, expires_at: int | None, actor: ActorDict) -> None:
        """Expire the token at `expires_at` (Unix seconds), or never (None)."""
        current = None if self.expires_at is None else self.expires_at // 1_000_000
        if expires_at != current:
            self._require_changeable()
            self.trigger_event(self.ExpirySet, expires_at=expires_at, actor=actor)

    def expired(self, now_micros: int) -> bool:
        return expired(self.expires_at, now_micros)

    def accepts(self, generation: str, now_micros: int) -> bool:
        """Is a value of this generation valid now (current, or refreshed out inside its grace)?"""
        return accepts(generation, self.generation, self.grace, self.deleted, now_micros, self.expires_at)

    def _require_changeable(self) -> None:
        if self.kind.protected:
            raise Forbidden("default tokens can be refreshed but not changed")


def expired(expires_at: int | None, now_micros: int) -> bool:
    """Has a token with this expiry (µs, None for never) expired at `now_micros`?"""
    return expires_at is not None and now_micros >= expires_at


def accepts(
    generation: str,
    current: str,
    grace: dict[str, int],
    deleted: bool,
    now_micros: int,
    expires_at: int | None = None,
) -> bool:
    """Does a value of `generation` authenticate now? The current generation does until the token
    is deleted or expires; a refreshed-out one only inside its own grace window (and before the
    expiry too). The one rule, shared by the aggregate and the read model: the expiry is compared
    with the clock, so an expired token stops at that instant with no event and no job."""
    if deleted or (expires_at is not None and now_micros >= expires_at):
        return False
    return generation == current or now_micros < grace.get(generation, 0)


def grace_after_refresh(grace: dict[str, int], retired: str, at: int, grace_seconds: int) -> dict[str, int]:
    """The grace windows after a refresh at `at` (µs) that retires generation `retired`: ended
    windows are dropped, the others keep their own end, and `retired` gets one if `grace_seconds`.
    Shared by the aggregate and the read model, so both hold exactly the same map."""
    kept = {g: until for g, until in grace.items() if until > at}
    if grace_seconds > 0:
        kept[retired] = at + grace_seconds * 1_000_000
    return kept


# ---------------------------------------------------------------------------------------------
# Name index: one aggregate per (workspace, name), so two creates of one name collide.


def token_name_id(workspace_id: str, name: str) -> UUID:
    return uuid5(NAMESPACE, f"token-name:{workspace_id}:{name}")


class TokenName(Aggregate):
    """Which live token holds a name in a workspace. Saved with the token in one transaction."""

    TOPIC = "tokentrail.token_name.TokenName"

    class Event(LedgerEvent):
        pass

    class Created(Event, LedgerCreated):
        TOPIC = "tokentrail.token_name.Created.v1"
        workspace_id: str
        name: str
        token_id: str

    class Claimed(Event):
        TOPIC = "tokentrail.token_name.Claimed.v1"
        token_id: str

        def apply(self, index: TokenName) -> None:
            index.token_id = self.token_id

    class Released(Event):
        TOPIC = "tokentrail.token_name.Released.v1"

        def apply(self, index: TokenName) -> None:
            index.token_id = None

    def __init__(self, workspace_id: str, name: str, token_id: str) -> None:
        self.workspace_id = workspace_id
        self.name = name
        self.token_id: str | None = token_id

    @classmethod
    def create(cls, workspace_id: str, name: str, token_id: str, actor: ActorDict) -> TokenName:
        return cls._create(
            cls.Created,
            id=token_name_id(workspace_id, name),
            workspace_id=workspace_id,
            name=name,
            token_id=token_id,
            actor=actor,
        )

    def claim(self, token_id: str, actor: ActorDict) -> None:
        self.trigger_event(self.Claimed, token_id=token_id, actor=actor)

    def release(self, actor: ActorDict) -> None:
        if self.token_id is not None:
            self.trigger_event(self.Released, actor=actor)


# ---------------------------------------------------------------------------------------------
# Workspaces and users


def workspace_name_id(name: str) -> UUID:
    return uuid5(NAMESPACE, f"workspace-name:{name.lower()}")


def user_id_for(email: str) -> UUID:
    return uuid5(NAMESPACE, f"user:{email.strip().lower()}")


class Workspace(Aggregate):
    TOPIC = "tokentrail.workspace.Workspace"

    class Event(LedgerEvent):
        pass

    class Created(Event, LedgerCreated):
        TOPIC = "tokentrail.workspace.Created.v1"
        name: str
        owner_email: str
        owner_user_id: str
        admin_token_id: str

    class SettingsChanged(Event):
        """The workspace's token hygiene settings: `max_token_lifetime` (seconds, None for no cap)
        caps the lifetime of tokens created or refreshed afterwards."""

        TOPIC = "tokentrail.workspace.SettingsChanged.v1"
        max_token_lifetime: int | None

        def apply(self, workspace: Workspace) -> None:
            workspace.max_token_lifetime = self.max_token_lifetime

    def __init__(self, name: str, owner_email: str, owner_user_id: str, admin_token_id: str) -> None:
        self.name = name
        self.owner_email = owner_email
        self.owner_user_id = owner_user_id
        self.admin_token_id = admin_token_id
        self.max_token_lifetime: int | None = None

    def configure(self, max_token_lifetime: int | None, actor: ActorDict) -> None:
        if max_token_lifetime != self.max_token_lifetime:
            self.trigger_event(self.SettingsChanged, max_token_lifetime=max_token_lifetime, actor=actor)

    @classmethod
    def create(cls, *, actor: ActorDict, **fields: Any) -> Workspace:
        return cls._create(cls.Created, actor=actor, **fields)


class WorkspaceName(Aggregate):
    """Claims a workspace name (case-insensitively) for good: workspaces are never deleted."""

    TOPIC = "tokentrail.workspace_name.WorkspaceName"

    class Event(LedgerEvent):
        pass

    class Created(Event, LedgerCreated):
        TOPIC = "tokentrail.workspace_name.Created.v1"
        name: str
        workspace_id: str

    def __init__(self, name: str, workspace_id: str) -> None:
        self.name = name
        self.workspace_id = workspace_id

    @classmethod
    def create(cls, name: str, workspace_id: str, actor: ActorDict) -> WorkspaceName:
        return cls._create(cls.Created, id=workspace_name_id(name), name=name, workspace_id=workspace_id, actor=actor)


class User(Aggregate):
    """A person (by e-mail) and their user token (scope AUTH), which creates and lists workspaces."""

    TOPIC = "tokentrail.user.User"

    class Event(LedgerEvent):
        pass

    class Created(Event, LedgerCreated):
        TOPIC = "tokentrail.user.Created.v1"
        email: str
        user_token_id: str

    def __init__(self, email: str, user_token_id: str) -> None:
        self.email = email
        self.user_token_id = user_token_id

    @classmethod
    def create(cls, email: str, user_token_id: str, actor: ActorDict) -> User:
        return cls._create(cls.Created, id=user_id_for(email), email=email, user_token_id=user_token_id, actor=actor)


# ---------------------------------------------------------------------------------------------
# JWT issuances: not tokens of the table, but every issuance is on the record.


class Jwt(Aggregate):
    TOPIC = "tokentrail.jwt.Jwt"

    class Event(LedgerEvent):
        pass

    class Issued(Event, LedgerCreated):
        TOPIC = "tokentrail.jwt.Issued.v1"
        workspace_id: str
        name: str
        scopes: list[dict[str, Any]]  # the JWT's scope objects: type, resource, filter/fixed_params
        expires_at: int
        limits: dict[str, Any]
        admin_token_id: str
        admin_generation: str

    Created = Issued  # the library expects a Created class; ours has a domain name

    def __init__(
        self,
        workspace_id: str,
        name: str,
        scopes: list[dict[str, Any]],
        expires_at: int,
        limits: dict[str, Any],
        admin_token_id: str,
        admin_generation: str,
    ) -> None:
        self.workspace_id = workspace_id
        self.name = name
        self.scopes = scopes
        self.expires_at = expires_at
        self.limits = limits
        self.admin_token_id = admin_token_id
        self.admin_generation = admin_generation

    @classmethod
    def issue(cls, *, actor: ActorDict, **fields: Any) -> Jwt:
        return cls._create(cls.Issued, actor=actor, **fields)


# ---------------------------------------------------------------------------------------------
# Lookups by value: incident response asks "which token is this leaked value?", and the asking is
# on the record (who looked up which token and generation), never the value itself. One small
# aggregate per lookup, so lookups never contend with changes to the token.


class Lookup(Aggregate):
    TOPIC = "tokentrail.lookup.Lookup"

    class Event(LedgerEvent):
        pass

    class TokenLookedUp(Event, LedgerCreated):
        TOPIC = "tokentrail.lookup.TokenLookedUp.v1"
        workspace_id: str
        token_id: str  # the static token, or the JWT's id
        name: str  # its name when looked up
        jwt: bool
        generation: int | None  # refreshes before the looked-up value (0: as created); None for a JWT
        outcome: str  # current, grace, refreshed, deleted, expired

    Created = TokenLookedUp  # the library expects a Created class; ours has a domain name

    def __init__(
        self, workspace_id: str, token_id: str, name: str, jwt: bool, generation: int | None, outcome: str
    ) -> None:
        self.workspace_id = workspace_id
        self.token_id = token_id
        self.name = name
        self.jwt = jwt
        self.generation = generation
        self.outcome = outcome

    @classmethod
    def record(cls, *, actor: ActorDict, **fields: Any) -> Lookup:
        return cls._create(cls.TokenLookedUp, actor=actor, **fields)


# ---------------------------------------------------------------------------------------------
# Deployments: one log per workspace. Every deployment appends to it in the same transaction as its
# token changes, so two concurrent deployments collide on the log's version: one wins, the other
# re-plans against the winner's result. Its token events carry the deployment id in `actor`.


def deployment_log_id(workspace_id: str) -> UUID:
    return uuid5(NAMESPACE, f"deployments:{workspace_id}")


class DeploymentLog(Aggregate):
    TOPIC = "tokentrail.deployment_log.DeploymentLog"

    class Event(LedgerEvent):
        pass

    class Created(Event, LedgerCreated):
        """The workspace's first deployment."""

        TOPIC = "tokentrail.deployment_log.Created.v1"
        workspace_id: str
        deployment_id: str
        token_changes: list[dict[str, Any]]
        files: list[str]

    class Applied(Event):
        TOPIC = "tokentrail.deployment_log.Applied.v1"
        workspace_id: str
        deployment_id: str
        token_changes: list[dict[str, Any]]
        files: list[str]

        def apply(self, log: DeploymentLog) -> None:
            log.last_deployment_id = self.deployment_id
            log.count += 1
            log.live_number = log.count

    # Staged deployments (Forward's `tb deployment create` without `--auto`). Every deployment has
    # a number in its workspace, what Forward's CLI calls its id: `count` is the last one given.
    # The legacy events number theirs implicitly (Created: 1, Applied: its version), new ones
    # carry it. At most one deployment is staged at a time; `live_number` is the last applied.

    class Opened(Event, LedgerCreated):
        """The log of a workspace whose first deployment is staged (no deployment of its own)."""

        TOPIC = "tokentrail.deployment_log.Opened.v1"
        workspace_id: str

    class Deployed(Event):
        """A deployment applied at once (what `Applied` was, with its number)."""

        TOPIC = "tokentrail.deployment_log.Deployed.v1"
        workspace_id: str
        deployment_id: str
        number: int
        token_changes: list[dict[str, Any]]
        files: list[str]

        def apply(self, log: DeploymentLog) -> None:
            log.last_deployment_id = self.deployment_id
            log.count = log.live_number = self.number

    class Staged(Event):
        """A deployment recorded, not applied: its TOKEN lines wait for `Promoted` or `Discarded`.
        `token_changes` is the plan as it stood when staged; promotion plans again."""

        TOPIC = "tokentrail.deployment_log.Staged.v1"
        workspace_id: str
        deployment_id: str
        number: int
        token_changes: list[dict[str, Any]]
        files: list[str]
        declarations: list[dict[str, Any]]

        def apply(self, log: DeploymentLog) -> None:
            log.count = self.number
            log.staged = {
                "deployment_id": self.deployment_id,
                "number": self.number,
                "files": list(self.files),
                "declarations": [dict(d) for d in self.declarations],
            }

    class Promoted(Event):
        """The staged deployment applied: `token_changes` is what promotion changed."""

        TOPIC = "tokentrail.deployment_log.Promoted.v1"
        workspace_id: str
        deployment_id: str
        number: int
        token_changes: list[dict[str, Any]]
        files: list[str]

        def apply(self, log: DeploymentLog) -> None:
            log.staged = None
            log.last_deployment_id = self.deployment_id
            log.live_number = self.number

    class Discarded(Event):
        TOPIC = "tokentrail.deployment_log.Discarded.v1"
        workspace_id: str
        deployment_id: str
        number: int

        def apply(self, log: DeploymentLog) -> None:
            log.staged = None

    def __init__(
        self,
        workspace_id: str,
        deployment_id: str | None = None,
        token_changes: list[dict[str, Any]] | None = None,
        files: list[str] | None = None,
    ) -> None:
        self.workspace_id = workspace_id
        self.last_deployment_id = deployment_id
        self.count = 0 if deployment_id is None else 1
        self.live_number = self.count
        self.staged: dict[str, Any] | None = None

    @classmethod
    def start(
        cls,
        workspace_id: str,
        deployment_id: str,
        token_changes: list[dict[str, Any]],
        files: list[str],
        actor: ActorDict,
    ) -> DeploymentLog:
        return cls._create(
            cls.Created,
            id=deployment_log_id(workspace_id),
            workspace_id=workspace_id,
            deployment_id=deployment_id,
            token_changes=token_changes,
            files=files,
            actor=actor,
        )

    @classmethod
    def open(cls, workspace_id: str, actor: ActorDict) -> DeploymentLog:
        return cls._create(cls.Opened, id=deployment_log_id(workspace_id), workspace_id=workspace_id, actor=actor)

    def deployed(
        self, deployment_id: str, token_changes: list[dict[str, Any]], files: list[str], actor: ActorDict
    ) -> int:
        """Record a deployment applied at once; returns its number."""
        self.require_none_staged()
        number = self.count + 1
        self.trigger_event(
            self.Deployed,
            workspace_id=self.workspace_id,
            deployment_id=deployment_id,
            number=number,
            token_changes=token_changes,
            files=files,
            actor=actor,
        )
        return number

    def stage(
        self,
        deployment_id: str,
        token_changes: list[dict[str, Any]],
        files: list[str],
        declarations: list[dict[str, Any]],
        actor: ActorDict,
    ) -> int:
        self.require_none_staged()
        number = self.count + 1
        self.trigger_event(
            self.Staged,
            workspace_id=self.workspace_id,
            deployment_id=deployment_id,
            number=number,
            token_changes=token_changes,
            files=files,
            declarations=declarations,
            actor=actor,
        )
        return number

    def promoted(self, token_changes: list[dict[str, Any]], actor: ActorDict) -> None:
        staged = self._require_staged()
        self.trigger_event(
            self.Promoted,
            workspace_id=self.workspace_id,
            deployment_id=staged["deployment_id"],
            number=staged["number"],
            token_changes=token_changes,
            files=staged["files"],
            actor=actor,
        )

    def discard(self, actor: ActorDict) -> None:
        staged = self._require_staged()
        self.trigger_event(
            self.Discarded,
            workspace_id=self.workspace_id,
            deployment_id=staged["deployment_id"],
            number=staged["number"],
            actor=actor,
        )

    def require_none_staged(self) -> None:
        if self.staged is not None:
            raise DeploymentInProgress(
                f"deployment #{self.staged['number']} is staged and not live yet: promote it "
                "(tb deployment promote) or discard it (tb deployment discard), then retry"
            )

    def _require_staged(self) -> dict[str, Any]:
        if self.staged is None:
            raise DeploymentInProgress("no deployment is staged")
        return self.staged

    def record(
        self, deployment_id: str, token_changes: list[dict[str, Any]], files: list[str], actor: ActorDict
    ) -> None:
        """The legacy event of a later deployment; today's code records `deployed` instead."""
        self.trigger_event(
            self.Applied,
            workspace_id=self.workspace_id,
            deployment_id=deployment_id,
            token_changes=token_changes,
            files=files,
            actor=actor,
        )
