"""The web console's server-side rules, through FastAPI's TestClient: sessions and their cookie,
forgery protection, acting with exactly the signed-in token's rights, inline errors, and 4xx (never
5xx) for malformed posts.

The console only calls the same use cases and reads as the JSON API, whose storage behaviour the
ledger and projection tests cover on SQLite and PostgreSQL; these tests run on SQLite.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TEST_SECRET
from tests.helpers import FakeClock
from tokentrail.api.app import create_app
from tokentrail.api.setup import initialise
from tokentrail.api.ui import session as sessions
from tokentrail.domain.clock import format_instant, to_micros
from tokentrail.domain.errors import Unauthenticated
from tokentrail.domain.policy import Caller
from tokentrail.keys import checkpoint_key
from tokentrail.service import Service
from tokentrail.verify import verify_checkpoint

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Console:
    """A browser's view of /ui: cookies kept by the client, forms posted with their CSRF token."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def get(self, path: str, **kwargs: Any):  # noqa: ANN201 - httpx.Response
        return self.client.get(path, follow_redirects=False, **kwargs)

    def csrf(self, path: str = "/ui/tokens") -> str:
        page = self.client.get(path)
        match = CSRF.search(page.text)
        assert match, f"no CSRF field on {path}"
        return match.group(1)

    def sign_in(self, value: str):  # noqa: ANN201
        token = self.csrf("/ui/signin")
        return self.client.post(
            "/ui/signin", data={"csrf": token, "token": value, "next": "/ui/tokens"}, follow_redirects=False
        )

    def post(self, path: str, data: dict[str, Any] | None = None, csrf_from: str = "/ui/tokens", **kwargs: Any):  # noqa: ANN201
        fields = {"csrf": self.csrf(csrf_from), **(data or {})}
        return self.client.post(path, data=fields, follow_redirects=False, **kwargs)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    environ = {"TOKENTRAIL_SECRET_KEY": TEST_SECRET, "TOKENTRAIL_DATA_DIR": str(tmp_path)}
    sys_ = Service(f"sqlite:///{tmp_path / 'ui.db'}", data=tmp_path, environ=environ)
    yield sys_
    sys_.close()


@pytest.fixture
def seeded(service: Service) -> dict[str, Any]:
    """Workspace `main` (its tokens by name) and the admin caller."""
    result = initialise(service, "main", "owner@example.com")
    tokens = {t["name"]: t for t in result["tokens"]}
    admin = service.auth.authenticate(tokens["admin token"]["token"])
    return {"workspace": result["workspace"], "tokens": tokens, "admin": admin}


def new_console(service: Service, base_url: str = "http://testserver") -> Console:
    return Console(TestClient(create_app(service), base_url=base_url))


@pytest.fixture
def console(service: Service, seeded: dict[str, Any]) -> Console:
    browser = new_console(service)
    assert browser.sign_in(seeded["tokens"]["admin token"]["token"]).status_code == 303
    return browser


def create(service: Service, caller: Caller, name: str, scopes: list[str]) -> dict[str, Any]:
    token = service.command(lambda: service.ledger.create_token(caller, name, scopes)).token
    row = service.queries.token(str(token.id))
    assert row is not None
    return {"id": row.id, "value": service.signer.make(row.workspace_id, row.id, row.generation)}


def event_count(service: Service) -> int:
    return service.ledger.recorder.max_notification_id() or 0


# -- signing in and out ------------------------------------------------------------------------


def test_every_page_sends_an_unsigned_browser_to_sign_in(service: Service, seeded: dict[str, Any]) -> None:
    browser = new_console(service)
    for path in (
        "/ui/tokens",
        "/ui/audit?actor=x",
        "/ui/access",
        f"/ui/tokens/{seeded['tokens']['admin token']['id']}",
    ):
        answer = browser.get(path)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/ui/signin?next=%2Fui%2F")


def test_the_session_cookie_is_httponly_strict_scoped_and_encrypted(service: Service, seeded: dict[str, Any]) -> None:
    value = seeded["tokens"]["admin token"]["token"]
    answer = new_console(service).sign_in(value)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/tokens"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{sessions.COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert "Secure" not in cookie  # plain HTTP here; see the HTTPS test
    sealed = cookie.split(";")[0].split("=", 1)[1]
    payload, signature = value.split(".")[1:]
    for part in (value, payload, signature):
        assert part not in sealed
    assert value.encode() not in base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))


