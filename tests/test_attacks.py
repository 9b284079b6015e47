"""Attacks: OWASP API Security Top 10 #1 (object level authorization), #2 (broken
authentication), #3 (object property level authorization: mass assignment, excessive exposure) and
#5 (function level authorization: privilege escalation), plus oversized and malformed input, on
real SQLite and PostgreSQL. Every refusal is checked to have written nothing: the event log's
last notification id is the same before and after.

tests/test_api.py already covers GET/PUT/DELETE/refresh of another workspace's token and a first
set of forged JWTs; this file covers the compliance, deployment and console routes, the token
lifecycle (deleted, refreshed out, expired), tampered values, more JWT forgeries, escalation,
mass assignment and hostile sizes and encodings. The scan for token values in the database files,
logs and exports is in tests/test_value_scan.py.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from tests.helpers import FakeClock
from tests.test_api import (
    JWT_SCOPES,
    Realm,
    assert_error,
    authenticates,
    create,
    create_jwt,
    head,
    names,
    path_of,
    url,
)
from tests.test_ui import CSRF, Console
from tokentrail.api.app import create_app
from tokentrail.domain.values import b64url
from tokentrail.service import Service

ROOT = Path(__file__).resolve().parents[1]


def _json_error(response: Any, status: int | tuple[int, ...]) -> None:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers["content-type"]
    assert response.json()["error"].strip()


def _deploy(client: TestClient, token: str, files: dict[str, str], **params: Any) -> Any:
    return client.post(url("/v0/deployments", token, **params), json=files)


def _signed_in(service: Service, value: str) -> Console:
    browser = Console(TestClient(create_app(service), raise_server_exceptions=False))
    assert browser.sign_in(value).status_code == 303
    return browser


# -- API1: object level authorization ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["id", "name", "value"])
def test_another_workspaces_token_has_no_history_and_no_past(client, service, ws, other, how) -> None:
    secret = other.tokens["secret"]
    ref = path_of({"id": secret["id"], "name": "secret", "value": secret["token"]}[how])
    before = head(service)
    assert_error(client.get(url(f"/v0/tokens/{ref}/history", ws.admin)), 404)
    now = str(int(time.time()) + 1)
    assert_error(client.get(url(f"/v0/tokens/{ref}", ws.admin, as_of=now)), 404)
    listed = client.get(url("/v0/tokens", ws.admin, as_of=now)).json()["tokens"]
    assert secret["id"] not in {t["id"] for t in listed}
    assert head(service) == before


def test_the_audit_trail_and_its_exports_hold_only_the_callers_workspace(client, service, ws, other) -> None:
    secret = other.tokens["secret"]
    # The workspace's own events, and its owner's (the owner's user and user token: no workspace's).
    own = {ws.id, client.get(url("/v0/workspace", ws.admin)).json()["user_id"]}
    for params in (
        {},
        {"token_id": secret["id"]},
        {"token_name": "secret"},
        {"actor": other.admin_id},
        {"actor": "admin token"},
        {"resource": "top"},
    ):
        events = client.get(url("/v0/audit", ws.admin, limit=1000, **params)).json()["events"]
        assert all(e["workspace_id"] in own for e in events), params
        assert secret["id"] not in json.dumps(events)
    for fmt in ("csv", "ndjson"):
        export = client.get(url("/v0/audit", ws.admin, format=fmt))
        assert export.status_code == 200
        assert secret["id"] not in export.text and other.id not in export.text and other.admin_id not in export.text
        assert ws.admin_id in export.text  # the export is not simply empty
    history = client.get(url("/v0/tokens/secret/history", other.admin)).json()
    assert history["events"] and all(e["workspace_id"] == other.id for e in history["events"])


def test_access_questions_answer_only_for_the_callers_workspace(client, ws, other) -> None:
    grants = client.get(url("/v0/access", ws.admin, resource="top", kind="pipe")).json()["grants"]
    assert {g["name"] for g in grants} == {"admin token", "admin owner@example.com"}
    assert other.tokens["secret"]["id"] not in {g["token_id"] for g in grants}
    diff = client.get(url("/v0/access/diff", ws.admin, **{"from": "0"})).json()
    assert other.tokens["secret"]["id"] not in json.dumps(diff)
    theirs = client.get(url("/v0/access", other.admin, resource="top", kind="pipe")).json()["grants"]
    assert other.tokens["secret"]["id"] in {g["token_id"] for g in theirs}  # the question itself works


def test_a_deployment_never_touches_another_workspaces_tokens(client, service, ws, other) -> None:
    theirs = _deploy(client, other.admin, {"events.datasource": 'TOKEN "feed" APPEND\n'})
    assert theirs.status_code == 200, theirs.text
    feed = client.get(url("/v0/tokens/feed", other.admin)).json()
    # The same names deployed in our workspace make our own tokens; an empty project deletes only ours.
    mine = _deploy(client, ws.admin, {"events.datasource": 'TOKEN "feed" READ\nTOKEN "secret" READ\n'})
    assert mine.status_code == 200, mine.text
    assert _deploy(client, ws.admin, {"README.md": "nothing"}).status_code == 200
    assert "feed" not in names(client.get(url("/v0/tokens", ws.admin)))
    assert client.get(url("/v0/tokens/feed", other.admin)).json() == feed
    assert client.get(url("/v0/tokens/secret", other.admin)).json() == other.tokens["secret"]
    assert authenticates(client, feed["token"]) and authenticates(client, other.tokens["secret"]["token"])


def test_the_console_never_shows_or_changes_another_workspaces_token(service, ws, other) -> None:
    browser = _signed_in(service, ws.admin)
    secret = other.tokens["secret"]
    before = head(service)
    assert browser.get(f"/ui/tokens/{secret['id']}").status_code == 404
    assert browser.get(f"/ui/tokens/{secret['id']}/delete").status_code == 404
    for action, data in [
        ("", {"scopes": "ADMIN", "action": "save"}),
        ("/rename", {"name": "stolen"}),
        ("/refresh", {"grace_seconds": "0"}),
        ("/delete", {}),
    ]:
        answer = browser.post(f"/ui/tokens/{secret['id']}{action}", data)
        assert answer.status_code == 404, (action, answer.status_code)
    assert head(service) == before
    for page in (
        f"/ui/audit?token_id={secret['id']}",
        "/ui/audit?token_name=secret",
        "/ui/access?resource=top&kind=pipe",
        "/ui/audit/export.csv",
        "/ui/audit/export.ndjson",
        "/ui/tokens",
    ):
        answer = browser.get(page)
        assert answer.status_code == 200, page
        assert secret["id"] not in answer.text and secret["token"] not in answer.text, page
    assert client_of(service).get(url("/v0/tokens/secret", other.admin)).json() == secret


def client_of(service: Service) -> TestClient:
    return TestClient(create_app(service), raise_server_exceptions=False)


# -- API2: broken authentication --------------------------------------------------------------------


def test_a_deleted_token_is_dead_everywhere_at_once(client, service, ws) -> None:
    victim = create(client, ws.admin, "victim", "TOKENS")
    browser = _signed_in(service, victim["token"])
    assert browser.get("/ui/tokens").status_code == 200
    assert client.delete(url("/v0/tokens/victim", ws.admin)).json() == {"ok": True}
    before = head(service)
    assert not authenticates(client, victim["token"])
    for method, path in [
        ("GET", "/v0/tokens"),
        ("POST", "/v0/tokens?name=x&scope=PIPES:READ:p"),
        ("GET", "/v0/audit"),
        ("POST", "/v0/tokens/victim/refresh"),
        ("GET", "/v0/workspace"),
    ]:
        _json_error(client.request(method, path, headers={"Authorization": f"Bearer {victim['token']}"}), 403)
    assert browser.get("/ui/tokens").status_code == 303  # the console session ends with the token
    assert Console(client_of(service)).sign_in(victim["token"]).status_code == 403
    assert head(service) == before


def test_a_refreshed_out_value_works_only_until_its_grace_ends(client, service, ws) -> None:
    clock = FakeClock()
    old = create(client, ws.admin, "rotating", "TOKENS")["token"]
    fresh = client.post(url("/v0/tokens/rotating/refresh", ws.admin, grace_seconds=60)).json()["token"]
    assert authenticates(client, old) and authenticates(client, fresh)
    clock.advance(59)
    assert authenticates(client, old)
    clock.advance(1)
    assert not authenticates(client, old) and authenticates(client, fresh)
    before = head(service)
    _json_error(client.get(url("/v0/tokens", old)), 403)
    _json_error(client.post(url("/v0/tokens/rotating/refresh", old)), 403)  # nor refresh itself back
    assert head(service) == before


def test_a_jwt_expires_to_the_second_and_with_the_admin_value_that_signed_it(client, service, ws) -> None:
    # Both the admin token's grace and `exp` run on the ledger's clock.
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    now = int(clock.now.timestamp())
    claims = {"workspace_id": ws.id, "name": "minted", "scopes": [{"type": "PIPES:READ", "resource": "top"}]}
    assert not authenticates(client, pyjwt.encode({**claims, "exp": now}, ws.admin, algorithm="HS256"))
    live = pyjwt.encode({**claims, "exp": now + 600}, ws.admin, algorithm="HS256")
    issued = create_jwt(client, ws.admin, "issued", JWT_SCOPES).json()["token"]
    assert authenticates(client, live) and authenticates(client, issued)
    assert client.post(url("/v0/tokens/admin%20token/refresh", ws.admin, grace_seconds=30)).status_code == 200
    assert authenticates(client, live) and authenticates(client, issued)  # the previous admin value, in grace
    clock.advance(30)
    before = head(service)
    assert not authenticates(client, live) and not authenticates(client, issued)
    _json_error(client.get(url("/v0/workspace", issued)), 403)
    assert head(service) == before


def _forge(ws: Realm, other: Realm, kind: str) -> str:
    claims = {
        "workspace_id": ws.id,
        "name": "forged",
        "exp": int(time.time()) + 600,
        "scopes": [{"type": "PIPES:READ", "resource": "top"}],
    }
    if kind == "RS256 with a key of ours":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return pyjwt.encode(claims, key, algorithm="RS256")
    if kind == "alg none, empty signature":
        header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        return f"{header}.{b64url(json.dumps(claims).encode())}."
    if kind == "alg None spelled otherwise":
        header = b64url(json.dumps({"alg": "None", "typ": "JWT"}).encode())
        return f"{header}.{b64url(json.dumps(claims).encode())}.x"
    if kind == "HS256 keyed with the admin token's id":
        return pyjwt.encode(claims, ws.admin_id, algorithm="HS256")
    if kind == "HS256 keyed with one byte":
        return pyjwt.encode(claims, "k", algorithm="HS256")
    if kind == "exp that is not a time":
        return pyjwt.encode({**claims, "exp": "never"}, ws.admin, algorithm="HS256")
    if kind == "exp null":
        return pyjwt.encode({**claims, "exp": None}, ws.admin, algorithm="HS256")
    if kind == "exp far in the past":
        return pyjwt.encode({**claims, "exp": 1}, ws.admin, algorithm="HS256")
    if kind == "another workspace named, our key":
        return pyjwt.encode({**claims, "workspace_id": other.id}, ws.admin, algorithm="HS256")
    if kind == "our workspace named, their key":
        return pyjwt.encode(claims, other.admin, algorithm="HS256")
    if kind == "signature of another jwt":
        mine = pyjwt.encode(claims, ws.admin, algorithm="HS256")
        evil = pyjwt.encode({**claims, "scopes": [{"type": "ADMIN"}], "name": "evil"}, "k" * 32, algorithm="HS256")
        return ".".join(evil.split(".")[:2] + mine.split(".")[2:])
    if kind == "jku and kid headers pointing elsewhere":
        return pyjwt.encode(
            claims, "k" * 32, algorithm="HS256", headers={"kid": "../../etc/passwd", "jku": "http://evil.example/jwks"}
        )
    if kind == "a user token's value as key":
        return pyjwt.encode(claims, ws.user, algorithm="HS256")
    raise AssertionError(kind)


FORGERIES = [
    "RS256 with a key of ours",
    "alg none, empty signature",
    "alg None spelled otherwise",
    "HS256 keyed with the admin token's id",
    "HS256 keyed with one byte",
    "exp that is not a time",
    "exp null",
    "exp far in the past",
    "another workspace named, our key",
    "our workspace named, their key",
    "signature of another jwt",
    "jku and kid headers pointing elsewhere",
    "a user token's value as key",
]


def test_forged_jwts_are_refused_everywhere(client, service, ws, other) -> None:
    before = head(service)
    for kind in FORGERIES:
        value = _forge(ws, other, kind)
        assert not authenticates(client, value), kind
        for method, path in [
            ("GET", "/v0/workspace"),
            ("GET", "/v0/tokens/forged"),
            ("GET", "/v0/audit"),
            ("POST", "/v0/tokens?name=x&scope=ADMIN"),
        ]:
            _json_error(client.request(method, path, headers={"Authorization": f"Bearer {value}"}), 403)
        assert Console(client_of(service)).sign_in(value).status_code == 403, kind
    assert head(service) == before


def test_a_jwt_claiming_admin_scopes_gets_none_of_them(client, service, ws) -> None:
    """Whoever holds the admin value mints JWTs (Tinybird's contract), but a JWT only ever reads."""
    claims = {
        "workspace_id": ws.id,
        "name": "greedy",
        "exp": int(time.time()) + 600,
        "scopes": [
            {"type": "ADMIN"},
            {"type": "TOKENS"},
            {"type": "DATASOURCES:APPEND", "resource": "e"},
            {"type": "PIPES:READ", "resource": "top"},
        ],
    }
    value = pyjwt.encode(claims, ws.admin, algorithm="HS256")
    auth = client.get(url("/v0/auth", value, permission="ADMIN")).json()
    assert auth["valid"] and auth["allowed"] is False
    assert client.get(url("/v0/auth", value, permission="DATASOURCES:APPEND:e")).json()["allowed"] is False
    before = head(service)
    for method, path in [
        ("GET", "/v0/tokens"),
        ("POST", "/v0/tokens?name=x&scope=PIPES:READ:p"),
        ("GET", "/v0/audit"),
        ("GET", "/v0/access?resource=top"),
        ("GET", "/v0/audit/verify"),
        ("GET", "/v0/audit/checkpoint"),
        ("DELETE", "/v0/tokens/create%20datasource%20token"),
    ]:
        _json_error(client.request(method, path, headers={"Authorization": f"Bearer {value}"}), 403)
    _json_error(_deploy(client, value, {"e.datasource": "TOKEN t READ\n"}), 403)
    assert head(service) == before


def _tamper(ws: Realm, other: Realm, kind: str) -> str:
    value = ws.tokens["create datasource token"]["token"]
    _, payload, signature = value.split(".")
    claims = json.loads(base64url_decode(payload))
    if kind == "payload names the admin token":
        forged = b64url(json.dumps({**claims, "id": ws.admin_id}, separators=(",", ":")).encode())
        return f"p.{forged}.{signature}"
    if kind == "payload names another workspace":
        forged = b64url(json.dumps({**claims, "u": other.id}, separators=(",", ":")).encode())
        return f"p.{forged}.{signature}"
    if kind == "signature of another value":
        return f"p.{payload}.{other.admin.split('.')[2]}"
    if kind == "signature truncated":
        return f"p.{payload}.{signature[:-2]}"
    if kind == "signature empty":
        return f"p.{payload}."
    if kind == "signed with another key":
        from tokentrail.domain.values import TokenSigner

        return TokenSigner(b"not-the-server-key-0123456789abcdef").make(ws.id, ws.admin_id, claims["g"])
    if kind == "old generation re-signed cannot be made":
        return f"p.{b64url(json.dumps({**claims, 'g': 'x'}).encode())}.{signature}"
    if kind == "four parts":
        return f"{value}.x"
    if kind == "padding added":
        return f"p.{payload}==.{signature}"
    raise AssertionError(kind)


def base64url_decode(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


TAMPERINGS = [
    "payload names the admin token",
    "payload names another workspace",
    "signature of another value",
    "signature truncated",
    "signature empty",
    "signed with another key",
    "old generation re-signed cannot be made",
    "four parts",
    "padding added",
]


def test_tampered_values_are_refused(client, service, ws, other) -> None:
    before = head(service)
    for kind in TAMPERINGS:
        value = _tamper(ws, other, kind)
        assert not authenticates(client, value), kind
        _json_error(client.get(url("/v0/tokens", value)), 403)
        _json_error(client.delete(url("/v0/tokens/create%20datasource%20token", value)), 403)
        # As a ref, a tampered value designates nothing.
        _json_error(client.get(url(f"/v0/tokens/{path_of(value)}", ws.admin)), 404)
    assert head(service) == before


# -- API3: object property level authorization (mass assignment, exposure) -------------------------


def test_create_ignores_fields_the_caller_does_not_own(client, service, ws, other) -> None:
    forced = "00000000-0000-4000-8000-000000000001"
    token = create(
        client,
        ws.admin,
        "massive",
        "PIPES:READ:top",
        id=forced,
        workspace_id=other.id,
        kind="default",
        generation="chosen",
        actor="someone else",
        host="evil.example",
        deleted="true",
        created_at="0",
        position="1",
    )
    assert token["id"] != forced and token["host"] is None
    row = service.queries.token(token["id"])
    assert row.workspace_id == ws.id and row.kind == "custom" and row.generation != "chosen"
    assert "massive" not in names(client.get(url("/v0/tokens", other.admin)))
    history = client.get(url("/v0/tokens/massive/history", ws.admin)).json()["events"]
    assert history[0]["actor"] == {"token_id": ws.admin_id, "name": "admin token"}
    assert client.delete(url("/v0/tokens/massive", ws.admin)).json() == {"ok": True}  # not made a default token


def test_put_ignores_fields_the_caller_does_not_own(client, service, ws, other) -> None:
    token = create(client, ws.admin, "edited", "PIPES:READ:top")
    response = client.put(
        url(
            "/v0/tokens/edited",
            ws.admin,
            description="d",
            id=other.admin_id,
            workspace_id=other.id,
            kind="default",
            origin="DS",
            resource_id="x",
        )
    )
    assert response.status_code == 200, response.text
    assert response.json()["id"] == token["id"] and response.json()["origin"] == {"type": "C"}
    assert service.queries.token(token["id"]).workspace_id == ws.id
    assert client.get(url("/v0/tokens/secret", other.admin)).json() == other.tokens["secret"]


def test_a_jwt_body_cannot_choose_its_workspace_id_or_exp(client, service, ws, other) -> None:
    expires = int(time.time()) + 600
    body = {
        "scopes": JWT_SCOPES,
        "workspace_id": other.id,
        "exp": expires + 10**6,
        "jti": other.admin_id,
        "name": "other",
        "admin": True,
    }
    response = client.post(url("/v0/tokens", ws.admin, name="j", expiration_time=expires), content=json.dumps(body))
    assert response.status_code == 200, response.text
    claims = pyjwt.decode(response.json()["token"], ws.admin, algorithms=["HS256"])
    assert claims["workspace_id"] == ws.id and claims["exp"] == expires and claims["name"] == "j"
    assert claims["jti"] != other.admin_id
    before = head(service)
    extra_in_scope = {"scopes": [{**JWT_SCOPES[0], "workspace_id": other.id}]}
    _json_error(
        client.post(
            url("/v0/tokens", ws.admin, name="j2", expiration_time=expires), content=json.dumps(extra_in_scope)
        ),
        400,
    )
    assert head(service) == before


def test_a_tokens_caller_never_sees_a_privileged_value(client, ws) -> None:
    manager = create(client, ws.admin, "manager", "TOKENS")["token"]
    for token in client.get(url("/v0/tokens", manager)).json()["tokens"]:
        if token["name"] in ("admin token", "admin owner@example.com"):
            assert "token" not in token
    answer = client.get(url("/v0/tokens/admin%20token", manager))
    assert answer.status_code == 200 and "token" not in answer.json()
    assert ws.admin not in client.get(url("/v0/audit", manager, format="ndjson")).text


# -- API5: function level authorization (privilege escalation) --------------------------------------


ESCALATIONS = [
    ("mint ADMIN", "POST", "/v0/tokens?name=x&scope=ADMIN", None, 403),
    ("mint ADMIN among others", "POST", "/v0/tokens?name=x&scope=PIPES:READ:p&scope=ADMIN", None, 403),
    ("mint ADMIN_USER", "POST", "/v0/tokens?name=x&scope=ADMIN_USER:owner@example.com", None, (400, 403)),
    ("mint AUTH", "POST", "/v0/tokens?name=x&scope=AUTH", None, (400, 403)),
    ("give itself ADMIN", "PUT", "/v0/tokens/manager?scope=ADMIN", None, 403),
    ("give itself ADMIN in a form body", "PUT", "/v0/tokens/manager", b"scope=TOKENS&scope=ADMIN", 403),
    ("give another token ADMIN", "PUT", "/v0/tokens/plain?scope=ADMIN", None, 403),
    ("give another token AUTH", "PUT", "/v0/tokens/plain?scope=AUTH", None, (400, 403)),
    ("rename the admin token", "PUT", "/v0/tokens/admin%20token?name=mine", None, 403),
    ("strip the admin token", "PUT", "/v0/tokens/admin%20token?scope=PIPES:READ:p", None, 403),
    ("refresh the admin token", "POST", "/v0/tokens/admin%20token/refresh", None, 403),
    ("refresh the owner's ADMIN_USER token", "POST", "/v0/tokens/admin%20owner%40example.com/refresh", None, 403),
    ("delete the admin token", "DELETE", "/v0/tokens/admin%20token", None, 403),
    (
        "a JWT with ADMIN",
        "POST",
        "/v0/tokens?name=j&expiration_time={exp}",
        b'{"scopes":[{"type":"ADMIN","resource":"x"}]}',
        400,
    ),
    (
        "a JWT with TOKENS",
        "POST",
        "/v0/tokens?name=j&expiration_time={exp}",
        b'{"scopes":[{"type":"TOKENS","resource":"x"}]}',
        400,
    ),
    ("a deployment granting ADMIN", "POST", "/v0/deployments", b'{"e.datasource": "TOKEN t ADMIN\\n"}', 400),
    ("a deployment granting DROP", "POST", "/v0/deployments", b'{"e.datasource": "TOKEN t DROP\\n"}', 400),
    (
        "a deployment renaming onto the admin token",
        "POST",
        "/v0/deployments",
        b'{"e.datasource": "TOKEN \\"admin token\\" READ\\n"}',
        (400, 403, 409),
    ),
    ("verify the chain", "GET", "/v0/audit/verify", None, 403),
    ("sign a checkpoint", "GET", "/v0/audit/checkpoint", None, 403),
    ("create a workspace", "POST", "/v1/workspaces?name=mine", None, 403),
    ("list the user's workspaces", "GET", "/v1/user/workspaces", None, 403),
]


def test_a_tokens_caller_cannot_escalate(client, service, ws) -> None:
    manager = create(client, ws.admin, "manager", "TOKENS")["token"]
    create(client, ws.admin, "plain", "PIPES:READ:top")
    before = head(service)
    for label, method, path, body, status in ESCALATIONS:
        path = path.format(exp=int(time.time()) + 600)
        response = client.request(method, path, content=body, headers={"Authorization": f"Bearer {manager}"})
        _json_error(response, status)
        assert head(service) == before, label
    mine = client.get(url("/v0/tokens/manager", manager)).json()
    assert [s["type"] for s in mine["scopes"]] == ["TOKENS"]
    assert authenticates(client, ws.admin)


READ_TOKEN_REFUSALS = [
    ("GET", "/v0/tokens"),
    ("POST", "/v0/tokens?name=x&scope=PIPES:READ:p"),
    ("PUT", "/v0/tokens/plain?scope=PIPES:READ:q"),
    ("DELETE", "/v0/tokens/plain"),
    ("POST", "/v0/tokens/plain/refresh"),
    ("GET", "/v0/tokens/plain/history"),
    ("GET", "/v0/audit"),
    ("GET", "/v0/audit?format=csv"),
    ("GET", "/v0/access?resource=top"),
    ("GET", "/v0/access/diff?from=0"),
    ("GET", "/v0/audit/verify"),
    ("GET", "/v0/audit/checkpoint"),
    ("POST", "/v0/deployments"),
]


def test_a_read_token_reaches_no_management_or_compliance_route(client, service, ws) -> None:
    reader = create(client, ws.admin, "reader", "DATASOURCES:READ:events", "PIPES:READ:top")["token"]
    create(client, ws.admin, "plain", "PIPES:READ:top")
    before = head(service)
    for method, path in READ_TOKEN_REFUSALS:
        body = b'{"e.datasource": "TOKEN t READ\\n"}' if "deployments" in path else None
        _json_error(client.request(method, path, content=body, headers={"Authorization": f"Bearer {reader}"}), 403)
    assert head(service) == before


def test_a_read_token_sees_no_console_page_but_its_own(service, ws) -> None:
    client = client_of(service)
    reader = create(client, ws.admin, "reader", "PIPES:READ:top")
    browser = _signed_in(service, reader["token"])
    before = head(service)
    for page in (
        "/ui/audit",
        "/ui/audit/export.csv",
        "/ui/access?resource=top",
        "/ui/audit/verify",
        f"/ui/tokens/{ws.admin_id}",
        "/ui/tokens/new",
    ):
        assert browser.get(page).status_code in (403, 404), page
    assert browser.post(
        "/ui/tokens/new", {"name": "x", "scopes": "ADMIN", "action": "save"}, csrf_from="/ui/tokens"
    ).status_code in (403, 404)
    assert head(service) == before


# -- oversized and malformed input ------------------------------------------------------------------

HUGE_NAME = "n" * 10_000
MANY_SCOPES = "&".join(f"scope=PIPES:READ:p{i}" for i in range(10_000))
SOME_SCOPES = "&".join(f"scope=PIPES:READ:p{i}" for i in range(1_500))  # what fits in a URL
DEEP = b"[" * 200_000 + b"]" * 200_000


MALFORMED = [
    ("10k-character name", "POST", f"/v0/tokens?name={HUGE_NAME}&scope=PIPES:READ:p", None, {}, 400),
    ("10k-character rename", "PUT", f"/v0/tokens/plain?name={HUGE_NAME}", None, {}, 400),
    ("10k-character ref", "DELETE", f"/v0/tokens/{HUGE_NAME}", None, {}, 404),
    ("10k-character history ref", "GET", f"/v0/tokens/{HUGE_NAME}/history", None, {}, 404),
    ("1,500 scopes in the query", "POST", f"/v0/tokens?name=t&{SOME_SCOPES}", None, {}, 400),
    ("10k scopes in a form body on create", "POST", "/v0/tokens?name=t", MANY_SCOPES.encode(), {}, 400),
    ("10k scopes in a form body", "PUT", "/v0/tokens/plain", MANY_SCOPES.encode(), {}, 400),
    (
        "10k scopes in a JWT",
        "POST",
        "/v0/tokens?name=j&expiration_time={exp}",
        json.dumps({"scopes": [{"type": "PIPES:READ", "resource": f"p{i}"} for i in range(10_000)]}).encode(),
        {},
        400,
    ),
    ("deep JSON JWT body", "POST", "/v0/tokens?name=j&expiration_time={exp}", DEEP, {}, 400),
    ("deep JSON deployment", "POST", "/v0/deployments", DEEP, {}, 400),
    ("deep JSON object deployment", "POST", "/v0/deployments", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, {}, 400),
    ("9 MB deployment", "POST", "/v0/deployments", b'{"e.datasource": "' + b"x" * 9_000_000 + b'"}', {}, 413),
    ("lying content-length", "POST", "/v0/tokens?name=t&scope=PIPES:READ:p", b"", {"content-length": "-1"}, (400, 413)),
    ("NUL in a history ref", "GET", "/v0/tokens/a%00b/history", None, {}, 404),
    ("NUL in an as_of ref", "GET", "/v0/tokens/a%00b?as_of=1", None, {}, 404),
    ("NUL in an audit filter", "GET", "/v0/audit?token_name=a%00b", None, {}, 400),
    ("NUL in an access resource", "GET", "/v0/access?resource=a%00b", None, {}, 400),
    (
        "NUL in a deployment file",
        "POST",
        "/v0/deployments",
        b'{"e.datasource": "TOKEN \\"a\\u0000b\\" READ\\n"}',
        {},
        400,
    ),
    ("NUL in a deployment path", "POST", "/v0/deployments", b'{"e\\u0000.datasource": "TOKEN t READ\\n"}', {}, 400),
    (
        "lone surrogate in a deployment",
        "POST",
        "/v0/deployments",
        b'{"e.datasource": "TOKEN \\"\\ud800\\" READ\\n"}',
        {},
        400,
    ),
    ("non-UTF-8 deployment JSON", "POST", "/v0/deployments", b'{"e.datasource": "TOKEN \xff READ"}', {}, 400),
    (
        "non-UTF-8 multipart file",
        "POST",
        "/v0/deployments",
        b'--B\r\nContent-Disposition: form-data; name="e.datasource"; filename="e.datasource"\r\n\r\nTOKEN \xff READ\r\n--B--\r\n',
        {"content-type": "multipart/form-data; boundary=B"},
        400,
    ),
    ("non-UTF-8 JWT body", "POST", "/v0/tokens?name=j&expiration_time={exp}", b'{"scopes": "\xff"}', {}, 400),
    ("JSON array deployment", "POST", "/v0/deployments", b'["e.datasource"]', {}, 400),
    ("bad cursor", "GET", "/v0/audit?cursor=%%%", None, {}, 400),
    ("huge limit", "GET", "/v0/audit?limit=99999999999999999999", None, {}, 400),
    ("instant out of range", "GET", "/v0/access/diff?from=1e400", None, {}, 400),
    ("NaN instant", "GET", "/v0/tokens?as_of=NaN", None, {}, 400),
    ("bad grace", "POST", "/v0/tokens/plain/refresh?grace_seconds=1e9", None, {}, 400),
    ("huge grace", "POST", "/v0/tokens/plain/refresh?grace_seconds=99999999999", None, {}, 400),
]


def test_oversized_and_malformed_input_is_a_json_4xx_and_writes_nothing(client, service, ws) -> None:
    create(client, ws.admin, "plain", "PIPES:READ:top")
    before = head(service)
    for label, method, path, body, headers, status in MALFORMED:
        path = path.format(exp=int(time.time()) + 600)
        joiner = "&" if "?" in path else "?"
        response = client.request(method, f"{path}{joiner}token={ws.admin}", content=body, headers=headers)
        try:
            _json_error(response, status)
        except AssertionError as error:
            raise AssertionError(f"{label}: {error}") from None
        assert head(service) == before, label
    assert client.get(url("/v0/tokens/plain", ws.admin)).json()["scopes"] == [
        {"type": "PIPES:READ", "resource": "top", "filter": ""}
    ]


def test_the_console_refuses_hostile_forms_without_writing(service, ws) -> None:
    browser = _signed_in(service, ws.admin)
    before = head(service)
    for data in (
        {"name": HUGE_NAME, "scopes": "PIPES:READ:p", "action": "save"},
        {"name": "a\x00b", "scopes": "PIPES:READ:p", "action": "save"},
        {"name": "t", "scopes": "\n".join(f"PIPES:READ:p{i}" for i in range(10_000)), "action": "save"},
        {"name": "t", "scopes": "ADMIN_USER:x", "action": "save"},
    ):
        answer = browser.post("/ui/tokens/new", data, csrf_from="/ui/tokens/new")
        assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:200])
    forged = browser.client.post(
        "/ui/tokens/new", data={"csrf": "forged", "name": "t", "scopes": "PIPES:READ:p"}, follow_redirects=False
    )
    assert forged.status_code == 403
    cross_site = browser.post(
        "/ui/tokens/new",
        {"name": "t", "scopes": "PIPES:READ:p", "action": "save"},
        csrf_from="/ui/tokens/new",
        headers={"origin": "http://evil.example"},
    )
    assert cross_site.status_code == 403
    assert head(service) == before
    assert browser.get(f"/ui/tokens/{quote('a%00b')}").status_code == 404


