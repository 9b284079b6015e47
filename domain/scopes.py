"""Scopes: the grammar of Tinybird's token scopes, and what each one grants.

A scope string splits on `:`. Prefixed families (`DATASOURCES`, `PIPES`, `WORKSPACE`,
`ORG_DATASOURCES`) take their type from the first two parts; the next part is the resource, and the
rest, re-joined with `:`, is the READ filter (`DATASOURCES:READ:t:a > 'x:y'` has resource `t` and
filter `a > 'x:y'`). `str(scope)` is the canonical form stored in events.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from tokentrail.domain.errors import ScopeError
from tokentrail.domain.filters import normalize_filter

ADMIN = "ADMIN"
ADMIN_USER = "ADMIN_USER"
AUTH = "AUTH"
TOKENS = "TOKENS"

# type -> (needs a resource, takes a filter, resource kind)
_TYPES: dict[str, tuple[bool, bool, str | None]] = {
    ADMIN: (False, False, None),
    TOKENS: (False, False, None),
    AUTH: (False, False, None),
    ADMIN_USER: (True, False, "user"),
    "WORKSPACE:READ_ALL": (False, False, None),
    "WORKSPACE:DEPLOY": (False, False, None),
    "ORG_DATASOURCES:READ": (False, False, None),
    "DATASOURCES:CREATE": (False, False, None),
    "DATASOURCES:APPEND": (True, False, "datasource"),
    "DATASOURCES:DROP": (True, False, "datasource"),
    "DATASOURCES:READ": (True, True, "datasource"),
    "PIPES:CREATE": (False, False, None),
    "PIPES:DROP": (True, False, "pipe"),
    "PIPES:READ": (True, True, "pipe"),
}
_UNKNOWN: tuple[bool, bool, str | None] = (False, False, None)
SCOPE_TYPES = frozenset(_TYPES)
_PREFIXED = frozenset(t.split(":")[0] for t in _TYPES if ":" in t)
INTERNAL_TYPES = frozenset({ADMIN_USER, AUTH})
# Scopes only an ADMIN caller may hand out or manage (no privilege escalation through TOKENS).
PRIVILEGED_TYPES = frozenset({ADMIN, ADMIN_USER, AUTH})

RESOURCE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
USER_REF = re.compile(r"[A-Za-z0-9_.@+-]{1,254}")
MAX_SCOPE_LENGTH = 4096

KINDS = ("datasource", "pipe")
PERMISSIONS = ("READ", "APPEND", "DROP")


@dataclass(frozen=True, order=True)
class Scope:
    type: str
    resource: str | None = None
    filter: str = ""

    def __str__(self) -> str:
        parts = [self.type]
        if self.resource is not None:
            parts.append(self.resource)
            if self.filter:
                parts.append(self.filter)
        return ":".join(parts)

    @property
    def kind(self) -> str | None:
        """`datasource`, `pipe`, `user`, or None for workspace-wide scopes (and unknown types,
        which only a stored scope read back with `read_scope` can have)."""
        return _TYPES.get(self.type, _UNKNOWN)[2]

    @property
    def permission(self) -> str | None:
        """READ / APPEND / DROP for scopes on a datasource or pipe."""
        if self.kind in KINDS:
            return self.type.split(":")[1]
        return None

    @property
    def filterable(self) -> bool:
        return _TYPES.get(self.type, _UNKNOWN)[1]

    @property
    def internal(self) -> bool:
        return self.type in INTERNAL_TYPES

    @property
    def privileged(self) -> bool:
        return self.type in PRIVILEGED_TYPES

    def wire(self) -> dict[str, str]:
        """The scope object of Tinybird's token JSON."""
        out = {"type": self.type}
        if self.resource is not None:
            out["resource"] = self.resource
        if self.filterable:
            out["filter"] = self.filter
        return out


