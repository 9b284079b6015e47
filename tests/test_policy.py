"""The policy table, walked over HTTP: for every kind of caller, every operation on every kind of
token answers exactly what `domain.policy.RULES` says, and a refusal writes nothing.

Each role gets a workspace of its own, so that what one caller changes (a refreshed admin token,
a renamed token) never changes what another caller is. The value of the caller's own token is
re-read before each request: a caller that refreshed itself goes on with its new value.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.test_api import create, head, make_realm, path_of, url
from tokentrail.domain.policy import RULES, Op, Role, Target, markdown
from tokentrail.service import Service

ROLE_SCOPES = {
    Role.ADMIN: "ADMIN",
    Role.TOKENS: "TOKENS",
    Role.DEPLOYER: "WORKSPACE:DEPLOY",
    Role.OTHER: "DATASOURCES:READ:events",
}
DATAFILE = "SCHEMA >\n    `a` Int32\n\nTOKEN policy_reader READ\n"


@dataclass
class Seat:
    """One caller of one role in its own workspace."""

    service: Service
    client: TestClient
    role: Role
    realm: Any
    token_id: str | None = None  # the caller's own token (None for a JWT)
    fixed_value: str | None = None  # a JWT or a value in its grace window never changes
    counter: list[int] = field(default_factory=lambda: [0])

    @property
    def owner_name(self) -> str:
        return next(n for n in self.realm.tokens if n.startswith("admin ") and n != "admin token")

    def value_of(self, token_id: str) -> str:
        self.service.sync()
        row = self.service.queries.token(token_id)
        assert row is not None
        return self.service.signer.make(row.workspace_id, row.id, row.generation)

    @property
    def value(self) -> str:
        return self.fixed_value or self.value_of(self.token_id or "")

    @property
    def admin(self) -> str:
        return self.value_of(self.realm.admin_id)

    def fresh(self, scope: str) -> str:
        """A new token of the caller's workspace, made by its admin; its id."""
        self.counter[0] += 1
        return create(self.client, self.admin, f"target {self.counter[0]}", scope)["id"]

    def target(self, target: Target) -> str | None:
        """The id of a token of that kind, seen from this caller (None: cannot arise for it)."""
        if target is Target.SELF:
            return self.token_id if self.fixed_value is None or self.role is Role.GRACE else None
        if target is Target.ORDINARY:
            return self.fresh("PIPES:READ:top")
        if target is Target.PRIVILEGED:
            return self.fresh("ADMIN")
        if target is Target.DEFAULT:
            return self.realm.id_of("create datasource token")
        if target is Target.DEFAULT_ADMIN:
            return self.realm.admin_id
        owner = self.realm.id_of(self.owner_name)
        if target is Target.OWN_USER_BOUND:
            return owner if self.role is Role.OWNER else None
        if target is Target.USER_BOUND:
            return owner if self.role is not Role.OWNER else None
        return None


def seat(service: Service, client: TestClient, role: Role) -> Seat:
    realm = make_realm(service, f"ws-{role.name.lower()}", f"{role.name.lower()}@example.com")
    s = Seat(service, client, role, realm)
    if role is Role.OWNER:
        s.token_id = realm.id_of(s.owner_name)
    elif role is Role.USER:
        s.token_id = realm.id_of("user token")
    elif role is Role.JWT:
        expires = int(time.time()) + 3600
        body = json.dumps({"scopes": [{"type": "PIPES:READ", "resource": "top"}]}).encode()
        answer = client.post(url("/v0/tokens", realm.admin, name="jwt", expiration_time=expires), content=body)
        s.fixed_value = answer.json()["token"]
    elif role is Role.GRACE:
        graced = create(client, realm.admin, "graced", "ADMIN")
        client.post(url(f"/v0/tokens/{graced['id']}/refresh", realm.admin, grace_seconds=3600))
        s.token_id, s.fixed_value = graced["id"], graced["token"]
    else:
        s.token_id = create(client, realm.admin, "caller", ROLE_SCOPES[role])["id"]
    return s


