"""Tinybird's Token API over ASGI, on real SQLite and PostgreSQL.

Requests are written the way Tinybird's CLIs send them (as docs/api.md describes them): the token in
`?token=`, names form-encoded in the query, `scope=` values appended unencoded (so a `+` stays a
plus), path segments percent-encoded, bodies without a Content-Type.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx
import jwt as pyjwt
import pytest
from fastapi.testclient import TestClient
from jwt.utils import base64url_encode

from tests.api_helpers import (  # noqa: F401 - re-exported: other test files import them from here
    _REQUOTE_SAFE,
    OWNER,
    Realm,
    assert_error,
    audit_rows,
    authenticates,
    create,
    create_jwt,
    head,
    make_realm,
    names,
    path_of,
    url,
)
from tests.helpers import FakeClock
from tokentrail.api.app import create_app

# -- GET /v0/tokens ------------------------------------------------------------------------------


def test_listing_answers_every_token_of_the_workspace_default_ones_included(client, ws) -> None:
    response = client.get(url("/v0/tokens", ws.admin))
    assert names(response) == ["admin token", f"admin {OWNER}", "create datasource token"]
    assert response.headers["content-type"] == "application/json"


def test_listed_tokens_have_tinybird_token_objects(client, ws) -> None:
    create(
        client,
        ws.admin,
        "reader",
        "DATASOURCES:READ:events:country = 'ES'",
        "DATASOURCES:APPEND:events",
        "PIPES:READ:top",
        "TOKENS",
        description="for the dashboard",
    )
    listed = {t["name"]: t for t in client.get(url("/v0/tokens", ws.admin)).json()["tokens"]}
    reader = listed["reader"]
    assert set(reader) == {
        "id",
        "token",
        "name",
        "description",
        "scopes",
        "origin",
        "host",
        "expires_at",
        "last_used_at",
    }
    assert reader["token"].startswith("p.ey") and reader["description"] == "for the dashboard"
    assert reader["scopes"] == [
        {"type": "DATASOURCES:READ", "resource": "events", "filter": "country = 'ES'"},
        {"type": "DATASOURCES:APPEND", "resource": "events"},
        {"type": "PIPES:READ", "resource": "top", "filter": ""},
        {"type": "TOKENS"},
    ]
    assert reader["origin"] == {"type": "C"} and reader["host"] is None
    assert listed["admin token"]["scopes"] == [{"type": "ADMIN"}]


def test_the_user_token_is_not_listed_among_the_workspace_tokens(client, ws) -> None:
    assert "user token" not in names(client.get(url("/v0/tokens", ws.admin)))


def test_listing_needs_admin_or_tokens(client, ws) -> None:
    tokens_only = create(client, ws.admin, "manager", "TOKENS")["token"]
    assert names(client.get(url("/v0/tokens", tokens_only)))
    for value in (ws.value("create datasource token"), ws.user, create(client, ws.admin, "r", "PIPES:READ:p")["token"]):
        assert_error(client.get(url("/v0/tokens", value)), 403)


def test_a_tokens_caller_sees_no_value_of_a_more_privileged_token(client, ws) -> None:
    manager = create(client, ws.admin, "manager", "TOKENS")
    create(client, ws.admin, "reader", "PIPES:READ:top")
    listed = {t["name"]: t for t in client.get(url("/v0/tokens", manager["token"])).json()["tokens"]}
    assert "token" not in listed["admin token"]
    assert "token" not in listed[f"admin {OWNER}"]
    assert listed["create datasource token"]["token"] == ws.value("create datasource token")
    assert listed["reader"]["token"].startswith("p.")
    assert listed["manager"]["token"] == manager["token"]


def test_a_bearer_header_authenticates_like_the_query_parameter(client, ws) -> None:
    response = client.get("/v0/tokens", headers={"Authorization": f"Bearer {ws.admin}"})
    assert names(response)[0] == "admin token"


@pytest.mark.parametrize("token", [None, "", "garbage", "p.eyJ1IjoieCJ9.bad", "a.b.c"])
def test_a_missing_or_invalid_token_is_403(client, ws, token) -> None:
    assert_error(client.get(url("/v0/tokens", token)), 403)


# -- POST /v0/tokens (static) --------------------------------------------------------------------


def test_create_answers_the_token_object_whose_value_authenticates(client, service, ws) -> None:
    token = create(client, ws.admin, "reader", "PIPES:READ:top")
    assert token["name"] == "reader" and token["scopes"] == [{"type": "PIPES:READ", "resource": "top", "filter": ""}]
    auth = client.get(url("/v0/auth", token["token"], permission="PIPES:READ:top")).json()
    assert (auth["valid"], auth["token_id"], auth["allowed"]) == (True, token["id"], True)
    assert service.queries.token(token["id"]).name == "reader"


def test_a_name_in_the_query_is_form_decoded(client, ws) -> None:
    response = client.post(url("/v0/tokens", ws.admin, scope="PIPES:READ:top") + "&name=read+api+token")
    assert response.json()["name"] == "read api token"


def test_a_literal_plus_in_a_scope_filter_stays_a_plus(client, ws) -> None:
    response = client.post(f"/v0/tokens?token={ws.admin}&name=sum&scope=DATASOURCES:READ:events:a+1%3E2")
    assert response.status_code == 200, response.text
    assert response.json()["scopes"] == [{"type": "DATASOURCES:READ", "resource": "events", "filter": "a + 1 > 2"}]


def test_a_plus_inside_a_quoted_filter_literal_is_kept(client, ws) -> None:
    token = create(client, ws.admin, "t", "PIPES:READ:top:org = 'a+b'")
    assert token["scopes"][0]["filter"] == "org = 'a+b'"


def test_a_filter_keeps_its_colons(client, ws) -> None:
    token = create(client, ws.admin, "t", "DATASOURCES:READ:t:a > 'x:y'")
    assert token["scopes"] == [{"type": "DATASOURCES:READ", "resource": "t", "filter": "a > 'x:y'"}]


def test_parameters_may_come_in_a_form_body_without_content_type(client, ws) -> None:
    body = b"name=read+api+token&scope=DATASOURCES:READ:events:a+1>2&description=from+the+body"
    response = client.post(url("/v0/tokens", ws.admin), content=body)
    assert response.status_code == 200, response.text
    token = response.json()
    assert token["name"] == "read api token" and token["description"] == "from the body"
    assert token["scopes"][0]["filter"] == "a + 1 > 2"


def test_origin_resource_id_and_description_are_kept(client, ws) -> None:
    token = create(
        client,
        ws.admin,
        "ds token",
        "DATASOURCES:APPEND:events",
        origin="DS",
        resource_id="events",
        description="made by a datafile",
    )
    assert token["origin"] == {"type": "DS", "resource_id": "events"}
    assert token["description"] == "made by a datafile"


def test_the_cli_version_and_from_parameters_are_ignored(client, ws) -> None:
    token = create(client, ws.admin, "t", "PIPES:READ:top", cli_version="5.0.3", **{"from": "cli"})
    assert token["name"] == "t"


def test_creating_without_a_scope_is_400_scope_is_mandatory(client, service, ws) -> None:
    before = head(service)
    assert_error(client.post(url("/v0/tokens", ws.admin, name="empty")), 400, "scope is mandatory")
    assert head(service) == before


def test_an_unknown_scope_is_400_naming_it(client, service, ws) -> None:
    before = head(service)
    response = client.post(url("/v0/tokens", ws.admin, name="t", scope=["PIPES:READ:top", "FOO:BAR"]))
    assert assert_error(response, 400).startswith("Unknown scope FOO:BAR: valid scopes are ADMIN, TOKENS")
    assert head(service) == before


def test_a_duplicate_name_is_400_already_exists(client, service, ws) -> None:
    create(client, ws.admin, "read api token", "PIPES:READ:top")
    before = head(service)
    response = client.post(url("/v0/tokens", ws.admin, name="read api token", scope="PIPES:READ:other"))
    assert_error(response, 400, 'Auth token with name "read api token" already exists')
    assert head(service) == before


@pytest.mark.parametrize(
    "sql_filter",
    ["a = 1; DROP TABLE x", "a IN (SELECT b FROM t)", "a = 1 -- comment", "DELETE FROM t", "a = ", "a = 1 /* c */"],
)
def test_a_bad_sql_filter_is_400_and_writes_nothing(client, service, ws, sql_filter) -> None:
    before = head(service)
    response = client.post(url("/v0/tokens", ws.admin, name="t", scope=f"DATASOURCES:READ:events:{sql_filter}"))
    assert_error(response, 400)
    assert head(service) == before


@pytest.mark.parametrize("scope", ["AUTH", f"ADMIN_USER:{OWNER}"])
def test_internal_scopes_are_refused_even_to_an_admin(client, service, ws, scope) -> None:
    before = head(service)
    assert_error(client.post(url("/v0/tokens", ws.admin, name="t", scope=scope)), 400)
    assert head(service) == before


def test_a_tokens_caller_cannot_grant_admin(client, service, ws) -> None:
    manager = create(client, ws.admin, "manager", "TOKENS")["token"]
    before = head(service)
    assert_error(client.post(url("/v0/tokens", manager, name="escalate", scope="ADMIN")), 403)
    assert_error(client.post(url("/v0/tokens", manager, name="escalate", scope="AUTH")), 400)
    assert_error(client.post(url("/v0/tokens", manager, name="escalate", scope=f"ADMIN_USER:{OWNER}")), 400)
    assert head(service) == before


def test_a_tokens_caller_creates_ordinary_tokens(client, ws) -> None:
    manager = create(client, ws.admin, "manager", "TOKENS")["token"]
    assert create(client, manager, "reader", "PIPES:READ:top", "TOKENS")["name"] == "reader"


def test_a_token_without_admin_or_tokens_cannot_create(client, service, ws) -> None:
    before = head(service)
    response = client.post(url("/v0/tokens", ws.value("create datasource token"), name="t", scope="PIPES:READ:p"))
    assert_error(response, 403)
    assert head(service) == before


def test_concurrent_creates_of_one_name_make_exactly_one_token(client, service, ws) -> None:
    results: list[httpx.Response] = []
    barrier = threading.Barrier(6)

    def attempt() -> None:
        barrier.wait()
        results.append(client.post(url("/v0/tokens", ws.admin, name="contested", scope="PIPES:READ:top")))

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.status_code for r in results) == [200] + [400] * 5, [r.text for r in results]
    for refused in (r for r in results if r.status_code != 200):
        assert_error(refused, 400, 'Auth token with name "contested" already exists')
    assert names(client.get(url("/v0/tokens", ws.admin))).count("contested") == 1


# -- GET /v0/tokens/{x} --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["id", "name", "value"])
def test_a_token_is_found_by_id_percent_encoded_name_or_value(client, ws, how) -> None:
    token = create(client, ws.admin, "read api token", "PIPES:READ:top")
    ref = {"id": token["id"], "name": "read api token", "value": token["token"]}[how]
    response = client.get(url(f"/v0/tokens/{path_of(ref)}", ws.admin))
    assert response.status_code == 200, response.text
    assert response.json() == token


def test_the_name_arrives_percent_encoded_in_the_path(client, ws) -> None:
    token = create(client, ws.admin, "read api token", "PIPES:READ:top")
    response = client.get(f"/v0/tokens/read%20api%20token?token={ws.admin}")
    assert response.json()["id"] == token["id"]


def test_an_unknown_token_is_404_token_not_found(client, ws) -> None:
    assert_error(client.get(url("/v0/tokens/nobody", ws.admin)), 404, "Token not found")
    assert_error(client.get(url("/v0/tokens/00000000-0000-4000-8000-000000000000", ws.admin)), 404, "Token not found")


def test_a_deleted_tokens_id_and_value_are_404(client, ws) -> None:
    token = create(client, ws.admin, "gone", "PIPES:READ:top")
    client.delete(url("/v0/tokens/gone", ws.admin))
    for ref in (token["id"], token["token"], "gone"):
        assert_error(client.get(url(f"/v0/tokens/{path_of(ref)}", ws.admin)), 404, "Token not found")


def test_any_valid_token_may_read_itself(client, ws) -> None:
    reader = create(client, ws.admin, "reader", "PIPES:READ:top")
    for ref in (reader["id"], "reader", reader["token"]):
        response = client.get(url(f"/v0/tokens/{path_of(ref)}", reader["token"]))
        assert response.status_code == 200 and response.json()["token"] == reader["token"]


def test_a_token_without_admin_or_tokens_cannot_read_others_or_probe_for_them(client, ws) -> None:
    reader = create(client, ws.admin, "reader", "PIPES:READ:top")["token"]
    assert_error(client.get(url("/v0/tokens/admin%20token", reader)), 403)
    assert_error(client.get(url("/v0/tokens/no%20such%20token", reader)), 403)


def test_a_tokens_caller_reads_the_admin_token_without_its_value(client, ws) -> None:
    manager = create(client, ws.admin, "manager", "TOKENS")["token"]
    response = client.get(url("/v0/tokens/admin%20token", manager))
    assert response.status_code == 200
    assert response.json()["id"] == ws.admin_id and "token" not in response.json()


# -- PUT /v0/tokens/{x} --------------------------------------------------------------------------


def test_put_replaces_all_the_scopes(client, ws) -> None:
    token = create(client, ws.admin, "t", "PIPES:READ:top", "DATASOURCES:APPEND:events")
    response = client.put(url(f"/v0/tokens/{token['id']}", ws.admin, scope=["DATASOURCES:READ:events:a+1>2"]))
    assert response.status_code == 200, response.text
    assert response.json()["scopes"] == [{"type": "DATASOURCES:READ", "resource": "events", "filter": "a + 1 > 2"}]
    again = client.get(url(f"/v0/tokens/{token['id']}", ws.admin)).json()
    assert again["scopes"] == response.json()["scopes"] and again["token"] == token["token"]


def test_put_changes_name_and_description_only_when_given(client, ws) -> None:
    create(client, ws.admin, "t", "PIPES:READ:top", description="first")
    renamed = client.put(url("/v0/tokens/t", ws.admin, name="read api token")).json()
    assert (renamed["name"], renamed["description"], renamed["scopes"][0]["resource"]) == (
        "read api token",
        "first",
        "top",
    )
    described = client.put(url("/v0/tokens/read%20api%20token", ws.admin, description="second")).json()
    assert (described["name"], described["description"]) == ("read api token", "second")
    assert_error(client.get(url("/v0/tokens/t", ws.admin)), 404)


def test_put_takes_the_scope_string_from_a_body_without_content_type(client, ws) -> None:
    """The CLIs move `scope=…` into the body when the URL would pass 4096 characters."""
    create(client, ws.admin, "t", "PIPES:READ:top")
    scopes = [f"DATASOURCES:READ:events_{i}:amount+{i}>100" for i in range(120)]
    body = "&".join(f"scope={s}" for s in scopes).encode()
    assert len(body) > 4096
    response = client.put(url("/v0/tokens/t", ws.admin), content=body)
    assert response.status_code == 200, response.text
    got = response.json()["scopes"]
    assert len(got) == 120 and got[7] == {
        "type": "DATASOURCES:READ",
        "resource": "events_7",
        "filter": "amount + 7 > 100",
    }


def test_put_with_an_empty_scope_is_400_scope_is_mandatory(client, service, ws) -> None:
    create(client, ws.admin, "t", "PIPES:READ:top")
    before = head(service)
    assert_error(client.put(url("/v0/tokens/t", ws.admin) + "&scope="), 400, "scope is mandatory")
    assert head(service) == before


def test_put_with_an_unknown_scope_is_400_and_changes_nothing(client, service, ws) -> None:
    create(client, ws.admin, "t", "PIPES:READ:top")
    before = head(service)
    refused = assert_error(client.put(url("/v0/tokens/t", ws.admin, scope=["PIPES:READ:x", "FOO:BAR"])), 400)
    assert refused.startswith("Unknown scope FOO:BAR:")
    assert head(service) == before
    assert client.get(url("/v0/tokens/t", ws.admin)).json()["scopes"][0]["resource"] == "top"


def test_put_renaming_onto_a_taken_name_is_400(client, service, ws) -> None:
    create(client, ws.admin, "a", "PIPES:READ:top")
    create(client, ws.admin, "b", "PIPES:READ:top")
    before = head(service)
    assert_error(client.put(url("/v0/tokens/a", ws.admin, name="b")), 400, 'Auth token with name "b" already exists')
    assert head(service) == before


def test_put_cannot_change_a_default_token(client, service, ws) -> None:
    before = head(service)
    assert_error(client.put(url("/v0/tokens/create%20datasource%20token", ws.admin, scope="ADMIN")), 403)
    assert head(service) == before


def test_a_tokens_caller_cannot_put_admin_scope_or_touch_the_admin_token(client, service, ws) -> None:
    manager = create(client, ws.admin, "manager", "TOKENS")["token"]
    create(client, ws.admin, "t", "PIPES:READ:top")
    before = head(service)
    assert_error(client.put(url("/v0/tokens/t", manager, scope="ADMIN")), 403)
    assert_error(client.put(url("/v0/tokens/manager", manager, scope=["TOKENS", "ADMIN"])), 403)
    assert_error(client.put(url("/v0/tokens/admin%20token", manager, description="mine")), 403)
    assert head(service) == before


def test_forwards_upsert_posts_when_the_get_fails_and_puts_when_it_succeeds(client, ws) -> None:
    """`tb --cloud token create static N …` in Forward: GET /v0/tokens/N, then POST or PUT."""

    def upsert(name: str, *scopes: str) -> httpx.Response:
        found = client.get(url(f"/v0/tokens/{path_of(name)}", ws.admin, **{"from": "cli"}))
        if found.status_code != 200:
            return client.post(url("/v0/tokens", ws.admin, name=name, origin="C", scope=list(scopes)))
        return client.put(url(f"/v0/tokens/{path_of(name)}", ws.admin, scope=list(scopes)))

    first = upsert("read api token", "DATASOURCES:READ:events")
    assert first.status_code == 200 and first.request.method == "POST"
    second = upsert("read api token", "PIPES:READ:top:org = 'acme'", "DATASOURCES:APPEND:events")
    assert second.status_code == 200 and second.request.method == "PUT"
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["scopes"] == [
        {"type": "PIPES:READ", "resource": "top", "filter": "org = 'acme'"},
        {"type": "DATASOURCES:APPEND", "resource": "events"},
    ]
    assert names(client.get(url("/v0/tokens", ws.admin))).count("read api token") == 1


# -- DELETE /v0/tokens/{x} -----------------------------------------------------------------------


def test_delete_answers_ok_and_the_token_is_gone(client, ws) -> None:
    token = create(client, ws.admin, "read api token", "PIPES:READ:top")
    response = client.delete(url("/v0/tokens/read%20api%20token", ws.admin))
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert "read api token" not in names(client.get(url("/v0/tokens", ws.admin)))
    assert not authenticates(client, token["token"])
    assert_error(client.delete(url("/v0/tokens/read%20api%20token", ws.admin)), 404, "Token not found")


@pytest.mark.parametrize("how", ["id", "value"])
def test_delete_by_id_or_value(client, ws, how) -> None:
    token = create(client, ws.admin, "t", "PIPES:READ:top")
    ref = token["id"] if how == "id" else token["token"]
    assert client.delete(url(f"/v0/tokens/{path_of(ref)}", ws.admin)).json() == {"ok": True}


def test_a_deleted_name_can_be_used_again(client, ws) -> None:
    first = create(client, ws.admin, "t", "PIPES:READ:top")
    client.delete(url("/v0/tokens/t", ws.admin))
    second = create(client, ws.admin, "t", "PIPES:READ:top")
    assert second["id"] != first["id"]


@pytest.mark.parametrize("name", ["admin token", f"admin {OWNER}", "create datasource token"])
def test_default_tokens_cannot_be_deleted(client, service, ws, name) -> None:
    before = head(service)
    assert_error(client.delete(url(f"/v0/tokens/{path_of(name)}", ws.admin)), 403)
    assert head(service) == before
    assert name in names(client.get(url("/v0/tokens", ws.admin)))


def test_a_tokens_caller_cannot_delete_the_admin_token(client, service, ws) -> None:
    manager = create(client, ws.admin, "manager", "TOKENS")["token"]
    before = head(service)
    assert_error(client.delete(url(f"/v0/tokens/{ws.admin_id}", manager)), 403)
    assert_error(client.delete(url(f"/v0/tokens/{path_of(f'admin {OWNER}')}", manager)), 403)
    assert head(service) == before


def test_a_token_without_admin_or_tokens_cannot_delete(client, service, ws) -> None:
    create(client, ws.admin, "t", "PIPES:READ:top")
    before = head(service)
    assert_error(client.delete(url("/v0/tokens/t", ws.value("create datasource token"))), 403)
    assert head(service) == before


# -- POST /v0/tokens/{x}/refresh ------------------------------------------------------------------


def test_refresh_keeps_the_id_gives_a_new_value_and_the_old_one_stops_at_once(client, ws) -> None:
    token = create(client, ws.admin, "read api token", "PIPES:READ:top")
    response = client.post(url("/v0/tokens/read%20api%20token/refresh", ws.admin))
    assert response.status_code == 200, response.text
    refreshed = response.json()
    assert refreshed["id"] == token["id"] and refreshed["token"] != token["token"]
    assert refreshed["scopes"] == token["scopes"]
    assert not authenticates(client, token["token"])
    assert authenticates(client, refreshed["token"])


def test_refresh_with_grace_seconds_keeps_the_old_value_until_the_grace_ends(client, ws) -> None:
    clock = FakeClock(datetime.now(UTC))
    token = create(client, ws.admin, "t", "PIPES:READ:top")
    refreshed = client.post(url("/v0/tokens/t/refresh", ws.admin, grace_seconds=60)).json()
    assert authenticates(client, token["token"]) and authenticates(client, refreshed["token"])
    clock.advance(59)
    assert authenticates(client, token["token"])
    clock.advance(2)
    assert not authenticates(client, token["token"])
    assert authenticates(client, refreshed["token"])


def test_refresh_by_get_is_405_refresh_must_be_done_with_post(client, service, ws) -> None:
    before = head(service)
    assert_error(client.get(url("/v0/tokens/admin%20token/refresh", ws.admin)), 405, "refresh must be done with POST")
    assert head(service) == before


@pytest.mark.parametrize("grace", ["-1", "abc", "1.5", "99999999999"])
def test_a_bad_grace_seconds_is_400_and_refreshes_nothing(client, service, ws, grace) -> None:
    token = create(client, ws.admin, "t", "PIPES:READ:top")
    before = head(service)
    assert_error(client.post(url("/v0/tokens/t/refresh", ws.admin) + f"&grace_seconds={grace}"), 400)
    assert head(service) == before and authenticates(client, token["token"])


@pytest.mark.parametrize("name", ["admin token", f"admin {OWNER}", "create datasource token"])
def test_default_tokens_can_be_refreshed(client, ws, name) -> None:
    # The owner's own `admin <email>` token is refreshed by its user only (here: itself).
    by = ws.value(name) if name.startswith("admin ") and name != "admin token" else ws.admin
    response = client.post(url(f"/v0/tokens/{path_of(name)}/refresh", by))
    assert response.status_code == 200, response.text
    assert response.json()["token"] != ws.value(name) and not authenticates(client, ws.value(name))


def test_a_tokens_caller_cannot_refresh_the_admin_token(client, service, ws) -> None:
    manager = create(client, ws.admin, "manager", "TOKENS")["token"]
    before = head(service)
    assert_error(client.post(url("/v0/tokens/admin%20token/refresh", manager)), 403)
    assert head(service) == before and authenticates(client, ws.admin)


def test_a_tokens_caller_refreshes_ordinary_tokens(client, ws) -> None:
    manager = create(client, ws.admin, "manager", "TOKENS")["token"]
    create(client, ws.admin, "t", "PIPES:READ:top")
    assert client.post(url("/v0/tokens/t/refresh", manager)).status_code == 200


def test_a_token_without_admin_or_tokens_cannot_refresh_another(client, service, ws) -> None:
    create(client, ws.admin, "t", "PIPES:READ:top")
    before = head(service)
    assert_error(client.post(url("/v0/tokens/t/refresh", ws.value("create datasource token"))), 403)
    assert head(service) == before


# -- JWTs ------------------------------------------------------------------------------------------

JWT_SCOPES = [
    {"type": "PIPES:READ", "resource": "top_pipe", "fixed_params": {"org": "acme", "limit": 10}},
    {"type": "DATASOURCES:READ", "resource": "events", "filter": "country='ES'"},
]


def test_a_jwt_is_hs256_signed_with_the_admin_tokens_value_and_carries_its_claims(client, ws) -> None:
    response = create_jwt(client, ws.admin, "dashboard", JWT_SCOPES, limits={"rps": 10})
    assert response.status_code == 200, response.text
    assert "content-type" not in response.request.headers  # as Tinybird's CLIs send it
    value = response.json()["token"]
    assert pyjwt.get_unverified_header(value)["alg"] == "HS256"
    claims = pyjwt.decode(value, ws.admin, algorithms=["HS256"])
    assert claims["workspace_id"] == ws.id and claims["name"] == "dashboard"
    assert isinstance(claims["exp"], int) and claims["exp"] > time.time()
    assert claims["scopes"] == [
        {"type": "PIPES:READ", "resource": "top_pipe", "fixed_params": {"org": "acme", "limit": 10}},
        {"type": "DATASOURCES:READ", "resource": "events", "filter": "country = 'ES'"},
    ]
    assert claims["limits"] == {"rps": 10}


def test_a_jwts_expiration_time_is_its_exp(client, ws) -> None:
    expires = int(time.time()) + 600
    content = json.dumps({"scopes": JWT_SCOPES[:1]}).encode()
    response = client.post(url("/v0/tokens", ws.admin, name="j", expiration_time=expires), content=content)
    assert pyjwt.decode(response.json()["token"], ws.admin, algorithms=["HS256"])["exp"] == expires


def test_a_jwt_without_limits_has_no_limits_claim(client, ws) -> None:
    value = create_jwt(client, ws.admin, "j", JWT_SCOPES[:1]).json()["token"]
    assert "limits" not in pyjwt.decode(value, ws.admin, algorithms=["HS256"])


def test_a_jwt_body_may_have_a_json_content_type_too(client, ws) -> None:
    expires = int(time.time()) + 600
    response = client.post(
        url("/v0/tokens", ws.admin, name="j", expiration_time=expires), json={"scopes": JWT_SCOPES[:1]}
    )
    assert response.status_code == 200, response.text


def test_a_jwt_authenticates_with_its_own_scopes_and_filters(client, ws) -> None:
    value = create_jwt(client, ws.admin, "dashboard", JWT_SCOPES).json()["token"]
    events = client.get(url("/v0/auth", value, permission="DATASOURCES:READ:events")).json()
    assert events["valid"] and events["jwt"] and events["workspace_id"] == ws.id and events["name"] == "dashboard"
    assert (events["allowed"], events["filter"]) == (True, "country = 'ES'")
    assert client.get(url("/v0/auth", value, permission="PIPES:READ:top_pipe")).json()["allowed"] is True
    assert client.get(url("/v0/auth", value, permission="ADMIN")).json()["allowed"] is False
    assert client.get(url("/v0/auth", value, permission="DATASOURCES:APPEND:events")).json()["allowed"] is False


def test_a_jwt_cannot_manage_tokens(client, service, ws) -> None:
    value = create_jwt(client, ws.admin, "j", JWT_SCOPES).json()["token"]
    before = head(service)
    assert_error(client.get(url("/v0/tokens", value)), 403)
    assert_error(client.post(url("/v0/tokens", value, name="x", scope="PIPES:READ:top_pipe")), 403)
    assert_error(create_jwt(client, value, "again", JWT_SCOPES), 403)
    assert head(service) == before


def test_a_jwt_is_not_listed_but_its_issuance_is_audited(client, service, ws) -> None:
    before = head(service)
    response = create_jwt(client, ws.admin, "dashboard", JWT_SCOPES)
    assert "dashboard" not in names(client.get(url("/v0/tokens", ws.admin)))
    rows = [r for r in audit_rows(service, before) if r["type"] == "Issued"]
    assert len(rows) == 1 and rows[0]["token_name"] == "dashboard" and rows[0]["token_id"] == response.json()["id"]
    assert rows[0]["actor_token_id"] == ws.admin_id


def test_a_jwt_stops_authenticating_when_the_admin_token_is_refreshed(client, ws) -> None:
    value = create_jwt(client, ws.admin, "j", JWT_SCOPES).json()["token"]
    assert authenticates(client, value)
    assert client.post(url("/v0/tokens/admin%20token/refresh", ws.admin)).status_code == 200
    assert not authenticates(client, value)
    assert_error(client.get(url("/v0/workspace", value)), 403)


def test_a_tokens_caller_issues_jwts_signed_with_the_admin_value(client, ws) -> None:
    manager = create(client, ws.admin, "manager", "TOKENS")["token"]
    value = create_jwt(client, manager, "j", JWT_SCOPES).json()["token"]
    assert pyjwt.decode(value, ws.admin, algorithms=["HS256"])["name"] == "j"


def test_a_jwt_too_long_to_authenticate_is_refused_before_it_is_recorded(client, service, ws) -> None:
    scopes = [
        {"type": "PIPES:READ", "resource": f"p{i}", "fixed_params": {f"k{j}": "v" * 1000 for j in range(20)}}
        for i in range(5)
    ]
    before = head(service)
    assert "characters long" in assert_error(create_jwt(client, ws.admin, "huge", scopes), 400)
    assert head(service) == before


@pytest.mark.parametrize("expiration", ["", "abc", "1.5", "1e10", "-5", "0", "PAST", "NOW", "+3600"])
def test_an_expiration_time_that_is_not_a_whole_future_number_is_400(client, service, ws, expiration) -> None:
    expiration = {"PAST": str(int(time.time()) - 60), "NOW": str(int(time.time()))}.get(expiration, expiration)
    before = head(service)
    content = json.dumps({"scopes": JWT_SCOPES}).encode()
    response = client.post(url("/v0/tokens", ws.admin, name="j") + f"&expiration_time={expiration}", content=content)
    assert_error(response, 400)
    assert head(service) == before


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{not json",
        b"[]",
        b'"scopes"',
        b"null",
        b'{"scopes": []}',
        b'{"scopes": "PIPES:READ:top"}',
        b'{"scopes": [{"type": "ADMIN"}]}',
        b'{"scopes": [{"type": "PIPES:READ"}]}',
        b'{"scopes": [{"type": "PIPES:READ", "resource": "top", "filter": "a = 1; DROP TABLE t"}]}',
        b'{"scopes": [{"type": "PIPES:READ", "resource": "top", "fixed_params": {"a": {"b": 1}}}]}',
        b'{"scopes": [{"type": "PIPES:READ", "resource": "top", "fixed_params": {"a": NaN}}]}',
        b'{"scopes": [{"type": "PIPES:READ", "resource": "top", "fixed_params": {"a": 1e999}}]}',
        b'{"scopes": [{"type": "PIPES:READ", "resource": "top", "fixed_params": {"a": "\\ud800"}}]}',
        b'{"scopes": [{"type": "PIPES:READ", "resource": "top"}], "limits": {"rps": "many"}}',
        b'{"scopes": [{"type": "PIPES:READ", "resource": "top"}], "limits": {"rps": 0}}',
        b'{"scopes": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'\xff\xfe{"scopes": []}',
        b"scope=PIPES:READ:top",
    ],
    ids=lambda body: repr(body[:32]),
)
def test_a_malformed_jwt_body_is_400_and_writes_nothing(client, service, ws, body) -> None:
    before = head(service)
    expires = int(time.time()) + 3600
    assert_error(client.post(url("/v0/tokens", ws.admin, name="j", expiration_time=expires), content=body), 400)
    assert head(service) == before


def _forged(ws: Realm, other: Realm, kind: str) -> str:
    now = int(time.time())
    claims = {
        "workspace_id": ws.id,
        "name": "forged",
        "exp": now + 3600,
        "scopes": [{"type": "PIPES:READ", "resource": "top_pipe"}],
    }
    if kind == "alg none":
        return pyjwt.encode(claims, None, algorithm="none")
    if kind == "wrong key":
        return pyjwt.encode(claims, "not-the-admin-token-value-0123456789", algorithm="HS256")
    if kind == "another workspace's admin value":
        return pyjwt.encode(claims, other.admin, algorithm="HS256")
    if kind == "HS512 with the right key":
        return pyjwt.encode(claims, ws.admin, algorithm="HS512")
    if kind == "missing exp":
        return pyjwt.encode({k: v for k, v in claims.items() if k != "exp"}, ws.admin, algorithm="HS256")
    if kind == "expired":
        return pyjwt.encode({**claims, "exp": now - 5}, ws.admin, algorithm="HS256")
    if kind == "exp a numeric string":
        return pyjwt.encode({**claims, "exp": str(now + 3600)}, ws.admin, algorithm="HS256")
    if kind == "exp a boolean":
        return pyjwt.encode({**claims, "exp": True}, ws.admin, algorithm="HS256")
    if kind == "exp Infinity":
        return pyjwt.encode({**claims, "exp": float("inf")}, ws.admin, algorithm="HS256")
    if kind == "workspace_id with a NUL":
        return pyjwt.encode({**claims, "workspace_id": ws.id[:-1] + "\x00"}, ws.admin, algorithm="HS256")
    if kind == "workspace_id not a string":
        return pyjwt.encode({**claims, "workspace_id": [ws.id]}, ws.admin, algorithm="HS256")
    if kind == "tampered payload":
        good = pyjwt.encode(claims, ws.admin, algorithm="HS256")
        header, _, signature = good.split(".")
        evil = base64url_encode(json.dumps({**claims, "scopes": [{"type": "ADMIN"}]}).encode()).decode()
        return f"{header}.{evil}.{signature}"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "alg none",
        "wrong key",
        "another workspace's admin value",
        "HS512 with the right key",
        "missing exp",
        "expired",
        "exp a numeric string",
        "exp a boolean",
        "exp Infinity",
        "tampered payload",
        "workspace_id with a NUL",
        "workspace_id not a string",
    ],
)
def test_a_forged_or_expired_jwt_is_refused(client, ws, other, kind) -> None:
    value = _forged(ws, other, kind)
    assert not authenticates(client, value)
    assert_error(client.get(url("/v0/workspace", value)), 403)
    assert_error(client.get(url("/v0/tokens/forged", value)), 403)


def test_a_jwt_expires_by_the_ledgers_clock(client, ws) -> None:
    """`exp` is compared with the same clock that times every event, so point-in-time answers
    and authentication agree on when a JWT stopped working."""
    claims = {
        "workspace_id": ws.id,
        "name": "short",
        "exp": int(time.time()) + 60,
        "scopes": [{"type": "PIPES:READ", "resource": "top_pipe"}],
    }
    value = pyjwt.encode(claims, ws.admin, algorithm="HS256")
    fake = FakeClock(datetime.fromtimestamp(claims["exp"] - 1, UTC))
    assert authenticates(client, value)
    fake.advance(1)
    assert not authenticates(client, value)


def test_a_jwt_signed_with_the_admin_value_by_anyone_is_accepted_until_exp(client, ws) -> None:
    """The contract of Tinybird's JWTs: whoever holds the admin value can mint them."""
    claims = {
        "workspace_id": ws.id,
        "name": "minted",
        "exp": int(time.time()) + 60,
        "scopes": [{"type": "PIPES:READ", "resource": "top_pipe"}],
    }
    value = pyjwt.encode(claims, ws.admin, algorithm="HS256")
    auth = client.get(url("/v0/auth", value, permission="PIPES:READ:top_pipe")).json()
    assert auth["valid"] and auth["allowed"] and auth["name"] == "minted"


