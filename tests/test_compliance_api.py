"""The compliance routes over ASGI, on real SQLite and PostgreSQL: the audit trail with
its filters, pages and exports; token histories; the token table as of an instant; who held a
permission at an instant and what changed between two; who may ask; and that no workspace sees
another's data. Time is a FakeClock, so every instant below is exact.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.helpers import FakeClock
from tests.test_api import Realm, assert_error, create, create_jwt, head, path_of, url
from tokentrail.api.routes.ledger import CSV_COLUMNS

TOKEN_VALUE = re.compile(r"p\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")


def future_clock() -> FakeClock:
    """A fake clock a day ahead of the real one: the workspace fixtures wrote with the real clock,
    and effective time never goes back in log order."""
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    return FakeClock(start)


def at(moment: datetime) -> str:
    """An instant as the API takes it: ISO 8601 with an offset (form-encoded by `url`)."""
    return moment.isoformat()


def ok(response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def audit(client, token: str, **params: Any) -> list[dict[str, Any]]:
    body = ok(client.get(url("/v0/audit", token, limit=1000, **params)))
    assert body["next_cursor"] is None
    return body["events"]


def realms(client, token: str) -> set[str]:
    """The workspace's id and its owner's user id: a workspace's trail holds the owner's own events
    (the user and the user token) besides its own."""
    workspace = ok(client.get(url("/v0/workspace", token)))
    return {workspace["id"], workspace["user_id"]}


@dataclass
class Story:
    """A workspace's history with the instants between its steps."""

    ws: Realm
    manager: dict[str, Any]  # a TOKENS token that made some of the changes
    reader_id: str
    writer_id: str
    deployment_id: str
    instants: dict[str, datetime]


@pytest.fixture
def story(client, ws) -> Story:
    """created reader (READ events, filtered) -> manager creates writer -> reader re-scoped and
    renamed -> writer refreshed -> reader deleted -> a deployment; an instant after each step."""
    fake = future_clock()
    marks: dict[str, datetime] = {}
    manager = create(client, ws.admin, "manager", "TOKENS")
    fake.advance(10)
    reader = create(client, ws.admin, "reader", "DATASOURCES:READ:events:country = 'ES'")
    marks["created"] = fake.now
    fake.advance(10)
    writer = create(client, manager["token"], "writer", "DATASOURCES:APPEND:events", "PIPES:READ:top")
    marks["writer"] = fake.now
    fake.advance(10)
    ok(client.put(url(f"/v0/tokens/{reader['id']}", ws.admin, scope=["DATASOURCES:READ:events"], name="reader2")))
    marks["rescoped"] = fake.now
    fake.advance(10)
    ok(client.post(url(f"/v0/tokens/{writer['id']}/refresh", manager["token"])))
    marks["refreshed"] = fake.now
    fake.advance(10)
    ok(client.delete(url(f"/v0/tokens/{reader['id']}", ws.admin)))
    marks["deleted"] = fake.now
    fake.advance(10)
    files = {"datasources/events.datasource": 'SCHEMA >\n    `id` Int32\n\nTOKEN "ingest" APPEND\n'}
    deployed = ok(client.post(url("/v0/deployments", ws.admin), content=json.dumps(files).encode()))
    marks["deployed"] = fake.now
    fake.advance(10)
    return Story(ws, manager, reader["id"], writer["id"], deployed["deployment"]["id"], marks)


# -- GET /v0/audit: filters ------------------------------------------------------------------------