def test_over_https_the_cookie_is_secure(service: Service, seeded: dict[str, Any]) -> None:
    answer = new_console(service, "https://testserver").sign_in(seeded["tokens"]["admin token"]["token"])
    assert "Secure" in answer.headers["set-cookie"]


def test_a_tampered_or_foreign_cookie_is_no_session(service: Service, seeded: dict[str, Any], console: Console) -> None:
    sealed = console.client.cookies[sessions.COOKIE]
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    for forged in (flipped, "garbage", base64.urlsafe_b64encode(b"x" * 64).decode()):
        browser = new_console(service)
        browser.client.cookies.set(sessions.COOKIE, forged, path="/ui")
        assert browser.get("/ui/tokens").status_code == 303


def test_a_session_older_than_its_lifetime_is_refused(service: Service, seeded: dict[str, Any]) -> None:
    fake = FakeClock(datetime.now(UTC))
    browser = new_console(service)
    assert browser.sign_in(seeded["tokens"]["admin token"]["token"]).status_code == 303
    for _ in range(12 * 2):  # busy all along: never idle, and yet the lifetime ends it
        fake.advance(1799)
        assert browser.get("/ui/tokens").status_code == 200
    fake.advance(1799)
    answer = browser.get("/ui/tokens")
    assert answer.status_code == 303 and "reason=expired" in answer.headers["location"]


def test_an_invalid_token_is_refused_inline_and_signs_nobody_in(service: Service, seeded: dict[str, Any]) -> None:
    browser = new_console(service)
    answer = browser.sign_in("p.not-a-token.at-all")
    assert answer.status_code == 403
    assert "That token is not valid" in answer.text
    assert browser.get("/ui/tokens").status_code == 303


def test_signing_in_needs_the_sign_in_forms_csrf_token(service: Service, seeded: dict[str, Any]) -> None:
    browser = new_console(service)
    answer = browser.client.post(
        "/ui/signin", data={"token": seeded["tokens"]["admin token"]["token"]}, follow_redirects=False
    )
    assert answer.status_code == 403
    assert browser.get("/ui/tokens").status_code == 303


def test_sign_in_never_redirects_off_site(service: Service, seeded: dict[str, Any]) -> None:
    browser = new_console(service)
    for target in ("//evil.example/x", "https://evil.example/", "/v0/tokens", "/ui\\..\\x"):
        page = browser.client.get("/ui/signin", params={"next": target})
        assert 'name="next" value="/ui/tokens"' in page.text


def test_signing_out_forgets_the_session(console: Console) -> None:
    answer = console.post("/ui/signout")
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/signin?reason=signed_out"
    assert "Max-Age=0" in answer.headers["set-cookie"] or "expires=" in answer.headers["set-cookie"].lower()
    assert console.get("/ui/tokens").status_code == 303