# -- workspaces and regions ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v0/workspace", "/v1/workspace"])
def test_the_workspace_routes_answer_the_callers_workspace(client, ws, path) -> None:
    response = client.get(url(path, ws.admin))
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"id", "name", "user_email", "user_id", "scope"}
    assert (body["id"], body["name"], body["user_email"]) == (ws.id, "main", OWNER)


@pytest.mark.parametrize("path", ["/v0/workspace", "/v1/workspace"])
def test_the_workspace_routes_are_403_without_a_valid_token(client, ws, path) -> None:
    assert_error(client.get(path), 403)
    assert_error(client.get(url(path, "p.garbage.value")), 403)


def test_regions_are_an_empty_list(client) -> None:
    response = client.get("/v0/regions")
    assert response.status_code == 200 and response.json() == {"regions": []}


def test_the_user_token_creates_a_workspace_with_its_default_tokens(client, service, ws) -> None:
    response = client.post(url("/v1/workspaces", ws.user, name="analytics"))
    assert response.status_code == 200, response.text
    created = response.json()
    assert created["name"] == "analytics" and created["user_email"] == OWNER
    assert client.get(url("/v0/workspace", created["token"])).json()["id"] == created["id"]
    assert names(client.get(url("/v0/tokens", created["token"]))) == [
        "admin token",
        f"admin {OWNER}",
        "create datasource token",
    ]
    assert ws.admin not in {t.get("token") for t in created["tokens"]}