def _suggestion(type_: str) -> str:
    """The valid scope types a misspelt one is closest to, and the full list."""
    public = [t for t in _TYPES if t not in INTERNAL_TYPES]
    close = difflib.get_close_matches(type_.upper(), public, n=2, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return f"{hint}valid scopes are {', '.join(public)} (with :<resource> where one is needed)"


def parse_scope(text: str) -> Scope:
    """Parse one scope string; raise ScopeError naming what is wrong."""
    if not isinstance(text, str):
        raise ScopeError("scope must be a string")
    return _parse_scope(text)


@functools.lru_cache(maxsize=65_536)
def _parse_scope(text: str) -> Scope:
    # Scopes are immutable and the same strings recur in every request (a filter costs a sqlglot
    # parse): remembered here, once for every caller. Refusals raise and are not cached.
    if len(text) > MAX_SCOPE_LENGTH:
        raise ScopeError(f"scope is longer than {MAX_SCOPE_LENGTH} characters")
    text = text.strip()
    if not text:
        raise ScopeError("scope is mandatory")
    type_, rest = _split(text)
    if type_ not in _TYPES:
        raise ScopeError(f"Unknown scope {_shorten(text)}: {_suggestion(type_)}")
    needs_resource, filterable, kind = _TYPES[type_]
    if not needs_resource:
        if rest:
            raise ScopeError(f"Scope {type_} takes no resource: {_shorten(text)}")
        return Scope(type_)
    if not rest or not rest[0]:
        raise ScopeError(f"Scope {type_} needs a resource, as in {type_}:<name>")
    resource = rest[0]
    pattern = USER_REF if kind == "user" else RESOURCE_NAME
    if not pattern.fullmatch(resource):
        raise ScopeError(f"Invalid resource name {_shorten(resource)!r} in scope {type_}")
    raw_filter = ":".join(rest[1:])
    if raw_filter and not filterable:
        raise ScopeError(f"Scope {type_} takes no filter: {_shorten(text)}")
    scope = Scope(type_, resource, normalize_filter(raw_filter) if raw_filter else "")
    # What is stored is `str(scope)`, not `text`: check that exact form, so that every stored
    # scope reads back as this very scope (the normalised filter may be longer than the original).
    if len(str(scope)) > MAX_SCOPE_LENGTH:
        raise ScopeError(f"scope is longer than {MAX_SCOPE_LENGTH} characters once normalised")
    if read_scope(str(scope)) != scope:
        raise ScopeError(f"scope does not read back as written: {_shorten(text)}")
    return scope


def _split(text: str) -> tuple[str, list[str]]:
    parts = text.split(":")
    if parts[0] in _PREFIXED and len(parts) >= 2:
        return f"{parts[0]}:{parts[1]}", parts[2:]
    return parts[0], parts[1:]


@functools.lru_cache(maxsize=65_536)
def read_scope(text: str) -> Scope:
    """A scope as stored in an event or a read model, read back without judging it again.

    Everything stored passed `parse_scope` when it was written; the rules may have tightened since
    (a shorter filter limit, a function no longer allowed), and history must stay readable all the
    same. So this never raises: it only splits the canonical form that `str(Scope)` wrote.
    """
    if not isinstance(text, str):
        text = str(text)
    type_, rest = _split(text)
    if type_ not in _TYPES:
        return Scope(text) if not rest else Scope(type_, rest[0] or None, ":".join(rest[1:]))
    needs_resource, filterable, _ = _TYPES[type_]
    if not rest:
        return Scope(type_)
    if not needs_resource:
        return Scope(text)  # stored under rules we no longer know: kept whole, grants nothing
    return Scope(type_, rest[0], ":".join(rest[1:]))


def scope_from_parts(type_: str, resource: str | None = None, filter: str | None = None) -> Scope:
    """Build a scope from the separate fields of a JSON body or a wire scope object."""
    text = type_ if resource in (None, "") else f"{type_}:{resource}"
    if filter:
        if resource in (None, ""):
            raise ScopeError(f"Scope {type_} needs a resource to take a filter")
        text = f"{text}:{filter}"
    return parse_scope(text)


def parse_scopes(texts: Iterable[str]) -> tuple[Scope, ...]:
    """Parse and de-duplicate a list of scopes, keeping first-seen order."""
    seen: dict[Scope, None] = {}
    for text in texts:
        seen.setdefault(parse_scope(text), None)
    return tuple(seen)


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------
# What grants what.


@dataclass(frozen=True)
class Grant:
    """One permission held: `via` is the scope that grants it, `filter` the filter in force."""

    via: str
    filter: str
    rank: int  # 0 = widest (ADMIN) … 3 = a filtered direct scope
    derived: bool = False  # through the quarantine rule rather than a direct scope

    def key(self) -> tuple[int, bool, str]:
        return (self.rank, self.derived, self.via)


def grant_for(scopes: Iterable[Scope], kind: str, permission: str, resource: str) -> Grant | None:
    """Do these scopes grant `permission` on the `kind` named `resource`, and how?

    A token holding several grants is answered with the widest: ADMIN, then WORKSPACE:READ_ALL or
    DATASOURCES:CREATE, then a direct unfiltered scope, then a filtered one. `DATASOURCES:READ:x`
    also grants READ on `x_quarantine`.
    """
    best: Grant | None = None
    for scope in scopes:
        grant = _single_grant(scope, kind, permission, resource)
        if grant is not None and (best is None or grant.key() < best.key()):
            best = grant
    return best


def _single_grant(scope: Scope, kind: str, permission: str, resource: str) -> Grant | None:
    t = scope.type
    if t in (ADMIN, ADMIN_USER):
        return Grant(str(scope), "", 0)
    if t == "WORKSPACE:READ_ALL" and permission == "READ":
        return Grant(t, "", 1)
    if t == "DATASOURCES:CREATE" and kind == "datasource" and permission == "APPEND":
        return Grant(t, "", 1)
    if scope.kind != kind or scope.permission != permission:
        return None
    if scope.resource == resource:
        return Grant(str(scope), scope.filter, 2 if not scope.filter else 3)
    if kind == "datasource" and permission == "READ" and resource == f"{scope.resource}_quarantine":
        return Grant(str(scope), scope.filter, 2 if not scope.filter else 3, derived=True)
    return None


# Workspace-level permissions: which held scope types satisfy a request for each.
_IMPLIED_BY: dict[str, frozenset[str]] = {
    ADMIN: frozenset({ADMIN, ADMIN_USER}),
    ADMIN_USER: frozenset({ADMIN_USER}),
    AUTH: frozenset({AUTH}),
    TOKENS: frozenset({ADMIN, ADMIN_USER, TOKENS}),
    "DATASOURCES:CREATE": frozenset({ADMIN, ADMIN_USER, "DATASOURCES:CREATE"}),
    "PIPES:CREATE": frozenset({ADMIN, ADMIN_USER, "PIPES:CREATE"}),
    "WORKSPACE:READ_ALL": frozenset({ADMIN, ADMIN_USER, "WORKSPACE:READ_ALL"}),
    "WORKSPACE:DEPLOY": frozenset({ADMIN, ADMIN_USER, "WORKSPACE:DEPLOY"}),
    "ORG_DATASOURCES:READ": frozenset({ADMIN, ADMIN_USER, "ORG_DATASOURCES:READ"}),
}


def check_permission(scopes: Iterable[Scope], requested: Scope) -> Grant | None:
    """Answer `GET /v0/auth?permission=…`: the grant that satisfies `requested`, if any."""
    held = tuple(scopes)
    if requested.kind in KINDS:
        assert requested.permission is not None and requested.resource is not None
        return grant_for(held, requested.kind, requested.permission, requested.resource)
    wanted = requested.type
    best: Grant | None = None
    for scope in held:
        if scope.type in _IMPLIED_BY.get(wanted, frozenset()):
            rank = 0 if scope.type in (ADMIN, ADMIN_USER) and wanted != scope.type else 1
            grant = Grant(str(scope), "", rank)
            if best is None or grant.key() < best.key():
                best = grant
    return best


def is_admin(scopes: Iterable[Scope]) -> bool:
    return any(s.type in (ADMIN, ADMIN_USER) for s in scopes)


def can_manage_tokens(scopes: Iterable[Scope]) -> bool:
    return any(s.type in (ADMIN, ADMIN_USER, TOKENS) for s in scopes)