def test_the_token_value_is_never_logged(
    service: Service, seeded: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    value = seeded["tokens"]["admin token"]["token"]
    with caplog.at_level(logging.DEBUG):
        browser = new_console(service)
        browser.sign_in(value)
        browser.get("/ui/tokens")
        browser.sign_in(value + "x")
    assert value not in caplog.text and value.split(".")[2] not in caplog.text


def test_a_session_ends_when_its_token_is_deleted(service: Service, seeded: dict[str, Any]) -> None:
    custom = create(service, seeded["admin"], "short lived", ["TOKENS"])
    browser = new_console(service)
    assert browser.sign_in(custom["value"]).status_code == 303
    assert browser.get("/ui/tokens").status_code == 200
    service.command(lambda: service.ledger.delete_token(seeded["admin"], custom["id"]))
    answer = browser.get("/ui/tokens")
    assert answer.status_code == 303 and "reason=expired" in answer.headers["location"]
    assert sessions.COOKIE in answer.headers.get("set-cookie", "")


def test_refreshing_the_signed_in_token_keeps_the_browser_signed_in(
    service: Service, seeded: dict[str, Any], console: Console
) -> None:
    admin_id = seeded["tokens"]["admin token"]["id"]
    answer = console.post(f"/ui/tokens/{admin_id}/refresh", {"grace_seconds": ""})
    assert answer.status_code == 303
    assert console.get("/ui/tokens").status_code == 200
    old = seeded["tokens"]["admin token"]["token"]
    assert new_console(service).sign_in(old).status_code == 403


# -- forgery protection --------------------------------------------------------------------------


def test_a_post_without_the_sessions_csrf_token_changes_nothing(
    service: Service, seeded: dict[str, Any], console: Console
) -> None:
    before = event_count(service)
    other = new_console(service)
    other.sign_in(seeded["tokens"]["admin token"]["token"])
    for fields in ({}, {"csrf": ""}, {"csrf": "forged"}, {"csrf": other.csrf()}):
        answer = console.client.post(
            "/ui/tokens/new", data={**fields, "name": "x", "scope": "TOKENS"}, follow_redirects=False
        )
        assert answer.status_code == 403
        assert "did not come from this console" in unescape(answer.text)
    assert event_count(service) == before
    assert service.queries.token_by_name(seeded["workspace"]["id"], "x") is None


def test_a_post_from_another_site_is_refused_even_with_a_valid_csrf_token(
    service: Service, seeded: dict[str, Any], console: Console
) -> None:
    before = event_count(service)
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Referer": "http://evil.example/page"}):
        answer = console.post("/ui/tokens/new", {"name": "x", "scope": "TOKENS"}, headers=headers)
        assert answer.status_code == 403 and "another site" in answer.text
    assert event_count(service) == before
    same = console.post("/ui/tokens/new", {"name": "x", "scope": "TOKENS"}, headers={"Origin": "http://testserver"})
    assert same.status_code == 303
    # X-Forwarded-Host counts only from a trusted proxy (none is configured here): see test_ui_sessions.
    forged = console.post(
        "/ui/tokens/new",
        {"name": "y", "scope": "TOKENS"},
        headers={"Origin": "https://evil.example", "X-Forwarded-Host": "evil.example"},
    )
    assert forged.status_code == 403 and "another site" in forged.text
    assert service.queries.token_by_name(seeded["workspace"]["id"], "y") is None


def test_pages_carry_the_security_headers(console: Console) -> None:
    for path in ("/ui/tokens", "/ui/signin", "/ui/tokens/not-a-token"):
        answer = console.client.get(path)
        assert answer.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
        assert answer.headers["x-frame-options"] == "DENY"


# -- the Auth Tokens page --------------------------------------------------------------------------


def test_creating_a_token_records_origin_ui_and_the_request_id(
    service: Service, seeded: dict[str, Any], console: Console
) -> None:
    answer = console.post(
        "/ui/tokens/new",
        {
            "name": "events reader",
            "description": "dashboards",
            "scope": ["PIPES:CREATE"],
            "r0-kind": "datasource",
            "r0-resource": "events",
            "r0-permission": "READ",
            "r0-filter": "country='ES'",
            "r1-kind": "pipe",
            "r1-resource": "top_pages",
            "r1-permission": "READ",
            "r1-filter": "",
            "r2-kind": "datasource",
            "r2-resource": "",
            "r2-permission": "APPEND",
            "r2-filter": "",  # blank: ignored
            "action": "save",
        },
        csrf_from="/ui/tokens/new",
    )
    assert answer.status_code == 303
    token_id = answer.headers["location"].split("/")[3].split("?")[0]
    row = service.queries.token(token_id)
    assert row is not None and row.name == "events reader" and row.description == "dashboards"
    assert row.scopes == ("PIPES:CREATE", "DATASOURCES:READ:events:country = 'ES'", "PIPES:READ:top_pages")
    created = console.client.app.state.service.reads.history.token_history(token_id)[0]
    assert created["origin"] == "ui" and created["request_id"] == answer.headers["x-request-id"]
    assert created["actor"]["name"] == "admin token"
    page = console.client.get(answer.headers["location"])
    assert "Token created." in page.text and "country = &#39;ES&#39;" in page.text


def test_save_replaces_the_scopes_in_one_update(service: Service, seeded: dict[str, Any], console: Console) -> None:
    token = create(service, seeded["admin"], "reader", ["DATASOURCES:READ:events", "TOKENS"])
    answer = console.post(
        f"/ui/tokens/{token['id']}",
        {
            "scope": ["WORKSPACE:READ_ALL"],
            "description": "",
            "r0-kind": "datasource",
            "r0-resource": "events",
            "r0-permission": "READ",
            "r0-filter": "a > 1",
            "action": "save",
        },
        csrf_from=f"/ui/tokens/{token['id']}",
    )
    assert answer.status_code == 303 and answer.headers["location"].endswith("?done=saved")
    assert service.queries.token(token["id"]).scopes == ("WORKSPACE:READ_ALL", "DATASOURCES:READ:events:a > 1")
    events = console.client.app.state.service.reads.history.token_history(token["id"])[1:]
    assert {e["request_id"] for e in events} == {answer.headers["x-request-id"]}
    assert {e["origin"] for e in events} == {"ui"}
    page = console.client.get(f"/ui/tokens/{token['id']}").text
    timeline = page[page.index('data-testid="timeline"') :]
    first_entry = timeline[: timeline.index("</li>\n", timeline.index("entry-body"))]
    assert "removed: </span><del><code>TOKENS</code>" in first_entry
    assert "added: </span><ins><code>WORKSPACE:READ_ALL</code>" in first_entry
    assert answer.headers["x-request-id"] in first_entry
    again = console.post(
        f"/ui/tokens/{token['id']}",
        {
            "scope": ["WORKSPACE:READ_ALL"],
            "description": "",
            "r0-kind": "datasource",
            "r0-resource": "events",
            "r0-permission": "READ",
            "r0-filter": "a > 1",
        },
        csrf_from=f"/ui/tokens/{token['id']}",
    )
    assert again.headers["location"].endswith("?done=unchanged")


def test_adding_and_removing_rows_without_javascript_saves_nothing(
    service: Service, seeded: dict[str, Any], console: Console
) -> None:
    before = event_count(service)
    answer = console.post(
        "/ui/tokens/new",
        {"name": "n", "action": "add-pipe", "r0-kind": "datasource", "r0-resource": "events", "r0-permission": "DROP"},
        csrf_from="/ui/tokens/new",
    )
    assert answer.status_code == 200
    assert 'name="r1-kind" value="pipe"' in answer.text and 'value="events"' in answer.text
    removed = console.post(
        "/ui/tokens/new",
        {"name": "n", "action": "remove-0", "r0-kind": "datasource", "r0-resource": "events"},
        csrf_from="/ui/tokens/new",
    )
    assert removed.status_code == 200 and 'name="r0-kind"' not in removed.text.split("<template")[0]
    assert event_count(service) == before


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        (
            {"name": "admin token", "scope": "TOKENS"},
            400,
            "token name 'admin token' is reserved: it imitates a default token's name "
            "('admin token', 'create datasource token', 'user token', 'admin <email>')",
        ),
        ({"name": "", "scope": "TOKENS"}, 400, "token name is mandatory"),
        ({"name": "empty"}, 400, "scope is mandatory"),
        (
            {"name": "f", "r0-kind": "datasource", "r0-resource": "events", "r0-filter": "1; DROP TABLE x"},
            400,
            "filter",
        ),
        ({"name": "f", "r0-kind": "datasource", "r0-resource": "bad name"}, 400, "Invalid resource name"),
        ({"name": "f", "r0-kind": "pipe", "r0-resource": "", "r0-filter": "a = 1"}, 400, "needs the name of a Pipe"),
        (
            {"name": "f", "r0-kind": "datasource", "r0-resource": "e", "r0-permission": "APPEND", "r0-filter": "a=1"},
            400,
            "Only READ scopes take a SQL filter",
        ),
    ],
)
def test_refusals_are_shown_inline_with_the_apis_message_and_write_nothing(
    service: Service, seeded: dict[str, Any], console: Console, fields: dict[str, str], status: int, message: str
) -> None:
    before = event_count(service)
    answer = console.post("/ui/tokens/new", {**fields, "action": "save"}, csrf_from="/ui/tokens/new")
    assert answer.status_code == status
    error = re.search(r'<div class="error" role="alert"[^>]*>(.*?)</div>', answer.text, re.S)
    assert error and message in unescape(error.group(1))
    assert 'id="editor"' in answer.text  # the form is shown again, with what was typed
    assert event_count(service) == before


