"""Deployments end to end: a project tree on disk, `POST /v0/deployments` and the
ledger, on real SQLite and PostgreSQL.

The project below is what a Tinybird user keeps in git: datasources and pipes in subfolders, one
token name ("dashboard") declared by several files, quoted names with spaces, comments, a
lower-case `token` command, and `token` words inside SQL/SCHEMA blocks that are not TOKEN lines.
Every refusal must be a 4xx JSON error that writes nothing (the log's head does not move).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.helpers import FakeClock
from tests.test_api import Realm, assert_error, create, create_jwt, head, make_realm, url
from tokentrail.domain.datafiles import parse_project, read_project
from tokentrail.domain.deploy import CurrentToken, desired_tokens, plan_deployment
from tokentrail.domain.errors import Conflict, NameTaken
from tokentrail.domain.policy import Caller
from tokentrail.projections.deployments import current_tokens
from tokentrail.service import Service

# -- the project --------------------------------------------------------------------------------

EVENTS = """\
DESCRIPTION >
    Raw page views. The `token` column is the visitor's session token, not an Auth token.

SCHEMA >
    `timestamp` DateTime `json:$.timestamp`,
    `session_id` String `json:$.session_id`,
    `token` String `json:$.token`

ENGINE "MergeTree"
ENGINE_SORTING_KEY "timestamp"

# TOKEN "commented out" READ
TOKEN "events reader" READ   # the analytics team
token ingest APPEND
Token 'dashboard' read
"""

USERS = """\
SCHEMA >
    `user_id` String,
    `plan` LowCardinality(String)

TOKEN dashboard READ
TOKEN "users ingest" APPEND
"""

TOP_PAGES = """\
DESCRIPTION >
    Most visited pages

NODE top
SQL >
    %
    SELECT session_id, count() AS hits
    FROM events
    WHERE token = {{ String(token, 'x') }}
    GROUP BY session_id
    TOKEN "not a token line" READ

TYPE endpoint

TOKEN "dashboard" READ
TOKEN "events reader" READ
"""

SESSIONS = """\
NODE sessions
SQL >
    SELECT session_id, min(timestamp) AS started FROM events GROUP BY session_id

