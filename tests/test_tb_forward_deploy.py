"""Tinybird Forward's real CLI (``tinybird`` 5.0.3) deploying a project's TOKEN lines to a real
tokentrail server, on SQLite and on PostgreSQL.

One served process per backend (tests/test_tb_e2e.py's server), one Forward project folder per
backend, and the CLI run in it as a user runs it (``TB_HOST``/``TB_TOKEN``, ``tb --cloud …``):
check, create, update (a line removed, a line renamed), a staged deployment promoted, one
discarded, delete, and the refusals (a file that does not parse, a name taken by a hand-made token,
a token without the scope, a deployment while another is staged). After every step the token
table and the audit trail's new events are asserted through the JSON API; a refusal writes nothing.

Run: ``pytest -q tests/test_tb_forward_deploy.py`` (add ``-s`` to see every command and its output).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.tbcli import ensure_cli, run_tb
from tests.test_tb_e2e import PG_HOST, PG_PORT, PG_USER, Server, _pg_admin, _start, _stop

pytestmark = pytest.mark.e2e

EVENTS = """\
DESCRIPTION >
    Page views

SCHEMA >
    `timestamp` DateTime `json:$.timestamp`,
    `country` String `json:$.country`

ENGINE "MergeTree"
ENGINE_SORTING_KEY "timestamp"

TOKEN "events tracker" APPEND
TOKEN "dashboard" READ
TOKEN "events reader" READ
"""
TOP = """\
NODE top
SQL >
    SELECT country, count() AS hits FROM events GROUP BY country

TYPE endpoint

TOKEN "dashboard" READ
"""


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    backend = request.param
    data = tmp_path_factory.mktemp(f"tt-forward-{backend}")
    database_url = db_name = None
    if backend == "postgres":
        request.getfixturevalue("postgres_available")  # fails (never skips) when PostgreSQL is missing
        db_name = f"tt_fwd_{uuid.uuid4().hex[:16]}"
        with _pg_admin() as conn:
            conn.execute(f'CREATE DATABASE "{db_name}"')
        database_url = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{db_name}"
    srv = None
    try:
        srv = _start(backend, data, database_url)
        yield srv
    finally:
        if srv is not None:
            _stop(srv)
        if db_name:
            with _pg_admin() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


@dataclass
class Project:
    """A Forward project folder, the real CLI run in it, and what the server holds."""

    root: Path
    tb_path: Path
    server: Server
    seen: int = 0  # the last audit position already asserted

    def write(self, datasource: str, pipe: str) -> None:
        (self.root / "datasources").mkdir(parents=True, exist_ok=True)
        (self.root / "endpoints").mkdir(parents=True, exist_ok=True)
        (self.root / "datasources" / "events.datasource").write_text(datasource)
        (self.root / "endpoints" / "top.pipe").write_text(pipe)

    def tb(self, *args: str, ok: bool = True, token: str | None = None) -> str:
        proc: subprocess.CompletedProcess = run_tb(
            "forward", self.tb_path, self.server.url, token or self.server.admin_token, *args, cwd=self.root
        )
        output = proc.stdout + proc.stderr
        print(f"\n$ [{self.server.backend}] tb --cloud {' '.join(args)} -> exit {proc.returncode}\n{output}")
        assert (proc.returncode == 0) == ok, f"exit {proc.returncode}\n{output}\nserver log:\n{self.server.log_tail()}"
        return output

    def datafile_tokens(self) -> dict[str, list[str]]:
        return {
            t["name"]: sorted(_scope(s) for s in t["scopes"])
            for t in self.server.ok("/v0/tokens")["tokens"]
            if t["origin"]["type"] in ("DS", "P")
        }

    def new_events(self) -> list[dict[str, Any]]:
        """The audit events since the last call."""
        events = [e for e in self.server.audit() if e["position"] > self.seen]
        if events:
            self.seen = max(e["position"] for e in events)
        return events

    def head(self) -> int:
        return max((e["position"] for e in self.server.audit()), default=0)


def _scope(scope: dict[str, Any]) -> str:
    return f"{scope['type']}:{scope['resource']}"


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(e["type"], e["token_name"]) for e in events]


@pytest.fixture
def project(server: Server, tmp_path: Path) -> Project:
    found = Project(tmp_path / "project", ensure_cli("forward"), server)
    found.root.mkdir()
    found.seen = found.head()
    return found


def assert_one_deployment(events: list[dict[str, Any]], server: Server, deployment: dict[str, Any]) -> None:
    """Every event carries the deployment's id and was made by the admin token through it."""
    for e in events:
        assert e["deployment_id"] == deployment["deployment_id"], e
        assert e["origin"] == "deployment", e
        assert e["actor"] == {"token_id": server.admin_id, "name": "admin token"}, e
        assert e["workspace_id"] == server.workspace_id, e


def deployment(server: Server, number: str) -> dict[str, Any]:
    return server.ok(f"/v1/deployments/{number}")["deployment"]