def test_the_user_token_lists_its_users_workspaces(client, ws) -> None:
    client.post(url("/v1/workspaces", ws.user, name="analytics"))
    response = client.get(url("/v1/user/workspaces", ws.user))
    assert response.status_code == 200
    assert [w["name"] for w in response.json()["workspaces"]] == ["main", "analytics"]


def test_the_user_token_sees_no_other_users_workspaces(client, ws, other) -> None:
    listed = client.get(url("/v1/user/workspaces", other.user)).json()["workspaces"]
    assert [w["name"] for w in listed] == ["other"]


def test_only_the_user_token_creates_or_lists_workspaces(client, service, ws) -> None:
    manager = create(client, ws.admin, "manager", "TOKENS")["token"]
    before = head(service)
    for value in (ws.admin, ws.value(f"admin {OWNER}"), manager, ws.value("create datasource token")):
        assert_error(client.post(url("/v1/workspaces", value, name="mine")), 403)
        assert_error(client.get(url("/v1/user/workspaces", value)), 403)
    assert head(service) == before


@pytest.mark.parametrize("name", ["main", "", "x" * 5000, "bad\x01name"])
def test_a_taken_empty_or_bad_workspace_name_is_400(client, service, ws, name) -> None:
    before = head(service)
    assert_error(client.post(url("/v1/workspaces", ws.user, name=name)), 400)
    assert head(service) == before


