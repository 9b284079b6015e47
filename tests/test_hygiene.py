"""Token hygiene: static tokens that expire, the workspace's cap on lifetimes, last use, stale tokens
and the access review, on both backends.

The clock is the domain's (`clock.set_clock`): authentication, the ledger's checks and the events
all read it, so a token's expiry can be stepped over to the microsecond without sleeping.
"""

from __future__ import annotations

import csv
import io
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api_helpers import assert_error, authenticates, create, head, make_realm, url
from tests.oracle import Replayed
from tokentrail.api.app import create_app
from tokentrail.domain import clock
from tokentrail.domain.model import Token
from tokentrail.projections.history import History
from tokentrail.service import Service

# After the real clock (the fixtures' workspaces are made on it): effective time never goes back.
START = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)


class Now:
    at = START


@pytest.fixture
def frozen() -> type[Now]:
    Now.at = START
    clock.set_clock(lambda: Now.at)
    return Now


def seconds(moment: datetime) -> int:
    return int(moment.timestamp())


def micros(moment: datetime) -> int:
    return clock.to_micros(moment)


# -- expiry -----------------------------------------------------------------------------------------


def test_a_static_token_created_with_an_expiry_stops_authenticating_at_that_instant(client, ws, frozen) -> None:
    expires = seconds(START) + 100
    token = create(client, ws.admin, "temp", "PIPES:READ:top", expiration_time=expires)
    assert token["expires_at"] == clock.format_instant(expires * 1_000_000)
    assert "token" in token and token["token"].startswith("p.")
    frozen.at = START + timedelta(seconds=100) - timedelta(microseconds=1)
    assert authenticates(client, token["token"])
    frozen.at = START + timedelta(seconds=100)
    assert not authenticates(client, token["token"])
    assert_error(client.get(url("/v0/tokens", token["token"])), 403)


def test_a_json_body_with_expiration_time_is_still_a_jwt(client, ws) -> None:
    import json
    import time

    response = client.post(
        url("/v0/tokens", ws.admin, name="embed", expiration_time=int(time.time()) + 600),
        content=json.dumps({"scopes": [{"type": "PIPES:READ", "resource": "top"}]}).encode(),
    )
    assert response.status_code == 200, response.text
    assert response.json()["token"].count(".") == 2  # a JWT, not a p. value
    names = [t["name"] for t in client.get(url("/v0/tokens", ws.admin)).json()["tokens"]]
    assert "embed" not in names


@pytest.mark.parametrize("raw", ["", "abc", "1.5", "-5", "+3600", "0", "PAST", "1_000_000_000_0", "none"])
def test_a_bad_static_expiry_is_400_and_writes_nothing(client, service, ws, raw) -> None:
    raw = {"PAST": "1000"}.get(raw, raw)
    before = head(service)
    response = client.post(url("/v0/tokens", ws.admin, name="t", scope="PIPES:READ:top") + f"&expiration_time={raw}")
    assert_error(response, 400)
    assert head(service) == before


def test_put_sets_and_removes_an_expiry_and_an_expired_token_can_only_be_deleted(client, service, ws, frozen) -> None:
    token = create(client, ws.admin, "temp", "PIPES:READ:top")
    assert token["expires_at"] is None
    answer = client.put(url("/v0/tokens/temp", ws.admin, expiration_time=seconds(START) + 60))
    assert answer.status_code == 200 and answer.json()["expires_at"] is not None, answer.text
    answer = client.put(url("/v0/tokens/temp", ws.admin, expiration_time="none"))
    assert answer.status_code == 200 and answer.json()["expires_at"] is None, answer.text
    before = head(service)
    assert_error(client.put(url("/v0/tokens/temp", ws.admin, expiration_time=seconds(START) - 1)), 400)
    assert_error(client.put(url("/v0/tokens/admin%20token", ws.admin, expiration_time=seconds(START) + 60)), 403)
    assert head(service) == before
    client.put(url("/v0/tokens/temp", ws.admin, expiration_time=seconds(START) + 60))
    frozen.at = START + timedelta(seconds=61)
    before = head(service)
    assert_error(client.post(url("/v0/tokens/temp/refresh", ws.admin)), 409)
    assert_error(client.put(url("/v0/tokens/temp", ws.admin, expiration_time="none")), 409)
    assert head(service) == before
    assert client.delete(url("/v0/tokens/temp", ws.admin)).status_code == 200