def request(s: Seat, op: Op, target: str | None) -> httpx.Response:
    c, v = s.client, s.value
    ref = path_of(target) if target else ""
    s.counter[0] += 1
    n = s.counter[0]
    calls: dict[Op, Callable[[], httpx.Response]] = {
        Op.INTROSPECT: lambda: c.get(url("/v0/auth", v)),
        Op.LIST: lambda: c.get(url("/v0/tokens", v)),
        Op.READ: lambda: c.get(url(f"/v0/tokens/{ref}", v)),
        Op.SEE_VALUE: lambda: c.get(url(f"/v0/tokens/{ref}", v)),
        Op.UPDATE: lambda: c.put(url(f"/v0/tokens/{ref}", v, name=f"renamed {n}")),
        Op.DESCRIBE: lambda: c.put(url(f"/v0/tokens/{ref}", v, description=f"described {n}")),
        Op.REFRESH: lambda: c.post(url(f"/v0/tokens/{ref}/refresh", v)),
        Op.DELETE: lambda: c.delete(url(f"/v0/tokens/{ref}", v)),
        Op.ISSUE_JWT: lambda: c.post(
            url("/v0/tokens", v, name=f"jwt {n}", expiration_time=int(time.time()) + 600),
            content=json.dumps({"scopes": [{"type": "PIPES:READ", "resource": "top"}]}).encode(),
        ),
        Op.DEPLOY: lambda: c.post(
            url("/v0/deployments", v, check="true"),
            content=json.dumps({"datasources/events.datasource": DATAFILE}).encode(),
        ),
        Op.READ_AUDIT: lambda: c.get(url("/v0/audit", v)),
        Op.VERIFY: lambda: c.get(url("/v0/audit/verify", v)),
        Op.WORKSPACES: lambda: c.get(url("/v1/user/workspaces", v)),
        Op.INVESTIGATE: lambda: c.get(url("/v0/tokens/admin%20token/exposure", v)),
        Op.REVOKE: lambda: c.post(url("/v0/tokens/revoke", v, resource="nothing_here", reason=f"walk {n}")),
        Op.CONFIGURE: lambda: c.put(url("/v0/workspace/settings", v, max_token_lifetime="none")),
    }
    return calls[op]()


def create_request(s: Seat, target: Target) -> httpx.Response:
    s.counter[0] += 1
    scope = "ADMIN" if target is Target.PRIVILEGED else "PIPES:READ:top"
    return s.client.post(url("/v0/tokens", s.value, name=f"made {s.counter[0]}", scope=scope))


@pytest.mark.parametrize("role", [r for r in Role if r is not Role.SYSTEM], ids=lambda r: r.name.lower())
def test_every_cell_of_the_policy_table_holds_over_http(client, service, role) -> None:
    s = seat(service, client, role)
    checked = 0
    for op, targets in RULES.items():
        if op is Op.DEPLOY:
            targets = {Target.NONE: targets[Target.NONE]}  # per-token rules: tests/test_deployments.py
        for target, allowed_roles in targets.items():
            allowed = role in allowed_roles
            token_id = None
            if target is not Target.NONE and op is not Op.CREATE:
                token_id = s.target(target)
                if token_id is None:
                    continue  # e.g. a JWT has no token of its own
            before = head(service)
            response = create_request(s, target) if op is Op.CREATE else request(s, op, token_id)
            cell = f"{role.value} / {op.value} / {target.value}: {response.status_code} {response.text[:200]}"
            if role is Role.USER and token_id is not None and target is not Target.SELF:
                # The user token's realm is its user, not the workspace: it reaches none of its
                # tokens (403 before any look-up, or 404), and the table allows it none either.
                assert response.status_code in (403, 404) and not allowed, cell
            elif op is Op.INTROSPECT:
                assert response.status_code == 200 and response.json()["valid"] is True, cell
            elif op is Op.SEE_VALUE:
                shown = response.status_code == 200 and "token" in response.json()
                assert shown == allowed, cell
                if not shown:
                    assert response.status_code in (200, 403), cell
            else:
                assert (response.status_code == 200) == allowed, cell
                if not allowed:
                    assert response.status_code == 403 and response.json()["error"], cell
            if not allowed:
                assert head(service) == before, f"a refusal wrote: {cell}"
            checked += 1
    assert checked >= 30


