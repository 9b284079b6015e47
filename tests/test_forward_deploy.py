"""Tinybird Forward's deployment protocol (`/v1/deploy`, `/v1/deployments…`) through the API, on
real SQLite and PostgreSQL: requests shaped as Forward's CLI sends them (multipart, Bearer header,
`from=cli`), staged deployments applied at promote time, and every refusal a 4xx that writes nothing.
The real CLI drives the same routes in tests/test_tb_forward_deploy.py.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
from fastapi.testclient import TestClient

from tests.api_helpers import Realm, assert_error, create, head, make_realm, url
from tests.test_deployments import barrier_planner, datafile_tokens, run_concurrently
from tokentrail.domain.errors import DeploymentInProgress
from tokentrail.service import Service

V1 = {
    "datasources/events.datasource": 'SCHEMA >\n    `ts` DateTime\n\nTOKEN "tracker" APPEND\nTOKEN dashboard READ\n',
    "endpoints/top.pipe": "NODE top\nSQL >\n    SELECT 1\n\nTOKEN dashboard READ\n",
    "connections/kafka.connection": "TYPE kafka\n",
}
V1_TOKENS = {"dashboard": ["DATASOURCES:READ:events", "PIPES:READ:top"], "tracker": ["DATASOURCES:APPEND:events"]}
# `tracker` renamed `ingest`, the pipe's line removed
V2 = {**V1, "datasources/events.datasource": V1["datasources/events.datasource"].replace('"tracker"', "ingest")}
V2["endpoints/top.pipe"] = "NODE top\nSQL >\n    SELECT 1\n"
V2_TOKENS = {"dashboard": ["DATASOURCES:READ:events"], "ingest": ["DATASOURCES:APPEND:events"]}


def post(client: TestClient, token: str | None, files: dict[str, str], **params: str) -> httpx.Response:
    """`POST /v1/deploy` as Forward's CLI sends it."""
    parts: list[Any] = [("context://", ("cli-version", "1.0.0", "text/plain"))]
    parts += [("data_project://", (path, text.encode(), "text/plain")) for path, text in files.items()]
    parts.append(("data_project_vendored://", ("vendor/ws/x.datasource", b"TOKEN vendored READ\n", "text/plain")))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/v1/deploy", params={**params, "from": "cli"}, files=parts, headers=headers)


def call(client: TestClient, method: str, path: str, token: str, **params: str) -> httpx.Response:
    return client.request(method, path, params=params, headers={"Authorization": f"Bearer {token}"})


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def listed(client: TestClient, token: str, **params: str) -> list[tuple[str, str, bool]]:
    return [
        (d["id"], d["status"], d["live"])
        for d in ok(call(client, "GET", "/v1/deployments", token, **params))["deployments"]
    ]


def audit(client: TestClient, token: str, **params: Any) -> list[dict[str, Any]]:
    return ok(client.get(url("/v0/audit", token, limit=1000, **params)))["events"]


def test_deploy_auto_promote_check_and_no_changes(client: TestClient, service: Service, ws: Realm) -> None:
    assert listed(client, ws.admin) == [("0", "data_ready", True)]  # Forward's seed deployment
    before = head(service)
    plan = ok(post(client, ws.admin, V1, check="true"))
    assert plan["result"] == "success" and plan["deployment"]["id"] is None
    assert [c["token_name"] for c in plan["deployment"]["token_changes"]] == ["dashboard", "tracker"]
    assert head(service) == before and datafile_tokens(service, ws.id) == {}
    assert "not deployed" in plan["deployment"]["feedback"][0]["message"]

    answer = ok(post(client, ws.admin, V1, auto_promote="true"))
    assert answer["result"] == "success"
    deployment = answer["deployment"]
    assert (deployment["id"], deployment["status"], deployment["live"], deployment["errors"]) == (
        "1",
        "data_ready",
        True,
        [],
    )
    assert datafile_tokens(service, ws.id) == V1_TOKENS  # the vendored file's line is not ours
    assert listed(client, ws.admin) == [("1", "data_ready", True)]
    assert ok(call(client, "GET", "/v1/deployments/0", ws.admin))["deployment"]["status"] == "deleted"
    events = audit(client, ws.admin, deployment="1")
    assert events == audit(client, ws.admin, deployment=deployment["deployment_id"])
    assert [(e["type"], e["token_name"]) for e in events] == [
        ("Created", "dashboard"),
        ("Created", "tracker"),
        ("Deployed", None),
    ]
    assert all(e["origin"] == "deployment" and e["actor"]["name"] == "admin token" for e in events)

    again = post(client, ws.admin, V1, auto_promote="true")
    assert ok(again)["result"] == "no_changes" and ok(again)["deployment"]["id"] is None


