"""Who may do what: the caller of a request, and one table of what each kind of caller may do to
each kind of token.

Every entrypoint (HTTP routes, the console, the CLI through the API, the ledger's use cases) asks
`authorize(caller, op, target)`. The table `RULES` is plain data, so a test walks every cell over
HTTP and the console, and `docs/security.md` prints it (`python -m tokentrail.domain.policy` renders it).

A caller is classified into exactly one `Role`, a token into exactly one `Target` relative to
that caller. Two rules sit before the table: a token never reaches another workspace (404, see
`in_reach`), and the ledger itself (`Role.SYSTEM`, bootstrap) may do everything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from tokentrail.domain.errors import Forbidden, InvalidInput, NotFound
from tokentrail.domain.scopes import ADMIN, ADMIN_USER, AUTH, TOKENS, Scope, is_admin

ORIGINS = frozenset({"api", "cli", "ui", "deployment", "system"})


@dataclass(frozen=True)
class Caller:
    """An authenticated principal plus the context of its request.

    `workspace_id` is the realm the caller's token belongs to (a user's id for a user token).
    `in_grace` is true for a refreshed-out value still inside its grace window: it authenticates
    for its scopes and for nothing else. `generation` is the generation of the value it
    authenticated with (for a JWT: of the admin value that signed it), so that a write can check
    that value against the store in its own attempt.
    """

    workspace_id: str
    token_id: str | None
    name: str
    scopes: tuple[Scope, ...] = ()
    request_id: str | None = None
    origin: str = "api"
    deployment_id: str | None = None
    is_jwt: bool = False
    generation: str | None = None
    in_grace: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    # Where the request came from, as the server saw it (`address`, `user_agent`), and what the
    # client said about itself (`origin`, `request_id`): recorded apart, for new events only.
    client: dict[str, str | None] = field(default_factory=dict, compare=False)
    claimed: dict[str, str | None] = field(default_factory=dict, compare=False)

    @classmethod
    def system(cls, request_id: str | None = None, origin: str = "system") -> Caller:
        """The ledger itself, for bootstrap (init, serve on an empty store)."""
        return cls(workspace_id="", token_id=None, name="system", request_id=request_id, origin=origin)

    @property
    def is_system(self) -> bool:
        return self.token_id is None and self.name == "system" and not self.is_jwt

    @property
    def admin(self) -> bool:
        return self.role in (Role.SYSTEM, Role.OWNER, Role.ADMIN)

    @property
    def user(self) -> bool:
        return self.role is Role.USER

    @property
    def role(self) -> Role:
        return role_of(self)

    def actor(self) -> dict[str, Any]:
        """What every event records about who made it. `client` and `claimed` are present only
        when the request had them (events written before they existed lack them)."""
        actor: dict[str, Any] = {
            "token_id": self.token_id,
            "name": self.name,
            "request_id": self.request_id,
            "origin": self.origin,
            "deployment_id": self.deployment_id,
        }
        if self.client:
            actor["client"] = dict(self.client)
        if self.claimed:
            actor["claimed"] = dict(self.claimed)
        return actor

    def for_deployment(self, deployment_id: str) -> Caller:
        return replace(self, origin="deployment", deployment_id=deployment_id)


class Role(StrEnum):
    """What kind of caller, in order of precedence (the first that applies)."""

    SYSTEM = "system"  # the ledger itself: init, bootstrap
    GRACE = "grace value"  # a refreshed-out value inside its grace window, whatever its scopes
    JWT = "JWT"
    OWNER = "owner"  # `admin <email>` (ADMIN_USER): the workspace owner's own admin token
    ADMIN = "ADMIN"
    TOKENS = "TOKENS"
    USER = "user token"  # AUTH: creates and lists its user's workspaces
    DEPLOYER = "WORKSPACE:DEPLOY"
    OTHER = "other"  # any other static token: read, append, create-datasource scopes


class Target(StrEnum):
    """What kind of token an operation is about, seen from the caller."""

    NONE = "-"  # the operation names no token
    SELF = "itself"  # the caller's own token (for reading only)
    ORDINARY = "ordinary"  # custom or datafile token without ADMIN
    PRIVILEGED = "with ADMIN"  # custom or datafile token holding ADMIN
    DEFAULT = "default"  # `create datasource token`
    DEFAULT_ADMIN = "admin token"  # the workspace's `admin token`
    OWN_USER_BOUND = "own user-bound"  # `admin <email>` / user token of the caller's own user
    USER_BOUND = "user-bound"  # `admin <email>` / user token of someone else


class Op(StrEnum):
    INTROSPECT = "introspect itself (GET /v0/auth)"
    LIST = "list the workspace's tokens"
    READ = "read a token"
    SEE_VALUE = "see a token's value"
    CREATE = "create (or grant scopes to) a token"
    UPDATE = "change scopes or name"
    DESCRIBE = "change the description"
    REFRESH = "refresh"
    DELETE = "delete"
    ISSUE_JWT = "issue a JWT"
    DEPLOY = "deploy datafile tokens"
    READ_AUDIT = "read audit, history, access, as-of"
    VERIFY = "verify the chain, sign checkpoints"
    INVESTIGATE = "trace exposure, look up a value"
    REVOKE = "revoke tokens in bulk"
    WORKSPACES = "create and list workspaces"
    CONFIGURE = "change workspace settings"


_EVERYONE = frozenset(Role) - {Role.SYSTEM}
_STATIC = frozenset({Role.OWNER, Role.ADMIN, Role.TOKENS, Role.USER, Role.DEPLOYER, Role.OTHER})
_MANAGERS = frozenset({Role.OWNER, Role.ADMIN, Role.TOKENS})
_ADMINS = frozenset({Role.OWNER, Role.ADMIN})
_NOBODY: frozenset[Role] = frozenset()

# Re-scoping, renaming and deleting: never a default or user-bound token.
_CHANGE: dict[Target, frozenset[Role]] = {
    Target.ORDINARY: _MANAGERS,
    Target.PRIVILEGED: _ADMINS,
    Target.DEFAULT: _NOBODY,
    Target.DEFAULT_ADMIN: _NOBODY,
    Target.OWN_USER_BOUND: _NOBODY,
    Target.USER_BOUND: _NOBODY,
}
# Refreshing and describing: default tokens too; a user-bound token only by its own user.
_MAINTAIN: dict[Target, frozenset[Role]] = {
    Target.ORDINARY: _MANAGERS,
    Target.PRIVILEGED: _ADMINS,
    Target.DEFAULT: _MANAGERS,
    Target.DEFAULT_ADMIN: _ADMINS,
    Target.OWN_USER_BOUND: frozenset({Role.OWNER}),
    Target.USER_BOUND: _NOBODY,
}

# op -> target -> the roles allowed. A (op, target) pair absent from the table does not arise.
RULES: dict[Op, dict[Target, frozenset[Role]]] = {
    Op.INTROSPECT: {Target.NONE: _EVERYONE},
    Op.LIST: {Target.NONE: _MANAGERS},
    Op.READ: {
        Target.SELF: _STATIC,
        Target.ORDINARY: _MANAGERS,
        Target.PRIVILEGED: _MANAGERS,
        Target.DEFAULT: _MANAGERS,
        Target.DEFAULT_ADMIN: _MANAGERS,
        Target.OWN_USER_BOUND: frozenset({Role.OWNER}),
        Target.USER_BOUND: _MANAGERS,  # its metadata, never its value
    },
    Op.SEE_VALUE: {
        Target.SELF: _STATIC,
        Target.ORDINARY: _MANAGERS,
        Target.PRIVILEGED: _ADMINS,
        Target.DEFAULT: _MANAGERS,
        Target.DEFAULT_ADMIN: _ADMINS,
        Target.OWN_USER_BOUND: frozenset({Role.OWNER}),
        Target.USER_BOUND: _NOBODY,
    },
    Op.CREATE: {Target.ORDINARY: _MANAGERS, Target.PRIVILEGED: _ADMINS},
    Op.UPDATE: _CHANGE,
    Op.DESCRIBE: _MAINTAIN,
    Op.REFRESH: _MAINTAIN,
    Op.DELETE: _CHANGE,
    Op.ISSUE_JWT: {Target.NONE: _MANAGERS},
    # A deployment changes datafile tokens: one that holds ADMIN (added by hand) needs an admin.
    Op.DEPLOY: {
        Target.NONE: _MANAGERS | {Role.DEPLOYER},
        Target.ORDINARY: _MANAGERS | {Role.DEPLOYER},
        Target.PRIVILEGED: _ADMINS,
    },
    Op.READ_AUDIT: {Target.NONE: _MANAGERS},
    Op.VERIFY: {Target.NONE: _ADMINS},
    # Incident response: tracing reads token metadata only; bulk revocation needs an admin, and
    # each token it selects must still be one the caller may delete.
    Op.INVESTIGATE: {Target.NONE: _MANAGERS},
    Op.REVOKE: {Target.NONE: _ADMINS},
    Op.WORKSPACES: {Target.NONE: frozenset({Role.USER})},
    # Token hygiene settings (the cap on token lifetimes): an admin's decision.
    Op.CONFIGURE: {Target.NONE: _ADMINS},
}

# Which operations name a token (the others take Target.NONE).
TOKEN_OPS = frozenset({Op.READ, Op.SEE_VALUE, Op.CREATE, Op.UPDATE, Op.DESCRIBE, Op.REFRESH, Op.DELETE})
_READS = frozenset({Op.READ, Op.SEE_VALUE})


def role_of(caller: Caller) -> Role:
    if caller.is_system:
        return Role.SYSTEM
    if caller.in_grace:
        return Role.GRACE
    if caller.is_jwt:
        return Role.JWT
    types = {s.type for s in caller.scopes}
    for role, scope_type in (
        (Role.OWNER, ADMIN_USER),
        (Role.ADMIN, ADMIN),
        (Role.TOKENS, TOKENS),
        (Role.USER, AUTH),
        (Role.DEPLOYER, "WORKSPACE:DEPLOY"),
    ):
        if scope_type in types:
            return role
    return Role.OTHER


@dataclass(frozen=True)
class TokenFacts:
    """What the policy needs to know of a token: nothing but its id, kind, realm and scopes."""

    id: str | None
    kind: str  # custom, datafile, default, user
    workspace_id: str
    scopes: tuple[Scope, ...]


def target_of(caller: Caller, token: TokenFacts | None, op: Op) -> Target:
    if token is None:
        return Target.NONE
    if op in _READS and token.id is not None and token.id == caller.token_id:
        return Target.SELF
    bound = bound_user(token)
    if bound is not None:
        return Target.OWN_USER_BOUND if bound == own_user_id(caller) else Target.USER_BOUND
    admin = is_admin(token.scopes)
    if token.kind in ("default", "user"):
        return Target.DEFAULT_ADMIN if admin else Target.DEFAULT
    return Target.PRIVILEGED if admin else Target.ORDINARY


def bound_user(token: TokenFacts) -> str | None:
    """The user a user-bound token belongs to: `admin <email>` (ADMIN_USER:<user>) or a user token
    (AUTH, whose realm is its user's id)."""
    for scope in token.scopes:
        if scope.type == ADMIN_USER and scope.resource:
            return scope.resource
        if scope.type == AUTH:
            return token.workspace_id
    return None


def own_user_id(caller: Caller) -> str | None:
    """The user whose personal token the caller is: `admin <email>` (scope `ADMIN_USER:<user>`) or
    the user token itself. That person may see their own user-bound tokens; nobody else ever does."""
    if caller.is_jwt or caller.in_grace:
        return None
    for scope in caller.scopes:
        if scope.type == ADMIN_USER and scope.resource:
            return scope.resource
        if scope.type == AUTH:
            return caller.workspace_id
    return None


def allows(caller: Caller, op: Op, token: TokenFacts | None = None) -> bool:
    role = role_of(caller)
    if role is Role.SYSTEM:
        return True
    return role in RULES[op].get(target_of(caller, token, op), _NOBODY)


def authorize(caller: Caller, op: Op, token: TokenFacts | None = None) -> None:
    """Raise `Forbidden` with the reason, unless the table allows it."""
    if not allows(caller, op, token):
        raise Forbidden(refusal(role_of(caller), op, target_of(caller, token, op)))


GRACE_REFUSAL = "a value inside its grace window after a refresh only authenticates for its scopes"


def refusal(role: Role, op: Op, target: Target) -> str:
    """Why `role` may not `op` a `target`: the message a caller reads."""
    if role is Role.GRACE:
        return GRACE_REFUSAL
    if role is Role.JWT and op is not Op.INTROSPECT:
        return "a JWT cannot do this: it only reads the resources it was issued for"
    if op is Op.DEPLOY and target is Target.PRIVILEGED:
        return "only a token with ADMIN scope can manage this token"
    if op is Op.DEPLOY:
        return "deployments need a token with ADMIN, TOKENS or WORKSPACE:DEPLOY scope"
    if op is Op.VERIFY:
        return "verifying the trail needs a token with ADMIN scope"
    if op is Op.REVOKE:
        return "revoking tokens in bulk needs a token with ADMIN scope"
    if op is Op.CONFIGURE:
        return "changing workspace settings needs a token with ADMIN scope"
    if op is Op.WORKSPACES:
        return "this needs a user token"
    if target in (Target.USER_BOUND, Target.OWN_USER_BOUND) and op in (Op.SEE_VALUE, Op.REFRESH, Op.READ, Op.DESCRIBE):
        return "only its own user can do this to a user-bound token"
    if target in (Target.PRIVILEGED, Target.DEFAULT_ADMIN) and role in _MANAGERS - _ADMINS:
        if op is Op.CREATE:
            return "a token without ADMIN scope cannot grant ADMIN"
        return "only a token with ADMIN scope can manage this token"
    if target in (Target.DEFAULT, Target.DEFAULT_ADMIN, Target.USER_BOUND, Target.OWN_USER_BOUND):
        if op is Op.UPDATE:
            return "default tokens can be refreshed but not changed"
        if op is Op.DELETE:
            return "default tokens cannot be deleted"
    return "this operation needs a token with ADMIN or TOKENS scope"


# -- the rules as the entrypoints use them ----------------------------------------------------


def in_reach(caller: Caller, token: TokenFacts) -> bool:
    """A token never reaches another realm (workspace, or a user's own realm), with one exception:
    its own user reaches a user-bound token (the user token lives in the user's realm, yet the
    owner's `admin <email>` must be able to see and rotate it)."""
    if caller.is_system or caller.workspace_id == token.workspace_id:
        return True
    bound = bound_user(token)
    return bound is not None and bound == own_user_id(caller)


def require_reach(caller: Caller, token: TokenFacts) -> None:
    """Out of reach, a token is 'not found', whatever it is: nothing to learn about it."""
    if not in_reach(caller, token):
        raise NotFound("Token not found")


def require_token_manager(caller: Caller) -> None:
    """May the caller list and manage the workspace's tokens at all (ADMIN or TOKENS)?"""
    authorize(caller, Op.LIST)


def require_may_grant(caller: Caller, scopes: Iterable[Scope]) -> None:
    """No privilege escalation: internal scopes are never granted, ADMIN only by an admin."""
    scopes = tuple(scopes)
    for scope in scopes:
        if scope.internal:
            raise InvalidInput(f"Scope {scope.type} is internal and cannot be granted")
    authorize(caller, Op.CREATE, TokenFacts(None, "custom", caller.workspace_id, scopes))


def may_see_value(caller: Caller, token: TokenFacts) -> bool:
    """Values reach the token itself and callers entitled to manage it; a user-bound token's value
    reaches only its own user (whose user token lives in the user's realm, not the workspace)."""
    return in_reach(caller, token) and allows(caller, Op.SEE_VALUE, token)


class ValueVisibility:
    """`may_see_value` for one caller over many tokens (a listing), asked once per distinct answer
    it can have. The answer depends on the token's kind, realm and scopes, and on its id only
    through "is it the caller itself" (`target_of`'s SELF): so it is memoised on exactly that.
    `scopes_key` is any text that names the scopes (the read model's column); `parse` turns it into
    the scopes, called only when the memo misses."""

    def __init__(self, caller: Caller) -> None:
        self.caller = caller
        self._memo: dict[tuple[bool, str, str, str], bool] = {}

    def __call__(
        self, token_id: str, kind: str, workspace_id: str, scopes_key: str, parse: Callable[[str], tuple[Scope, ...]]
    ) -> bool:
        key = (token_id == self.caller.token_id, kind, workspace_id, scopes_key)
        seen = self._memo.get(key)
        if seen is None:
            facts = TokenFacts(token_id, kind, workspace_id, parse(scopes_key))
            seen = self._memo[key] = may_see_value(self.caller, facts)
        return seen


def table() -> list[tuple[Op, Target, list[Role]]]:
    """Every cell of the table, in order: for the docs and the test that walks it."""
    roles = [r for r in Role if r is not Role.SYSTEM]
    return [
        (op, target, [r for r in roles if r in allowed])
        for op, targets in RULES.items()
        for target, allowed in targets.items()
    ]


def markdown() -> str:
    """The table as docs/security.md prints it."""
    roles = [r for r in Role if r is not Role.SYSTEM]
    lines = [
        "| operation | target | " + " | ".join(r.value for r in roles) + " |",
        "|---|---|" + "---|" * len(roles),
    ]
    for op, target, allowed in table():
        cells = ["yes" if r in allowed else "—" for r in roles]
        lines.append(f"| {op.value} | {target.value} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