def test_the_table_in_the_docs_is_the_table_in_the_code() -> None:
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "security.md").read_text()
    assert markdown() in docs, "docs/security.md is stale: paste `python -m tokentrail.domain.policy` into it"


# -- the same table, through the web console ----------------------------------------------------

CONSOLE_OPS = (
    Op.LIST,
    Op.READ,
    Op.SEE_VALUE,
    Op.CREATE,
    Op.UPDATE,
    Op.REFRESH,
    Op.DELETE,
    Op.READ_AUDIT,
    Op.VERIFY,
    Op.INVESTIGATE,
    Op.REVOKE,
)


def console_request(s: Seat, browser: Any, op: Op, target: Target, token_id: str | None) -> tuple[bool, int]:
    """Do `op` through the console as a browser would; (did it happen, status)."""
    s.counter[0] += 1
    n = s.counter[0]
    if op is Op.LIST:
        page = browser.get("/ui/tokens")
        return s.realm.id_of("create datasource token") in page.text, page.status_code
    if op is Op.READ:
        page = browser.get(f"/ui/tokens/{token_id}")
        return page.status_code == 200, page.status_code
    if op is Op.SEE_VALUE:
        page = browser.get(f"/ui/tokens/{token_id}")
        return page.status_code == 200 and s.value_of(token_id or "") in page.text, page.status_code
    if op is Op.CREATE:
        scope = "ADMIN" if target is Target.PRIVILEGED else "PIPES:CREATE"
        answer = browser.post("/ui/tokens/new", {"name": f"console {n}", "scope": scope})
    elif op is Op.UPDATE:
        answer = browser.post(f"/ui/tokens/{token_id}/rename", {"name": f"console renamed {n}"})
    elif op is Op.REFRESH:
        answer = browser.post(f"/ui/tokens/{token_id}/refresh", {"grace_seconds": ""})
    elif op is Op.DELETE:
        answer = browser.post(f"/ui/tokens/{token_id}/delete", {})
    elif op is Op.READ_AUDIT:
        page = browser.get("/ui/audit")
        return page.status_code == 200, page.status_code
    elif op is Op.INVESTIGATE:
        value = s.value_of(s.realm.id_of("create datasource token"))
        page = browser.post("/ui/incident/lookup", {"token": value})
        return 'data-testid="lookup-result"' in page.text, page.status_code
    elif op is Op.REVOKE:  # a confirmed revocation whose selectors match nothing: it deletes no token
        page = browser.post(
            "/ui/incident/revoke", {"created_by": f"nobody {n}", "reason": "drill", "action": "confirm"}
        )
        return "Nothing was revoked" in page.text, page.status_code
    else:
        page = browser.get("/ui/audit/verify")
        return page.status_code == 200, page.status_code
    return answer.status_code == 303, answer.status_code


@pytest.mark.parametrize("role", [r for r in Role if r not in (Role.SYSTEM, Role.USER)], ids=lambda r: r.name.lower())
def test_every_cell_of_the_policy_table_holds_in_the_console(client, service, role) -> None:
    from tests.test_ui import Console

    s = seat(service, client, role)
    browser = Console(client)
    signed_in = browser.sign_in(s.value)
    if role is Role.GRACE:  # a value in its grace window opens no console session
        assert signed_in.status_code == 403
        return
    assert signed_in.status_code == 303, signed_in.text[:300]
    checked = 0
    for op in CONSOLE_OPS:
        for target, allowed_roles in RULES[op].items():
            allowed = role in allowed_roles
            token_id = None
            if target is not Target.NONE and op is not Op.CREATE:
                token_id = s.target(target)
                if token_id is None or (op in (Op.REFRESH, Op.DELETE) and token_id == s.token_id):
                    continue  # signing itself out is the console's own test (tests/test_ui.py)
            before = head(service)
            done, status = console_request(s, browser, op, target, token_id)
            cell = f"console: {role.value} / {op.value} / {target.value}: {status}"
            assert done == allowed, cell
            assert status < 500, cell
            if not allowed:
                assert head(service) == before, f"a refusal wrote: {cell}"
            checked += 1
    assert checked >= 20