def test_the_audit_trail_lists_the_workspaces_events_in_log_order_in_the_spec_shape(client, story) -> None:
    events = audit(client, story.ws.admin)
    positions = [e["position"] for e in events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert {e["workspace_id"] for e in events} == realms(client, story.ws.admin)
    for key in (
        "position",
        "at",
        "type",
        "workspace_id",
        "token_id",
        "token_name",
        "actor",
        "request_id",
        "origin",
        "scopes_before",
        "scopes_after",
        "hash",
    ):
        assert all(key in e for e in events), key
    reader = [e for e in events if e["token_id"] == story.reader_id]
    assert [e["type"] for e in reader][0] == "Created" and reader[-1]["type"] == "Deleted"
    assert reader[0]["scopes_after"] == ["DATASOURCES:READ:events:country = 'ES'"]


def test_the_audit_time_range_is_from_inclusive_to_exclusive(client, story) -> None:
    m = story.instants
    events = audit(client, story.ws.admin, **{"from": at(m["rescoped"]), "to": at(m["deleted"])})
    assert events and all(at(m["rescoped"]) <= e["at"] < at(m["deleted"]) for e in events)
    assert {e["type"] for e in events} >= {"ScopeRemoved", "ScopeAdded", "Renamed", "Refreshed"}
    assert not any(e["type"] in ("Created", "Deleted") for e in events)
    whole = audit(client, story.ws.admin)
    inside = [e for e in whole if at(m["rescoped"]) <= e["at"] < at(m["deleted"])]
    assert events == inside
    unix = audit(
        client, story.ws.admin, **{"from": f"{m['rescoped'].timestamp():.6f}", "to": f"{m['deleted'].timestamp():.6f}"}
    )
    assert unix == events


def test_the_audit_filters_by_actor_id_or_name(client, story) -> None:
    by_id = audit(client, story.ws.admin, actor=story.manager["id"])
    by_name = audit(client, story.ws.admin, actor="manager")
    assert by_id == by_name and by_id
    assert {e["type"] for e in by_id} == {"Created", "Refreshed"}
    assert {e["token_id"] for e in by_id} == {story.writer_id}
    assert all(e["actor"] == {"token_id": story.manager["id"], "name": "manager"} for e in by_id)


def test_the_audit_filters_by_token_id_and_by_token_name(client, story) -> None:
    by_id = audit(client, story.ws.admin, token_id=story.reader_id)
    assert by_id and {e["token_id"] for e in by_id} == {story.reader_id}
    assert [e["type"] for e in by_id][-1] == "Deleted"
    by_name = audit(client, story.ws.admin, token_name="writer")
    assert by_name and {e["token_id"] for e in by_name} == {story.writer_id}


def test_the_audit_filters_by_resource_through_the_scopes_before_or_after(client, story) -> None:
    top = audit(client, story.ws.admin, resource="top")
    assert top and {e["token_id"] for e in top} == {story.writer_id}
    events = audit(client, story.ws.admin, resource="events")
    assert {story.reader_id, story.writer_id} <= {e["token_id"] for e in events}
    assert audit(client, story.ws.admin, resource="nothing_here") == []


def test_the_audit_filters_by_event_types(client, story) -> None:
    events = audit(client, story.ws.admin, event="Created,Deleted")
    assert events and {e["type"] for e in events} == {"Created", "Deleted"}
    assert [e["type"] for e in audit(client, story.ws.admin, event="Refreshed")] == ["Refreshed"]


def test_the_audit_filters_by_deployment(client, story) -> None:
    events = audit(client, story.ws.admin, deployment=story.deployment_id)
    assert events and all(e["deployment_id"] == story.deployment_id and e["origin"] == "deployment" for e in events)
    assert "ingest" in {e["token_name"] for e in events}
    assert audit(client, story.ws.admin, deployment="00000000-0000-0000-0000-000000000000") == []


def test_audit_filters_combine(client, story) -> None:
    events = audit(
        client, story.ws.admin, token_id=story.reader_id, event="Renamed", **{"from": at(story.instants["writer"])}
    )
    assert [(e["type"], e["token_name"]) for e in events] == [("Renamed", "reader2")]


# -- GET /v0/audit: pages ----------------------------------------------------------------------------


def pages(client, token: str, limit: int, between=None, **params: Any) -> list[list[dict[str, Any]]]:
    out, cursor = [], None
    while True:
        extra = {"cursor": cursor} if cursor else {}
        body = ok(client.get(url("/v0/audit", token, limit=limit, **params, **extra)))
        out.append(body["events"])
        cursor = body["next_cursor"]
        if cursor is None:
            return out
        if between:
            between()


def test_cursor_pages_have_no_duplicates_and_no_gaps(client, story) -> None:
    whole = audit(client, story.ws.admin)
    walked = pages(client, story.ws.admin, limit=3)
    assert all(len(p) <= 3 for p in walked) and all(walked[:-1])
    assert [e for p in walked for e in p] == whole


def test_cursor_pages_are_stable_under_concurrent_appends(client, story) -> None:
    """Events appended while a client pages come after everything it already saw, once each."""
    count = iter(range(100))
    walked = pages(
        client,
        story.ws.admin,
        limit=4,
        between=lambda: create(client, story.ws.admin, f"late-{next(count)}", "PIPES:READ:top"),
    )
    flat = [e["position"] for p in walked for e in p]
    assert len(flat) == len(set(flat)) and flat == sorted(flat)
    assert [e["position"] for e in audit(client, story.ws.admin)] == flat  # nothing skipped


def test_filtered_pages_walk_the_filtered_result(client, story) -> None:
    whole = audit(client, story.ws.admin, event="Created")
    walked = pages(client, story.ws.admin, limit=1, event="Created")
    assert [e for p in walked for e in p] == whole and len(whole) > 2


# -- exports -------------------------------------------------------------------------------------


def test_ndjson_and_csv_export_the_whole_result_without_token_values(client, story) -> None:
    # More events than one default page (100), written in one transaction by a deployment.
    lines = "".join(f'TOKEN "bulk {i}" READ\n' for i in range(110))
    files = {"datasources/bulk.datasource": "SCHEMA >\n    `id` Int32\n\n" + lines}
    ok(client.post(url("/v0/deployments", story.ws.admin), content=json.dumps(files).encode()))
    whole: list[dict[str, Any]] = []
    for p in pages(client, story.ws.admin, limit=100):
        whole += p
    ndjson = client.get(url("/v0/audit", story.ws.admin, format="ndjson"))
    assert ndjson.status_code == 200 and ndjson.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in ndjson.text.splitlines() if line]
    assert lines == whole and len(whole) > 100
    exported = client.get(url("/v0/audit", story.ws.admin, format="csv"))
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(exported.text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [int(r[0]) for r in rows[1:]] == [e["position"] for e in whole]
    for text_ in (ndjson.text, exported.text):
        assert not TOKEN_VALUE.search(text_)
        assert story.ws.admin not in text_ and story.manager["token"] not in text_


def test_exports_apply_the_filters(client, story) -> None:
    ndjson = client.get(url("/v0/audit", story.ws.admin, format="ndjson", token_id=story.reader_id))
    lines = [json.loads(line) for line in ndjson.text.splitlines() if line]
    assert lines == audit(client, story.ws.admin, token_id=story.reader_id)
    exported = client.get(url("/v0/audit", story.ws.admin, format="csv", event="Deleted"))
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["type"] for r in rows] == ["Deleted"] and rows[0]["token_id"] == story.reader_id


