"""Incident response on both backends: a token's exposure (what it could reach, when, through
which scope and filter), lookup by value without stored values, and bulk revocation as one
audited change."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt as pyjwt
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from tests.api_helpers import Realm, create, make_realm, path_of, url
from tests.helpers import FakeClock
from tokentrail.domain.clock import format_instant, to_micros
from tokentrail.domain.values import TokenSigner
from tokentrail.projections.deployments import deploy
from tokentrail.service import Service


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _at(moment: datetime) -> str:
    return format_instant(to_micros(moment))


def _events_table(service: Service) -> str:
    return "stored_events" if service.backend == "sqlite" else service.ledger.recorder.events_table_name


def _head(service: Service) -> int:
    return service.ledger.recorder.max_notification_id() or 0


def _exposure(client: TestClient, token: str, ref: str, **params: Any) -> dict[str, Any]:
    answer = client.get(url(f"/v0/tokens/{path_of(ref)}/exposure", token, **params))
    assert answer.status_code == 200, answer.text
    return answer.json()


def _reach(found: dict[str, Any]) -> dict[tuple[str, str, str, str], list[tuple[str, str | None]]]:
    return {
        (e["kind"], e["resource"], e["permission"], e["via"]): [(i["from"], i["to"]) for i in e["intervals"]]
        for e in found["exposure"]
    }


def _lookup(client: TestClient, token: str, value: str) -> Any:
    return client.post(url("/v0/tokens/lookup", token), json={"token": value})


@pytest.fixture
def realm(service: Service, fake: FakeClock) -> Realm:
    return make_realm(service, "main", "owner@example.com")


# -- exposure -----------------------------------------------------------------------------------


def test_exposure_follows_each_scope_over_its_life_and_ends_at_deletion(client, realm, fake) -> None:
    t0 = fake.now
    create(client, realm.admin, "leaky", "DATASOURCES:READ:events:country = 'ES'", "PIPES:READ:top")
    fake.advance(10)
    assert (
        client.put(
            url(
                "/v0/tokens/leaky",
                realm.admin,
                scope=["DATASOURCES:READ:events:country = 'ES'", "DATASOURCES:APPEND:events"],
            )
        ).status_code
        == 200
    )
    fake.advance(10)
    assert client.delete(url("/v0/tokens/leaky", realm.admin)).status_code == 200
    t10, t20 = t0 + timedelta(seconds=10), t0 + timedelta(seconds=20)

    found = _exposure(client, realm.admin, "leaky")  # a deleted token, by its (past) name
    assert found["deleted"] is True and found["generation"] is None
    assert (found["from"], found["to"]) == (_at(t0), _at(t20))
    filtered = "DATASOURCES:READ:events:country = 'ES'"
    assert _reach(found) == {
        ("datasource", "events", "READ", filtered): [(_at(t0), _at(t20))],
        ("datasource", "events_quarantine", "READ", filtered): [(_at(t0), _at(t20))],
        ("datasource", "events", "APPEND", "DATASOURCES:APPEND:events"): [(_at(t10), _at(t20))],
        ("pipe", "top", "READ", "PIPES:READ:top"): [(_at(t0), _at(t10))],
    }
    assert {e["filter"] for e in found["exposure"] if e["permission"] == "READ" and e["kind"] == "datasource"} == {
        "country = 'ES'"
    }
    # A window clips every interval to it.
    window = _exposure(client, realm.admin, "leaky", **{"from": _at(t0 + timedelta(seconds=5)), "to": _at(t10)})
    assert (window["from"], window["to"]) == (_at(t0 + timedelta(seconds=5)), _at(t10))
    assert _reach(window)[("pipe", "top", "READ", "PIPES:READ:top")] == [(_at(t0 + timedelta(seconds=5)), _at(t10))]
    assert ("datasource", "events", "APPEND", "DATASOURCES:APPEND:events") not in _reach(window)


def test_a_value_is_exposed_until_its_refresh_or_the_end_of_its_grace(client, realm, fake) -> None:
    t0 = fake.now
    first = create(client, realm.admin, "svc", "PIPES:READ:top")["token"]
    fake.advance(5)
    second = client.post(url("/v0/tokens/svc/refresh", realm.admin)).json()["token"]  # no grace
    fake.advance(3)
    third = client.post(url("/v0/tokens/svc/refresh", realm.admin, grace_seconds=30)).json()["token"]
    t5, t8 = t0 + timedelta(seconds=5), t0 + timedelta(seconds=8)

    key = ("pipe", "top", "READ", "PIPES:READ:top")
    by_first = _exposure(client, realm.admin, first)
    assert by_first["generation"] == 0 and _reach(by_first)[key] == [(_at(t0), _at(t5))]
    by_second = _exposure(client, realm.admin, second)
    assert by_second["generation"] == 1 and _reach(by_second)[key] == [(_at(t5), _at(t8 + timedelta(seconds=30)))]
    by_third = _exposure(client, realm.admin, third)
    assert by_third["generation"] == 2 and _reach(by_third)[key] == [(_at(t8), None)]
    assert by_third["to"] is None
    whole = _exposure(client, realm.admin, "svc")
    assert _reach(whole)[key] == [(_at(t0), None)]
    # Deleted while the second value is still in its grace: both end at the deletion.
    fake.advance(10)
    assert client.delete(url("/v0/tokens/svc", realm.admin)).status_code == 200
    t18 = _at(t0 + timedelta(seconds=18))
    assert _reach(_exposure(client, realm.admin, second))[key] == [(_at(t5), t18)]
    assert _reach(_exposure(client, realm.admin, third))[key] == [(_at(t8), t18)]


def test_the_admin_token_exposure_includes_the_jwts_signed_with_its_values(client, realm, fake) -> None:
    t0 = fake.now
    expires = int(time.time()) + 3600
    body = {"scopes": [{"type": "PIPES:READ", "resource": "top", "filter": "org = 'a'"}]}
    issued = client.post(url("/v0/tokens", realm.admin, name="embed", expiration_time=expires), json=body)
    assert issued.status_code == 200, issued.text
    fake.advance(4)
    refreshed = client.post(url("/v0/tokens/admin%20token/refresh", realm.admin, grace_seconds=20))
    assert refreshed.status_code == 200
    admin = refreshed.json()["token"]
    found = _exposure(client, admin, "admin token")
    assert [j["name"] for j in found["jwts"]] == ["embed"]
    (jwt,) = found["jwts"]
    assert jwt["invalidated_at"] == _at(t0 + timedelta(seconds=24))
    (entry,) = jwt["exposure"]
    assert (entry["kind"], entry["resource"], entry["permission"], entry["filter"]) == (
        "pipe",
        "top",
        "READ",
        "org = 'a'",
    )
    assert [(i["from"], i["to"]) for i in entry["intervals"]] == [(_at(t0), _at(t0 + timedelta(seconds=24)))]
    # The admin token's own ADMIN scope reaches everything, once, as a wildcard.
    assert ("*", "*", "*", "ADMIN") in _reach(found)
    # Traced by the new value, the JWT (signed with the old one) is not this value's.
    assert _exposure(client, admin, admin)["jwts"] == []
    assert [j["name"] for j in _exposure(client, admin, realm.admin)["jwts"]] == ["embed"]


def test_wildcards_appear_once_and_token_minting_scopes_are_reported_apart(client, realm) -> None:
    create(client, realm.admin, "wide", "WORKSPACE:READ_ALL", "DATASOURCES:CREATE", "TOKENS")
    found = _exposure(client, realm.admin, "wide")
    assert set(_reach(found)) == {
        ("*", "*", "READ", "WORKSPACE:READ_ALL"),
        ("datasource", "*", "APPEND", "DATASOURCES:CREATE"),
    }
    assert [e["via"] for e in found["escalation"]] == ["TOKENS"]


def test_exposure_is_for_token_managers_of_the_workspace(client, service, realm) -> None:
    reader = create(client, realm.admin, "reader", "PIPES:READ:top")["token"]
    manager = create(client, realm.admin, "manager", "TOKENS")["token"]
    other = make_realm(service, "other", "someone@example.com")
    assert client.get(url("/v0/tokens/reader/exposure", reader)).status_code == 403
    assert client.get(url("/v0/tokens/reader/exposure", manager)).status_code == 200
    # Another workspace's token, by name, id or value, does not exist for this caller.
    for ref in ("reader", create(client, realm.admin, "x", "PIPES:READ:top")["id"], reader):
        assert client.get(url(f"/v0/tokens/{path_of(ref)}/exposure", other.admin)).status_code == 404
    assert client.get(url("/v0/tokens/nothing/exposure", realm.admin)).status_code == 404
    assert client.get("/v0/tokens/reader/exposure").status_code == 403
    answer = client.get(url("/v0/tokens/reader/exposure", realm.admin, **{"from": "2026-05-01T00:00:00Z", "to": "1"}))
    assert answer.status_code == 400 and "error" in answer.json()
    assert client.get(url("/v0/tokens/reader/exposure", realm.admin, **{"from": "soon"})).status_code == 400


def test_a_value_in_its_grace_window_cannot_investigate(client, realm) -> None:
    old = create(client, realm.admin, "ops", "TOKENS")["token"]
    assert client.post(url("/v0/tokens/ops/refresh", realm.admin, grace_seconds=300)).status_code == 200
    assert client.get(url("/v0/tokens/ops/exposure", old)).status_code == 403
    assert _lookup(client, old, old).status_code == 403


# -- lookup by value ----------------------------------------------------------------------------


@settings(
    max_examples=8,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(st.tuples(st.sampled_from([0, 0, 5, 60]), st.sampled_from([1, 2, 10, 90])), min_size=1, max_size=6),
    delete=st.booleans(),
)
def test_lookup_names_every_generation_of_a_randomly_refreshed_token(
    client, service, realm, fake, steps: list[tuple[int, int]], delete: bool
) -> None:
    name = f"t{_head(service)}"
    made = create(client, realm.admin, name, "PIPES:READ:top")
    values = [(made["token"], to_micros(fake.now))]  # (value, became current at)
    windows: list[tuple[int, int | None]] = []  # (from, until) of each value
    for grace, pause in steps:
        answer = client.post(url(f"/v0/tokens/{name}/refresh", realm.admin, grace_seconds=grace))
        assert answer.status_code == 200
        at = to_micros(fake.now)
        windows.append((values[-1][1], at + grace * 1_000_000))
        values.append((answer.json()["token"], at))
        fake.advance(pause)
    windows.append((values[-1][1], None))
    deleted_at = None
    if delete:
        assert client.delete(url(f"/v0/tokens/{name}", realm.admin)).status_code == 200
        deleted_at = to_micros(fake.now)
        fake.advance(1)
    now = to_micros(fake.now)
    for generation, ((value, _), (start, until)) in enumerate(zip(values, windows)):
        if deleted_at is not None and (until is None or deleted_at < until):
            until = deleted_at
        found = _lookup(client, realm.admin, value)
        assert found.status_code == 200, found.text
        body = found.json()
        valid = until is None or now < until
        assert body["token_id"] == made["id"] and body["generation"] == generation and body["jwt"] is False
        assert body["valid_from"] == format_instant(start)
        assert body["valid_until"] == (format_instant(until) if until is not None else None)
        assert body["valid_now"] is valid
        if valid:
            assert body["reason"] == ("current" if generation == len(values) - 1 else "grace")
        else:
            assert body["reason"] == ("deleted" if until == deleted_at else "refreshed")
        # What authentication says agrees with the lookup.
        assert client.get(url("/v0/auth", value)).json()["valid"] is valid


def test_lookup_of_a_jwt_says_when_it_stopped(client, realm, fake) -> None:
    expires = int(fake.now.timestamp()) + 60
    body = {"scopes": [{"type": "PIPES:READ", "resource": "top"}]}
    jwt = client.post(url("/v0/tokens", realm.admin, name="embed", expiration_time=expires), json=body).json()
    found = _lookup(client, realm.admin, jwt["token"]).json()
    assert (found["jwt"], found["token_id"], found["reason"], found["valid_now"]) == (True, jwt["id"], "current", True)
    assert found["valid_until"] == format_instant(expires * 1_000_000)
    fake.advance(61)
    assert _lookup(client, realm.admin, jwt["token"]).json()["reason"] == "expired"
    other = client.post(url("/v0/tokens", realm.admin, name="embed2", expiration_time=expires + 600), json=body).json()
    admin = client.post(url("/v0/tokens/admin%20token/refresh", realm.admin)).json()["token"]
    found = _lookup(client, admin, other["token"]).json()
    assert (found["reason"], found["valid_now"]) == ("refreshed", False)


def test_lookup_of_a_jwt_signed_by_the_client_names_the_admin_value_that_signed_it(client, realm, fake) -> None:
    claims = {
        "workspace_id": realm.id,
        "name": "self-signed",
        "exp": int(fake.now.timestamp()) + 600,
        "scopes": [{"type": "PIPES:READ", "resource": "top"}],
    }
    mine = pyjwt.encode(claims, realm.admin, algorithm="HS256")  # as Tinybird's docs let clients do
    assert client.get(url("/v0/auth", mine)).json()["valid"] is True
    found = _lookup(client, realm.admin, mine).json()
    assert (found["jwt"], found["token_id"], found["name"], found["generation"]) == (
        True,
        realm.admin_id,
        "self-signed",
        0,
    )
    assert (found["valid_now"], found["reason"]) == (True, "current")
    fake.advance(5)
    admin = client.post(url("/v0/tokens/admin%20token/refresh", realm.admin, grace_seconds=60)).json()["token"]
    assert _lookup(client, admin, mine).json()["reason"] == "grace"
    fake.advance(61)
    found = _lookup(client, admin, mine).json()
    assert (found["valid_now"], found["reason"]) == (False, "refreshed")
    assert client.get(url("/v0/auth", mine)).json()["valid"] is False


def test_lookup_tells_nothing_about_values_it_did_not_sign_or_of_another_workspace(client, service, realm) -> None:
    other = make_realm(service, "other", "someone@example.com")
    mine = create(client, realm.admin, "mine", "PIPES:READ:top")
    forged = TokenSigner(b"k" * 32).make(realm.id, mine["id"], "0" * 32)
    claims = {"workspace_id": realm.id, "name": "x", "exp": int(time.time()) + 60, "jti": mine["id"], "scopes": []}
    forged_jwt = pyjwt.encode(claims, "not the admin value, not at all", algorithm="HS256")
    for value in (forged, forged_jwt, "p.garbage", "a.b.c", "x" * 20_000, other.admin, mine["token"] + "x"):
        answer = _lookup(client, realm.admin, value)
        assert answer.status_code == 404, (value[:40], answer.text)
        assert answer.json() == {"error": "Token not found"}
    assert _lookup(client, other.admin, mine["token"]).status_code == 404
    for body in (b"", b"{}", b'{"token": 5}', b"[1]", b"not json"):
        assert client.post(url("/v0/tokens/lookup", realm.admin), content=body).status_code == 400
    reader = create(client, realm.admin, "reader", "PIPES:READ:top")["token"]
    before = _head(service)
    assert _lookup(client, reader, mine["token"]).status_code == 403
    assert _head(service) == before  # refusals write nothing


def test_a_lookup_is_on_the_record_without_the_value(client, service, realm) -> None:
    leaked = create(client, realm.admin, "leaked", "PIPES:READ:top")["token"]
    found = _lookup(client, realm.admin, leaked).json()
    events = client.get(url("/v0/audit", realm.admin, event="TokenLookedUp")).json()["events"]
    assert len(events) == 1
    (event,) = events
    assert event["token_id"] == found["token_id"] and event["token_name"] == "leaked"
    assert event["actor"]["name"] == "admin token"
    assert event["details"] == {"jwt": False, "generation": 0, "outcome": "current"}
    signature = leaked.rsplit(".", 1)[1]
    with service.write_engine.connect() as conn:
        stored = [bytes(r[0]) for r in conn.execute(text(f"SELECT state FROM {_events_table(service)}"))]
        audit = [str(tuple(r)) for r in conn.execute(text("SELECT * FROM tt_audit"))]
    assert not any(signature.encode() in state for state in stored)
    assert not any(signature in row or leaked in row for row in audit)
    assert client.get(url("/v0/audit/verify", realm.admin)).json()["ok"] is True


# -- bulk revocation ----------------------------------------------------------------------------


def _revoke(client: TestClient, token: str, **params: Any) -> Any:
    return client.post(url("/v0/tokens/revoke", token, **params))


def test_a_dry_run_shows_the_plan_and_writes_nothing(client, service, realm) -> None:
    ops = create(client, realm.admin, "ops", "TOKENS")["token"]
    for name in ("a", "b"):
        create(client, ops, name, "DATASOURCES:READ:events")
    create(client, realm.admin, "c", "DATASOURCES:READ:events")
    before = _head(service)
    answer = _revoke(client, realm.admin, created_by="ops", dry_run="true")
    assert answer.status_code == 200, answer.text
    assert answer.json()["dry_run"] is True and answer.json()["revocation_id"] is None
    assert [t["name"] for t in answer.json()["tokens"]] == ["a", "b"]
    assert _head(service) == before


def test_selectors_combine_and_never_select_default_tokens(client, service, realm, fake) -> None:
    t0 = fake.now
    create(client, realm.admin, "old", "DATASOURCES:READ:events")
    fake.advance(60)
    create(client, realm.admin, "new", "DATASOURCES:READ:events", "PIPES:READ:top")
    create(client, realm.admin, "admin-ish", "ADMIN")
    deploy_files = {"datasources/events.datasource": "SCHEMA >\n    `a` String\n\nTOKEN ingest APPEND\n"}
    admin = service.auth.authenticate(realm.admin)
    deployed = deploy(service, admin, deploy_files)

    def plan(**selectors: str) -> list[str]:
        answer = _revoke(client, realm.admin, dry_run="true", **selectors)
        assert answer.status_code == 200, answer.text
        return [t["name"] for t in answer.json()["tokens"]]

    assert plan(resource="events") == ["ingest", "new", "old"]
    assert plan(resource="events", created_from=_at(t0 + timedelta(seconds=30))) == ["ingest", "new"]
    assert plan(created_to=_at(t0 + timedelta(seconds=30))) == ["old"]
    assert plan(scope_type="PIPES:READ") == ["new"]
    assert plan(scope_type="ADMIN") == ["admin-ish"]  # never the admin token, nor `admin <email>`
    assert plan(created_by="admin token") == ["admin-ish", "ingest", "new", "old"]  # the deployment too
    assert plan(deployment=deployed.deployment_id) == ["ingest"]
    assert plan(resource="nothing") == []


def test_a_revocation_is_one_audited_change(client, service, realm, monkeypatch) -> None:
    values = [create(client, realm.admin, f"t{i}", "DATASOURCES:READ:events")["token"] for i in range(5)]
    create(client, realm.admin, "keep", "PIPES:READ:top")
    before = _head(service)
    saves: list[int] = []  # aggregates per call of the event store's save: one call is one transaction
    save = service.ledger.save
    monkeypatch.setattr(service.ledger, "save", lambda *aggregates: saves.append(len(aggregates)) or save(*aggregates))
    answer = _revoke(client, realm.admin, resource="events", reason="values leaked in CI logs")
    monkeypatch.undo()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    revocation = body["revocation_id"]
    assert body["dry_run"] is False and revocation
    assert sorted(t["name"] for t in body["tokens"]) == [f"t{i}" for i in range(5)]
    for value in values:
        assert client.get(url("/v0/auth", value)).json()["valid"] is False
    assert [t["name"] for t in client.get(url("/v0/tokens", realm.admin)).json()["tokens"] if t["name"] == "keep"]
    # One transaction: the five tokens and their five name indexes in one save, and nothing else.
    assert saves == [10]
    assert _head(service) - before == 10  # five deletions, five names released
    listed = client.get(url("/v0/audit", realm.admin, revocation=revocation)).json()["events"]
    assert sorted(e["token_name"] for e in listed) == [f"t{i}" for i in range(5)]
    assert all(e["type"] == "Deleted" for e in listed)
    assert all(e["details"] == {"revocation_id": revocation, "reason": "values leaked in CI logs"} for e in listed)
    csv_export = client.get(url("/v0/audit", realm.admin, revocation=revocation, format="csv")).text
    assert csv_export.count("\n") == 6
    # The same selectors again: nothing left, nothing written, no id.
    again = _revoke(client, realm.admin, resource="events", reason="again").json()
    assert again == {"revocation_id": None, "dry_run": False, "tokens": []}
    assert client.get(url("/v0/audit/verify", realm.admin)).json()["ok"] is True


def test_bad_revocations_are_refused_and_write_nothing(client, service, realm) -> None:
    create(client, realm.admin, "a", "DATASOURCES:READ:events")
    manager = create(client, realm.admin, "manager", "TOKENS")["token"]
    before = _head(service)
    cases = [
        (realm.admin, {"reason": "x"}, 400),  # no selector
        (realm.admin, {"resource": "events"}, 400),  # no reason
        (realm.admin, {"resource": "events", "reason": "   "}, 400),
        (realm.admin, {"resource": "events", "reason": "x" * 1001}, 400),
        (realm.admin, {"resource": "events", "reason": "a\x07b"}, 400),
        (realm.admin, {"resource": "bad name", "reason": "x"}, 400),
        (realm.admin, {"scope_type": "EVERYTHING", "reason": "x"}, 400),
        (realm.admin, {"created_from": "tomorrow", "reason": "x"}, 400),
        (realm.admin, {"resource": "events", "reason": "x", "dry_run": "maybe"}, 400),
        (realm.admin, {"created_from": "2026-06-01T00:00:00Z", "created_to": "2026-01-01T00:00:00Z"}, 400),
        (manager, {"resource": "events", "reason": "x"}, 403),  # bulk revocation needs ADMIN
        (manager, {"resource": "events", "dry_run": "true"}, 403),
    ]
    for token, params, status in cases:
        answer = _revoke(client, token, **params)
        assert answer.status_code == status, (params, answer.text)
        assert "error" in answer.json()
    assert _head(service) == before
    assert client.get("/v0/tokens/revoke").status_code in (403, 404)  # a GET is a token name, never a revocation


def test_a_revocation_too_big_for_one_transaction_is_refused_whole(client, service, realm, monkeypatch) -> None:
    from tokentrail import incident

    for i in range(4):
        create(client, realm.admin, f"big-{i}", "DATASOURCES:READ:events")
    monkeypatch.setattr(incident, "MAX_REVOCATION", 3)
    before = _head(service)
    plan = _revoke(client, realm.admin, resource="events", dry_run="true")
    assert plan.status_code == 200 and len(plan.json()["tokens"]) == 4  # the plan is still shown
    answer = _revoke(client, realm.admin, resource="events", reason="too many")
    assert answer.status_code == 400 and "at most 3" in answer.json()["error"]
    assert _head(service) == before


def test_a_concurrent_create_is_in_the_revocation_or_untouched(service, realm) -> None:
    admin = service.auth.authenticate(realm.admin)
    created: list[str] = []
    stop = threading.Event()

    def creating() -> None:
        i = 0
        while not stop.is_set() and i < 200:
            change = service.command(
                lambda n=i: service.ledger.create_token(admin, f"burst-{n}", ["DATASOURCES:READ:events"])
            )
            created.append(str(change.token.id))
            i += 1

    for i in range(20):
        service.command(lambda n=i: service.ledger.create_token(admin, f"seed-{n}", ["DATASOURCES:READ:events"]))
    from tokentrail import incident
    from tokentrail.reads import Selectors

    worker = threading.Thread(target=creating)
    worker.start()
    try:
        time.sleep(0.05)
        revocation_id, revoked = incident.revoke(service, admin, Selectors(resource="events"), "leak", False)
    finally:
        stop.set()
        worker.join()
    service.sync()
    assert revocation_id is not None
    revoked_ids = {token_id for token_id, _ in revoked}
    with service.read_engine.connect() as conn:
        rows = conn.execute(
            text("SELECT token_id, revocation_id FROM tt_audit WHERE type = 'Deleted' AND aggregate = 'token'")
        ).all()
    deleted = {token_id: rid for token_id, rid in rows}
    assert set(deleted) == revoked_ids and set(deleted.values()) == {revocation_id}
    for token_id in created:
        row = service.queries.token(token_id)
        assert row is not None
        assert row.deleted == (token_id in revoked_ids)  # in it, or untouched: never half
