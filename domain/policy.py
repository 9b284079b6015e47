"""Who may do what: callers, and the authorisation rules of SPEC §4 as plain functions."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from domain.errors import Forbidden, InvalidInput, NotFound
from domain.scopes import ADMIN_USER, AUTH, Scope, can_manage_tokens, is_admin

ORIGINS = frozenset({"api", "cli", "ui", "deployment", "system"})


@dataclass(frozen=True)
class Caller:
    """An authenticated principal plus the context of its request.

    `workspace_id` is the realm the caller's token belongs to (a user's id for a user token).
    """

    workspace_id: str
    token_id: str | None
    name: str
    scopes: tuple[Scope, ...] = ()
    request_id: str | None = None
    origin: str = "api"
    deployment_id: str | None = None
    is_jwt: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def system(cls, request_id: str | None = None, origin: str = "system") -> "Caller":
        """The ledger itself, for bootstrap (init, serve on an empty store)."""
        return cls(workspace_id="", token_id=None, name="system", request_id=request_id, origin=origin)

    @property
    def is_system(self) -> bool:
        return self.token_id is None and self.name == "system"

    @property
    def admin(self) -> bool:
        return self.is_system or is_admin(self.scopes)

    @property
    def user(self) -> bool:
        return any(s.type == AUTH for s in self.scopes)

    def actor(self) -> dict[str, Any]:
        """What every event records about who made it."""
        return {
            "token_id": self.token_id,
            "name": self.name,
            "request_id": self.request_id,
            "origin": self.origin,
            "deployment_id": self.deployment_id,
        }

    def for_deployment(self, deployment_id: str) -> "Caller":
        return replace(self, origin="deployment", deployment_id=deployment_id)


def require_workspace(caller: Caller, workspace_id: str) -> None:
    """A token never reaches another workspace: there, everything is 'not found'."""
    if not caller.is_system and caller.workspace_id != workspace_id:
        raise NotFound("Token not found")


def require_token_manager(caller: Caller) -> None:
    if caller.is_system:
        return
    if caller.is_jwt or not can_manage_tokens(caller.scopes):
        raise Forbidden("this operation needs a token with ADMIN or TOKENS scope")


def require_may_grant(caller: Caller, scopes: tuple[Scope, ...]) -> None:
    """No privilege escalation: internal scopes are never granted, ADMIN only by an admin."""
    for scope in scopes:
        if scope.internal:
            raise InvalidInput(f"Scope {scope.type} is internal and cannot be granted")
        if scope.privileged and not caller.admin:
            raise Forbidden(f"a token without ADMIN scope cannot grant {scope.type}")


def require_may_manage(caller: Caller, target_scopes: tuple[Scope, ...]) -> None:
    """A TOKENS (non-admin) caller cannot touch a token more privileged than itself."""
    if not caller.admin and any(s.privileged for s in target_scopes):
        raise Forbidden("only a token with ADMIN scope can manage this token")


def may_see_value(caller: Caller, token_id: str, target_scopes: tuple[Scope, ...]) -> bool:
    """Values of privileged tokens are shown only to admins (and to the token itself)."""
    if caller.token_id == token_id:
        return True
    if caller.is_jwt or not can_manage_tokens(caller.scopes):
        return False
    return caller.admin or not any(s.privileged for s in target_scopes)


def own_user_id(caller: Caller) -> str | None:
    """The user whose personal admin token (`admin <email>`, scope `ADMIN_USER:<user id>`) the
    caller is, if any. That person may see their own user token beside the workspace's tokens,
    as on Tinybird's Auth Tokens page; no other caller ever reaches a user token."""
    if caller.is_jwt:
        return None
    for scope in caller.scopes:
        if scope.type == ADMIN_USER and scope.resource:
            return scope.resource
    return None