# -- GET /v0/tokens/{x}/history --------------------------------------------------------------------


def test_a_deleted_tokens_history_is_served_by_id_and_by_its_last_name(client, story) -> None:
    by_id = ok(client.get(url(f"/v0/tokens/{story.reader_id}/history", story.ws.admin)))
    assert by_id["token_id"] == story.reader_id
    types = [e["type"] for e in by_id["events"]]
    assert types[0] == "Created" and types[-1] == "Deleted" and "Renamed" in types
    assert by_id == ok(client.get(url(f"/v0/tokens/{path_of('reader2')}/history", story.ws.admin)))
    assert by_id == ok(client.get(url("/v0/tokens/reader/history", story.ws.admin)))  # a past name
    assert by_id["events"] == audit(client, story.ws.admin, token_id=story.reader_id)


def test_a_live_tokens_history_by_value(client, story) -> None:
    writer = ok(client.get(url(f"/v0/tokens/{story.writer_id}", story.ws.admin)))
    body = ok(client.get(url(f"/v0/tokens/{path_of(writer['token'])}/history", story.ws.admin)))
    assert [e["type"] for e in body["events"]] == ["Created", "Refreshed"]


def test_a_token_reads_its_own_history_but_not_anothers(client, story) -> None:
    plain = create(client, story.ws.admin, "plain", "PIPES:READ:top")
    own = ok(client.get(url(f"/v0/tokens/{plain['id']}/history", plain["token"])))
    assert [e["type"] for e in own["events"]] == ["Created"]
    assert_error(client.get(url(f"/v0/tokens/{story.writer_id}/history", plain["token"])), 403)


# -- as of -----------------------------------------------------------------------------------------