def test_rename_shows_a_taken_name_inline(service: Service, seeded: dict[str, Any], console: Console) -> None:
    token = create(service, seeded["admin"], "first", ["TOKENS"])
    create(service, seeded["admin"], "taken", ["PIPES:READ:top"])
    path = f"/ui/tokens/{token['id']}"
    taken = console.post(f"{path}/rename", {"name": "taken"}, csrf_from=path)
    assert taken.status_code == 400
    assert 'Auth token with name "taken" already exists' in unescape(taken.text)
    assert '<details class="rename" open>' in taken.text
    assert console.post(f"{path}/rename", {"name": "second"}, csrf_from=path).status_code == 303
    assert service.queries.token(token["id"]).name == "second"


def test_default_tokens_are_marked_and_can_only_be_refreshed(
    service: Service, seeded: dict[str, Any], console: Console
) -> None:
    listing = console.client.get("/ui/tokens").text
    assert listing.count('class="badge badge-default">default</span>') == 3
    target = seeded["tokens"]["create datasource token"]["id"]
    path = f"/ui/tokens/{target}"
    page = console.client.get(path).text
    assert 'id="editor"' not in page and "/delete" not in page and "Default tokens can be refreshed" in page
    deleted = console.post(f"{path}/delete", csrf_from=path)
    assert deleted.status_code == 403 and "default tokens cannot be deleted" in deleted.text
    renamed = console.post(f"{path}/rename", {"name": "x"}, csrf_from=path)
    assert renamed.status_code == 403 and "default tokens can be refreshed but not changed" in renamed.text
    assert console.post(f"{path}/refresh", {"grace_seconds": "60"}, csrf_from=path).status_code == 303
    refreshed = console.client.app.state.service.reads.history.token_history(target)[-1]
    assert refreshed["type"] == "Refreshed" and refreshed["details"]["grace_seconds"] == 60
    assert not service.queries.token(target).deleted