def test_the_user_token_manages_no_tokens(client, service, ws) -> None:
    before = head(service)
    assert_error(client.post(url("/v0/tokens", ws.user, name="t", scope="PIPES:READ:top")), 403)
    assert_error(client.get(url("/v0/tokens/admin%20token", ws.user)), 403)
    assert head(service) == before


# -- GET /v0/auth ----------------------------------------------------------------------------------


def test_auth_introspects_a_static_token(client, ws) -> None:
    body = client.get(url("/v0/auth", ws.admin, permission="DATASOURCES:READ:events")).json()
    assert body["valid"] and body["workspace_id"] == ws.id and body["token_id"] == ws.admin_id
    assert (body["name"], body["allowed"], body["filter"]) == ("admin token", True, "")


def test_auth_without_permission_only_says_valid(client, ws) -> None:
    body = client.get(url("/v0/auth", ws.admin)).json()
    assert body["valid"] and body["allowed"] is None


def test_auth_applies_the_quarantine_rule(client, ws) -> None:
    reader = create(client, ws.admin, "reader", "DATASOURCES:READ:events:country = 'ES'")["token"]

    def check(permission: str) -> dict[str, Any]:
        return client.get(url("/v0/auth", reader, permission=permission)).json()

    quarantine = check("DATASOURCES:READ:events_quarantine")
    assert (quarantine["allowed"], quarantine["filter"]) == (True, "country = 'ES'")
    assert check("DATASOURCES:READ:events")["allowed"] is True
    assert check("DATASOURCES:READ:other_quarantine")["allowed"] is False
    assert check("DATASOURCES:APPEND:events_quarantine")["allowed"] is False
    assert check("PIPES:READ:events_quarantine")["allowed"] is False


