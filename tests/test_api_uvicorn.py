"""The API served by a real `uvicorn --factory tokentrail.api.app:app_from_env` process, over real HTTP.

One server per backend for the whole module (SQLite file and a PostgreSQL database), configured
only through TOKENTRAIL_DATABASE_URL, TOKENTRAIL_DATA_DIR and TOKENTRAIL_SECRET_KEY. The workspace
is set up by another process (this one) before the server starts: the server holds no state of
its own. Requests that must reach the server byte for byte (a raw `+` in a scope, a body without
Content-Type) go through `http.client` or a bare socket, which re-encode nothing.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from tests.conftest import BACKENDS, PG_HOST, PG_PORT, PG_USER, TEST_SECRET, _pg_admin
from tokentrail.api.setup import initialise
from tokentrail.service import Service

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
OWNER = "owner@example.com"
START_TIMEOUT = 60.0


@dataclass
class Server:
    host: str
    port: int
    admin: str  # the admin token's value
    admin_id: str
    user: str  # the user token's value
    workspace_id: str
    log: Path

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def exchange(
        self, method: str, target: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One request with `http.client`: the target goes on the request line exactly as given."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, target, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def raw(self, request: bytes) -> tuple[int, bytes]:
        """Bytes straight onto a socket; answers the status and the body."""
        with socket.create_connection((self.host, self.port), timeout=30) as sock:
            sock.sendall(request)
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_ready(process: subprocess.Popen, base: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"uvicorn exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/v0/regions", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"uvicorn did not answer within {START_TIMEOUT} s:\n{log.read_text()}")


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp(f"uvicorn-{request.param}")
    database = None
    if request.param == "sqlite":
        database_url = f"sqlite:///{data / 'tokentrail.db'}"
    else:
        request.getfixturevalue("postgres_available")
        database = f"tt_test_{uuid.uuid4().hex[:16]}"
        with _pg_admin() as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        database_url = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"
    env = {
        "TOKENTRAIL_DATABASE_URL": database_url,
        "TOKENTRAIL_DATA_DIR": str(data),
        "TOKENTRAIL_SECRET_KEY": TEST_SECRET,
    }

    setup = Service(database_url, data=data, environ=env)
    try:
        info = initialise(setup, "main", OWNER)
    finally:
        setup.close()
    tokens = {t["name"]: t for t in info["tokens"]}

    port = _free_port()
    log = data / "uvicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
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
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_ready(process, f"http://127.0.0.1:{port}", log)
        yield Server(
            "127.0.0.1",
            port,
            tokens["admin token"]["token"],
            tokens["admin token"]["id"],
            tokens["user token"]["token"],
            info["workspace"]["id"],
            log,
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        if database is not None:
            with _pg_admin() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    assert b"Traceback" not in log.read_bytes(), log.read_text()  # no request crashed the server


@pytest.fixture
def web(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=30) as client:
        yield client


def _name() -> str:
    """A fresh token name per test: the server (and its store) is shared by the whole module."""
    return f"t {uuid.uuid4().hex[:8]}"


def _json(body: bytes) -> Any:
    return json.loads(body)


# -- the flows the CLIs drive ------------------------------------------------------------------


def test_the_served_api_lists_the_workspaces_default_tokens(server, web) -> None:
    response = web.get("/v0/tokens", params={"token": server.admin})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    names = [t["name"] for t in response.json()["tokens"]]
    assert names[:3] == ["admin token", f"admin {OWNER}", "create datasource token"]


def test_the_cli_start_up_calls_answer(server, web) -> None:
    for path in ("/v0/workspace", "/v1/workspace"):
        body = web.get(path, params={"token": server.admin}).json()
        assert (body["id"], body["name"], body["user_email"]) == (server.workspace_id, "main", OWNER)
    assert web.get("/v0/regions").json() == {"regions": []}


def test_create_read_refresh_and_delete_over_http(server) -> None:
    name = _name()
    status, _, body = server.exchange(
        "POST", f"/v0/tokens?token={server.admin}&name={name.replace(' ', '+')}&origin=C&scope=PIPES:READ:top"
    )
    assert status == 200, body
    token = _json(body)
    assert token["name"] == name

    status, _, body = server.exchange("GET", f"/v0/tokens/{name.replace(' ', '%20')}?token={server.admin}")
    assert status == 200 and _json(body)["id"] == token["id"]

    status, _, body = server.exchange("POST", f"/v0/tokens/{token['id']}/refresh?token={server.admin}")
    refreshed = _json(body)
    assert status == 200 and refreshed["id"] == token["id"] and refreshed["token"] != token["token"]
    status, _, body = server.exchange("GET", f"/v0/auth?token={token['token']}")
    assert _json(body)["valid"] is False

    status, _, body = server.exchange("DELETE", f"/v0/tokens/{name.replace(' ', '%20')}?token={server.admin}")
    assert (status, _json(body)) == (200, {"ok": True})
    status, _, body = server.exchange("GET", f"/v0/tokens/{token['id']}?token={server.admin}")
    assert (status, _json(body)) == (404, {"error": "Token not found"})


def test_a_raw_plus_in_the_scope_arrives_as_a_plus(server) -> None:
    """Exactly what the CLIs put on the request line for `--filter "a + 1 > 2"`-style scopes."""
    target = f"/v0/tokens?token={server.admin}&name=plus+{uuid.uuid4().hex[:8]}&scope=DATASOURCES:READ:events:a+1%3E2"
    status, _, body = server.exchange("POST", target)
    assert status == 200, body
    assert _json(body)["scopes"] == [{"type": "DATASOURCES:READ", "resource": "events", "filter": "a + 1 > 2"}]


def test_put_reads_the_scope_string_from_a_body_without_content_type(server) -> None:
    name = _name()
    server.exchange("POST", f"/v0/tokens?token={server.admin}&name={name.replace(' ', '+')}&scope=PIPES:READ:top")
    scopes = "&".join(f"scope=DATASOURCES:READ:events_{i}:x+{i}>0" for i in range(100)).encode()
    status, _, body = server.exchange("PUT", f"/v0/tokens/{name.replace(' ', '%20')}?token={server.admin}", scopes)
    assert status == 200, body
    got = _json(body)["scopes"]
    assert len(got) == 100 and got[3] == {"type": "DATASOURCES:READ", "resource": "events_3", "filter": "x + 3 > 0"}


def test_forwards_upsert_over_http(server) -> None:
    name = _name()
    path = f"/v0/tokens/{name.replace(' ', '%20')}?token={server.admin}&from=cli"
    status, _, _ = server.exchange("GET", path)
    assert status == 404
    status, _, body = server.exchange(
        "POST", f"/v0/tokens?token={server.admin}&name={name.replace(' ', '+')}&scope=PIPES:READ:a"
    )
    assert status == 200
    status, _, _ = server.exchange("GET", path)
    assert status == 200
    status, _, body = server.exchange("PUT", f"{path}&scope=PIPES:READ:b")
    assert status == 200 and _json(body)["scopes"] == [{"type": "PIPES:READ", "resource": "b", "filter": ""}]


def test_a_jwt_over_http(server) -> None:
    expires = int(time.time()) + 600
    payload = json.dumps(
        {"scopes": [{"type": "PIPES:READ", "resource": "top", "fixed_params": {"org": "acme"}}], "limits": {"rps": 5}}
    ).encode()
    status, _, body = server.exchange(
        "POST", f"/v0/tokens?token={server.admin}&name=dashboard&expiration_time={expires}", payload
    )
    assert status == 200, body
    value = _json(body)["token"]
    claims = pyjwt.decode(value, server.admin, algorithms=["HS256"])
    assert (claims["workspace_id"], claims["name"], claims["exp"], claims["limits"]) == (
        server.workspace_id,
        "dashboard",
        expires,
        {"rps": 5},
    )
    status, _, body = server.exchange(
        "GET", "/v0/auth?permission=PIPES:READ:top", headers={"Authorization": f"Bearer {value}"}
    )
    assert _json(body)["valid"] is True and _json(body)["allowed"] is True


def test_the_user_token_creates_and_lists_workspaces_over_http(server, web) -> None:
    name = f"ws_{uuid.uuid4().hex[:8]}"
    created = web.post("/v1/workspaces", params={"token": server.user, "name": name})
    assert created.status_code == 200, created.text
    listed = web.get("/v1/user/workspaces", params={"token": server.user}).json()["workspaces"]
    assert name in [w["name"] for w in listed]
    assert web.post("/v1/workspaces", params={"token": server.admin, "name": "x"}).status_code == 403


def test_auth_introspection_over_http(server, web) -> None:
    body = web.get("/v0/auth", params={"token": server.admin, "permission": "DATASOURCES:READ:events"}).json()
    assert (body["valid"], body["token_id"], body["allowed"], body["via"]) == (True, server.admin_id, True, "ADMIN")


# -- ids, errors and limits through the real server ---------------------------------------------


def test_every_answer_carries_the_servers_request_id(server) -> None:
    status, headers, _ = server.exchange("GET", f"/v0/tokens?token={server.admin}", headers={"X-Request-Id": "abc-123"})
    assert status == 200 and len(headers["x-request-id"]) == 32 and headers["x-request-id"] != "abc-123"
    _, headers, _ = server.exchange("GET", f"/v0/tokens?token={server.admin}")
    assert headers["x-request-id"]


@pytest.mark.parametrize(
    "method, target, status, error",
    [
        ("GET", "/v0/tokens/admin%20token/refresh?token={admin}", 405, "refresh must be done with POST"),
        ("GET", "/v0/tokens/nobody?token={admin}", 404, "Token not found"),
        ("POST", "/v0/tokens?token={admin}&name=x&scope=FOO:BAR", 400, "Unknown scope FOO:BAR"),
        ("POST", "/v0/tokens?token={admin}&name=x", 400, "scope is mandatory"),
        ("PATCH", "/v0/tokens/x?token={admin}", 405, None),
        ("GET", "/v0/tokens?token=p.nope.nope", 403, None),
        ("GET", "/v0/tokens/a%00b?token={admin}", 404, None),
        ("POST", "/v0/tokens?token={admin}&name=%ff&scope=PIPES:READ:p", 400, None),
        ("POST", "/v0/tokens?token={admin}&name=%ZZ&scope=PIPES:READ:p%ZZ", 400, None),
    ],
)
def test_errors_are_json_over_http(server, method, target, status, error) -> None:
    got, headers, body = server.exchange(method, target.format(admin=server.admin))
    assert got == status and headers["content-type"] == "application/json", body
    assert _json(body)["error"].startswith(error) if error else _json(body)["error"]


def test_a_body_announced_over_the_limit_is_413_before_it_is_sent(server) -> None:
    request = (
        f"POST /v0/tokens?token={server.admin}&name=big HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {10 * 1024 * 1024}\r\nConnection: close\r\n\r\n"
    ).encode()
    status, body = server.raw(request)
    assert status == 413 and _json(body)["error"]


def test_raw_non_utf8_bytes_on_the_request_line_are_refused_not_a_crash(server) -> None:
    request = (
        f"POST /v0/tokens?token={server.admin}&name=".encode()
        + b"\xff\xfe"
        + b"&scope=PIPES:READ:p HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    status, _ = server.raw(request)
    assert status == 400  # the HTTP parser refuses bytes outside ASCII on the request line


def test_garbage_on_the_socket_does_not_stop_the_server(server, web) -> None:
    try:
        server.raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
    except (OSError, IndexError, ValueError):
        pass  # whatever the HTTP layer makes of it: the point is what comes next
    assert web.get("/v0/regions").status_code == 200