def test_a_staged_deployment_applies_at_promote_time(client: TestClient, service: Service, ws: Realm) -> None:
    ok(post(client, ws.admin, V1, auto_promote="true"))
    staged = ok(post(client, ws.admin, V2))["deployment"]
    assert (staged["id"], staged["status"], staged["live"]) == ("2", "data_ready", False)
    assert datafile_tokens(service, ws.id) == V1_TOKENS  # nothing applied yet
    assert listed(client, ws.admin) == [("1", "data_ready", True), ("2", "data_ready", False)]

    # While it is staged, no other deployment is made, by any door; a check still plans.
    before = head(service)
    assert "#2 is staged" in assert_error(post(client, ws.admin, V1, auto_promote="true"), 409)
    assert_error(post(client, ws.admin, V1), 409)
    assert_error(client.post(url("/v0/deployments", ws.admin), json=V1), 409)
    assert ok(post(client, ws.admin, V1, check="true"))["result"] == "no_changes"
    assert head(service) == before

    # A scope added by hand to a datafile token since staging: promotion plans against it.
    dashboard = service.queries.token_by_name(ws.id, "dashboard")
    assert dashboard is not None
    ok(client.put(url(f"/v0/tokens/{dashboard.id}", ws.admin, scope=[*V1_TOKENS["dashboard"], "PIPES:READ:extra"])))

    promoted = ok(call(client, "POST", "/v1/deployments/2/set-live", ws.admin))["deployment"]
    assert (promoted["id"], promoted["live"]) == ("2", True)
    assert datafile_tokens(service, ws.id) == V2_TOKENS
    assert [(c["token_name"], c["change_type"]) for c in promoted["token_changes"]] == [
        ("dashboard", "modified"),
        ("ingest", "new"),
        ("tracker", "deleted"),
    ]
    assert listed(client, ws.admin) == [("2", "data_ready", True)]
    assert listed(client, ws.admin, include_deleted="true") == [
        ("0", "deleted", False),
        ("1", "deleted", False),
        ("2", "data_ready", True),
    ]
    events = audit(client, ws.admin, deployment="2")
    assert [(e["type"], e["token_name"]) for e in events] == [
        ("DeploymentStaged", None),
        ("ScopeRemoved", "dashboard"),
        ("ScopeRemoved", "dashboard"),
        ("Created", "ingest"),
        ("Deleted", "tracker"),
        ("DeploymentPromoted", None),
    ]
    # Promoting again changes nothing; the replaced deployment is dropped as Forward's CLI asks.
    before = head(service)
    assert ok(call(client, "POST", "/v1/deployments/2/set-live", ws.admin))["deployment"]["live"]
    assert ok(call(client, "DELETE", "/v1/deployments/1", ws.admin))["deployment"]["status"] == "deleted"
    assert "live" in assert_error(call(client, "DELETE", "/v1/deployments/2", ws.admin), 409)
    assert_error(call(client, "POST", "/v1/deployments/1/set-live", ws.admin), 409)
    assert ok(call(client, "DELETE", "/v1/deployments/0", ws.admin))["deployment"]["status"] == "deleted"
    assert_error(call(client, "POST", "/v1/deployments/0/set-live", ws.admin), 409)
    assert head(service) == before


def test_discard_drops_a_staged_deployment(client: TestClient, service: Service, ws: Realm) -> None:
    staged = ok(post(client, ws.admin, V1))["deployment"]  # a first deployment, staged
    assert staged["id"] == "1"
    assert listed(client, ws.admin) == [("0", "data_ready", True), ("1", "data_ready", False)]
    dropped = ok(call(client, "DELETE", "/v1/deployments/1", ws.admin))["deployment"]
    assert (dropped["status"], dropped["live"]) == ("deleted", False)
    assert datafile_tokens(service, ws.id) == {}
    assert listed(client, ws.admin) == [("0", "data_ready", True)]
    assert_error(call(client, "POST", "/v1/deployments/1/set-live", ws.admin), 409)
    assert [e["type"] for e in audit(client, ws.admin, deployment="1")] == ["DeploymentStaged", "DeploymentDiscarded"]
    assert ok(post(client, ws.admin, V1, auto_promote="true"))["deployment"]["id"] == "2"
    assert datafile_tokens(service, ws.id) == V1_TOKENS