def test_auth_answers_with_the_widest_grant(client, ws) -> None:
    token = create(client, ws.admin, "t", "DATASOURCES:READ:events:a > 1", "WORKSPACE:READ_ALL")["token"]
    body = client.get(url("/v0/auth", token, permission="DATASOURCES:READ:events")).json()
    assert (body["allowed"], body["via"], body["filter"]) == (True, "WORKSPACE:READ_ALL", "")


def test_auth_datasources_create_grants_append_on_every_datasource(client, ws) -> None:
    value = ws.value("create datasource token")
    assert client.get(url("/v0/auth", value, permission="DATASOURCES:APPEND:anything")).json()["allowed"] is True
    assert client.get(url("/v0/auth", value, permission="DATASOURCES:READ:anything")).json()["allowed"] is False


def test_auth_tokens_scope_grants_tokens_but_not_admin(client, ws) -> None:
    manager = create(client, ws.admin, "manager", "TOKENS")["token"]
    assert client.get(url("/v0/auth", manager, permission="TOKENS")).json()["allowed"] is True
    assert client.get(url("/v0/auth", manager, permission="ADMIN")).json()["allowed"] is False
    assert client.get(url("/v0/auth", ws.admin, permission="TOKENS")).json()["allowed"] is True


@pytest.mark.parametrize("value", ["garbage", "p.eyJ1IjoieCJ9.bad", "a.b.c"])
def test_auth_answers_valid_false_for_an_invalid_token(client, value) -> None:
    response = client.get(url("/v0/auth", value, permission="ADMIN"))
    assert response.status_code == 200 and response.json()["valid"] is False and response.json()["allowed"] is False


