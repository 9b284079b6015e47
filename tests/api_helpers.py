"""Helpers for the tests that speak the HTTP API: realms (a workspace and its default tokens'
values), URLs written the way Tinybird's CLIs write them, and small assertions. The `client`,
`ws` and `other` fixtures built on them live in conftest.py."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import text

from tokentrail.api.setup import initialise
from tokentrail.service import Service

OWNER = "owner@example.com"
# What `requests` leaves alone when it re-quotes a URL: the CLIs' raw `scope=` values pass through it.
_REQUOTE_SAFE = "!#$%&'()*+,/:;=?@[]~"


# -- fixtures and helpers ------------------------------------------------------------------------


@dataclass
class Realm:
    """A workspace set up by `initialise`, with the values of its default tokens."""

    id: str
    name: str
    tokens: dict[str, dict[str, Any]]  # by name: the token objects, values included

    def value(self, name: str) -> str:
        return self.tokens[name]["token"]

    def id_of(self, name: str) -> str:
        return self.tokens[name]["id"]

    @property
    def admin(self) -> str:
        return self.value("admin token")

    @property
    def admin_id(self) -> str:
        return self.id_of("admin token")

    @property
    def user(self) -> str:
        return self.value("user token")


def make_realm(service: Service, name: str, email: str) -> Realm:
    info = initialise(service, name, email)
    return Realm(info["workspace"]["id"], name, {t["name"]: t for t in info["tokens"]})


def url(path: str, token: str | None = None, /, **params: Any) -> str:
    """A URL as the CLIs build it: `scope` appended raw, everything else form-encoded."""
    pairs = [f"token={token}"] if token else []
    for key, value in params.items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            encoded = quote(str(item), safe=_REQUOTE_SAFE) if key == "scope" else quote_plus(str(item))
            pairs.append(f"{key}={encoded}")
    return path + ("?" + "&".join(pairs) if pairs else "")


def path_of(ref: str) -> str:
    """`{x}` of /v0/tokens/{x}, percent-encoded as the CLIs' HTTP library does."""
    return quote(ref, safe="")


def create(client: TestClient, token: str, name: str, *scopes: str, **extra: Any) -> dict[str, Any]:
    response = client.post(url("/v0/tokens", token, name=name, scope=list(scopes), **extra))
    assert response.status_code == 200, response.text
    return response.json()


def create_jwt(
    client: TestClient, token: str, name: str, scopes: list[dict[str, Any]], ttl: int = 3600, **body: Any
) -> httpx.Response:
    expires = int(time.time()) + ttl
    content = json.dumps({"scopes": scopes, **body}).encode()
    return client.post(url("/v0/tokens", token, name=name, expiration_time=expires), content=content)


def head(service: Service) -> int:
    """The last position of the event log: unchanged means nothing was written."""
    return service.ledger.recorder.max_notification_id() or 0


def assert_error(response: httpx.Response, status: int, message: str | None = None) -> str:
    """Every error is JSON `{"error": "<non-empty>"}` with the right status."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"].strip(), body
    if message is not None:
        assert body["error"] == message, body
    return body["error"]


def names(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [t["name"] for t in response.json()["tokens"]]


def audit_rows(service: Service, after: int) -> list[dict[str, Any]]:
    with service.read_engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT position, type, token_id, token_name, request_id, actor_token_id, actor_name, "
                "client_address, user_agent, claimed_origin, claimed_request_id "
                "FROM tt_audit WHERE position > :after ORDER BY position"
            ),
            {"after": after},
        ).mappings()
        return [dict(r) for r in rows]


def authenticates(client: TestClient, value: str) -> bool:
    response = client.get(url("/v0/auth", value))
    assert response.status_code == 200, response.text
    return response.json()["valid"]