def test_promotion_re_checks_the_plan_and_writes_nothing_when_refused(
    client: TestClient, service: Service, ws: Realm
) -> None:
    ok(post(client, ws.admin, V2))
    create(client, ws.admin, "ingest", "TOKENS")  # a hand-made token takes a name the staged one declares
    before = head(service)
    message = assert_error(call(client, "POST", "/v1/deployments/1/set-live", ws.admin), 400)
    assert 'Auth token with name "ingest" already exists' in message and "events.datasource:4" in message
    assert head(service) == before and datafile_tokens(service, ws.id) == {}
    assert listed(client, ws.admin)[-1] == ("1", "data_ready", False)  # still staged

    # A deploy-only token promotes; a read-only one may neither see nor promote deployments.
    ok(client.delete(url("/v0/tokens/ingest", ws.admin)))
    reader = create(client, ws.admin, "reader", "DATASOURCES:READ:events")["token"]
    deployer = create(client, ws.admin, "deployer", "WORKSPACE:DEPLOY")["token"]
    before = head(service)
    for method, path in (
        ("GET", "/v1/deployments"),
        ("GET", "/v1/deployments/1"),
        ("POST", "/v1/deployments/1/set-live"),
        ("DELETE", "/v1/deployments/1"),
    ):
        assert_error(call(client, method, path, reader), 403)
    assert_error(post(client, reader, V1, auto_promote="true"), 403)
    assert_error(post(client, None, V1, auto_promote="true"), 403)
    assert head(service) == before
    ok(call(client, "POST", "/v1/deployments/1/set-live", deployer))
    assert datafile_tokens(service, ws.id) == V2_TOKENS
    assert {e["actor"]["name"] for e in audit(client, ws.admin, deployment="1") if e["type"] != "DeploymentStaged"} == {
        "deployer"
    }


def test_another_workspace_never_reaches_a_deployment(client: TestClient, service: Service, ws: Realm) -> None:
    ok(post(client, ws.admin, V1))
    other = make_realm(service, "other", "someone@example.com")
    before = head(service)
    assert listed(client, other.admin) == [("0", "data_ready", True)]
    for method, path in (
        ("GET", "/v1/deployments/1"),
        ("POST", "/v1/deployments/1/set-live"),
        ("DELETE", "/v1/deployments/1"),
    ):
        assert_error(call(client, method, path, other.admin), 404)
    assert audit(client, other.admin, deployment="1") == []
    assert head(service) == before
    assert listed(client, ws.admin)[-1] == ("1", "data_ready", False)


def test_bad_projects_and_ids_are_4xx_and_write_nothing(client: TestClient, service: Service, ws: Realm) -> None:
    before = head(service)
    bad = {**V1, "endpoints/top.pipe": 'NODE top\nSQL >\n    SELECT 1\n\nTOKEN "a" "b" READ\n'}
    for params in ({"auto_promote": "true"}, {"check": "true"}, {}):
        response = post(client, ws.admin, bad, **params)
        message = assert_error(response, 400)
        assert message.startswith("endpoints/top.pipe:5: TOKEN takes two arguments")
        failed = response.json()["deployment"]
        assert failed["status"] == "failed"
        assert failed["errors"] == [
            {"filename": "endpoints/top.pipe", "error": "line 5: " + message.split(":5: ", 1)[1]}
        ]
    assert "no .datasource or .pipe" in assert_error(post(client, ws.admin, {"README.md": "x"}), 400)
    for ref in ("9", "x", "-1", "1e3", "١", "99999999999999999999"):
        assert_error(call(client, "GET", f"/v1/deployments/{ref}", ws.admin), 404)
        assert_error(call(client, "DELETE", f"/v1/deployments/{ref}", ws.admin), 404)
    assert ok(call(client, "POST", "/v1/deployments/0/set-live", ws.admin))["deployment"]["live"]  # the seed is live
    assert_error(call(client, "DELETE", "/v1/deployments/0", ws.admin), 409)
    assert head(service) == before


def test_concurrent_forward_deployments_one_wins_the_other_is_told_to_retry(service: Service, ws: Realm) -> None:
    caller = service.auth.authenticate(ws.admin, request_id="r", origin="cli")
    barrier = threading.Barrier(2)

    def forward(files: dict[str, str], stage: bool) -> Any:
        # The ledger itself, as test_deployments' races: `service.command` would serialise them on SQLite.
        planner = barrier_planner(service, ws.id, barrier)
        return service.ledger.deploy(caller, files, planner, stage=stage, exclusive=True)

    results = run_concurrently(lambda: forward(V1, False), lambda: forward(V2, True))
    won = [r for r in results if not isinstance(r, Exception)]
    lost = [r for r in results if isinstance(r, Exception)]
    assert len(won) == 1 and len(lost) == 1, results
    assert isinstance(lost[0], DeploymentInProgress) and "retry" in lost[0].message
    service.sync()
    rows = service.queries.deployments(ws.id, everything=True)
    assert [r.number for r in rows] == [1]
    assert datafile_tokens(service, ws.id) == ({} if won[0].staged else V1_TOKENS)