def test_auth_answers_valid_false_for_a_refreshed_out_value(client, ws) -> None:
    token = create(client, ws.admin, "t", "PIPES:READ:top")
    client.post(url("/v0/tokens/t/refresh", ws.admin))
    assert client.get(url("/v0/auth", token["token"])).json()["valid"] is False


@pytest.mark.parametrize("permission", ["FOO:BAR", "DATASOURCES:READ", "PIPES:READ:bad name"])
def test_auth_with_a_malformed_permission_is_400(client, ws, permission) -> None:
    assert_error(client.get(url("/v0/auth", ws.admin, permission=permission)), 400)


# -- a token never reaches another workspace -----------------------------------------------------


@pytest.mark.parametrize("how", ["id", "name", "value"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "refresh"])
def test_another_workspaces_token_is_404_and_untouched(client, service, ws, other, method, how) -> None:
    secret = other.tokens["secret"]
    ref = path_of({"id": secret["id"], "name": "secret", "value": secret["token"]}[how])
    before = head(service)
    if method == "GET":
        response = client.get(url(f"/v0/tokens/{ref}", ws.admin))
    elif method == "PUT":
        response = client.put(url(f"/v0/tokens/{ref}", ws.admin, scope="ADMIN", name="stolen"))
    elif method == "DELETE":
        response = client.delete(url(f"/v0/tokens/{ref}", ws.admin))
    else:
        response = client.post(url(f"/v0/tokens/{ref}/refresh", ws.admin))
    assert_error(response, 404, "Token not found")
    assert head(service) == before
    assert authenticates(client, secret["token"])
    after = client.get(url("/v0/tokens/secret", other.admin)).json()
    assert after.pop("last_used_at") is not None  # it just authenticated: its last use moved, nothing else
    assert after == {k: v for k, v in secret.items() if k != "last_used_at"}


def test_listing_shows_only_the_callers_workspace(client, ws, other) -> None:
    assert "secret" not in names(client.get(url("/v0/tokens", ws.admin)))
    assert "secret" in names(client.get(url("/v0/tokens", other.admin)))


def test_a_same_named_token_in_each_workspace_resolves_to_the_callers_own(client, ws, other) -> None:
    mine = create(client, ws.admin, "secret", "DATASOURCES:APPEND:events")
    assert client.get(url("/v0/tokens/secret", ws.admin)).json()["id"] == mine["id"]
    assert client.delete(url("/v0/tokens/secret", ws.admin)).json() == {"ok": True}
    assert client.get(url("/v0/tokens/secret", other.admin)).status_code == 200


# -- attribution -----------------------------------------------------------------------------------