def test_delete_asks_for_confirmation_first(service: Service, seeded: dict[str, Any], console: Console) -> None:
    token = create(service, seeded["admin"], "doomed", ["TOKENS"])
    path = f"/ui/tokens/{token['id']}/delete"
    confirm = console.client.get(path)
    assert confirm.status_code == 200 and "Delete “doomed”?" in confirm.text
    assert not service.queries.token(token["id"]).deleted  # a GET deletes nothing
    answer = console.post(path, csrf_from=path)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/tokens?done=deleted"
    assert service.queries.token(token["id"]).deleted
    history = console.client.get(f"/ui/tokens/{token['id']}")
    assert history.status_code == 200 and "badge-deleted" in history.text and 'id="editor"' not in history.text


# -- acting with exactly the signed-in token's rights ----------------------------------------------


def test_a_tokens_token_sees_and_does_what_the_api_allows_it(service: Service, seeded: dict[str, Any]) -> None:
    admin = seeded["admin"]
    manager = create(service, admin, "manager", ["TOKENS"])
    reader = create(service, admin, "reader", ["DATASOURCES:READ:events"])
    browser = new_console(service)
    assert browser.sign_in(manager["value"]).status_code == 303
    listing = browser.client.get("/ui/tokens").text
    assert reader["value"] in listing  # a non-admin token's value: shown
    for name in ("admin token", "admin owner@example.com"):
        assert seeded["tokens"][name]["token"] not in listing  # privileged values: hidden
    assert "Your user token" not in listing and seeded["tokens"]["user token"]["token"] not in listing
    admin_id = seeded["tokens"]["admin token"]["id"]
    admin_page = browser.client.get(f"/ui/tokens/{admin_id}").text
    assert 'id="editor"' not in admin_page and "only a token with ADMIN scope can manage" in admin_page
    before = event_count(service)
    for path, fields in (
        (f"/ui/tokens/{admin_id}", {"scope": "TOKENS"}),
        (f"/ui/tokens/{admin_id}/refresh", {}),
        (f"/ui/tokens/{admin_id}/delete", {}),
    ):
        answer = browser.post(path, fields)
        assert answer.status_code == 403 and "only a token with ADMIN scope can manage this token" in answer.text
    escalate = browser.post("/ui/tokens/new", {"name": "root", "scope": "ADMIN"})
    assert escalate.status_code == 403 and "a token without ADMIN scope cannot grant ADMIN" in escalate.text
    assert 'value="ADMIN" disabled' in browser.client.get("/ui/tokens/new").text
    assert event_count(service) == before
    assert browser.get("/ui/audit").status_code == 200 and browser.get("/ui/access").status_code == 200
    for admin_only in ("/ui/audit/verify", "/ui/audit/checkpoint"):
        assert browser.get(admin_only).status_code == 403
    assert browser.post(f"/ui/tokens/{reader['id']}", {"scope": "PIPES:CREATE"}).status_code == 303


