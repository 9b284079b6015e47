"""Deployment planning: what to change so the workspace's tokens match a project's TOKEN lines.

Pure: it reads the declarations of `domain.datafiles` and a snapshot of the live tokens, and returns
a `Plan`; the ledger applies the plan as one atomic change recorded with its deployment id.
The rules:

- every declared name is one token holding the union of its declarations' scopes;
- a token that came from datafiles (kind "datafile") holds exactly its declared scopes, so any
  other scope it holds is removed, and it is deleted once no file declares it;
- a token made by hand or by Tinybird (any other kind) is never touched, and a declaration that
  would take its name is refused with `NameTaken`.

Steps and `token_changes` are sorted by token name, so one input always gives one plan, and a
second deployment of the same files gives the empty plan.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tokentrail.domain.datafiles import TokenDeclaration
from tokentrail.domain.errors import NameTaken
from tokentrail.domain.scopes import KINDS, read_scope

DATAFILE_KIND = "datafile"
ORIGIN_TYPE = {"datasource": "DS", "pipe": "P"}

Permission = dict[str, str]


@dataclass(frozen=True)
class CurrentToken:
    """A live token of the workspace, as far as planning needs to know it."""

    token_id: str
    name: str
    scopes: tuple[str, ...]
    origin_type: str  # "C" | "DS" | "P"
    kind: str  # "custom" | "default" | "user" | "datafile"

    @property
    def from_datafiles(self) -> bool:
        return self.kind == DATAFILE_KIND


@dataclass(frozen=True)
class DesiredToken:
    """What the project declares under one name: sorted scopes, declarations by (path, line)."""

    name: str
    scopes: tuple[str, ...]
    declarations: tuple[TokenDeclaration, ...]

    @property
    def origin(self) -> dict[str, str]:
        """Tinybird's origin of a resource token: the resource of its first declaration."""
        first = self.declarations[0]
        return {"type": ORIGIN_TYPE[first.resource_kind], "resource_id": first.resource}


@dataclass(frozen=True)
class CreateToken:
    name: str
    scopes: tuple[str, ...]
    origin: dict[str, str]


@dataclass(frozen=True)
class ModifyToken:
    """`scopes` is the whole new set; `add` and `remove` are the difference from the live one."""

    token_id: str
    name: str
    scopes: tuple[str, ...]
    add: tuple[str, ...]
    remove: tuple[str, ...]


@dataclass(frozen=True)
class DeleteToken:
    token_id: str
    name: str
    scopes: tuple[str, ...]  # what it held, for the record of what the deletion removed


Step = CreateToken | ModifyToken | DeleteToken


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...] = ()
    token_changes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.steps


def desired_tokens(declarations: Iterable[TokenDeclaration]) -> dict[str, DesiredToken]:
    """Group declarations by token name: one token per name, whatever files declare it."""
    grouped: dict[str, list[TokenDeclaration]] = {}
    for declaration in sorted(declarations, key=lambda d: (d.path, d.line)):
        grouped.setdefault(declaration.token_name, []).append(declaration)
    return {
        name: DesiredToken(name, tuple(sorted({d.scope for d in decls})), tuple(decls))
        for name, decls in sorted(grouped.items())
    }


def plan_deployment(declarations: Iterable[TokenDeclaration], current: Iterable[CurrentToken]) -> Plan:
    """The steps that bring the live tokens (`current`) in line with `declarations`.

    Scopes compare as stored strings: the ledger stores canonical scopes and removes a scope by
    its exact string, so a filtered READ on a datafile token is replaced by the plain one.
    """
    desired = desired_tokens(declarations)
    live = _by_name(current)
    _refuse_taken_names(desired, live)
    names = set(desired) | {name for name, token in live.items() if token.from_datafiles}
    steps: list[Step] = []
    for name in sorted(names):
        want, have = desired.get(name), live.get(name)
        if have is None:
            assert want is not None
            steps.append(CreateToken(name, want.scopes, want.origin))
        elif want is None:
            steps.append(DeleteToken(have.token_id, name, tuple(sorted(set(have.scopes)))))
        else:
            add = tuple(sorted(set(want.scopes) - set(have.scopes)))
            remove = tuple(sorted(set(have.scopes) - set(want.scopes)))
            if add or remove:
                steps.append(ModifyToken(have.token_id, name, want.scopes, add, remove))
    return Plan(tuple(steps), [token_change(step) for step in steps])


def token_change(step: Step) -> dict[str, Any]:
    """One entry of Forward's `deployment.token_changes`, which `tb deploy` prints as a table."""
    added: tuple[str, ...]
    removed: tuple[str, ...]
    if isinstance(step, CreateToken):
        change_type, added, removed = "new", step.scopes, ()
    elif isinstance(step, ModifyToken):
        change_type, added, removed = "modified", step.add, step.remove
    else:
        change_type, added, removed = "deleted", (), step.scopes
    return {
        "token_name": step.name,
        "change_type": change_type,
        "permission_changes": {
            "added_permissions": _permissions(added),
            "removed_permissions": _permissions(removed),
        },
    }


def _permissions(scopes: Iterable[str]) -> list[Permission]:
    out: list[Permission] = []
    for scope in scopes:
        permission = _permission(scope)
        if permission not in out:  # a filtered and a plain READ on one resource read the same
            out.append(permission)
    return out


def _permission(text: str) -> Permission:
    """A scope as Forward's `{resource_name, resource_type, permission}`.

    Only datasource and pipe scopes have that shape; anything else a datafile token may have been
    given by hand is shown as a workspace-wide permission named by its type.
    """
    scope = read_scope(text)
    if scope.kind in KINDS and scope.resource is not None and scope.permission is not None:
        return {
            "resource_name": scope.resource,
            "resource_type": scope.kind,
            "permission": scope.permission,
        }
    return {
        "resource_name": scope.resource or "",
        "resource_type": scope.kind or "workspace",
        "permission": scope.type,
    }


def _by_name(current: Iterable[CurrentToken]) -> dict[str, CurrentToken]:
    live: dict[str, CurrentToken] = {}
    for token in current:
        if token.name in live:
            raise ValueError(f"two live tokens named {token.name!r}: pass live tokens only")
        live[token.name] = token
    return live


def _refuse_taken_names(desired: dict[str, DesiredToken], live: dict[str, CurrentToken]) -> None:
    """A deployment never takes over a token it did not create: say which line asks it to."""
    clashes = [
        f'Auth token with name "{name}" already exists and was not created from datafiles '
        f"({live[name].kind} token); {want.declarations[0].location} declares it"
        for name, want in desired.items()
        if name in live and not live[name].from_datafiles
    ]
    if clashes:
        raise NameTaken("; ".join(clashes) + ". Rename the TOKEN line or the existing token.")