# -- constant-time comparison of secrets ----------------------------------------------------------

SECRET_WORDS = re.compile(r"sig|secret|csrf|digest|hmac|mac\b|password|_sign\(|key|nonce|tag", re.I)
SOURCES = sorted(
    [
        *ROOT.glob("domain/*.py"),
        *ROOT.glob("projections/*.py"),
        *ROOT.glob("api/*.py"),
        *ROOT.glob("api/routes/*.py"),
        *ROOT.glob("api/ui/*.py"),
        *ROOT.glob("api/cli/*.py"),
        *(p for p in ROOT.glob("tokentrail/*.py") if not p.is_symlink()),
        *ROOT.glob("tokentrail/storage/*.py"),
    ]
)


def _secret_equalities(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
            sides = [node.left, *node.comparators]
            if any(SECRET_WORDS.search(ast.unparse(side)) for side in sides):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return found


# Equalities the scan flags whose operands are not secrets (reviewed): ids, names, metadata.
NOT_SECRETS = re.compile(
    r"key_id|\.key\b|\bkey ==|== key\b|kind|resource|token_id|keys\(\)|'key'|\"key\"|sort_key|\.key\(\)|"
    r"primary_key|_keys|key\[|_key\(|checkpoint\.get\('key_id'\)|backend|signed_in|in_block|sign_in|design|staged",
    re.I,
)


def test_secret_checks_are_constant_time_by_inspection() -> None:
    """No `==`/`!=` on a signature, MAC, CSRF token or secret anywhere in the product code; the three
    places that check secrets call hmac.compare_digest (or a library that does)."""
    suspicious = [line for path in SOURCES for line in _secret_equalities(path) if not NOT_SECRETS.search(line)]
    assert not suspicious, "non-constant-time comparisons of secrets:\n" + "\n".join(suspicious)

    from tokentrail.api.ui import session
    from tokentrail.domain import values

    assert "hmac.compare_digest(self._sign(encoded), signature)" in inspect.getsource(values.TokenSigner.read)
    assert "hmac.compare_digest(" in inspect.getsource(session.csrf_matches)
    # JWT signatures are checked by PyJWT, whose HMAC verification is compare_digest too.
    from jwt.algorithms import HMACAlgorithm

    assert "compare_digest" in inspect.getsource(HMACAlgorithm.verify)
    # A value's generation is compared only after its HMAC verified: it is no secret by then.
    auth_source = inspect.getsource(__import__("tokentrail.auth", fromlist=["x"]).Authenticator._valid)
    assert auth_source.index("self.signer.read(value)") < auth_source.index("row.accepts(")


def test_the_inspection_would_catch_a_plain_comparison(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def check(signature, expected):\n    return signature == expected\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert _secret_equalities(bad)
    finally:
        ROOT = saved


def test_the_csrf_field_is_random_per_session(service, ws) -> None:
    first, second = _signed_in(service, ws.admin), _signed_in(service, ws.admin)
    a = CSRF.search(first.client.get("/ui/tokens").text).group(1)
    b = CSRF.search(second.client.get("/ui/tokens").text).group(1)
    assert a != b and len(a) >= 32