def test_the_token_table_as_of_an_instant_shows_each_token_as_it_stood(client, story) -> None:
    m = story.instants
    listed = ok(client.get(url("/v0/tokens", story.ws.admin, as_of=at(m["created"]))))
    by_name = {t["name"]: t for t in listed["tokens"]}
    assert "writer" not in by_name and "reader2" not in by_name
    assert by_name["reader"]["scopes"] == [
        {"type": "DATASOURCES:READ", "resource": "events", "filter": "country = 'ES'"}
    ]
    assert all("token" not in t for t in listed["tokens"])  # never a value
    later = {t["name"]: t for t in ok(client.get(url("/v0/tokens", story.ws.admin, as_of=at(m["rescoped"]))))["tokens"]}
    assert later["reader2"]["id"] == story.reader_id and "reader" not in later
    assert later["reader2"]["scopes"] == [{"type": "DATASOURCES:READ", "resource": "events", "filter": ""}]
    gone = ok(client.get(url("/v0/tokens", story.ws.admin, as_of=at(m["deleted"]))))["tokens"]
    assert story.reader_id not in {t["id"] for t in gone}


def test_one_token_as_of_an_instant_by_id_and_by_the_name_it_had_then(client, story) -> None:
    m = story.instants
    then = ok(client.get(url(f"/v0/tokens/{story.reader_id}", story.ws.admin, as_of=at(m["created"]))))
    assert then["name"] == "reader" and "token" not in then
    assert ok(client.get(url("/v0/tokens/reader", story.ws.admin, as_of=at(m["created"]))))["id"] == story.reader_id
    assert ok(client.get(url("/v0/tokens/reader2", story.ws.admin, as_of=at(m["refreshed"]))))["id"] == story.reader_id
    assert_error(client.get(url(f"/v0/tokens/{story.reader_id}", story.ws.admin, as_of=at(m["deleted"]))), 404)
    assert_error(client.get(url("/v0/tokens/writer", story.ws.admin, as_of=at(m["created"]))), 404)  # not yet


def test_a_reused_name_as_of_an_instant_is_the_token_that_held_it_then(client, ws) -> None:
    fake = future_clock()
    first = create(client, ws.admin, "shared", "PIPES:READ:a")
    t1 = fake.now
    fake.advance(5)
    ok(client.delete(url(f"/v0/tokens/{first['id']}", ws.admin)))
    fake.advance(5)
    second = create(client, ws.admin, "shared", "PIPES:READ:b")
    t2 = fake.now
    assert ok(client.get(url("/v0/tokens/shared", ws.admin, as_of=at(t1))))["id"] == first["id"]
    assert ok(client.get(url("/v0/tokens/shared", ws.admin, as_of=at(t2))))["id"] == second["id"]
    listed = ok(client.get(url("/v0/tokens", ws.admin, as_of=at(t1))))["tokens"]
    assert [t["id"] for t in listed if t["name"] == "shared"] == [first["id"]]
    history = ok(client.get(url(f"/v0/tokens/{first['id']}/history", ws.admin)))["events"]
    assert [e["type"] for e in history] == ["Created", "Deleted"]


def test_as_of_before_the_workspace_existed_is_an_empty_table(client, story) -> None:
    assert ok(client.get(url("/v0/tokens", story.ws.admin, as_of="1000")))["tokens"] == []


# -- GET /v0/access ----------------------------------------------------------------------------------


def access(client, token: str, **params: Any) -> dict[str, dict[str, Any]]:
    body = ok(client.get(url("/v0/access", token, **params)))
    return {g["name"]: g for g in body["grants"]}


def test_access_names_each_holder_with_the_scope_and_filter_that_granted_it(client, ws) -> None:
    future_clock()
    create(client, ws.admin, "direct", "DATASOURCES:READ:events:org = 'a'")
    create(client, ws.admin, "all", "WORKSPACE:READ_ALL")
    create(client, ws.admin, "elsewhere", "DATASOURCES:READ:other")
    assert (
        create_jwt(
            client,
            ws.admin,
            "embed",
            [{"type": "DATASOURCES:READ", "resource": "events", "filter": "org = 'b'"}],
            ttl=3 * 86_400,
        ).status_code
        == 200
    )
    grants = access(client, ws.admin, resource="events", kind="datasource", permission="READ")
    assert grants["direct"] == {
        "token_id": grants["direct"]["token_id"],
        "name": "direct",
        "via": "DATASOURCES:READ:events:org = 'a'",
        "filter": "org = 'a'",
        "jwt": False,
    }
    assert grants["all"]["via"] == "WORKSPACE:READ_ALL" and grants["all"]["filter"] == ""
    assert grants["admin token"]["via"] == "ADMIN"
    assert grants["embed"]["jwt"] is True and grants["embed"]["filter"] == "org = 'b'"
    assert "elsewhere" not in grants and "create datasource token" not in grants