def test_expiry_between_two_events_in_point_in_time_answers(client, service, ws, frozen) -> None:
    """Created at T0, renamed at T0+50, expires at T0+100, another token made at T0+150: every answer
    as of an instant includes the token exactly while the instant is before its expiry."""
    token = create(client, ws.admin, "temp", "DATASOURCES:READ:events", expiration_time=seconds(START) + 100)
    frozen.at = START + timedelta(seconds=50)
    client.put(url("/v0/tokens/temp", ws.admin, name="temp2"))
    frozen.at = START + timedelta(seconds=150)
    create(client, ws.admin, "later", "PIPES:READ:top")
    expiry = micros(START) + 100_000_000
    for at, alive in ((expiry - 1, True), (expiry, False), (expiry + 1, False), (micros(START) + 50_000_000, True)):
        listed = client.get(url("/v0/tokens", ws.admin, as_of=clock.format_instant(at))).json()["tokens"]
        assert (token["id"] in {t["id"] for t in listed}) is alive, at
        access = client.get(url("/v0/access", ws.admin, resource="events", as_of=clock.format_instant(at))).json()
        assert (token["id"] in {g["token_id"] for g in access["grants"]}) is alive, at
    one = client.get(url(f"/v0/tokens/{token['id']}", ws.admin, as_of=clock.format_instant(expiry - 1)))
    assert one.status_code == 200 and one.json()["expires_at"] == clock.format_instant(expiry)
    assert client.get(url(f"/v0/tokens/{token['id']}", ws.admin, as_of=clock.format_instant(expiry))).status_code == 404
    diff = client.get(
        url("/v0/access/diff", ws.admin, resource="events", **{"from": clock.format_instant(expiry - 1)})
    ).json()
    assert token["id"] in {g["token_id"] for g in diff["lost"]}
    exposure = client.get(url(f"/v0/tokens/{token['id']}/exposure", ws.admin)).json()
    assert exposure["to"] == clock.format_instant(expiry)
    assert all(i["to"] == clock.format_instant(expiry) for e in exposure["exposure"] for i in e["intervals"])
    lookup = client.post(url("/v0/tokens/lookup", ws.admin), json={"token": token["token"]}).json()
    assert lookup["reason"] == "expired" and lookup["valid_until"] == clock.format_instant(expiry)
    assert lookup["valid_now"] is False


def test_an_expiry_holds_on_a_second_server_that_cached_the_token(database_url, tmp_path, environ, frozen) -> None:
    one = Service(database_url, data=tmp_path, environ=environ)
    two = Service(database_url, data=tmp_path, environ=environ)
    try:
        with TestClient(create_app(one)) as a, TestClient(create_app(two)) as b:
            realm = make_realm(one, "main", "owner@example.com")
            token = create(a, realm.admin, "temp", "PIPES:READ:top", expiration_time=seconds(START) + 30)
            assert authenticates(b, token["token"])  # now in the second server's cache
            frozen.at = START + timedelta(seconds=30)
            assert not authenticates(b, token["token"])
            assert not authenticates(a, token["token"])
    finally:
        one.close()
        two.close()


def test_the_lifetime_cap_is_an_admins_event_enforced_on_create_put_and_refresh(client, service, ws, frozen) -> None:
    manager = create(client, ws.admin, "manager", "TOKENS")
    before = head(service)
    assert_error(client.put(url("/v0/workspace/settings", manager["token"], max_token_lifetime=3600)), 403)
    assert_error(client.put(url("/v0/workspace/settings", ws.admin, max_token_lifetime=5)), 400)
    assert_error(client.put(url("/v0/workspace/settings", ws.admin, max_token_lifetime="soon")), 400)
    assert head(service) == before
    create(client, ws.admin, "old", "PIPES:READ:top")
    answer = client.put(url("/v0/workspace/settings", ws.admin, max_token_lifetime=3600))
    assert answer.status_code == 200 and answer.json() == {"max_token_lifetime": 3600}
    assert client.get(url("/v0/workspace/settings", manager["token"])).json() == {"max_token_lifetime": 3600}
    capped = create(client, ws.admin, "capped", "PIPES:READ:top")
    assert capped["expires_at"] == clock.format_instant(micros(START) + 3600_000_000)
    before = head(service)
    assert_error(
        client.post(
            url("/v0/tokens", ws.admin, name="long", scope="PIPES:READ:top", expiration_time=seconds(START) + 7200)
        ),
        400,
    )
    assert_error(client.put(url("/v0/tokens/capped", ws.admin, expiration_time="none")), 400)
    assert head(service) == before
    frozen.at = START + timedelta(seconds=10)
    refreshed = client.post(url("/v0/tokens/old/refresh", ws.admin)).json()
    assert refreshed["expires_at"] == clock.format_instant(micros(START) + 3610_000_000)
    default = client.post(url("/v0/tokens/create%20datasource%20token/refresh", ws.admin)).json()
    assert default["expires_at"] is None  # default tokens are never capped
    types = [e["type"] for e in client.get(url("/v0/audit", ws.admin)).json()["events"]]
    assert "SettingsChanged" in types and "ExpirySet" in types