def test_forward_cli_deploys_the_token_lines(project: Project, server: Server) -> None:
    admin = server.admin_token
    hand_made = server.client.post(
        server.url + "/v0/tokens", params={"token": admin, "name": "hand made", "scope": "DATASOURCES:READ:events"}
    )
    assert hand_made.status_code == 200, hand_made.text
    project.new_events()
    project.write(EVENTS, TOP)

    # check: the plan, nothing written
    out = project.tb("deploy", "--check")
    assert "✓ Deployment is valid" in out and "events tracker" in out and "not deployed" in out
    assert project.datafile_tokens() == {} and project.new_events() == []

    # create
    out = project.tb("deploy")
    assert "Deployment #1 is live!" in out
    assert project.datafile_tokens() == {
        "dashboard": ["DATASOURCES:READ:events", "PIPES:READ:top"],
        "events reader": ["DATASOURCES:READ:events"],
        "events tracker": ["DATASOURCES:APPEND:events"],
    }
    events = project.new_events()
    assert summary(events) == [
        ("Created", "dashboard"),
        ("Created", "events reader"),
        ("Created", "events tracker"),
        ("Deployed", None),
    ]
    assert_one_deployment(events, server, deployment(server, "1"))
    assert server.audit(deployment="1") == events

    # update: the pipe's line removed, "events tracker" renamed "ingest"
    project.write(EVENTS.replace('"events tracker"', '"ingest"'), TOP.replace('TOKEN "dashboard" READ\n', ""))
    out = project.tb("deploy")
    assert "Deployment #2 is live!" in out
    updated = {
        "dashboard": ["DATASOURCES:READ:events"],
        "events reader": ["DATASOURCES:READ:events"],
        "ingest": ["DATASOURCES:APPEND:events"],
    }
    assert project.datafile_tokens() == updated
    events = project.new_events()
    assert summary(events) == [
        ("ScopeRemoved", "dashboard"),
        ("Deleted", "events tracker"),
        ("Created", "ingest"),
        ("Deployed", None),
    ]
    assert_one_deployment(events, server, deployment(server, "2"))
    assert "No changes" in project.tb("deploy") and project.new_events() == []

    # staged, then promoted: applied at promote time
    project.write(EVENTS.replace('"events tracker"', '"ingest"'), TOP)
    out = project.tb("deployment", "create")
    assert "won't be auto-promoted" in out
    assert project.datafile_tokens() == updated
    events = project.new_events()
    assert summary(events) == [("DeploymentStaged", None)]
    out = project.tb("deployment", "ls")
    assert "Staging" in out and "Live" in out
    # a deployment while one is staged: refused, the other is told to retry, nothing written
    out = project.tb("deploy", ok=False)
    assert "#3 is staged" in out and "retry" in out and project.new_events() == []
    out = project.tb("deployment", "promote")
    assert "Deployment promoted" in out
    assert project.datafile_tokens() == {**updated, "dashboard": ["DATASOURCES:READ:events", "PIPES:READ:top"]}
    promoted = project.new_events()
    assert summary(promoted) == [("ScopeAdded", "dashboard"), ("DeploymentPromoted", None)]
    assert_one_deployment(events + promoted, server, deployment(server, "3"))
    assert deployment(server, "3")["live"] and deployment(server, "2")["status"] == "deleted"

    # staged, then discarded: nothing applied
    before = project.datafile_tokens()
    project.write(EVENTS.replace("TOKEN", "# TOKEN"), TOP)
    project.tb("deployment", "create")
    assert "Discard process successfully" in project.tb("deployment", "discard", "--wait")
    assert project.datafile_tokens() == before
    events = project.new_events()
    assert summary(events) == [("DeploymentStaged", None), ("DeploymentDiscarded", None)]
    assert_one_deployment(events, server, deployment(server, "4"))
    assert "Live" in project.tb("deployment", "ls") and "Staging" not in project.tb("deployment", "ls")

    # refusals, each shown as an error and writing nothing
    project.write(EVENTS + 'TOKEN "a" "b" READ\n', TOP)
    out = project.tb("deploy", ok=False)
    assert "datasources/events.datasource:14" in out and "TOKEN takes two arguments" in out
    out = project.tb("deploy", "--check", ok=False)
    assert "datasources/events.datasource:14" in out
    project.write(EVENTS, TOP + 'TOKEN "hand made" READ\n')
    out = project.tb("deploy", ok=False)
    assert 'Auth token with name "hand made" already exists' in out and "endpoints/top.pipe:8" in out
    reader = server.client.post(
        server.url + "/v0/tokens", params={"token": admin, "name": "just a reader", "scope": "PIPES:READ:top"}
    ).json()["token"]
    project.new_events()
    project.write(EVENTS, TOP)
    out = project.tb("deploy", ok=False, token=reader)
    assert "deployments need a token with ADMIN, TOKENS or WORKSPACE:DEPLOY scope" in out
    assert project.new_events() == [] and project.datafile_tokens() == before

    # delete: no TOKEN line left anywhere; the hand-made token is untouched
    project.write(EVENTS.replace("TOKEN", "# TOKEN"), TOP.replace("TOKEN", "# TOKEN"))
    assert "Deployment #5 is live!" in project.tb("deploy")
    assert project.datafile_tokens() == {}
    events = project.new_events()
    assert summary(events) == [
        ("Deleted", "dashboard"),
        ("Deleted", "events reader"),
        ("Deleted", "ingest"),
        ("Deployed", None),
    ]
    assert_one_deployment(events, server, deployment(server, "5"))
    assert server.token("hand made")["scopes"] == [{"type": "DATASOURCES:READ", "resource": "events", "filter": ""}]