TYPE endpoint
TOKEN "dashboard" READ
"""

PROJECT = {
    "datasources/events.datasource": EVENTS,
    "datasources/users.datasource": USERS,
    "pipes/top_pages.pipe": TOP_PAGES,
    "pipes/endpoints/sessions.pipe": SESSIONS,
    "README.md": "TOKEN readme READ\n",  # not a datafile: ignored
    "fixtures/events.ndjson": '{"token": "TOKEN x READ"}\n',
}

FIRST = {
    "dashboard": [
        "DATASOURCES:READ:events",
        "DATASOURCES:READ:users",
        "PIPES:READ:sessions",
        "PIPES:READ:top_pages",
    ],
    "events reader": ["DATASOURCES:READ:events", "PIPES:READ:top_pages"],
    "ingest": ["DATASOURCES:APPEND:events"],
    "users ingest": ["DATASOURCES:APPEND:users"],
}

# The second version of the project: `ingest` renamed to "events ingest", the "events reader" line
# moved from top_pages.pipe to sessions.pipe, users.datasource removed (so "dashboard" loses its
# READ on users and "users ingest" is declared nowhere any more).
SECOND_FILES = {
    "datasources/events.datasource": EVENTS.replace("token ingest APPEND", 'TOKEN "events ingest" APPEND'),
    "pipes/top_pages.pipe": TOP_PAGES.replace('TOKEN "events reader" READ\n', ""),
    "pipes/endpoints/sessions.pipe": SESSIONS + 'TOKEN "events reader" READ\n',
}
SECOND = {
    "dashboard": ["DATASOURCES:READ:events", "PIPES:READ:sessions", "PIPES:READ:top_pages"],
    "events ingest": ["DATASOURCES:APPEND:events"],
    "events reader": ["DATASOURCES:READ:events", "PIPES:READ:sessions"],
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for path, content in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    return root


def project(tmp_path: Path, files: dict[str, str] = PROJECT, name: str = "project") -> dict[str, str]:
    """The datafiles of a tree written to disk, read back as the CLI reads them."""
    return read_project(write_tree(tmp_path / name, files))


# -- helpers ------------------------------------------------------------------------------------


def deploy(client: TestClient, token: str | None, files: dict[str, str], check: bool = False) -> httpx.Response:
    """JSON `{path: content}`, the token in `?token=`."""
    params = {"check": "true"} if check else {}
    return client.post(url("/v0/deployments", token, **params), content=json.dumps(files).encode())


def forward_deploy(client: TestClient, token: str, files: dict[str, str], check: bool = False) -> httpx.Response:
    """Multipart as Forward's `tb deploy` sends it: a `context://` part, then one `data_project://`
    part per file named by its relative path; the token in a Bearer header."""
    parts = [("context://", ("cli-version", "1.0.0", "text/plain"))]
    parts += [("data_project://", (path, content.encode(), "text/plain")) for path, content in files.items()]
    return client.post(
        "/v0/deployments" + ("?check=true" if check else ""),
        files=parts,
        headers={"Authorization": f"Bearer {token}"},
    )


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def datafile_tokens(service: Service, workspace_id: str) -> dict[str, list[str]]:
    service.sync()
    return {r.name: sorted(r.scopes) for r in service.queries.tokens(workspace_id) if r.kind == "datafile"}


def all_tokens(service: Service, workspace_id: str) -> dict[str, tuple[str, list[str]]]:
    service.sync()
    return {r.name: (r.id, sorted(r.scopes)) for r in service.queries.tokens(workspace_id)}


def changes(answer: dict[str, Any]) -> list[tuple[str, str, list[str], list[str]]]:
    """token_changes as (name, change, added, removed), permissions as `kind:resource:PERM`."""

    def flat(items: list[dict[str, str]]) -> list[str]:
        return [f"{p['resource_type']}:{p['resource_name']}:{p['permission']}" for p in items]

    return [
        (
            c["token_name"],
            c["change_type"],
            flat(c["permission_changes"]["added_permissions"]),
            flat(c["permission_changes"]["removed_permissions"]),
        )
        for c in answer["deployment"]["token_changes"]
    ]


def audit(client: TestClient, token: str, **params: Any) -> list[dict[str, Any]]:
    return ok(client.get(url("/v0/audit", token, limit=1000, **params)))["events"]


def value_of(client: TestClient, admin: str, name: str) -> str:
    listed = {t["name"]: t for t in ok(client.get(url("/v0/tokens", admin)))["tokens"]}
    return listed[name]["token"]


def allowed(client: TestClient, value: str, permission: str) -> bool:
    return ok(client.get(url("/v0/auth", value, permission=permission)))["allowed"]


def stored_events(service: Service, start: int, stop: int) -> list[Any]:
    """The domain events at log positions start..stop, hidden ones (name index) included."""
    notes = service.ledger.recorder.select_notifications(start=start, limit=stop - start + 1, stop=stop)
    return [service.ledger.mapper.to_domain_event(n) for n in notes]


# -- first deployment, and a second one of the same files ----------------------------------------


def test_a_first_deployment_creates_the_declared_tokens_and_a_second_changes_nothing(
    client, service, ws, tmp_path
) -> None:
    files = project(tmp_path)
    answer = ok(deploy(client, ws.admin, files))
    assert answer["result"] == "success" and answer["deployment"]["status"] == "data_ready"
    assert changes(answer) == [
        (
            "dashboard",
            "new",
            ["datasource:events:READ", "datasource:users:READ", "pipe:sessions:READ", "pipe:top_pages:READ"],
            [],
        ),
        ("events reader", "new", ["datasource:events:READ", "pipe:top_pages:READ"], []),
        ("ingest", "new", ["datasource:events:APPEND"], []),
        ("users ingest", "new", ["datasource:users:APPEND"], []),
    ]
    assert datafile_tokens(service, ws.id) == FIRST

    # The tokens are real Tinybird tokens: listed with a DS/P origin, and their values work.
    listed = {t["name"]: t for t in ok(client.get(url("/v0/tokens", ws.admin)))["tokens"]}
    assert listed["ingest"]["origin"] == {"type": "DS", "resource_id": "events"}
    assert listed["users ingest"]["scopes"] == [{"type": "DATASOURCES:APPEND", "resource": "users"}]
    reader = listed["events reader"]["token"]
    assert allowed(client, reader, "DATASOURCES:READ:events") and allowed(client, reader, "PIPES:READ:top_pages")
    assert not allowed(client, reader, "DATASOURCES:APPEND:events")
    assert not allowed(client, reader, "PIPES:READ:sessions")
    assert "commented out" not in listed and "not a token line" not in listed and "readme" not in listed

    before, tokens_before = head(service), all_tokens(service, ws.id)
    again = ok(deploy(client, ws.admin, files))
    assert again == {"result": "no_changes", "deployment": {"id": None, "status": "no_changes", "token_changes": []}}
    assert head(service) == before and all_tokens(service, ws.id) == tokens_before
    assert ok(forward_deploy(client, ws.admin, files))["result"] == "no_changes"
    assert head(service) == before


# -- renamed, moved and removed lines ------------------------------------------------------------


def test_renamed_moved_and_removed_lines_change_exactly_those_scopes(client, service, ws, tmp_path) -> None:
    ok(deploy(client, ws.admin, project(tmp_path)))
    ids = {name: token_id for name, (token_id, _) in all_tokens(service, ws.id).items()}
    dashboard = value_of(client, ws.admin, "dashboard")
    before = head(service)

    answer = ok(deploy(client, ws.admin, project(tmp_path, SECOND_FILES, "v2")))
    assert changes(answer) == [
        ("dashboard", "modified", [], ["datasource:users:READ"]),
        ("events ingest", "new", ["datasource:events:APPEND"], []),
        ("events reader", "modified", ["pipe:sessions:READ"], ["pipe:top_pages:READ"]),
        ("ingest", "deleted", [], ["datasource:events:APPEND"]),
        ("users ingest", "deleted", [], ["datasource:users:APPEND"]),
    ]
    assert datafile_tokens(service, ws.id) == SECOND
    now = all_tokens(service, ws.id)
    # Modified tokens keep their id and value; a renamed line is a new token, the old one is gone.
    assert now["dashboard"][0] == ids["dashboard"] and now["events reader"][0] == ids["events reader"]
    assert now["events ingest"][0] not in ids.values()
    assert allowed(client, dashboard, "PIPES:READ:sessions")
    assert not allowed(client, dashboard, "DATASOURCES:READ:users")

    # The audit trail holds exactly these changes, one event per scope, nothing else.
    events = [e for e in audit(client, ws.admin, deployment=answer["deployment"]["id"]) if e["type"] != "Deployed"]
    assert all(e["position"] > before for e in events)
    summary = sorted(
        (e["type"], e["token_name"], json.dumps(e["scopes_before"]), json.dumps(e["scopes_after"])) for e in events
    )
    assert summary == sorted(
        [
            ("ScopeRemoved", "dashboard", json.dumps(FIRST["dashboard"]), json.dumps(SECOND["dashboard"])),
            ("Created", "events ingest", json.dumps([]), json.dumps(["DATASOURCES:APPEND:events"])),
            (
                "ScopeRemoved",
                "events reader",
                json.dumps(FIRST["events reader"]),
                json.dumps(["DATASOURCES:READ:events"]),
            ),
            (
                "ScopeAdded",
                "events reader",
                json.dumps(["DATASOURCES:READ:events"]),
                json.dumps(SECOND["events reader"]),
            ),
            ("Deleted", "ingest", json.dumps(["DATASOURCES:APPEND:events"]), json.dumps([])),
            ("Deleted", "users ingest", json.dumps(["DATASOURCES:APPEND:users"]), json.dumps([])),
        ]
    ), summary

    # And back: the first version again restores the first token table (with new ids for the
    # re-created tokens).
    files = project(tmp_path, PROJECT, "v3")
    ok(deploy(client, ws.admin, files))
    assert datafile_tokens(service, ws.id) == FIRST

    # Datafile tokens belong to the files: edits by hand are undone by the next deployment.
    scopes = "&".join(f"scope={s}" for s in FIRST["dashboard"] + ["PIPES:READ:extra"])
    assert client.put(url("/v0/tokens/dashboard", ws.admin) + "&" + scopes).status_code == 200
    assert client.delete(url("/v0/tokens/ingest", ws.admin)).status_code == 200
    assert changes(ok(deploy(client, ws.admin, files))) == [
        ("dashboard", "modified", [], ["pipe:extra:READ"]),
        ("ingest", "new", ["datasource:events:APPEND"], []),
    ]
    assert datafile_tokens(service, ws.id) == FIRST


# -- hand-made tokens ----------------------------------------------------------------------------


def test_hand_made_tokens_are_never_touched_and_a_name_clash_is_refused(client, service, ws, tmp_path) -> None:
    manual = create(client, ws.admin, "manual reader", "PIPES:READ:top_pages", "DATASOURCES:READ:users")
    # Made by hand with a datasource origin, as `tb token create` can: still hand-made.
    tracker = create(client, ws.admin, "tracker", "DATASOURCES:APPEND:events", origin="DS", resource_id="events")
    ok(deploy(client, ws.admin, project(tmp_path)))
    ok(deploy(client, ws.admin, project(tmp_path, SECOND_FILES, "v2")))  # users.datasource gone
    ok(deploy(client, ws.admin, {}))  # no datafiles at all: every datafile token goes
    assert datafile_tokens(service, ws.id) == {}
    tokens = all_tokens(service, ws.id)
    assert tokens["manual reader"] == (manual["id"], ["DATASOURCES:READ:users", "PIPES:READ:top_pages"])
    assert {"admin token", "create datasource token"} <= set(tokens)
    assert tokens["tracker"] == (tracker["id"], ["DATASOURCES:APPEND:events"])
    assert allowed(client, manual["token"], "PIPES:READ:top_pages")
    manual_events = ok(client.get(url("/v0/tokens/manual%20reader/history", ws.admin)))["events"]
    assert [e["type"] for e in manual_events] == ["Created"]

    ok(deploy(client, ws.admin, project(tmp_path, PROJECT, "v3")))
    before, tokens_before = head(service), all_tokens(service, ws.id)
    clashing = dict(PROJECT, **{"pipes/endpoints/sessions.pipe": SESSIONS + 'TOKEN "manual reader" READ\n'})
    files = project(tmp_path, clashing, "clash")
    for check in (False, True):
        error = assert_error(deploy(client, ws.admin, files, check=check), 400)
        assert '"manual reader" already exists' in error and "pipes/endpoints/sessions.pipe:7" in error, error
        error = assert_error(forward_deploy(client, ws.admin, files, check=check), 400)
        assert "pipes/endpoints/sessions.pipe:7" in error
    default_clash = {"pipes/top_pages.pipe": "TOKEN 'admin token' READ\n"}
    assert "admin token" in assert_error(deploy(client, ws.admin, default_clash), 400)
    assert head(service) == before and all_tokens(service, ws.id) == tokens_before


# -- check ---------------------------------------------------------------------------------------


def test_check_shows_the_plan_and_writes_nothing(client, service, ws, tmp_path) -> None:
    files, second = project(tmp_path), project(tmp_path, SECOND_FILES, "v2")
    before = head(service)
    plan = ok(deploy(client, ws.admin, files, check=True))
    assert plan["result"] == "check" and plan["deployment"]["id"] is None
    assert [c[:2] for c in changes(plan)] == [(n, "new") for n in sorted(FIRST)]
    assert head(service) == before and datafile_tokens(service, ws.id) == {}
    assert changes(ok(deploy(client, ws.admin, files))) == changes(plan)

    before = head(service)
    plan = ok(forward_deploy(client, ws.admin, second, check=True))
    assert head(service) == before and datafile_tokens(service, ws.id) == FIRST
    assert changes(ok(forward_deploy(client, ws.admin, second))) == changes(plan)
    assert datafile_tokens(service, ws.id) == SECOND
    assert ok(deploy(client, ws.admin, second, check=True))["result"] == "no_changes"


# -- wire formats --------------------------------------------------------------------------------


def test_multipart_as_forward_sends_it_and_json_give_the_same_answer(client, service, ws, tmp_path) -> None:
    files = project(tmp_path)
    by_json = ok(deploy(client, ws.admin, files, check=True))
    by_multipart = ok(forward_deploy(client, ws.admin, files, check=True))
    assert by_json == by_multipart
    answer = ok(forward_deploy(client, ws.admin, files))
    assert set(answer) == {"result", "deployment"}
    assert set(answer["deployment"]) == {"id", "status", "token_changes"}
    for change in answer["deployment"]["token_changes"]:
        assert set(change) == {"token_name", "change_type", "permission_changes"}
        assert set(change["permission_changes"]) == {"added_permissions", "removed_permissions"}
        for permission in change["permission_changes"]["added_permissions"]:
            assert set(permission) == {"resource_name", "resource_type", "permission"}
    assert datafile_tokens(service, ws.id) == FIRST
    # Forward's context part is not a project file.
    recorded = [e for e in audit(client, ws.admin, deployment=answer["deployment"]["id"]) if e["type"] == "Deployed"]
    assert recorded[0]["details"]["files"] == sorted(files)


def test_a_multipart_body_is_not_read_as_form_parameters(client, service, ws, tmp_path) -> None:
    """A file whose SQL happens to contain `&check=true&token=…` neither turns the deployment into
    a check nor authenticates it."""
    sneaky = dict(
        PROJECT,
        **{
            "pipes/top_pages.pipe": TOP_PAGES.replace(
                "GROUP BY session_id", "GROUP BY session_id -- &check=true&token=nope&"
            )
        },
    )
    files = project(tmp_path, sneaky)
    answer = ok(forward_deploy(client, ws.admin, files))
    assert answer["result"] == "success" and datafile_tokens(service, ws.id) == FIRST
    before = head(service)
    parts = [("data_project://", (p, c.encode(), "text/plain")) for p, c in files.items()]
    assert_error(client.post("/v0/deployments", files=parts), 403)  # no token: the body holds none
    assert head(service) == before


# -- parse errors --------------------------------------------------------------------------------

BAD_LINES = [
    ("pipes/top_pages.pipe", 'TOKEN "dashboard" APPEND\n', "Invalid permission APPEND"),
    ("pipes/top_pages.pipe", "TOKEN dashboard READ extra\n", "two arguments"),
    ("pipes/top_pages.pipe", "TOKEN read api token READ\n", 'quote a name with spaces: TOKEN "read api token" READ'),
    ("datasources/users.datasource", "TOKEN dashboard\n", "two arguments"),
    ("datasources/users.datasource", "TOKEN dashboard WRITE\n", "Invalid permission WRITE"),
    ("datasources/users.datasource", 'TOKEN "dashboard READ\n', "unterminated quote"),
    ("datasources/users.datasource", 'TOKEN "" READ\n', "token name is empty"),
]


def test_parse_errors_name_the_file_and_line_and_write_nothing(client, service, ws, tmp_path) -> None:
    ok(deploy(client, ws.admin, project(tmp_path)))
    before, tokens_before = head(service), all_tokens(service, ws.id)
    for number, (path, line, message) in enumerate(BAD_LINES):
        files = dict(project(tmp_path, PROJECT, f"bad{number}"))
        files[path] += "\n" + line  # a blank line, then the bad one
        where = f"{path}:{files[path].count(chr(10))}:"
        for send in (deploy, forward_deploy):
            error = assert_error(send(client, ws.admin, files), 400)
            assert error.startswith(where) and message in error, (where, error)
    twice = dict(PROJECT, **{"pipes/users.pipe": "TOKEN dashboard READ\n"})
    error = assert_error(deploy(client, ws.admin, twice), 400)
    assert "pipes/users.pipe" in error and "datasources/users.datasource" in error
    bad_name = {"datasources/1events.datasource": "TOKEN x READ\n"}
    assert assert_error(deploy(client, ws.admin, bad_name), 400).startswith("datasources/1events.datasource:0:")
    assert head(service) == before and all_tokens(service, ws.id) == tokens_before


# -- the audit trail and point in time -----------------------------------------------------------


def test_the_audit_trail_shows_a_deployment_as_a_unit(client, service, ws, tmp_path) -> None:
    first = ok(deploy(client, ws.admin, project(tmp_path)))["deployment"]["id"]
    create(client, ws.admin, "between", "PIPES:READ:top_pages")
    start = head(service) + 1
    answer = ok(deploy(client, ws.admin, project(tmp_path, SECOND_FILES, "v2")))
    second, stop = answer["deployment"]["id"], head(service)
    assert first != second

    events = audit(client, ws.admin, deployment=second)
    assert events and {e["deployment_id"] for e in events} == {second}
    assert {e["origin"] for e in events} == {"deployment"}
    assert {e["actor"]["token_id"] for e in events} == {ws.admin_id}
    assert len({e["request_id"] for e in events}) == 1
    assert {e["token_name"] for e in events if e["type"] != "Deployed"} == {
        "dashboard",
        "events ingest",
        "events reader",
        "ingest",
        "users ingest",
    }
    deployed = [e for e in events if e["type"] == "Deployed"]
    assert len(deployed) == 1 and deployed[0]["details"]["token_changes"] == answer["deployment"]["token_changes"]
    # One transaction: every event of the log in that span, hidden ones included, is the deployment's,
    # and the unfiltered trail has nothing else in between.
    stored = stored_events(service, start, stop)
    assert stored and {e.actor["deployment_id"] for e in stored} == {second}
    positions = [e["position"] for e in events]
    assert min(positions) == start and max(positions) == stop
    assert [e["position"] for e in audit(client, ws.admin) if start <= e["position"] <= stop] == positions

    earlier = audit(client, ws.admin, deployment=first)
    assert {e["deployment_id"] for e in earlier} == {first} and len(earlier) > 1
    assert not {e["position"] for e in earlier} & set(positions)
    assert audit(client, ws.admin, deployment="00000000-0000-0000-0000-000000000000") == []
    ndjson = client.get(url("/v0/audit", ws.admin, deployment=second, format="ndjson"))
    assert [json.loads(line)["position"] for line in ndjson.text.splitlines()] == positions


def test_point_in_time_before_and_after_a_deployment(client, service, ws, tmp_path) -> None:
    clock = FakeClock(datetime.now(UTC))
    clock.advance(1)
    start = clock.now.timestamp()
    ok(deploy(client, ws.admin, project(tmp_path)))
    clock.advance(10)
    ok(deploy(client, ws.admin, project(tmp_path, SECOND_FILES, "v2")))
    clock.advance(10)

    def as_of(seconds: float) -> dict[str, list[str]]:
        answer = ok(client.get(url("/v0/tokens", ws.admin, as_of=f"{seconds:.6f}")))
        assert all("token" not in t for t in answer["tokens"])
        return {
            t["name"]: sorted(":".join(filter(None, (s["type"], s.get("resource")))) for s in t["scopes"])
            for t in answer["tokens"]
            if t["origin"]["type"] in ("DS", "P")
        }

    ingest = ok(client.get(url("/v0/tokens/ingest", ws.admin, as_of=f"{start + 5:.6f}")))
    assert ingest["scopes"] == [{"type": "DATASOURCES:APPEND", "resource": "events"}] and "token" not in ingest
    assert_error(client.get(url("/v0/tokens/ingest", ws.admin, as_of=f"{start + 15:.6f}")), 404)
    assert as_of(start - 0.5) == {}
    assert as_of(start + 5) == FIRST
    assert as_of(start + 15) == SECOND
    access = ok(
        client.get(
            url(
                "/v0/access",
                ws.admin,
                resource="users",
                kind="datasource",
                permission="APPEND",
                as_of=f"{start + 5:.6f}",
            )
        )
    )
    assert [g["name"] for g in access["grants"] if g["via"].startswith("DATASOURCES:APPEND")] == ["users ingest"]
    diff = ok(client.get(url("/v0/access/diff", ws.admin, **{"from": f"{start + 5:.6f}", "to": f"{start + 15:.6f}"})))
    lost = {(g["name"], g["resource"], g["permission"]) for g in diff["lost"]}
    gained = {(g["name"], g["resource"], g["permission"]) for g in diff["gained"]}
    assert {
        ("users ingest", "users", "APPEND"),
        ("ingest", "events", "APPEND"),
        ("events reader", "top_pages", "READ"),
    } <= lost
    assert {("events ingest", "events", "APPEND"), ("events reader", "sessions", "READ")} <= gained


# -- concurrency ---------------------------------------------------------------------------------

# Two teams deploy different versions of the project at once. A deployment declares the whole set of
# datafile tokens, so the sequential composition of the two is the second one's token table.
SET_A = {
    "datasources/events.datasource": 'TOKEN shared READ\nTOKEN "only a" APPEND\n',
    "pipes/top_pages.pipe": "TOKEN shared READ\nTOKEN 'a reader' READ\n",
}
SET_B = {
    "datasources/events.datasource": "TOKEN shared READ\nTOKEN shared APPEND\n",
    "datasources/users.datasource": 'TOKEN "only b" APPEND\n',
}
OUTCOME = {
    "A": {k: list(v.scopes) for k, v in desired_tokens(parse_project(SET_A)).items()},
    "B": {k: list(v.scopes) for k, v in desired_tokens(parse_project(SET_B)).items()},
}


def admin_caller(service: Service, realm: Realm) -> Caller:
    service.sync()
    return service.auth.authenticate(realm.admin)


def run_concurrently(*jobs: Callable[[], Any]) -> list[Any]:
    results: list[Any] = [None] * len(jobs)

    def run(i: int) -> None:
        try:
            results[i] = jobs[i]()
        except Exception as error:  # noqa: BLE001 - the test inspects it
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive()
    return results


def deployments_in_order(service: Service, workspace_id: str) -> list[str]:
    service.sync()
    with service.read_engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id FROM tt_deployments WHERE workspace_id = :w ORDER BY position"), {"w": workspace_id}
        )
        return [r[0] for r in rows]


def assert_never_a_mix(service: Service, realm: Realm, results: dict[str, Any]) -> None:
    """Both deployments committed whole (the later re-planned) or one got 409 and wrote nothing;
    the token table is exactly what the last committed one declares."""
    committed = {k: r for k, r in results.items() if not isinstance(r, Exception)}
    for r in results.values():
        if isinstance(r, Exception):
            assert isinstance(r, Conflict), repr(r)
    assert committed, results
    order = deployments_in_order(service, realm.id)
    assert sorted(order) == sorted(r.deployment_id for r in committed.values())
    last = next(k for k, r in committed.items() if r.deployment_id == order[-1])
    assert datafile_tokens(service, realm.id) == OUTCOME[last]
    if len(committed) == 2:  # the later one planned against the earlier one's result
        first = "A" if last == "B" else "B"
        earlier = [CurrentToken(f"id-{n}", n, tuple(s), "DS", "datafile") for n, s in OUTCOME[first].items()]
        later_files = SET_A if last == "A" else SET_B
        assert committed[last].plan.token_changes == plan_deployment(parse_project(later_files), earlier).token_changes


def barrier_planner(
    service: Service, workspace_id: str, barrier: threading.Barrier
) -> Callable[[], list[CurrentToken]]:
    """The live tokens, but the first time only once both deployments have read them: both plan
    against the same state, so one of them must lose on save and re-plan."""
    calls = []

    def read() -> list[CurrentToken]:
        tokens = current_tokens(service, workspace_id)
        if not calls:
            calls.append(1)
            barrier.wait(timeout=10)
        return tokens

    return read


def test_two_deployments_racing_in_one_process_never_mix(service, ws) -> None:
    caller = admin_caller(service, ws)
    barrier = threading.Barrier(2)
    results = run_concurrently(
        lambda: service.ledger.deploy(caller, SET_A, barrier_planner(service, ws.id, barrier)),
        lambda: service.ledger.deploy(caller, SET_B, barrier_planner(service, ws.id, barrier)),
    )
    assert_never_a_mix(service, ws, dict(zip("AB", results)))


def test_two_deployments_through_the_api_at_once_never_mix(client, service, ws) -> None:
    for _ in range(3):
        answers = run_concurrently(lambda: deploy(client, ws.admin, SET_A), lambda: deploy(client, ws.admin, SET_B))
        assert {a.status_code for a in answers} <= {200, 409}, [a.text for a in answers]
        for a in answers:
            if a.status_code == 409:
                assert_error(a, 409)
        assert datafile_tokens(service, ws.id) in (OUTCOME["A"], OUTCOME["B"])
        order = deployments_in_order(service, ws.id)
        committed = {a.json()["deployment"]["id"]: k for k, a in zip("AB", answers) if a.status_code == 200}
        last = committed[order[-1]]
        assert datafile_tokens(service, ws.id) == OUTCOME[last]


def test_two_servers_on_one_database_deploying_at_once_never_mix(database_url, tmp_path, environ, service, ws) -> None:
    other = Service(database_url, data=tmp_path, environ=environ)
    try:
        callers = admin_caller(service, ws), admin_caller(other, ws)
        barrier = threading.Barrier(2)
        results = run_concurrently(
            lambda: service.command(
                lambda: service.ledger.deploy(callers[0], SET_A, barrier_planner(service, ws.id, barrier))
            ),
            lambda: other.command(
                lambda: other.ledger.deploy(callers[1], SET_B, barrier_planner(other, ws.id, barrier))
            ),
        )
        assert_never_a_mix(service, ws, dict(zip("AB", results)))
        assert datafile_tokens(other, ws.id) == datafile_tokens(service, ws.id)
    finally:
        other.close()


def test_a_change_slipping_in_between_plan_and_save_makes_the_deployment_re_plan(service, ws) -> None:
    """Deterministic interleavings: right after the deployment has read the live tokens, another
    request changes them. The deployment must re-plan against what is there now."""
    caller = admin_caller(service, ws)
    service.command(lambda: service.ledger.deploy(caller, SET_A, lambda: current_tokens(service, ws.id)))
    assert datafile_tokens(service, ws.id) == OUTCOME["A"]

    def then(change: Callable[[], Any]) -> Callable[[], list[CurrentToken]]:
        calls: list[int] = []

        def read() -> list[CurrentToken]:
            tokens = current_tokens(service, ws.id)
            if not calls:
                calls.append(1)
                change()
            return tokens

        return read

    # A datafile token deleted by hand: the plan's "modify" becomes a "new".
    result = service.ledger.deploy(caller, SET_B, then(lambda: service.ledger.delete_token(caller, "shared")))
    assert [(c["token_name"], c["change_type"]) for c in result.plan.token_changes] == [
        ("a reader", "deleted"),
        ("only a", "deleted"),
        ("only b", "new"),
        ("shared", "new"),
    ]
    assert datafile_tokens(service, ws.id) == OUTCOME["B"]

    # A hand-made token takes a name the deployment was about to create: a clear clash, nothing written.
    before = head(service)
    with pytest.raises(NameTaken) as refused:
        service.ledger.deploy(caller, SET_A, then(lambda: service.ledger.create_token(caller, "a reader", ["TOKENS"])))
    assert "pipes/top_pages.pipe:2" in refused.value.message
    assert head(service) == before + 2  # the hand-made token and its name, nothing else
    assert datafile_tokens(service, ws.id) == OUTCOME["B"]


# -- permissions ---------------------------------------------------------------------------------


def test_only_admin_tokens_and_deploy_capable_tokens_may_deploy(client, service, ws, tmp_path) -> None:
    files = project(tmp_path)
    manager = create(client, ws.admin, "manager", "TOKENS")["token"]
    deployer = create(client, ws.admin, "deployer", "WORKSPACE:DEPLOY")["token"]
    reader = create(client, ws.admin, "reader", "PIPES:READ:top_pages")["token"]
    appender = create(client, ws.admin, "appender", "DATASOURCES:APPEND:events", "DATASOURCES:CREATE")["token"]
    jwt = create_jwt(client, ws.admin, "jwt", [{"type": "PIPES:READ", "resource": "top_pages"}]).json()["token"]
    other = make_realm(service, "other", "someone@example.com")
    before, tokens_before = head(service), all_tokens(service, ws.id)
    for value in (reader, appender, ws.value("create datasource token"), ws.user, jwt, "p.nope.nope", None):
        for check in (False, True):
            assert_error(deploy(client, value, files, check=check), 403)
        if value:
            assert_error(forward_deploy(client, value, files), 403)
    assert head(service) == before and all_tokens(service, ws.id) == tokens_before

    assert ok(deploy(client, manager, files))["result"] == "success"
    assert datafile_tokens(service, ws.id) == FIRST
    assert ok(deploy(client, deployer, project(tmp_path, SECOND_FILES, "v2")))["result"] == "success"
    assert datafile_tokens(service, ws.id) == SECOND
    # Another workspace's admin deploys into its own workspace only.
    ok(deploy(client, other.admin, files))
    assert datafile_tokens(service, other.id) == FIRST and datafile_tokens(service, ws.id) == SECOND


def test_a_non_admin_deployment_cannot_strip_or_delete_an_admin_capable_token(client, service, ws, tmp_path) -> None:
    """An admin gave a datafile token ADMIN by hand: a TOKENS caller may not remove it through a
    deployment any more than through DELETE /v0/tokens."""
    manager = create(client, ws.admin, "manager", "TOKENS")["token"]
    ok(deploy(client, ws.admin, project(tmp_path)))
    promoted = client.put(url("/v0/tokens/ingest", ws.admin, scope=["DATASOURCES:APPEND:events", "ADMIN"]))
    assert promoted.status_code == 200
    assert_error(client.delete(url("/v0/tokens/ingest", manager)), 403)
    before = head(service)
    assert_error(deploy(client, manager, project(tmp_path, SECOND_FILES, "v2")), 403)  # would delete it
    assert_error(deploy(client, manager, project(tmp_path)), 403)  # would remove ADMIN
    assert head(service) == before
    assert ok(deploy(client, ws.admin, project(tmp_path)))["deployment"]["token_changes"][0]["token_name"] == "ingest"


# -- bad input -----------------------------------------------------------------------------------

GARBAGE = [
    b"",
    b"not json at all",
    b"[]",
    b'["a.pipe"]',
    b'{"a.pipe": 1}',
    b'{"a.pipe": null}',
    b'"TOKEN a READ"',
    b"\xff\xfe{}",
    b'{"a.pipe": "TOKEN \xff READ"}',
    b'{"a.pipe": "TOKEN a READ"',
    b'{"a.pipe": "TOKEN a READ", "a.pipe": "TOKEN b READ"}',
    b'{"a.pipe": "TOKEN a READ"}' + b"[" * 100_000,
]

BAD_PATHS = [
    "../evil.datasource",
    "datasources/../../evil.datasource",
    "/etc/evil.datasource",
    "./evil.datasource",
    "datasources//evil.datasource",
    "datasources\\evil.datasource",
    "datasources/\x00/evil.datasource",
    "datasources/\n/evil.datasource",
    "d\ud800/evil.datasource",
    "",
]


def test_garbage_bad_paths_non_utf8_and_huge_files_are_4xx_and_write_nothing(client, service, ws, tmp_path) -> None:
    files = project(tmp_path)
    ok(deploy(client, ws.admin, files))
    before, tokens_before = head(service), all_tokens(service, ws.id)
    for body in GARBAGE:
        assert_error(client.post(url("/v0/deployments", ws.admin), content=body), 400)
    for broken in (b"--x\r\nbroken", b"", b"--x--\r\n", b"no boundary at all"):
        response = client.post(
            url("/v0/deployments", ws.admin),
            content=broken,
            headers={"content-type": "multipart/form-data; boundary=x"},
        )
        assert_error(response, 400)
    assert_error(
        client.post(
            url("/v0/deployments", ws.admin), content=b"--x\r\n", headers={"content-type": "multipart/form-data"}
        ),
        400,
    )  # no boundary
    for path in BAD_PATHS:
        body = json.dumps({**files, path: "TOKEN evil READ\n"}).encode()
        assert_error(client.post(url("/v0/deployments", ws.admin), content=body), 400)
        if path.isprintable() and "\ud800" not in path:  # httpx percent-encodes the others
            assert_error(forward_deploy(client, ws.admin, {**files, path: "TOKEN evil READ\n"}), 400)
    # A lone surrogate in a token name (JSON `\ud800`) cannot be stored: 400, not 500.
    body = json.dumps({**files, "pipes/x.pipe": 'TOKEN "evil\ud800" READ\n'}).encode()
    assert_error(client.post(url("/v0/deployments", ws.admin), content=body), 400)
    # The same file sent twice.
    twice = [("data_project://", ("pipes/x.pipe", b"TOKEN a READ\n", "text/plain"))] * 2
    assert_error(client.post("/v0/deployments", files=twice, headers={"Authorization": f"Bearer {ws.admin}"}), 400)
    # A file that is not UTF-8.
    latin = [("data_project://", ("pipes/x.pipe", "TOKEN 'lectura diseño' READ\n".encode("latin-1"), "text/plain"))]
    error = assert_error(
        client.post("/v0/deployments", files=latin, headers={"Authorization": f"Bearer {ws.admin}"}), 400
    )
    assert "pipes/x.pipe" in error
    # A datafile over 1 MiB, and a body over the server's limit.
    huge = "TOKEN big READ\n" + "# padding\n" * 110_000
    error = assert_error(deploy(client, ws.admin, {**files, "pipes/big.pipe": huge}), 400)
    assert error.startswith("pipes/big.pipe:0:")
    assert_error(forward_deploy(client, ws.admin, {**files, "pipes/big.pipe": huge}), 400)
    enormous = {f"pipes/p{i}.pipe": huge[:1_000_000] for i in range(9)}
    assert_error(deploy(client, ws.admin, enormous), 413)
    assert head(service) == before and all_tokens(service, ws.id) == tokens_before
