"""No token value anywhere: after a realistic session, on real SQLite and
PostgreSQL, every byte of the database (the SQLite file and its journal; every PostgreSQL table,
dumped over SQL), of the data directory, of the captured logs (this process's, and the stderr of a
`tokentrail serve` child that served part of the session) and of the audit exports (CSV and
ndjson, from the API and the console) is scanned for the value pattern `p.<base64>.<signature>`,
for every issued value and its signature literally, and for every JWT issued or minted.

The ledger keeps each token's random generation nonce (so that the server key can rebuild its
value); it never keeps a value or a signature.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.conftest import TEST_SECRET
from tests.serve_process import serve
from tests.test_ui import Console
from tokentrail.api.app import create_app
from tokentrail.api.setup import initialise
from tokentrail.domain.values import TokenSigner
from tokentrail.service import Service

VALUE_PATTERN = re.compile(rb"p\.[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]+")


class Issued:
    """Every credential the session saw: static values and JWTs."""

    def __init__(self) -> None:
        self.values: set[str] = set()
        self.jwts: set[str] = set()

    def take(self, body: Any) -> None:
        """Remember any value or JWT in an API answer (token objects, lists, JWT answers)."""
        if isinstance(body, dict):
            for key, item in body.items():
                if key == "token" and isinstance(item, str):
                    (self.values if item.startswith("p.") else self.jwts).add(item)
                else:
                    self.take(item)
        elif isinstance(body, list):
            for item in body:
                self.take(item)

    def needles(self) -> list[bytes]:
        out = []
        for credential in self.values | self.jwts:
            out.append(credential.encode())
            out.append(credential.rsplit(".", 1)[1].encode())  # the signature alone: the secret part
        return out


def scan(label: str, data: bytes, issued: Issued) -> None:
    found = [m.group().decode(errors="replace")[:60] for m in VALUE_PATTERN.finditer(data)]
    assert not found, f"{label}: token values found: {found[:5]}"
    leaked = [n.decode()[:40] for n in issued.needles() if n in data]
    assert not leaked, f"{label}: issued credentials found: {leaked[:5]}"


def _ok(response: httpx.Response, issued: Issued) -> Any:
    assert response.status_code == 200, (response.request.url.path, response.status_code, response.text[:300])
    if response.headers.get("content-type", "").startswith("application/json"):
        issued.take(response.json())
        return response.json()
    return response.text


def session(client: httpx.Client | TestClient, admin: str, issued: Issued, prefix: str) -> dict[str, bytes]:
    """What an operator and a CI pipeline do in a day, with values in queries, headers and paths;
    returns the audit exports."""
    bearer = {"Authorization": f"Bearer {admin}"}
    reader = _ok(
        client.post(
            "/v0/tokens",
            params={"token": admin, "name": f"{prefix} reader", "scope": ["DATASOURCES:READ:events", "PIPES:READ:top"]},
        ),
        issued,
    )
    manager = _ok(
        client.post(
            "/v0/tokens", params={"name": f"{prefix} manager", "scope": "TOKENS", "description": "ci"}, headers=bearer
        ),
        issued,
    )
    _ok(client.get("/v0/tokens", params={"token": admin}), issued)
    _ok(client.get("/v0/tokens", params={"token": manager["token"]}), issued)
    _ok(client.get(f"/v0/tokens/{reader['token']}", params={"token": admin}), issued)  # a value in the path
    _ok(client.get(f"/v0/tokens/{reader['token']}/history", params={"token": admin}), issued)
    _ok(
        client.put(
            f"/v0/tokens/{reader['token']}",
            params={"token": manager["token"], "description": "x", "scope": "DATASOURCES:READ:events:a>1"},
        ),
        issued,
    )
    _ok(client.post(f"/v0/tokens/{reader['token']}/refresh", params={"token": admin, "grace_seconds": 30}), issued)
    _ok(client.post(f"/v0/tokens/{prefix}%20reader/refresh", params={"token": admin}), issued)  # by name
    _ok(client.get("/v0/auth", params={"token": reader["token"], "permission": "PIPES:READ:top"}), issued)
    expires = int(time.time()) + 3600
    jwt = _ok(
        client.post(
            "/v0/tokens",
            params={"token": manager["token"], "name": f"{prefix} jwt", "expiration_time": expires},
            content=json.dumps(
                {"scopes": [{"type": "PIPES:READ", "resource": "top", "fixed_params": {"org": "acme"}}]}
            ),
        ),
        issued,
    )
    _ok(client.get("/v0/auth", params={"token": jwt["token"]}), issued)
    _ok(
        client.post(
            "/v0/deployments",
            params={"token": admin},
            json={"events.datasource": f'TOKEN "{prefix} feed" APPEND\n', "top.pipe": f'TOKEN "{prefix} dash" READ\n'},
        ),
        issued,
    )
    listing = _ok(client.get("/v0/tokens", params={"token": admin}), issued)
    feed = next(t for t in listing["tokens"] if t["name"] == f"{prefix} feed")
    _ok(
        client.post("/v0/deployments", params={"token": admin}, json={"top.pipe": f'TOKEN "{prefix} dash" READ\n'}),
        issued,
    )
    # Refused requests carrying values: bad ones, dead ones, values of other workspaces.
    for method, path, params in [
        ("GET", f"/v0/tokens/{feed['token']}", {"token": admin}),  # deleted by the deployment
        ("GET", "/v0/tokens", {"token": feed["token"]}),
        ("PUT", f"/v0/tokens/{reader['token']}", {"token": admin, "scope": "AUTH"}),
        ("POST", "/v0/tokens", {"token": reader["token"], "name": "x", "scope": "ADMIN"}),
        ("POST", f"/v0/tokens/{prefix}%20reader/refresh", {"token": reader["token"]}),  # itself: not a manager
        ("GET", f"/v0/tokens/{jwt['token']}", {"token": admin}),
        ("DELETE", f"/v0/tokens/{admin}", {"token": manager["token"]}),
    ]:
        assert 400 <= client.request(method, path, params=params).status_code < 500
    _ok(client.delete(f"/v0/tokens/{manager['token']}", params={"token": admin}), issued)
    exports = {}
    for fmt in ("csv", "ndjson", "json"):
        response = client.get("/v0/audit", params={"token": admin, "format": fmt})
        assert response.status_code == 200
        exports[f"{prefix} audit.{fmt}"] = response.content
    return exports


def _sqlite_bytes(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(tmp_path.rglob("*")):
        if path.is_file():
            yield str(path.relative_to(tmp_path)), path.read_bytes()


def _postgres_dump(database_url: str) -> Iterator[tuple[str, bytes]]:
    with psycopg.connect(database_url) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
            )
        ]
        assert "tt_tokens" in tables and any("stored_events" in t or "events" in t for t in tables), tables
        for table in tables:
            cells = []
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                for cell in row:
                    cells.append(bytes(cell) if isinstance(cell, (bytes, memoryview)) else str(cell).encode())
            yield f"table {table} ({len(cells)} cells)", b"\x1f".join(cells)


def test_no_token_value_is_stored_logged_or_exported(
    backend: str, database_url: str, service: Service, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    issued = Issued()
    info = initialise(service, "main", "owner@example.com")
    issued.take(info["tokens"])
    admin = next(t["token"] for t in info["tokens"] if t["name"] == "admin token")
    app = create_app(service)
    with TestClient(app, raise_server_exceptions=False) as client:
        exports = session(client, admin, issued, "in-process")
        # The console: sign in, refresh its own token, export the trail.
        browser = Console(client)
        assert browser.sign_in(admin).status_code == 303
        admin_id = next(t["id"] for t in info["tokens"] if t["name"] == "admin token")
        page = browser.get(f"/ui/tokens/{admin_id}")
        issued.values.update(m.decode() for m in VALUE_PATTERN.findall(page.content))  # values it showed
        assert (
            browser.post(
                f"/ui/tokens/{admin_id}/refresh", {"grace_seconds": "60"}, csrf_from=f"/ui/tokens/{admin_id}"
            ).status_code
            == 303
        )
        issued.values.update(m.decode() for m in VALUE_PATTERN.findall(browser.get(f"/ui/tokens/{admin_id}").content))
        for fmt in ("csv", "ndjson"):
            answer = browser.get(f"/ui/audit/export.{fmt}")
            assert answer.status_code == 200
            exports[f"console audit.{fmt}"] = answer.content
        admin = service.signer.make(*_admin_claims(service, admin_id))
        # A JWT minted by a holder of the admin value, as Tinybird's clients do.
        minted = pyjwt.encode(
            {
                "workspace_id": info["workspace"]["id"],
                "name": "minted",
                "exp": int(time.time()) + 60,
                "scopes": [{"type": "PIPES:READ", "resource": "top"}],
            },
            admin,
            algorithm="HS256",
        )
        issued.jwts.add(minted)
        assert client.get("/v0/auth", params={"token": minted}).json()["valid"]

        # A bug in a handler (injected here) is logged with its traceback: never with the value that
        # was in the path, the query or the header of the request.
        def bug(*_: Any) -> None:
            raise RuntimeError("injected bug")

        app.state.service.reads.token_as_of = bug
        answer = client.get(
            f"/v0/tokens/{admin}", params={"as_of": "1", "token": admin}, headers={"Authorization": f"Bearer {minted}"}
        )
        assert answer.status_code == 500

    # Part of the session through `tokentrail serve`, whose stderr (and stdout) is kept.
    log = tmp_path / "serve.log"
    served = serve(database_url, tmp_path, TEST_SECRET, log)
    try:
        with httpx.Client(base_url=served.url, timeout=30) as http:
            exports.update(session(http, admin, issued, "served"))
    finally:
        served.stop()
    service.sync()
    assert len(issued.values) >= 10 and len(issued.jwts) >= 3, (len(issued.values), len(issued.jwts))

    for label, data in exports.items():
        assert len(data) > 500, label
        scan(label, data, issued)
    serve_output = log.read_bytes()
    assert b"Uvicorn running" in serve_output or b"Application startup" in serve_output
    scan("tokentrail serve output", serve_output, issued)
    # Everything logged in this process at any level, except by the HTTP client the test itself uses
    # to call the served API (httpx logs the URLs it requests, `?token=` included: the caller's side).
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert any(r.name == "tokentrail.api" and r.exc_info for r in server_side)  # the injected bug was logged
    formatter = logging.Formatter()
    records = "\n".join(f"{r.name} {formatter.format(r)}" for r in server_side)
    scan("captured logs", records.encode(), issued)
    if backend == "sqlite":
        blobs = list(_sqlite_bytes(tmp_path))
        names = [name for name, _ in blobs]
        assert "tokentrail.db" in names  # and its -wal journal while it is not checkpointed
        assert sum(len(data) for name, data in blobs if name.startswith("tokentrail.db")) > 10_000, names
    else:
        blobs = list(_postgres_dump(database_url))
        blobs += [item for item in _sqlite_bytes(tmp_path) if not item[0].endswith(".db")]
    for label, data in blobs:
        scan(label, data, issued)
    # The scan sees what it must not find: the store holds the names and generations it should.
    everything = b"".join(data for _, data in blobs)
    assert b"in-process reader" in everything and b"served feed" in everything


def _admin_claims(service: Service, admin_id: str) -> tuple[str, str, str]:
    service.sync()
    row = service.queries.token(admin_id)
    assert row is not None
    return row.workspace_id, row.id, row.generation


def test_the_scan_finds_a_value_where_there_is_one() -> None:
    """The scan itself can fail: a value, its signature alone, or a JWT, in any blob."""
    issued = Issued()
    # Minted here with a throwaway key, so that no value-shaped string is committed.
    value = TokenSigner(secrets.token_bytes(32)).make("abc", "def", "xyz")
    issued.take({"tokens": [{"token": value}, {"token": "eyJhbGciOiJIUzI1NiJ9.e30.sig-of-the-jwt-0123"}]})
    for blob in (
        b"x " + value.encode() + b" y",
        b'{"s":"' + value.rsplit(".", 1)[1].encode() + b'"}',
        b"...eyJhbGciOiJIUzI1NiJ9.e30.sig-of-the-jwt-0123...",
        b"p.AAAAAAAAAAAAAAAAAAAAAAAA.b",
    ):
        with pytest.raises(AssertionError):
            scan("blob", blob, issued)
    scan("clean", b"p.short.x and nothing else", issued)