def test_a_token_without_tokens_scope_sees_only_itself(service: Service, seeded: dict[str, Any]) -> None:
    own = seeded["tokens"]["create datasource token"]
    browser = new_console(service)
    assert browser.sign_in(own["token"]).status_code == 303
    listing = browser.client.get("/ui/tokens").text
    assert own["token"] in listing and "sees only itself" in listing
    assert seeded["tokens"]["admin token"]["id"] not in listing
    assert 'href="/ui/audit"' not in listing and 'href="/ui/tokens/new"' not in listing
    for path in ("/ui/audit", "/ui/access", "/ui/tokens/new", f"/ui/tokens/{seeded['tokens']['admin token']['id']}"):
        answer = browser.get(path)
        assert answer.status_code == 403 and "needs a token with ADMIN or TOKENS scope" in answer.text
    assert browser.get(f"/ui/tokens/{own['id']}").status_code == 200  # its own page and history


def test_the_owners_admin_token_sees_the_user_token(service: Service, seeded: dict[str, Any]) -> None:
    browser = new_console(service)
    browser.sign_in(seeded["tokens"]["admin owner@example.com"]["token"])
    listing = browser.client.get("/ui/tokens").text
    assert "Your user token" in listing and seeded["tokens"]["user token"]["token"] in listing
    user_page = browser.client.get(f"/ui/tokens/{seeded['tokens']['user token']['id']}")
    assert user_page.status_code == 200 and 'id="editor"' not in user_page.text  # its scopes never change
    # ...but its user rotates it here (a leaked user token has no other way out).
    user_id, old = seeded["tokens"]["user token"]["id"], seeded["tokens"]["user token"]["token"]
    assert f"/ui/tokens/{user_id}/refresh" in user_page.text
    answer = browser.post(f"/ui/tokens/{user_id}/refresh", {"grace_seconds": ""}, csrf_from=f"/ui/tokens/{user_id}")
    assert answer.status_code == 303, answer.text[:300]
    service.sync()
    with pytest.raises(Unauthenticated):
        service.auth.authenticate(old)


def test_a_token_never_reaches_another_workspace(service: Service, seeded: dict[str, Any]) -> None:
    other = initialise(service, "other", "someone@example.com")
    other_admin = next(t for t in other["tokens"] if t["name"] == "admin token")
    target = create(service, seeded["admin"], "secret reader", ["DATASOURCES:READ:secrets"])
    browser = new_console(service)
    browser.sign_in(other_admin["token"])
    before = event_count(service)
    assert browser.get(f"/ui/tokens/{target['id']}").status_code == 404
    for suffix, fields in (("", {"scope": "ADMIN"}), ("/rename", {"name": "mine"}), ("/refresh", {}), ("/delete", {})):
        answer = browser.post(f"/ui/tokens/{target['id']}{suffix}", fields)
        assert answer.status_code == 404 and "Token not found" in answer.text
    assert event_count(service) == before
    assert target["value"] not in browser.client.get("/ui/tokens").text
    trail = browser.client.get("/ui/audit", params={"token": target["id"]}).text
    assert "No events match" in trail
    access = browser.client.get("/ui/access", params={"resource": "secrets"}).text
    grants = re.findall(r'<td data-label="Token"><a href="/ui/tokens/([^"]+)">', access)
    assert set(grants) == {t["id"] for t in other["tokens"] if t["name"].startswith("admin ")}