def _change(client: TestClient, ws: Realm, kind: str, headers: dict[str, str]) -> httpx.Response:
    if kind != "create":
        create(client, ws.admin, "t", "PIPES:READ:top")
    if kind == "create":
        return client.post(url("/v0/tokens", ws.admin, name="t", scope="PIPES:READ:top"), headers=headers)
    if kind == "put":
        return client.put(
            url("/v0/tokens/t", ws.admin, scope=["PIPES:READ:a", "PIPES:READ:b"], name="u"), headers=headers
        )
    if kind == "refresh":
        return client.post(url("/v0/tokens/t/refresh", ws.admin, grace_seconds=5), headers=headers)
    if kind == "delete":
        return client.delete(url("/v0/tokens/t", ws.admin), headers=headers)
    if kind == "jwt":
        expires = int(time.time()) + 60
        return client.post(
            url("/v0/tokens", ws.admin, name="j", expiration_time=expires),
            content=json.dumps({"scopes": JWT_SCOPES}).encode(),
            headers=headers,
        )
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["create", "put", "refresh", "delete", "jwt"])
def test_every_change_records_its_request_id_and_actor_in_the_audit(client, service, ws, kind) -> None:
    before = head(service)
    response = _change(client, ws, kind, headers={})
    assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]
    assert request_id
    rows = [r for r in audit_rows(service, before) if r["request_id"] == request_id]
    assert rows, audit_rows(service, before)
    assert all(r["actor_token_id"] == ws.admin_id and r["actor_name"] == "admin token" for r in rows)
    # Every row the change wrote carries its request id (no other request ran meanwhile).
    last = [r for r in audit_rows(service, before) if r["position"] >= rows[0]["position"]]
    assert {r["request_id"] for r in last} == {request_id}


def test_a_client_request_id_is_recorded_as_a_claim_beside_the_servers_own(client, service, ws) -> None:
    """A client-chosen X-Request-Id became the audit's request id: a client could make its changes
    carry another request's id. The server makes every request id; the client's is kept, as a claim."""
    before = head(service)
    response = _change(client, ws, "create", headers={"X-Request-Id": "deploy-42.step:1"})
    server_id = response.headers["x-request-id"]
    assert server_id and server_id != "deploy-42.step:1"
    rows = audit_rows(service, before)
    assert {r["request_id"] for r in rows} == {server_id}
    assert {r["claimed_request_id"] for r in rows} == {"deploy-42.step:1"}


def test_an_unsafe_client_request_id_is_cut_and_never_the_request_id(client, service, ws) -> None:
    before = head(service)
    response = _change(client, ws, "create", headers={"X-Request-Id": "x" * 200 + "\x01"})
    request_id = response.headers["x-request-id"]
    assert request_id and not request_id.startswith("x")
    rows = audit_rows(service, before)
    assert {r["request_id"] for r in rows} == {request_id}
    assert {r["claimed_request_id"] for r in rows} == {"x" * 128}


