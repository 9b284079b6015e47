"""The scope editor of the Auth Tokens page: checkboxes for workspace-level scopes and rows for
Data Source and Pipe scopes, read from a token's scopes or from a posted form and turned back into
the scope strings the ledger's use cases take (which parse and check them as for the API).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tokentrail.api.ui.pages import Form
from tokentrail.domain.errors import InvalidInput
from tokentrail.domain.ledger import MAX_SCOPES
from tokentrail.domain.scopes import Scope

# (scope, label, what it lets a token do): the checkboxes, in the order Tinybird's page shows them.
WORKSPACE_SCOPES: tuple[tuple[str, str, str], ...] = (
    ("ADMIN", "Admin", "Everything in the workspace, managing every token included"),
    ("TOKENS", "Manage tokens", "Create, change, refresh and delete tokens other than admin ones"),
    ("DATASOURCES:CREATE", "Create Data Sources", "Create Data Sources and append data to any of them"),
    ("PIPES:CREATE", "Create Pipes", "Create Pipes"),
    ("WORKSPACE:READ_ALL", "Read everything", "Read every Data Source and Pipe of the workspace"),
    ("WORKSPACE:DEPLOY", "Deploy", "Deploy the workspace's datafiles"),
    ("ORG_DATASOURCES:READ", "Organization Data Sources", "Read the organization's service Data Sources"),
)
WORKSPACE_SCOPE_TYPES = frozenset(s for s, _, _ in WORKSPACE_SCOPES)
PERMISSIONS_BY_KIND = {"datasource": ("READ", "APPEND", "DROP"), "pipe": ("READ", "DROP")}
PREFIX = {"datasource": "DATASOURCES", "pipe": "PIPES"}
_ROW_FIELD = re.compile(r"r(\d{1,4})-(kind|resource|permission|filter)")


@dataclass
class ResourceRow:
    """One Data Source or Pipe scope being edited; `filter` applies to READ only."""

    kind: str
    resource: str = ""
    permission: str = "READ"
    filter: str = ""

    @property
    def blank(self) -> bool:
        return not self.resource.strip() and not self.filter.strip()

    def scope_text(self) -> str:
        resource = self.resource.strip()
        label = "Data Source" if self.kind == "datasource" else "Pipe"
        if not resource:
            raise InvalidInput(f"A {label} scope needs the name of a {label}")
        text = f"{PREFIX[self.kind]}:{self.permission}:{resource}"
        condition = self.filter.strip()
        if condition:
            if self.permission != "READ":
                raise InvalidInput(f"Only READ scopes take a SQL filter ({label} {resource} has {self.permission})")
            text += f":{condition}"
        return text


@dataclass
class Editor:
    name: str = ""
    description: str = ""
    workspace: set[str] = field(default_factory=set)
    rows: list[ResourceRow] = field(default_factory=list)
    others: list[str] = field(default_factory=list)  # scopes this editor cannot show as controls

    @classmethod
    def from_scopes(cls, name: str, description: str, scopes: tuple[Scope, ...]) -> Editor:
        editor = cls(name=name, description=description)
        for scope in scopes:
            if scope.type in WORKSPACE_SCOPE_TYPES:
                editor.workspace.add(scope.type)
            elif scope.kind in PERMISSIONS_BY_KIND and scope.resource is not None:
                assert scope.permission is not None
                editor.rows.append(ResourceRow(scope.kind, scope.resource, scope.permission, scope.filter))
            else:
                editor.others.append(str(scope))
        return editor

    @classmethod
    def from_form(cls, form: Form) -> Editor:
        """The editor as the browser last showed it. Values no page offers are refused (400)."""
        checked = set(form.getlist("scope"))
        unknown = checked - WORKSPACE_SCOPE_TYPES
        if unknown:
            raise InvalidInput(f"Unknown workspace scope {sorted(unknown)[0][:80]!r}")
        fields: dict[int, dict[str, str]] = {}
        for key, value in form.pairs:
            match = _ROW_FIELD.fullmatch(key)
            if match:
                fields.setdefault(int(match.group(1)), {})[match.group(2)] = value
        if len(fields) > MAX_SCOPES:
            raise InvalidInput(f"a token may hold at most {MAX_SCOPES} scopes")
        rows = []
        for index in sorted(fields):
            raw = fields[index]
            kind = raw.get("kind", "")
            if kind not in PERMISSIONS_BY_KIND:
                raise InvalidInput("A resource scope must be on a Data Source or a Pipe")
            permission = raw.get("permission", "READ")
            if permission not in PERMISSIONS_BY_KIND[kind]:
                raise InvalidInput(f"{permission[:20]!r} is not a permission on a {kind}")
            rows.append(ResourceRow(kind, raw.get("resource", ""), permission, raw.get("filter", "")))
        return cls(name=form.get("name"), description=form.get("description"), workspace=checked, rows=rows)

    def scopes(self) -> list[str]:
        """The scope strings to save: checked workspace scopes, then the non-blank rows."""
        texts = [s for s, _, _ in WORKSPACE_SCOPES if s in self.workspace]
        texts += [row.scope_text() for row in self.rows if not row.blank]
        return texts + self.others

    def apply(self, action: str) -> bool:
        """Add or remove a row (the buttons that work without JavaScript); False for other actions."""
        if action == "add-datasource":
            self.rows.append(ResourceRow("datasource"))
        elif action == "add-pipe":
            self.rows.append(ResourceRow("pipe"))
        elif action.startswith("remove-") and action[7:].isdigit():
            index = int(action[7:])
            if index < len(self.rows):
                del self.rows[index]
        else:
            return False
        return True
