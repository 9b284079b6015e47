"""The console's server-side sessions and trusted proxies (security issue, items 3 and 7), on
SQLite and PostgreSQL.

A session ends at sign-out (a replayed cookie signs nobody in), when the token it was opened with
is refreshed (grace or not) or deleted, after the idle timeout and at the absolute lifetime; every
server on the database agrees. Forwarded headers count only from TOKENTRAIL_TRUSTED_PROXIES.
Only the owner's own `admin <email>` session sees the user token or that admin token's value.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from starlette.requests import Request

from tests.conftest import TEST_SECRET
from tests.helpers import FakeClock
from tests.test_api import create_jwt, url
from tests.test_ui import Console
from tokentrail.api.app import create_app
from tokentrail.api.proxies import TrustedProxies, parse_networks
from tokentrail.api.setup import initialise
from tokentrail.api.ui import session as sessions
from tokentrail.api.ui.session_store import SessionSettings
from tokentrail.projections import schema as s
from tokentrail.service import Service


@pytest.fixture
def realm(service: Service) -> dict[str, Any]:
    info = initialise(service, "main", "owner@example.com")
    return {"workspace": info["workspace"], "tokens": {t["name"]: t for t in info["tokens"]}}


def browser(service: Service, base_url: str = "http://testserver", peer: str = "testclient") -> Console:
    return Console(
        TestClient(create_app(service), base_url=base_url, client=(peer, 50000), raise_server_exceptions=False)
    )


def api(service: Service) -> TestClient:
    return TestClient(create_app(service), raise_server_exceptions=False)


def value(realm: dict[str, Any], name: str = "admin token") -> str:
    return realm["tokens"][name]["token"]


def signed_in(service: Service, token: str) -> Console:
    console = browser(service)
    assert console.sign_in(token).status_code == 303
    assert console.get("/ui/tokens").status_code == 200
    return console


def ended(console: Console) -> bool:
    answer = console.get("/ui/tokens")
    return answer.status_code == 303 and answer.headers["location"].startswith("/ui/signin")


def session_rows(service: Service) -> list[dict[str, Any]]:
    with service.read_engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(s.console_sessions)).mappings()]


def create_form(console: Console, name: str, csrf: str) -> Any:
    return console.client.post(
        "/ui/tokens/new", data={"csrf": csrf, "name": name, "scope": "TOKENS"}, follow_redirects=False
    )


# -- ending sessions ---------------------------------------------------------------------------------


def test_a_cookie_replayed_after_sign_out_signs_nobody_in_and_creates_nothing(service, realm) -> None:
    console = signed_in(service, value(realm))
    cookie = console.client.cookies[sessions.COOKIE]
    csrf = console.csrf()
    assert console.post("/ui/signout").status_code == 303
    assert session_rows(service) == []

    replay = browser(service)
    replay.client.cookies.set(sessions.COOKIE, cookie, path="/ui")
    assert ended(replay)
    before = service.ledger.recorder.max_notification_id()
    answer = create_form(replay, "after sign-out", csrf)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/signin")
    assert service.ledger.recorder.max_notification_id() == before
    assert service.queries.token_by_name(realm["workspace"]["id"], "after sign-out") is None
    # and the sign-in page does not take the replayed cookie as a live session either
    assert replay.get("/ui/signin").status_code == 200


def test_a_session_is_stored_only_as_hashes(service, realm) -> None:
    console = signed_in(service, value(realm))
    [row] = session_rows(service)
    assert row["token_id"] == realm["tokens"]["admin token"]["id"]
    stored = " ".join(str(v) for v in row.values())
    admin = value(realm)
    for secret in (admin, *admin.split(".")):
        assert secret not in stored
    generation = service.queries.token(row["token_id"]).generation
    assert generation not in stored and row["generation_hash"] == hashlib.sha256(generation.encode()).hexdigest()
    sid = sessions.SessionCodec(TEST_SECRET.encode()).load(console.client.cookies[sessions.COOKIE])
    # (the codec's key is derived from the server key, which the test environment sets)
    assert sid is not None and sid.sid and sid.sid not in stored
    assert row["id_hash"] == hashlib.sha256(sid.sid.encode()).hexdigest()


@pytest.mark.parametrize("grace", [0, 300])
def test_refreshing_the_signing_token_elsewhere_voids_the_session(service, realm, grace) -> None:
    custom = api(service).post(url("/v0/tokens", value(realm), name="helper", scope="TOKENS")).json()
    console = signed_in(service, custom["token"])
    answer = api(service).post(url(f"/v0/tokens/{custom['id']}/refresh", value(realm), grace_seconds=grace))
    assert answer.status_code == 200, answer.text
    assert ended(console)
    # a value still inside its grace window authenticates the API, but opens no console session
    assert browser(service).sign_in(custom["token"]).status_code == 403
    assert signed_in(service, answer.json()["token"])


def test_deleting_the_signing_token_voids_the_session(service, realm) -> None:
    custom = api(service).post(url("/v0/tokens", value(realm), name="helper", scope="TOKENS")).json()
    console = signed_in(service, custom["token"])
    assert api(service).delete(url(f"/v0/tokens/{custom['id']}", value(realm))).status_code == 200
    assert ended(console)


def test_refreshing_the_workspace_admin_token_voids_a_jwt_session(service, realm) -> None:
    client = api(service)
    jwt = create_jwt(client, value(realm), "reader", [{"type": "PIPES:READ", "resource": "top"}])
    assert jwt.status_code == 200, jwt.text
    console = signed_in(service, jwt.json()["token"])
    admin_id = realm["tokens"]["admin token"]["id"]
    assert client.post(url(f"/v0/tokens/{admin_id}/refresh", value(realm), grace_seconds=600)).status_code == 200
    assert ended(console)


def test_an_idle_session_ends_and_a_busy_one_lives(service, realm) -> None:
    fake = FakeClock(datetime.now(UTC))
    busy, idle = signed_in(service, value(realm)), signed_in(service, value(realm))
    for _ in range(3):
        fake.advance(20 * 60)
        assert busy.get("/ui/tokens").status_code == 200
    assert ended(idle)
    fake.advance(30 * 60 + 1)
    assert ended(busy)


def test_the_idle_timeout_is_configurable(service, realm, tmp_path: Path) -> None:
    environ = {**service.environ, "TOKENTRAIL_SESSION_IDLE_SECONDS": "60"}
    other = Service(service.database.url, data=tmp_path, environ=environ)
    try:
        fake = FakeClock(datetime.now(UTC))
        console = Console(TestClient(create_app(other), raise_server_exceptions=False))
        assert console.sign_in(value(realm)).status_code == 303
        fake.advance(59)
        assert console.get("/ui/tokens").status_code == 200
        fake.advance(61)
        assert ended(console)
    finally:
        other.close()
    with pytest.raises(ValueError):
        SessionSettings.from_environ({"TOKENTRAIL_SESSION_IDLE_SECONDS": "soon"})


def test_sign_out_on_one_server_ends_the_session_on_another(service, realm, tmp_path: Path) -> None:
    """Two apps on one database (as two `serve` processes would be): the record is shared."""
    second = Service(service.database.url, data=tmp_path, environ=service.environ)
    try:
        first = signed_in(service, value(realm))
        there = Console(TestClient(create_app(second), raise_server_exceptions=False))
        there.client.cookies.set(sessions.COOKIE, first.client.cookies[sessions.COOKIE], path="/ui")
        assert there.get("/ui/tokens").status_code == 200
        assert first.post("/ui/signout").status_code == 303
        assert ended(there)
    finally:
        second.close()


# -- trusted proxies ---------------------------------------------------------------------------------


def _new_token_from(console: Console, csrf: str, name: str, headers: dict[str, str]) -> Any:
    return console.client.post(
        "/ui/tokens/new", data={"csrf": csrf, "name": name, "scope": "TOKENS"}, headers=headers, follow_redirects=False
    )


def _proxied_service(service: Service, tmp_path: Path, proxies: str) -> Service:
    return Service(
        service.database.url, data=tmp_path, environ={**service.environ, "TOKENTRAIL_TRUSTED_PROXIES": proxies}
    )


def test_a_forged_forwarded_host_from_an_untrusted_peer_is_refused(service, realm, tmp_path: Path) -> None:
    proxied = _proxied_service(service, tmp_path, "10.0.0.0/8")
    try:
        console = Console(TestClient(create_app(proxied), client=("203.0.113.9", 4000), raise_server_exceptions=False))
        assert console.sign_in(value(realm)).status_code == 303
        headers = {"Origin": "https://evil.example", "X-Forwarded-Host": "evil.example"}
        answer = _new_token_from(console, console.csrf(), "forged", headers)
        assert answer.status_code == 403 and "another site" in answer.text
        assert proxied.queries.token_by_name(realm["workspace"]["id"], "forged") is None
    finally:
        proxied.close()


def test_a_forwarded_host_from_a_trusted_proxy_is_believed(service, realm, tmp_path: Path) -> None:
    proxied = _proxied_service(service, tmp_path, "127.0.0.1, 10.0.0.0/8")
    try:
        console = Console(TestClient(create_app(proxied), client=("10.1.2.3", 4000), raise_server_exceptions=False))
        assert console.sign_in(value(realm)).status_code == 303
        headers = {"Origin": "https://tokens.example.com", "X-Forwarded-Host": "tokens.example.com"}
        answer = _new_token_from(console, console.csrf(), "proxied", headers)
        assert answer.status_code == 303, answer.text[:300]
        proxied.sync()
        assert proxied.queries.token_by_name(realm["workspace"]["id"], "proxied") is not None
    finally:
        proxied.close()


def test_the_cookie_is_secure_behind_a_trusted_https_proxy_only(service, realm, tmp_path: Path) -> None:
    proxied = _proxied_service(service, tmp_path, "10.0.0.1")
    try:
        for peer, secure in (("10.0.0.1", True), ("10.0.0.2", False)):
            console = Console(
                TestClient(create_app(proxied), client=(peer, 4000), headers={"X-Forwarded-Proto": "https"})
            )
            answer = console.get("/ui/signin")  # the sign-in form's cookie, written like every other
            assert ("Secure" in answer.headers["set-cookie"]) is secure, peer
    finally:
        proxied.close()


def _request(peer: str, headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/",
            "headers": raw,
            "client": (peer, 1),
            "scheme": "http",
            "server": ("internal", 80),
            "query_string": b"",
        }
    )


def test_forwarded_for_names_the_client_only_through_trusted_proxies() -> None:
    proxies = TrustedProxies(parse_networks("10.0.0.0/8, ::1"))
    chain = {
        "X-Forwarded-For": "198.51.100.7, 203.0.113.5, 10.0.0.9",
        "Host": "internal",
        "X-Forwarded-Host": "public.example",
    }
    assert proxies.client_address(_request("10.0.0.1", chain)) == "203.0.113.5"
    assert proxies.host(_request("10.0.0.1", chain)) == "public.example"
    assert proxies.client_address(_request("203.0.113.9", chain)) == "203.0.113.9"
    assert proxies.host(_request("203.0.113.9", chain)) == "internal"
    assert TrustedProxies().client_address(_request("10.0.0.1", chain)) == "10.0.0.1"
    assert proxies.client_address(_request("10.0.0.1", {"X-Forwarded-For": "garbage, 10.0.0.9"})) == "10.0.0.1"
    with pytest.raises(ValueError):
        parse_networks("10.0.0.0/8, not-an-address")


# -- the user token and the owner's admin token (item 3) ---------------------------------------------


def test_a_delegated_admin_sees_neither_the_user_token_nor_the_owners_admin_value(service, realm) -> None:
    client = api(service)
    delegated = client.post(url("/v0/tokens", value(realm), name="delegated", scope="ADMIN")).json()
    owner_admin = realm["tokens"]["admin owner@example.com"]
    for token in (value(realm), delegated["token"]):
        console = signed_in(service, token)
        listing = console.get("/ui/tokens").text
        assert "Your user token" not in listing
        assert value(realm, "user token") not in listing and owner_admin["token"] not in listing
        page = console.get(f"/ui/tokens/{owner_admin['id']}").text
        assert owner_admin["token"] not in page
        assert console.get(f"/ui/tokens/{realm['tokens']['user token']['id']}").status_code == 404
    # a refresh through the console does not hand the delegated admin the owner's new value either
    console = signed_in(service, delegated["token"])
    answer = console.post(f"/ui/tokens/{owner_admin['id']}/refresh", {"grace_seconds": ""})
    assert answer.status_code in (303, 403)  # whether a delegated ADMIN may rotate it is the policy's call
    if answer.status_code == 303:
        service.sync()
        row = service.queries.token(owner_admin["id"])
        fresh = service.signer.make(row.workspace_id, row.id, row.generation)
        assert fresh not in console.get(answer.headers["location"]).text
        assert fresh not in console.get("/ui/tokens").text


def test_the_owners_own_admin_session_sees_the_user_token(service, realm) -> None:
    console = signed_in(service, value(realm, "admin owner@example.com"))
    listing = console.get("/ui/tokens").text
    assert "Your user token" in listing and value(realm, "user token") in listing