def test_each_request_gets_its_own_request_id(client, ws) -> None:
    ids = {client.get(url("/v0/tokens", ws.admin)).headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


def test_errors_carry_the_request_id_too(client, ws) -> None:
    response = client.get(url("/v0/tokens/nobody", ws.admin), headers={"X-Request-Id": "lookup-1"})
    assert_error(response, 404)
    assert response.headers["x-request-id"] and response.headers["x-request-id"] != "lookup-1"


def test_the_user_token_is_the_actor_of_a_new_workspace(client, service, ws) -> None:
    before = head(service)
    response = client.post(url("/v1/workspaces", ws.user, name="analytics"))
    rows = audit_rows(service, before)
    assert rows and {r["request_id"] for r in rows} == {response.headers["x-request-id"]}
    assert {r["actor_name"] for r in rows} == {"user token"}


# -- errors: always JSON, never 5xx, nothing written -----------------------------------------------

_BIG = b"x" * (10 * 1024 * 1024)

BAD_REQUESTS: list[tuple[str, str, str, bytes, int]] = [
    # (label, method, path with {admin}, body, status)
    ("garbage binary body", "POST", "/v0/tokens?token={admin}", b"\x89PNG\r\n\x1a\n\x00\x00\xff", 400),
    ("garbage form body", "POST", "/v0/tokens?token={admin}", b"&&==&%%%&name", 400),
    ("JSON body for a static token", "POST", "/v0/tokens?token={admin}&name=t", b'{"scope": ["ADMIN"]}', 400),
    ("10 MB body", "POST", "/v0/tokens?token={admin}&name=t&scope=PIPES:READ:p", _BIG, 413),
    ("10 MB body on PUT", "PUT", "/v0/tokens/admin%20token?token={admin}", _BIG, 413),
    ("5,000-character name", "POST", "/v0/tokens?token={admin}&scope=PIPES:READ:p&name=" + "n" * 5000, b"", 400),
    ("5,000-character name in the path", "GET", "/v0/tokens/" + "n" * 5000 + "?token={admin}", b"", 404),
    ("5,000-character scope", "POST", "/v0/tokens?token={admin}&name=t&scope=PIPES:READ:" + "p" * 5000, b"", 400),
    (
        "5,000-character filter",
        "POST",
        "/v0/tokens?token={admin}&name=t&scope=PIPES:READ:p:" + "a=1%20AND%20" * 700 + "b=2",
        b"",
        400,
    ),
    (
        "5,000-character description",
        "POST",
        "/v0/tokens?token={admin}&name=t&scope=PIPES:READ:p&description=" + "d" * 5000,
        b"",
        400,
    ),
    (
        "300 scopes",
        "POST",
        "/v0/tokens?token={admin}&name=t&" + "&".join(f"scope=PIPES:READ:p{i}" for i in range(300)),
        b"",
        400,
    ),
    (
        "300 scopes in a PUT body",
        "PUT",
        "/v0/tokens/t?token={admin}",
        "&".join(f"scope=PIPES:READ:p{i}" for i in range(300)).encode(),
        400,
    ),
    ("2,000 parameters", "GET", "/v0/tokens?token={admin}&" + "&".join(f"x{i}=1" for i in range(2000)), b"", 400),
    ("PATCH a token", "PATCH", "/v0/tokens/t?token={admin}", b"scope=ADMIN", 405),
    ("POST to a token", "POST", "/v0/tokens/t?token={admin}", b"", 405),
    ("PUT the list", "PUT", "/v0/tokens?token={admin}&scope=ADMIN", b"", 405),
    ("DELETE the list", "DELETE", "/v0/tokens?token={admin}", b"", 405),
    ("DELETE a workspace", "DELETE", "/v0/workspace?token={admin}", b"", 405),
    ("POST the regions", "POST", "/v0/regions", b"", 405),
    ("bad percent-encoding in a scope", "POST", "/v0/tokens?token={admin}&name=t&scope=PIPES:READ:p%ZZ%", b"", 400),
    ("bad percent-encoding in the path", "GET", "/v0/tokens/%ZZ%?token={admin}", b"", 404),
    ("bad percent-encoding in the path of a PUT", "PUT", "/v0/tokens/%E2%?token={admin}&scope=ADMIN", b"", 404),
    ("NUL in a name", "POST", "/v0/tokens?token={admin}&name=a%00b&scope=PIPES:READ:p", b"", 400),
    ("NUL in a scope", "POST", "/v0/tokens?token={admin}&name=t&scope=PIPES:READ:p:a%3D%27%00%27", b"", 400),
    ("NUL in a description", "POST", "/v0/tokens?token={admin}&name=t&scope=PIPES:READ:p&description=%00", b"", 400),
    (
        "NUL in a resource_id",
        "POST",
        "/v0/tokens?token={admin}&name=t&scope=PIPES:READ:p&origin=DS&resource_id=e%00",
        b"",
        400,
    ),
    ("NUL in a form body", "POST", "/v0/tokens?token={admin}", b"name=t\x00&scope=PIPES:READ:p", 400),
    ("NUL in the path", "GET", "/v0/tokens/a%00b?token={admin}", b"", 404),
    ("NUL in the path of a DELETE", "DELETE", "/v0/tokens/a%00b?token={admin}", b"", 404),
    ("NUL in the path of a refresh", "POST", "/v0/tokens/a%00b/refresh?token={admin}", b"", 404),
    ("NUL in a workspace name", "POST", "/v1/workspaces?token={user}&name=w%00", b"", 400),
    ("NUL in a permission", "GET", "/v0/auth?token={admin}&permission=DATASOURCES:READ:e%00", b"", 400),
    ("NUL in a token", "GET", "/v0/tokens?token=p.%00.x", b"", 400),
    (
        "percent-encoded non-UTF-8 in a name",
        "POST",
        "/v0/tokens?token={admin}&name=%ff%fe&scope=PIPES:READ:p",
        b"",
        400,
    ),
    ("percent-encoded non-UTF-8 in a scope", "POST", "/v0/tokens?token={admin}&name=t&scope=PIPES:READ:%ff", b"", 400),
    ("non-UTF-8 form body", "POST", "/v0/tokens?token={admin}", b"name=\xff\xfe&scope=PIPES:READ:p", 400),
    ("non-UTF-8 in the path", "GET", "/v0/tokens/%ff%fe?token={admin}", b"", 404),
    ("bad origin", "POST", "/v0/tokens?token={admin}&name=t&scope=PIPES:READ:p&origin=X", b"", 400),
    ("DS origin without resource_id", "POST", "/v0/tokens?token={admin}&name=t&scope=PIPES:READ:p&origin=DS", b"", 400),
    (
        "token name that looks like an id",
        "POST",
        "/v0/tokens?token={admin}&name=00000000-0000-4000-8000-000000000000&scope=PIPES:READ:p",
        b"",
        400,
    ),
    ("token name that looks like a value", "POST", "/v0/tokens?token={admin}&name=p.x&scope=PIPES:READ:p", b"", 400),
    ("scope with a resource where none belongs", "POST", "/v0/tokens?token={admin}&name=t&scope=ADMIN:x", b"", 400),
    ("filter on an APPEND scope", "POST", "/v0/tokens?token={admin}&name=t&scope=DATASOURCES:APPEND:e:a%3D1", b"", 400),
    ("bad resource name", "POST", "/v0/tokens?token={admin}&name=t&scope=PIPES:READ:1bad", b"", 400),
    ("unknown route", "GET", "/v0/nothing?token={admin}", b"", 404),
    ("unknown route without a token", "POST", "/v2/tokens", b"", 404),
]


@pytest.mark.parametrize("label, method, path, body, status", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_get_a_json_error_and_write_nothing(
    client, service, ws, label, method, path, body, status
) -> None:
    if "/v0/tokens/t" in path:
        create(client, ws.admin, "t", "PIPES:READ:top")
    before = head(service)
    response = client.request(method, path.format(admin=ws.admin, user=ws.user), content=body)
    assert_error(response, status)
    assert head(service) == before
    assert names(client.get(url("/v0/tokens", ws.admin)))[:3] == [
        "admin token",
        f"admin {OWNER}",
        "create datasource token",
    ]


def _raw_asgi(app: Any, method: str, raw_path: bytes, query: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes no HTTP client would let through (e.g. non-UTF-8 in the query) straight to the app."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": raw_path.decode("latin-1"),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    anyio.run(app, scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.mark.parametrize(
    "query",
    [b"name=\xff\xfe&scope=PIPES:READ:p", b"name=t&scope=PIPES:READ:p:a%3D'\xe2'", b"name=t&\xc3=1&scope=PIPES:READ:p"],
)
def test_raw_non_utf8_bytes_in_the_query_are_400(service, ws, query) -> None:
    before = head(service)
    status, body = _raw_asgi(create_app(service), "POST", b"/v0/tokens", f"token={ws.admin}&".encode() + query)
    assert status == 400 and json.loads(body)["error"]
    assert head(service) == before


def test_a_chunked_body_over_the_limit_is_413(client, service, ws) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * (1024 * 1024)

    before = head(service)
    assert_error(client.post(url("/v0/tokens", ws.admin, name="t"), content=chunks()), 413)
    assert head(service) == before


def test_a_wrong_method_is_405_whatever_the_token(client) -> None:
    assert_error(client.patch("/v0/tokens/x"), 405)
    assert_error(client.get("/v0/tokens/x/refresh"), 405, "refresh must be done with POST")


# -- OpenAPI ---------------------------------------------------------------------------------------

ROUTES = {
    ("/v0/tokens", "get"): ({"as_of", "unused_for", "limit", "cursor"}, {"200", "400", "403"}),
    ("/v0/tokens", "post"): (
        {"name", "scope", "description", "origin", "resource_id", "expiration_time"},
        {"200", "400", "403", "413"},
    ),
    ("/v0/tokens/{ref}", "get"): ({"ref", "as_of"}, {"200", "403", "404"}),
    ("/v0/tokens/{ref}", "put"): ({"ref", "scope", "name", "description"}, {"200", "400", "403", "404"}),
    ("/v0/tokens/{ref}", "delete"): ({"ref"}, {"200", "403", "404"}),
    ("/v0/tokens/{ref}/refresh", "post"): ({"ref", "grace_seconds"}, {"200", "400", "403", "404"}),
    ("/v0/tokens/{ref}/refresh", "get"): ({"ref"}, {"405"}),
    ("/v0/workspace", "get"): (set(), {"200", "403"}),
    ("/v1/workspace", "get"): (set(), {"200", "403"}),
    ("/v0/regions", "get"): (set(), {"200"}),
    ("/v1/workspaces", "post"): ({"name"}, {"200", "400", "403"}),
    ("/v1/user/workspaces", "get"): (set(), {"200", "403"}),
    ("/v0/auth", "get"): ({"permission"}, {"200", "400"}),
}


def test_openapi_lists_every_tinybird_route_with_its_parameters_and_responses(client) -> None:
    spec = client.get("/openapi.json").json()
    for (path, method), (parameters, statuses) in ROUTES.items():
        operation = spec["paths"][path][method]
        declared = {p["name"] for p in operation.get("parameters", [])}
        assert parameters <= declared, (path, method, declared)
        assert statuses <= set(operation["responses"]), (path, method, operation["responses"].keys())
        assert "422" not in operation["responses"], (path, method)  # bad input is a 400, never a 422
        for status, answer in operation["responses"].items():
            if status >= "400":
                schema = answer["content"]["application/json"]["schema"]
                assert schema["required"] == ["error"], (path, method, status)


def test_openapi_documents_the_answers_shapes(client) -> None:
    spec = client.get("/openapi.json").json()
    listing = spec["paths"]["/v0/tokens"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    token = listing["properties"]["tokens"]["items"]
    assert set(token["properties"]) == {
        "id",
        "token",
        "name",
        "description",
        "scopes",
        "origin",
        "host",
        "expires_at",
        "last_used_at",
    }
    scope = spec["paths"]["/v0/tokens"]["get"]["parameters"]
    assert any(p["name"] == "as_of" for p in scope)
    create_params = {p["name"]: p for p in spec["paths"]["/v0/tokens"]["post"]["parameters"]}
    assert create_params["scope"]["schema"]["type"] == "array"
    body = spec["paths"]["/v0/tokens"]["post"]["requestBody"]["content"]
    assert "scopes" in body["application/json"]["schema"]["properties"]


def test_openapi_declares_the_token_query_parameter_and_bearer_header(client) -> None:
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["token"] == {**schemes["token"], "type": "apiKey", "in": "query", "name": "token"}
    assert schemes["bearer"]["scheme"].lower() == "bearer"
    assert {"token": []} in spec["paths"]["/v0/tokens"]["get"]["security"]
    assert {"bearer": []} in spec["paths"]["/v0/tokens/{ref}"]["delete"]["security"]
    assert "security" not in spec["paths"]["/v0/regions"]["get"]


def test_docs_serve_html(client) -> None:
    response = client.get("/docs")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in response.text
