"""Regressions found by a security review of the policy table's entrypoints: each is a place where
a route or the console decided on its own and disagreed with the table (or with the threat model's
"the same 403 for any reference"), on real SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from tests.test_api import assert_error, authenticates, create, create_jwt, head, path_of, url
from tests.test_ui import Console
from tokentrail.api.app import create_app
from tokentrail.domain.errors import Unauthenticated


def _owner_name(ws) -> str:  # noqa: ANN001 - the Realm fixture
    return next(n for n in ws.tokens if n.startswith("admin ") and n != "admin token")


@pytest.mark.parametrize("scope", ["DATASOURCES:READ:events", "DATASOURCES:CREATE", "WORKSPACE:DEPLOY"])
def test_a_token_that_reads_only_itself_cannot_probe_names_by_get(client, service, ws, scope) -> None:
    """`GET /v0/tokens/admin <email>` answered "only its own user can do this to a user-bound
    token" when that token exists and the generic 403 when it does not: a read token could
    confirm the owner's e-mail address (and any name) one guess at a time."""
    reader = create(client, ws.admin, "reader", scope)["token"]
    before = head(service)
    existing = [_owner_name(ws), "admin token", "create datasource token", ws.id_of(_owner_name(ws))]
    missing = ["admin nobody@example.com", "no such token", "00000000-0000-0000-0000-000000000000"]
    answers = {
        ref: assert_error(client.get(url(f"/v0/tokens/{path_of(ref)}", reader)), 403) for ref in existing + missing
    }
    assert len(set(answers.values())) == 1, answers
    assert head(service) == before


def test_a_token_that_may_not_read_the_trail_cannot_probe_names_by_history(client, service, ws) -> None:
    """`/v0/tokens/{ref}/history` answered 404 for a name no token ever had and 403 for one
    that exists: the same probe through another route."""
    reader = create(client, ws.admin, "reader", "PIPES:READ:top")["token"]
    for ref in (_owner_name(ws), "admin token", "admin nobody@example.com", "no such token"):
        assert_error(client.get(url(f"/v0/tokens/{path_of(ref)}/history", reader)), 403)
    # It still reads the history of its own token, as it reads the token itself.
    own = client.get(url("/v0/tokens/reader/history", reader))
    assert own.status_code == 200 and own.json()["events"][0]["type"] == "Created"


def test_a_value_in_its_grace_window_cannot_read_its_tokens_history(client, service, ws) -> None:
    """A grace value only authenticates: it may not read its token, so not its history either
    (which told the leaked value's holder that it was rotated out, and until when it lives)."""
    leaked = create(client, ws.admin, "leaked", "DATASOURCES:READ:events")
    assert client.post(url("/v0/tokens/leaked/refresh", ws.admin, grace_seconds=300)).status_code == 200
    assert authenticates(client, leaked["token"])
    for ref in ("leaked", leaked["id"], leaked["token"]):
        assert_error(client.get(url(f"/v0/tokens/{path_of(ref)}/history", leaked["token"])), 403)
    assert client.get(url(f"/v0/tokens/{leaked['id']}/history", ws.admin)).status_code == 200


def test_a_jwt_signed_with_a_value_in_its_grace_window_opens_no_console_session(client, service, ws) -> None:
    """A static value in its grace window was refused at the console's sign-in, but a JWT
    signed with the admin value that a refresh had just retired signed in."""
    jwt = create_jwt(client, ws.admin, "reader", [{"type": "PIPES:READ", "resource": "top"}])
    assert jwt.status_code == 200, jwt.text
    refreshed = client.post(url(f"/v0/tokens/{path_of('admin token')}/refresh", ws.admin, grace_seconds=600))
    assert refreshed.status_code == 200, refreshed.text
    assert authenticates(client, jwt.json()["token"])  # still inside the admin value's grace

    browser = Console(TestClient(create_app(service), raise_server_exceptions=False))
    answer = browser.sign_in(jwt.json()["token"])
    assert answer.status_code == 403, answer.headers
    signed_out = browser.get("/ui/tokens")
    assert signed_out.status_code == 303 and signed_out.headers["location"].startswith("/ui/signin")
    # A JWT signed with the new admin value still signs in.
    fresh = create_jwt(client, refreshed.json()["token"], "reader2", [{"type": "PIPES:READ", "resource": "top"}])
    assert (
        Console(TestClient(create_app(service), raise_server_exceptions=False))
        .sign_in(fresh.json()["token"])
        .status_code
        == 303
    )


def test_an_api_caller_cannot_label_its_changes_as_made_in_the_console(client, service, ws) -> None:
    """`X-Tokentrail-Origin: ui` on an API request recorded the change with origin "ui", as if
    it had been made through the web console; the console sets that mark itself."""
    created = client.post(
        url("/v0/tokens", ws.admin, name="spoof", scope="PIPES:READ:top"), headers={"X-Tokentrail-Origin": "ui"}
    )
    assert created.status_code == 200, created.text
    cli = client.post(
        url("/v0/tokens", ws.admin, name="from cli", scope="PIPES:READ:top"), headers={"X-Tokentrail-Origin": "cli"}
    )
    assert cli.status_code == 200, cli.text
    events = {e["token_name"]: e for e in client.get(url("/v0/audit", ws.admin, event="Created")).json()["events"]}
    # The origin is what the server knows (an API request); what the client said is a labelled claim.
    assert events["spoof"]["origin"] == "api" and events["spoof"]["claimed"]["origin"] == "ui"
    assert events["from cli"]["origin"] == "api" and events["from cli"]["claimed"]["origin"] == "cli"


def test_a_token_row_read_before_a_delete_is_not_cached_after_it(client, service, ws) -> None:
    """The authentication cache stored a row it had read before a delete was projected, after
    that delete's eviction had run: the deleted value then authenticated on this server until
    its token's next event, which for a deleted token never comes."""
    victim = create(client, ws.admin, "victim", "PIPES:READ:top")
    cache = service.auth.tokens
    cache.clear()
    original = cache._load
    loaded, resume = threading.Event(), threading.Event()

    def slow_load(token_id: str):  # noqa: ANN202 - a TokenRow or None
        row = original(token_id)
        if token_id == victim["id"] and not resume.is_set():
            loaded.set()
            resume.wait(10)  # the delete commits, is projected and evicted meanwhile
        return row

    cache._load = slow_load
    reader = threading.Thread(target=service.auth.authenticate, args=(victim["token"],))
    reader.start()
    try:
        assert loaded.wait(10)
        assert client.delete(url("/v0/tokens/victim", ws.admin)).status_code == 200
    finally:
        resume.set()
        reader.join(10)
    cache._load = original
    assert not authenticates(client, victim["token"])
    with pytest.raises(Unauthenticated):
        service.auth.authenticate(victim["token"])