# -- last use ---------------------------------------------------------------------------------------


def _last_used(client: TestClient, admin: str, ref: str) -> str | None:
    return client.get(url(f"/v0/tokens/{ref}", admin)).json()["last_used_at"]


def test_last_use_is_recorded_on_introspection_and_survives_a_restart(database_url, tmp_path, environ, frozen) -> None:
    one = Service(database_url, data=tmp_path, environ=environ)
    with TestClient(create_app(one)) as a:
        realm = make_realm(one, "main", "owner@example.com")
        token = create(a, realm.admin, "reader", "PIPES:READ:top")
        frozen.at = START + timedelta(seconds=5)
        # The admin's own reads are uses too: compare the reader's alone.
        assert _last_used(a, realm.admin, "reader") is None
        assert authenticates(a, token["token"])
        assert _last_used(a, realm.admin, "reader") == clock.format_instant(micros(START) + 5_000_000)
    # Closing the app (shutdown) flushed the figures; a new process reads them back.
    one.close()
    again = Service(database_url, data=tmp_path, environ=environ)
    try:
        with TestClient(create_app(again)) as b:
            assert _last_used(b, realm.admin, "reader") == clock.format_instant(micros(START) + 5_000_000)
    finally:
        again.close()


def test_two_servers_merge_their_last_uses_by_the_latest(database_url, tmp_path, environ, frozen) -> None:
    one = Service(database_url, data=tmp_path, environ=environ)
    two = Service(database_url, data=tmp_path, environ=environ)
    try:
        with TestClient(create_app(one)) as a, TestClient(create_app(two)) as b:
            realm = make_realm(one, "main", "owner@example.com")
            token = create(a, realm.admin, "reader", "PIPES:READ:top")
            frozen.at = START + timedelta(seconds=20)
            assert authenticates(b, token["token"])  # the later use, on the second server
            frozen.at = START + timedelta(seconds=10)
            assert authenticates(a, token["token"])  # an earlier use, on the first
            assert two.usage.flush() >= 1
            assert one.usage.flush() >= 1  # written last, but older: max() keeps the later one
            want = clock.format_instant(micros(START) + 20_000_000)
            fresh = Service(database_url, data=tmp_path, environ=environ)
            try:
                assert fresh.usage.last_used([token["id"]])[token["id"]] == micros(START) + 20_000_000
            finally:
                fresh.close()
            assert _last_used(a, realm.admin, "reader") == want
    finally:
        one.close()
        two.close()


def test_rebuild_keeps_last_use(service, client, ws, frozen) -> None:
    from tokentrail.projections.rebuild import rebuild

    token = create(client, ws.admin, "reader", "PIPES:READ:top")
    assert authenticates(client, token["token"])
    service.usage.flush()
    rebuild(service)
    service.auth.tokens.clear()
    assert service.usage.last_used([token["id"]]) == {token["id"]: micros(START)}


# -- stale tokens -----------------------------------------------------------------------------------


def test_stale_tokens_count_never_used_ones_from_their_creation(client, ws, frozen) -> None:
    used = create(client, ws.admin, "used", "PIPES:READ:top")
    create(client, ws.admin, "never", "PIPES:READ:top")
    frozen.at = START + timedelta(days=50)
    create(client, ws.admin, "young", "PIPES:READ:top")
    assert authenticates(client, used["token"])
    frozen.at = START + timedelta(days=100)
    stale = client.get(url("/v0/tokens", ws.admin, unused_for="90d"))
    assert stale.status_code == 200, stale.text
    names = {t["name"] for t in stale.json()["tokens"]}
    assert "never" in names and "used" not in names and "young" not in names
    assert {t["name"] for t in client.get(url("/v0/tokens", ws.admin, unused_for="40d")).json()["tokens"]} >= {
        "used",
        "young",
        "never",
    }
    assert_error(client.get(url("/v0/tokens", ws.admin, unused_for="ninety days")), 400)
    reader = create(client, ws.admin, "reader", "PIPES:READ:top")
    assert_error(client.get(url("/v0/tokens", reader["token"], unused_for="90d")), 403)