# -- malformed input -------------------------------------------------------------------------------


def test_garbage_form_posts_get_a_4xx_and_write_nothing(
    service: Service, seeded: dict[str, Any], console: Console
) -> None:
    token = create(service, seeded["admin"], "target", ["TOKENS"])
    base = f"/ui/tokens/{token['id']}"
    csrf = console.csrf(base)
    before = event_count(service)
    post = console.client.post
    answers = [
        post("/ui/tokens/new", content=b"\x00\xff\xfe", headers={"content-type": "application/x-www-form-urlencoded"}),
        post(
            "/ui/tokens/new", content=json.dumps({"csrf": csrf}).encode(), headers={"content-type": "application/json"}
        ),
        post("/ui/tokens/new", content=b"csrf=" + csrf.encode()),
        post("/ui/tokens/new", data={"csrf": csrf}, files={"f": ("a.txt", b"x")}),
        post("/ui/tokens/new", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"}),
        post("/ui/tokens/new", data={"csrf": csrf, "name": "a\x00b", "scope": "TOKENS"}),
        post("/ui/tokens/new", data={"csrf": csrf, "name": "n", "scope": "EVERYTHING"}),
        post("/ui/tokens/new", data={"csrf": csrf, "name": "n", "r0-kind": "table", "r0-resource": "x"}),
        post("/ui/tokens/new", data={"csrf": csrf, "name": "n", "r0-kind": "pipe", "r0-permission": "APPEND"}),
        post("/ui/tokens/new", data={"csrf": csrf, "name": "n", **{f"r{i}-kind": "pipe" for i in range(300)}}),
        post(
            "/ui/tokens/new",
            content=("&".join(f"k{i}=v" for i in range(5000)) + f"&csrf={csrf}").encode(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        ),
        post("/ui/tokens/new", data={"csrf": csrf, "name": "x" * 300, "scope": "TOKENS"}),
        post(f"{base}/refresh", data={"csrf": csrf, "grace_seconds": "-1"}),
        post(f"{base}/refresh", data={"csrf": csrf, "grace_seconds": "1e9"}),
        post(f"{base}/refresh", data={"csrf": csrf, "grace_seconds": "99999999"}),
        post(f"{base}/rename", data={"csrf": csrf, "name": "\t"}),
        post(f"{base}/rename", data={"csrf": csrf}),
        post("/ui/tokens/not-a-uuid/delete", data={"csrf": csrf}),
        post("/ui/tokens/00000000-0000-0000-0000-000000000000", data={"csrf": csrf, "scope": "TOKENS"}),
        post("/ui/signin", data={"csrf": csrf, "token": "p." + "a" * 5000}),
        console.client.get("/ui/audit", params={"from": "yesterday"}),
        console.client.get("/ui/audit", params={"cursor": "!!!"}),
        console.client.get("/ui/audit", params={"limit": "0"}),
        console.client.get("/ui/audit", params={"event": "Exploded"}),
        console.client.get("/ui/audit/export.xml"),
        console.client.get("/ui/access", params={"resource": "a b"}),
        console.client.get("/ui/access", params={"resource": "x", "kind": "pipe", "permission": "APPEND"}),
        console.client.get("/ui/access", params={"at": "2026-13-45T99:00"}),
        console.client.get("/ui/access", params={"compare": "soon"}),
    ]
    for answer in answers:
        assert 400 <= answer.status_code < 500, (answer.request.url, answer.status_code, answer.text[:300])
    assert event_count(service) == before


# -- audit and access pages ------------------------------------------------------------------------


def test_the_audit_page_filters_and_pages_by_cursor(service: Service, seeded: dict[str, Any], console: Console) -> None:
    for n in range(5):
        create(service, seeded["admin"], f"token {n}", ["DATASOURCES:READ:events"])
    first = console.client.get("/ui/audit", params={"event": "Created", "resource": "events", "limit": "2"})
    assert first.status_code == 200
    assert first.text.count('<tr data-event-type="Created">') == 2
    assert "token 0" in first.text and "token 2" not in first.text
    next_link = unescape(re.search(r'<a class="button" href="([^"]+)" data-testid="next-page"', first.text).group(1))
    assert "cursor=" in next_link and "resource=events" in next_link
    second = console.client.get(next_link)
    assert "token 2" in second.text and "token 0" not in second.text and "First page" in second.text
    by_token = console.client.get("/ui/audit", params={"token": "token 4"})
    assert by_token.text.count("<tr data-event-type=") == 1


def test_audit_exports_stream_the_filtered_trail(service: Service, seeded: dict[str, Any], console: Console) -> None:
    create(service, seeded["admin"], "exported", ["PIPES:READ:top"])
    ndjson = console.client.get("/ui/audit/export.ndjson", params={"token": "exported"})
    assert ndjson.status_code == 200 and "attachment" in ndjson.headers["content-disposition"]
    events = [json.loads(line) for line in ndjson.text.splitlines()]
    assert [(e["type"], e["token_name"]) for e in events] == [("Created", "exported")]
    table = list(csv.DictReader(io.StringIO(console.client.get("/ui/audit/export.csv").text)))
    assert {"exported", "admin token"} <= {row["token_name"] for row in table}
    assert new_console(service).get("/ui/audit/export.csv").status_code == 303  # no session, no export


def test_admins_verify_the_chain_and_download_a_checkpoint(
    service: Service, seeded: dict[str, Any], console: Console, tmp_path: Path
) -> None:
    page = console.client.get("/ui/audit/verify")
    assert page.status_code == 200 and 'data-ok="true"' in page.text and "Intact." in page.text
    partial = console.client.get("/ui/audit/verify", params={"partial": "1"})
    assert partial.text.lstrip().startswith('<div class="verify-result ok"')
    download = console.client.get("/ui/audit/checkpoint")
    assert "attachment" in download.headers["content-disposition"]
    checkpoint = download.json()
    key = checkpoint_key(tmp_path, {"TOKENTRAIL_DATA_DIR": str(tmp_path)})
    assert verify_checkpoint(service, checkpoint, key.public_key()).ok


def test_the_access_page_answers_a_past_instant_and_a_difference(
    service: Service, seeded: dict[str, Any], console: Console
) -> None:
    clock = FakeClock(datetime.now(UTC) + timedelta(days=1))  # after the seeding's real times
    assert console.sign_in(seeded["tokens"]["admin token"]["token"]).status_code == 303  # a day idle ended it
    admin = seeded["admin"]
    token = create(service, admin, "analyst", ["DATASOURCES:READ:events:country = 'ES'"])
    clock.advance(60)
    during = clock.now
    clock.advance(60)
    service.command(lambda: service.ledger.update_token(admin, token["id"], scopes=["DATASOURCES:READ:events"]))
    clock.advance(60)
    later = clock.now
    clock.advance(60)
    service.command(lambda: service.ledger.delete_token(admin, token["id"]))
    clock.advance(60)

    then = console.client.get("/ui/access", params={"resource": "events", "at": during.strftime("%Y-%m-%dT%H:%M:%S")})
    answer = then.text[then.text.index('data-testid="access-answer"') :]
    assert "analyst" in answer and "DATASOURCES:READ:events:country = &#39;ES&#39;" in answer
    assert "country = &#39;ES&#39;</code>" in answer  # the filter column
    now = console.client.get("/ui/access", params={"resource": "events"}).text
    assert "analyst" not in now[now.index('data-testid="access-answer"') :]
    assert 'option value="events"' in now  # offered from the scopes ever held
    diff = console.client.get(
        "/ui/access", params={"at": format_instant(to_micros(later)), "compare": during.strftime("%Y-%m-%dT%H:%M:%S")}
    ).text
    section = diff[diff.index('data-testid="access-diff"') :]
    gained, rest = section.split("Lost", 1)
    lost, changed = rest.split("Changed", 1)
    assert "analyst" not in gained and "analyst" not in lost
    assert "analyst" in changed and "country = &#39;ES&#39;" in changed
    after_delete = console.client.get(
        "/ui/access",
        params={
            "at": during.strftime("%Y-%m-%dT%H:%M:%S"),
            "compare": (clock.now + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )
    lost_section = after_delete.text.split("Lost", 1)[1].split("Changed", 1)[0]
    assert "analyst" in lost_section
