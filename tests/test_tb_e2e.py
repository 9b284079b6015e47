"""Tinybird's real CLIs (Classic ``tinybird-cli`` 6.5.5 and Forward ``tinybird`` 5.0.3) against a
real tokentrail server, on SQLite and on PostgreSQL.

One uvicorn process per backend (module scope) serves a store made with ``python -m tokentrail.api.cli init``.
Every ``tb token …`` command must exit as Tinybird's server would make it exit, and its effect is
then checked through the JSON API: the token table, one token, its history and the audit trail
(actor = the admin token, origin ``api`` with the claimed origin ``cli``, since the CLIs send ``cli_version=``).

The CLIs are installed once (tests/tbcli.py, cached in ``~/.cache/tokentrail-tb`` or
``$TOKENTRAIL_TB_CACHE``); when they cannot be installed the tests fail, they never skip.
PostgreSQL must be reachable (tests/conftest.py: ``postgres_available``).

Run: ``pytest -q tests/test_tb_e2e.py`` (add ``-s`` to see every CLI command and its output).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt as pyjwt
import psycopg
import pytest

from tests.tbcli import ensure_cli, run_tb
from tokentrail.domain.filters import normalize_filter

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
PG_HOST = os.environ.get("TOKENTRAIL_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TOKENTRAIL_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TOKENTRAIL_TEST_PG_USER", "postgres")
KINDS = ["classic", "forward"]

FILTER = "org = 'acme' AND x > 1 + 2"  # the '+' travels unencoded: it must arrive as a plus
JWT_RE = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
VALUE_RE = re.compile(r"p\.eyJ[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,}")

# A fake Wayland clipboard, so that `tb token copy` (pyperclip) works headless and we can read
# what it copied.
WL_COPY = '#!/bin/sh\nif [ "$1" = "--clear" ]; then : > "$TT_CLIPBOARD"; exit 0; fi\ncat > "$TT_CLIPBOARD"\n'
WL_PASTE = '#!/bin/sh\ncat "$TT_CLIPBOARD" 2>/dev/null\n'


# --------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_admin() -> psycopg.Connection:
    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True)


@dataclass
class Server:
    backend: str
    url: str
    admin_token: str  # the admin token's current value (the last test refreshes it)
    admin_id: str
    owner_token: str  # "admin owner@example.com" (ADMIN_USER)
    initial_admin_token: str
    workspace_id: str
    log: Path
    proc: subprocess.Popen
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def get(self, path: str, token: str | None = None, **params: Any) -> httpx.Response:
        params["token"] = token or self.admin_token
        return self.client.get(self.url + path, params=params)

    def ok(self, path: str, **params: Any) -> dict[str, Any]:
        r = self.get(path, **params)
        assert r.status_code == 200, (path, r.status_code, r.text, self.log_tail())
        return r.json()

    def tokens(self) -> dict[str, dict[str, Any]]:
        """The live token table by name."""
        return {t["name"]: t for t in self.ok("/v0/tokens")["tokens"]}

    def token(self, ref: str) -> dict[str, Any]:
        return self.ok(f"/v0/tokens/{quote(ref, safe='')}")

    def history(self, ref: str) -> list[dict[str, Any]]:
        return self.ok(f"/v0/tokens/{quote(ref, safe='')}/history")["events"]

    def audit(self, **filters: Any) -> list[dict[str, Any]]:
        return self.ok("/v0/audit", limit=1000, **filters)["events"]


def _start(backend: str, data: Path, database_url: str | None) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENTRAIL_")}
    env.update(TOKENTRAIL_DATA_DIR=str(data), TOKENTRAIL_SECRET_KEY=secrets.token_hex(16))
    if database_url:
        env["TOKENTRAIL_DATABASE_URL"] = database_url
    init = subprocess.run(
        [
            sys.executable,
            "-m",
            "tokentrail.api.cli",
            "init",
            "--workspace",
            "main",
            "--email",
            "owner@example.com",
            "--json",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert init.returncode == 0, f"tokentrail init failed:\n{init.stdout}\n{init.stderr}"
    result = json.loads(init.stdout)
    [admin] = [t for t in result["tokens"] if t["name"] == "admin token"]
    [owner] = [t for t in result["tokens"] if t["name"] == "admin owner@example.com"]
    port = _free_port()
    log = data / "server.log"
    with open(log, "w") as fh:
        # `tokentrail serve` runs uvicorn this way (with access_log=False: no ?token= in any log).
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "tokentrail.api.app:app_from_env",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
            ],
            cwd=REPO,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Server(
        backend,
        f"http://127.0.0.1:{port}",
        admin["token"],
        admin["id"],
        owner["token"],
        admin["token"],
        result["workspace"]["id"],
        log,
        proc,
    )
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            if server.client.get(server.url + "/v0/regions", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the server did not answer GET /v0/regions within 60 s:\n{server.log_tail()}")
        time.sleep(0.1)


def _stop(server: Server) -> None:
    server.client.close()
    server.proc.terminate()
    try:
        server.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(timeout=15)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    backend = request.param
    data = tmp_path_factory.mktemp(f"tt-e2e-{backend}")
    database_url = None
    db_name = None
    if backend == "postgres":
        request.getfixturevalue("postgres_available")  # fails (never skips) when PostgreSQL is missing
        db_name = f"tt_e2e_{uuid.uuid4().hex[:16]}"
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


# --------------------------------------------------------------------------- the CLIs


@pytest.fixture(scope="module")
def clis() -> dict[str, Path]:
    """Both CLIs; an install failure raises (the tests error out, they do not skip)."""
    return {kind: ensure_cli(kind) for kind in KINDS}


@pytest.fixture(scope="module")
def clipboard_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fake-clipboard")
    for name, text in (("wl-copy", WL_COPY), ("wl-paste", WL_PASTE)):
        (d / name).write_text(text)
        (d / name).chmod(0o755)
    return d


@dataclass
class Tb:
    kind: str
    path: Path
    server: Server

    def __call__(self, *args: str, ok: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        proc = run_tb(self.kind, self.path, self.server.url, self.server.admin_token, *args, timeout=60, env=env)
        print(
            f"\n$ [{self.kind}/{self.server.backend}] tb {' '.join(args)} -> exit {proc.returncode}\n"
            f"{proc.stdout}{proc.stderr}"
        )
        if ok:
            assert proc.returncode == 0, (
                f"tb {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\n"
                f"server log:\n{self.server.log_tail()}"
            )
        return proc

    def name(self, base: str) -> str:
        """A token name with spaces, distinct per CLI (both run against one server)."""
        return f"{base} {self.kind}"


@pytest.fixture(params=KINDS)
def tb(request: pytest.FixtureRequest, server: Server, clis: dict[str, Path]) -> Tb:
    return Tb(request.param, clis[request.param], server)


def out(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def assert_by_admin_from_cli(events: list[dict[str, Any]], server: Server) -> None:
    for e in events:
        assert e["actor"] == {"token_id": server.admin_id, "name": "admin token"}, e
        assert e["origin"] == "api" and e["claimed"]["origin"] == "cli", e
        assert e["workspace_id"] == server.workspace_id, e
        assert e["request_id"], e


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


# --------------------------------------------------------------------------- tests


def test_create_static_with_filter(tb: Tb, server: Server) -> None:
    name = tb.name("read api token")
    tb("token", "create", "static", name, "--scope", "DATASOURCES:READ", "--resource", "events", "--filter", FILTER)

    stored = normalize_filter(FILTER)
    assert "1 + 2" in stored
    token = server.token(name)
    assert token["name"] == name
    assert token["scopes"] == [{"type": "DATASOURCES:READ", "resource": "events", "filter": stored}]
    assert token["origin"] == {"type": "C"}
    assert server.tokens()[name]["id"] == token["id"]

    events = server.history(name)
    assert types(events) == ["Created"]
    assert_by_admin_from_cli(events, server)
    assert events[0]["token_id"] == token["id"] and events[0]["token_name"] == name
    assert events[0]["scopes_before"] in ([], None)
    assert events[0]["scopes_after"] == [f"DATASOURCES:READ:events:{stored}"]
    audit = server.audit(token_id=token["id"])
    assert [(e["type"], e["position"]) for e in audit] == [(e["type"], e["position"]) for e in events]

    scopes = tb("token", "scopes", name)
    assert "DATASOURCES:READ" in scopes.stdout and "events" in scopes.stdout and stored in scopes.stdout


def test_create_static_pipe_scope_and_copy(tb: Tb, server: Server, clipboard_bin: Path, tmp_path: Path) -> None:
    name = tb.name("top pipe token")
    tb("token", "create", "static", name, "--scope", "PIPES:READ", "--resource", "top")
    token = server.token(name)
    assert token["scopes"] == [{"type": "PIPES:READ", "resource": "top", "filter": ""}]
    events = server.history(name)
    assert types(events) == ["Created"]
    assert_by_admin_from_cli(events, server)

    clip = tmp_path / "clipboard"
    copied = tb(
        "token",
        "copy",
        name,
        env={
            "PATH": f"{clipboard_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "WAYLAND_DISPLAY": "tokentrail-test",
            "TT_CLIPBOARD": str(clip),
        },
    )
    assert "copied" in out(copied)
    assert clip.read_text() == token["token"]
    # the copied value is the token: it authenticates and may read its own token
    r = server.get(f"/v0/tokens/{token['id']}", token=clip.read_text())
    assert r.status_code == 200 and r.json()["id"] == token["id"], r.text


def test_refresh_changes_value_not_id(tb: Tb, server: Server) -> None:
    name = tb.name("refresh me")
    tb("token", "create", "static", name, "--scope", "DATASOURCES:APPEND", "--resource", "events")
    before = server.token(name)
    assert server.get(f"/v0/tokens/{before['id']}", token=before["token"]).status_code == 200

    refreshed = tb("token", "refresh", name, "--yes")
    assert "refreshed" in out(refreshed)
    after = server.token(name)
    assert after["id"] == before["id"]
    assert after["token"] != before["token"]
    assert after["scopes"] == before["scopes"]
    r = server.get("/v0/tokens", token=before["token"])
    assert r.status_code == 403, r.text
    assert r.json()["error"]
    assert server.get(f"/v0/tokens/{after['id']}", token=after["token"]).status_code == 200

    events = server.history(name)
    assert types(events) == ["Created", "Refreshed"]
    assert_by_admin_from_cli(events, server)
    assert all(e["token_id"] == before["id"] for e in events)
    refreshes = server.audit(token_id=before["id"], event="Refreshed")
    assert [e["position"] for e in refreshes] == [e["position"] for e in events[1:]]


def test_rm_deletes_but_history_keeps_it(tb: Tb, server: Server) -> None:
    name = tb.name("remove me")
    tb("token", "create", "static", name, "--scope", "PIPES:READ", "--resource", "top")
    token = server.token(name)

    removed = tb("token", "rm", name, "--yes")
    assert "removed" in out(removed)
    r = server.get(f"/v0/tokens/{quote(name, safe='')}")
    assert r.status_code == 404, r.text
    assert r.json()["error"]
    assert server.get(f"/v0/tokens/{token['id']}").status_code == 404
    assert server.get("/v0/tokens", token=token["token"]).status_code == 403
    assert name not in server.tokens()

    for ref in (name, token["id"]):
        events = server.history(ref)
        assert types(events) == ["Created", "Deleted"], ref
        assert_by_admin_from_cli(events, server)
        assert all(e["token_id"] == token["id"] for e in events)
    assert types(server.audit(token_id=token["id"])) == ["Created", "Deleted"]

    # the name is free again: a new token (new id) under the old name
    tb("token", "create", "static", name, "--scope", "PIPES:READ", "--resource", "top")
    reborn = server.token(name)
    assert reborn["id"] != token["id"]
    assert types(server.history(token["id"])) == ["Created", "Deleted"]


def test_create_jwt(tb: Tb, server: Server) -> None:
    name = tb.name("my jwt")
    started = int(time.time())
    proc = tb(
        "token",
        "create",
        "jwt",
        name,
        "--ttl",
        "1h",
        "--scope",
        "PIPES:READ",
        "--resource",
        "top",
        "--fixed-params",
        "k=v",
    )
    found = JWT_RE.findall(proc.stdout)
    assert len(found) == 1, proc.stdout
    value = found[0]

    claims = pyjwt.decode(value, server.admin_token, algorithms=["HS256"])  # signed with the admin token
    assert claims["workspace_id"] == server.workspace_id
    assert claims["name"] == name
    assert started + 3600 - 5 <= claims["exp"] <= int(time.time()) + 3600 + 5
    assert claims["scopes"] == [{"type": "PIPES:READ", "resource": "top", "fixed_params": {"k": "v"}}]

    r = server.get("/v0/auth", token=value, permission="PIPES:READ:top")
    assert r.status_code == 200, r.text
    auth = r.json()
    assert auth["valid"] is True and auth["allowed"] is True
    assert auth["workspace_id"] == server.workspace_id and auth["name"] == name
    denied = server.get("/v0/auth", token=value, permission="PIPES:READ:other").json()
    assert denied["valid"] is True and denied["allowed"] is False
    assert server.get("/v0/tokens", token=value).status_code == 403  # no TOKENS scope
    assert name not in server.tokens()  # JWTs are not listed

    issued = [e for e in server.audit(token_name=name) if e["token_name"] == name]
    assert len(issued) == 1, issued
    assert issued[0]["type"] not in ("Created", "Deleted")
    assert_by_admin_from_cli(issued, server)


def test_duplicate_name(tb: Tb, server: Server) -> None:
    """Classic POSTs again and must show the server's error; Forward upserts (GET, then PUT) and
    replaces the scopes."""
    name = tb.name("dup token")
    tb("token", "create", "static", name, "--scope", "DATASOURCES:READ", "--resource", "events", "--filter", FILTER)
    first = server.token(name)
    if tb.kind == "forward":
        # re-running the same command (GET, then PUT with the same scopes) changes nothing
        again = tb(
            "token", "create", "static", name, "--scope", "DATASOURCES:READ", "--resource", "events", "--filter", FILTER
        )
        assert "updated" in out(again)
        assert server.token(name) == first
        assert types(server.history(name)) == ["Created"]
    second = tb(
        "token", "create", "static", name, "--scope", "PIPES:READ", "--resource", "top", ok=tb.kind == "forward"
    )
    if tb.kind == "classic":
        assert second.returncode != 0
        assert f'Auth token with name "{name}" already exists' in out(second)
        assert server.token(name) == first
        assert types(server.history(name)) == ["Created"]
        return
    assert "updated" in out(second)
    now = server.token(name)
    assert now["id"] == first["id"] and now["token"] == first["token"]
    assert now["scopes"] == [{"type": "PIPES:READ", "resource": "top", "filter": ""}]
    events = server.history(name)
    assert_by_admin_from_cli(events, server)
    assert types(events)[0] == "Created"
    changes = events[1:]
    assert sorted(types(changes)) == ["ScopeAdded", "ScopeRemoved"]
    assert changes[-1]["scopes_after"] == ["PIPES:READ:top"]
    assert [e["position"] for e in server.audit(token_id=first["id"])] == [e["position"] for e in events]


def test_errors_come_through(tb: Tb, server: Server) -> None:
    missing = tb("token", "rm", "nonexistent", "--yes", ok=False)
    assert missing.returncode != 0
    assert "Token 'nonexistent' does not exist" in out(missing)

    default = tb("token", "rm", "admin token", "--yes", ok=False)
    assert default.returncode != 0
    assert "Forbidden" in out(default) and "default tokens cannot be deleted" in out(default)

    bad = tb(
        "token",
        "create",
        "static",
        tb.name("bad filter"),
        "--scope",
        "DATASOURCES:READ",
        "--resource",
        "events",
        "--filter",
        "1; DROP TABLE events",
        ok=False,
    )
    assert bad.returncode != 0
    assert "sql_filter" in out(bad)
    assert tb.name("bad filter") not in server.tokens()


def test_ls_lists_the_tokens(tb: Tb, server: Server) -> None:
    """After the tests above: every listed token (default ones and this CLI's) appears in `tb token ls`,
    deleted tokens and JWTs do not."""
    proc = tb("token", "ls")
    listed = server.tokens()
    assert {"admin token", "create datasource token"} <= set(listed)
    for name, t in listed.items():
        if "token" in t:  # the CLIs hide entries without a value
            assert name in proc.stdout, name
            assert t["id"] in proc.stdout, t
    assert tb.name("my jwt") not in proc.stdout
    gone = {e["token_id"] for e in server.audit(event="Deleted")}
    for token_id in gone:
        assert token_id not in proc.stdout
    assert not VALUE_RE.search(proc.stdout)  # values are masked as p.ey…


def test_refreshing_the_admin_token_invalidates_its_jwts(server: Server, clis: dict[str, Path]) -> None:
    """Runs after the others (it changes the admin token): JWTs are signed with the admin token's
    value, so refreshing it with the CLI invalidates them. (Once per server, with Forward: both CLIs
    send the same requests for `create jwt` and `refresh`, tested above.)"""
    tb = Tb("forward", clis["forward"], server)
    started_as = server.admin_token
    issued = tb(
        "token",
        "create",
        "jwt",
        tb.name("short jwt"),
        "--ttl",
        "1h",
        "--scope",
        "DATASOURCES:READ",
        "--resource",
        "events",
        "--filter",
        FILTER,
    )
    [value] = JWT_RE.findall(issued.stdout)
    auth = server.get("/v0/auth", token=value, permission="DATASOURCES:READ:events").json()
    assert auth["valid"] is True and auth["allowed"] is True
    assert auth["filter"] == normalize_filter(FILTER)

    tb("token", "refresh", "admin token", "--yes")
    assert server.get("/v0/auth", token=value, permission="DATASOURCES:READ:events").json()["valid"] is False
    old = server.get("/v0/tokens", token=started_as)
    assert old.status_code == 403, old.text

    admin = server.get("/v0/tokens/admin%20token", token=server.owner_token)
    assert admin.status_code == 200, admin.text
    assert admin.json()["id"] == server.admin_id and admin.json()["token"] != started_as
    server.admin_token = admin.json()["token"]
    events = server.history(server.admin_id)
    assert types(events)[-1] == "Refreshed"
    assert_by_admin_from_cli(events[-1:], server)


def test_server_log_has_no_token_values(server: Server) -> None:
    """Runs last for each backend: nothing the server logged holds a token value."""
    text = server.log.read_text(errors="replace")
    assert not VALUE_RE.search(text), server.log_tail()
    assert server.initial_admin_token not in text and server.admin_token not in text