# -- the access review ------------------------------------------------------------------------------


def test_the_review_is_for_managers_and_its_csv_is_safe_for_spreadsheets(client, service, ws) -> None:
    create(client, ws.admin, "=HYPERLINK(1)", "DATASOURCES:READ:events:-1 = -1")
    reader = create(client, ws.admin, "reader", "PIPES:READ:top")
    assert_error(client.get(url("/v0/access/review", reader["token"])), 403)
    assert_error(client.get(url("/v0/access/review", ws.admin, format="xml")), 400)
    review = client.get(url("/v0/access/review", ws.admin)).json()
    assert review["summary"]["with_admin"] >= 2 and review["summary"]["tokens"] == len(review["tokens"])
    answer = client.get(url("/v0/access/review", ws.admin, format="csv"))
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert {r["name"] for r in rows} >= {"'=HYPERLINK(1)", "reader", "admin token"}
    assert all(r[c][:1] not in ("=", "+", "-", "@") for r in rows for c in r)


def _replayed_review(replayed: Replayed, workspace_id: str, at: int) -> list[tuple[Any, ...]]:
    """The review's rows by brute force: replay every event up to `at`."""
    tokens, _ = replayed.state(at)
    created: dict[str, tuple[int, str | None]] = {}
    refreshed: dict[str, int] = {}
    for _, when, event in replayed.events:
        if when > at:
            break
        oid = str(event.originator_id)
        if isinstance(event, Token.Created):
            created[oid] = (when, (event.actor or {}).get("name"))
        elif isinstance(event, Token.Refreshed):
            refreshed[oid] = when
    return sorted(
        (t.id, t.name, tuple(t.scopes), created[t.id][0], created[t.id][1], refreshed.get(t.id), t.expires_at)
        for t in tokens.values()
        if t.workspace_id == workspace_id and t.alive(at)
    )


def test_the_reviews_rows_equal_a_replay_at_random_instants(service, workspace) -> None:
    rng = random.Random(15)
    setup, admin = workspace
    ws = str(setup.workspace.id)
    now = START
    clock.set_clock(lambda: now)
    names = ["a", "b", "c", "d", "e"]
    for _ in range(60):
        now += timedelta(seconds=rng.choice([0, 1, 2, 5, 13]))
        name = rng.choice(names)
        action = rng.choice(["create", "create_expiring", "expire", "refresh", "rename", "delete", "scope"])
        base = seconds(now)
        try:
            if action == "create":
                service.command(lambda: service.ledger.create_token(admin, name, ["PIPES:READ:top"]))
            elif action == "create_expiring":
                service.command(
                    lambda: service.ledger.create_token(
                        admin, name, ["DATASOURCES:READ:events:x > 1"], expires_at=base + rng.choice([1, 3, 20])
                    )
                )
            elif action == "expire":
                wanted = rng.choice([None, base + 2, base + 9])
                service.command(lambda: service.ledger.update_token(admin, name, expiry=(wanted,)))
            elif action == "refresh":
                service.command(lambda: service.ledger.refresh_token(admin, name, rng.choice([0, 5])))
            elif action == "rename":
                service.command(lambda: service.ledger.update_token(admin, name, name=rng.choice(names)))
            elif action == "delete":
                service.command(lambda: service.ledger.delete_token(admin, name))
            else:
                service.command(lambda: service.ledger.update_token(admin, name, add=["TOKENS"]))
        except Exception as error:  # refusals (a name taken, an expired token) are part of the history
            assert getattr(error, "status", 400) < 500, error
    clock.set_clock(None)
    service.sync()
    replayed = Replayed.load(service)
    history = History(service.read_engine)
    from tokentrail.projections.review import review

    times = sorted({at for _, at, _ in replayed.events})
    expiries = {e.expires_at * 1_000_000 for _, _, e in replayed.events if getattr(e, "expires_at", None)}
    candidates = sorted({t + d for t in set(times) | expiries for d in (-1, 0, 1)})
    for at in rng.sample(candidates, 40) + [micros(now) + 10**9]:
        got = review(service.read_engine, history, ws, at, {})
        rows = sorted(
            (
                r.token_id,
                r.name,
                tuple(r.scopes),
                r.created_at,
                r.created_by.get("name"),
                r.last_refresh_at,
                r.expires_at,
            )
            for r in got.rows
        )
        assert rows == _replayed_review(replayed, ws, at), f"review at {at}"