def test_access_applies_the_quarantine_rule(client, ws) -> None:
    future_clock()
    create(client, ws.admin, "direct", "DATASOURCES:READ:events")
    grants = access(client, ws.admin, resource="events_quarantine", kind="datasource", permission="READ")
    assert grants["direct"]["via"] == "DATASOURCES:READ:events"
    assert "direct" not in access(client, ws.admin, resource="events_quarantine", permission="APPEND")


def test_access_to_append_and_drop(client, ws) -> None:
    future_clock()
    create(client, ws.admin, "appender", "DATASOURCES:APPEND:events")
    create(client, ws.admin, "dropper", "DATASOURCES:DROP:events", "PIPES:DROP:top")
    appenders = access(client, ws.admin, resource="events", kind="datasource", permission="APPEND")
    assert appenders["appender"]["via"] == "DATASOURCES:APPEND:events"
    assert appenders["create datasource token"]["via"] == "DATASOURCES:CREATE"
    assert "dropper" not in appenders
    droppers = access(client, ws.admin, resource="events", kind="datasource", permission="DROP")
    assert droppers["dropper"]["via"] == "DATASOURCES:DROP:events" and "appender" not in droppers
    assert (
        access(client, ws.admin, resource="top", kind="pipe", permission="DROP")["dropper"]["via"] == "PIPES:DROP:top"
    )


def test_access_as_of_an_instant_is_what_was_held_then(client, story) -> None:
    m = story.instants
    then = access(client, story.ws.admin, resource="events", permission="READ", as_of=at(m["created"]))
    assert then["reader"]["filter"] == "country = 'ES'"
    later = access(client, story.ws.admin, resource="events", permission="READ", as_of=at(m["rescoped"]))
    assert "reader" not in later and later["reader2"]["filter"] == ""
    assert "reader2" not in access(client, story.ws.admin, resource="events", as_of=at(m["deleted"]))
    before = access(client, story.ws.admin, resource="events", permission="APPEND", as_of=at(m["created"]))
    assert "writer" not in before
    assert "writer" in access(client, story.ws.admin, resource="events", permission="APPEND", as_of=at(m["writer"]))


def test_access_diff_names_what_was_gained_lost_and_changed(client, story) -> None:
    m = story.instants
    body = ok(
        client.get(
            url(
                "/v0/access/diff",
                story.ws.admin,
                resource="events",
                kind="datasource",
                permission="READ",
                **{"from": at(m["created"]), "to": at(m["rescoped"])},
            )
        )
    )
    assert body["gained"] == [] and body["lost"] == []
    [change] = body["changed"]
    assert change["before"]["filter"] == "country = 'ES'" and change["after"]["filter"] == ""
    assert change["after"]["name"] == "reader2" and change["after"]["resource"] == "events"
    body = ok(client.get(url("/v0/access/diff", story.ws.admin, **{"from": at(m["created"]), "to": at(m["deleted"])})))
    gained = {(g["name"], g["resource"], g["permission"]) for g in body["gained"]}
    assert {("writer", "events", "APPEND"), ("writer", "top", "READ")} <= gained
    lost = {(g["name"], g["resource"], g["permission"]) for g in body["lost"]}
    assert ("reader", "events", "READ") in lost and ("reader", "events_quarantine", "READ") in lost
    assert all(g["kind"] in ("datasource", "pipe") for g in body["gained"] + body["lost"])


# -- bad parameters ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, params, status",
    [
        ("/v0/audit", {"from": "yesterday"}, 400),
        ("/v0/audit", {"to": "2026-03-01T12:00:00"}, 400),  # no offset
        ("/v0/audit", {"cursor": "not-a-cursor"}, 400),
        ("/v0/audit", {"cursor": "eyJwIjogLTF9"}, 400),  # {"p": -1}
        ("/v0/audit", {"limit": "0"}, 400),
        ("/v0/audit", {"limit": "100000"}, 400),
        ("/v0/audit", {"limit": "ten"}, 400),
        ("/v0/audit", {"format": "xml"}, 400),
        ("/v0/tokens", {"as_of": "soon"}, 400),
        ("/v0/tokens/nobody", {"as_of": "1700000000"}, 404),
        ("/v0/tokens/nobody/history", {}, 404),
        ("/v0/tokens/00000000-0000-0000-0000-000000000000/history", {}, 404),
        ("/v0/access", {}, 400),
        ("/v0/access", {"resource": "events", "kind": "table"}, 400),
        ("/v0/access", {"resource": "events", "permission": "WRITE"}, 400),
        ("/v0/access", {"resource": "top", "kind": "pipe", "permission": "APPEND"}, 400),
        ("/v0/access", {"resource": "events", "as_of": "-5"}, 400),
        ("/v0/access", {"resource": "bad name!"}, 400),
        ("/v0/access/diff", {}, 400),
        ("/v0/access/diff", {"from": "2000", "to": "1000"}, 400),
        ("/v0/access/diff", {"from": "1000", "kind": "table"}, 400),
    ],
)
def test_bad_parameters_are_a_json_4xx_and_write_nothing(client, service, ws, path, params, status) -> None:
    before = head(service)
    assert_error(client.get(url(path, ws.admin, **params)), status)
    assert head(service) == before


# -- who may ask ---------------------------------------------------------------------------------


COMPLIANCE_READS = [
    ("/v0/audit", {}),
    ("/v0/audit", {"format": "ndjson"}),
    ("/v0/tokens", {"as_of": "1700000000"}),
    ("/v0/access", {"resource": "events"}),
    ("/v0/access/diff", {"from": "1000"}),
]


def test_admin_and_tokens_callers_may_read_the_compliance_views(client, ws) -> None:
    manager = create(client, ws.admin, "manager", "TOKENS")
    for path, params in COMPLIANCE_READS:
        for value in (ws.admin, manager["token"], ws.value("admin owner@example.com")):
            assert client.get(url(path, value, **params)).status_code == 200, (path, value)


def test_other_tokens_jwts_and_the_user_token_may_not(client, ws) -> None:
    reader = create(client, ws.admin, "reader", "DATASOURCES:READ:events", "WORKSPACE:READ_ALL")
    jwt = create_jwt(client, ws.admin, "embed", [{"type": "PIPES:READ", "resource": "top"}]).json()["token"]
    for path, params in COMPLIANCE_READS:
        for value in (reader["token"], ws.value("create datasource token"), jwt, ws.user):
            assert_error(client.get(url(path, value, **params)), 403)
        assert_error(client.get(url(path, None, **params)), 403)


def test_another_workspaces_data_never_leaks(client, story, other) -> None:
    secret = other.tokens["secret"]
    for ref in (secret["id"], "secret", path_of(secret["token"])):
        assert_error(client.get(url(f"/v0/tokens/{ref}/history", story.ws.admin)), 404)
        assert_error(client.get(url(f"/v0/tokens/{ref}", story.ws.admin, as_of=at(story.instants["deployed"]))), 404)
    events = audit(client, story.ws.admin)
    assert {e["workspace_id"] for e in events} == realms(client, story.ws.admin)
    assert other.id not in {e["workspace_id"] for e in events}
    assert audit(client, story.ws.admin, token_id=secret["id"]) == []
    assert audit(client, story.ws.admin, actor=other.admin_id) == []
    assert audit(client, story.ws.admin, resource="top") and secret["id"] not in {
        e["token_id"] for e in audit(client, story.ws.admin, resource="top")
    }
    now = "4000000000"
    listed = ok(client.get(url("/v0/tokens", story.ws.admin, as_of=now)))["tokens"]
    assert secret["id"] not in {t["id"] for t in listed} and "secret" not in {t["name"] for t in listed}
    grants = ok(client.get(url("/v0/access", story.ws.admin, resource="top", kind="pipe", as_of=now)))["grants"]
    assert secret["id"] not in {g["token_id"] for g in grants} and other.admin_id not in {g["token_id"] for g in grants}
    diff = ok(client.get(url("/v0/access/diff", story.ws.admin, **{"from": "1000", "to": now})))
    assert secret["id"] not in {g["token_id"] for g in diff["gained"]}
    theirs = audit(client, other.admin)
    assert {e["workspace_id"] for e in theirs} == realms(client, other.admin)
    assert story.reader_id not in {e["token_id"] for e in theirs}
    ndjson = client.get(url("/v0/audit", other.admin, format="ndjson")).text
    assert story.ws.id not in ndjson
