"""Where a change came from: the client's address and user agent as the server saw them
(X-Forwarded-For believed only from TOKENTRAIL_TRUSTED_PROXIES), apart from what the client claims
about itself (X-Tokentrail-Origin, X-Request-Id), in the audit API, its exports and the console."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from fastapi.testclient import TestClient

from tests.api_helpers import audit_rows, head, make_realm, url
from tokentrail.api.app import create_app
from tokentrail.service import Service


def _proxied(service: Service, tmp_path: Path, proxies: str) -> Service:
    return Service(
        service.database.url, data=tmp_path, environ={**service.environ, "TOKENTRAIL_TRUSTED_PROXIES": proxies}
    )


def _create(client: TestClient, admin: str, name: str, **headers: str):
    answer = client.post(url("/v0/tokens", admin, name=name, scope="PIPES:READ:top"), headers=headers)
    assert answer.status_code == 200, answer.text
    return answer


def test_a_change_records_the_peer_and_user_agent_and_ignores_forwarded_for_from_strangers(
    service, tmp_path: Path
) -> None:
    proxied = _proxied(service, tmp_path, "10.0.0.0/8")
    try:
        realm = make_realm(proxied, "main", "owner@example.com")
        with TestClient(create_app(proxied), client=("203.0.113.9", 4000)) as client:
            before = head(proxied)
            _create(client, realm.admin, "direct", **{"User-Agent": "curl/8.5", "X-Forwarded-For": "198.51.100.1"})
        rows = [r for r in audit_rows(proxied, before) if r["token_name"] == "direct"]
        assert rows and {r["client_address"] for r in rows} == {"203.0.113.9"}  # the forged hop is not believed
        assert {r["user_agent"] for r in rows} == {"curl/8.5"}
    finally:
        proxied.close()


def test_forwarded_for_from_a_trusted_proxy_names_the_client(service, tmp_path: Path) -> None:
    proxied = _proxied(service, tmp_path, "10.0.0.0/8")
    try:
        realm = make_realm(proxied, "main", "owner@example.com")
        with TestClient(create_app(proxied), client=("10.0.0.2", 4000)) as client:
            before = head(proxied)
            # The client forged its own first hop; the proxy appended the address it saw.
            _create(client, realm.admin, "proxied", **{"X-Forwarded-For": "1.2.3.4, 198.51.100.7"})
        rows = [r for r in audit_rows(proxied, before) if r["token_name"] == "proxied"]
        assert rows and {r["client_address"] for r in rows} == {"198.51.100.7"}
    finally:
        proxied.close()


def test_what_a_client_claims_is_kept_and_labelled_as_claimed(client, service, ws) -> None:
    before = head(service)
    answer = _create(
        client, ws.admin, "claims", **{"X-Tokentrail-Origin": "ui", "X-Request-Id": "job-7", "User-Agent": "robot/1"}
    )
    events = client.get(url("/v0/audit", ws.admin, token_name="claims")).json()["events"]
    assert events, events
    for event in events:
        assert event["origin"] == "api"  # the server's own view: an API request, not the console
        assert event["request_id"] == answer.headers["x-request-id"] != "job-7"
        assert event["claimed"] == {"origin": "ui", "request_id": "job-7"}
        assert event["client"] == {"address": "testclient", "user_agent": "robot/1"}
    # The same fields in both exports.
    ndjson = client.get(url("/v0/audit", ws.admin, token_name="claims", format="ndjson")).text
    lines = [json.loads(line) for line in ndjson.splitlines() if line]
    assert [e["claimed"] for e in lines] == [e["claimed"] for e in events]
    rows = list(
        csv.DictReader(io.StringIO(client.get(url("/v0/audit", ws.admin, token_name="claims", format="csv")).text))
    )
    assert rows and all(
        r["claimed_origin"] == "ui"
        and r["claimed_request_id"] == "job-7"
        and r["client_address"] == "testclient"
        and r["user_agent"] == "robot/1"
        for r in rows
    )
    assert {r["position"] for r in audit_rows(service, before)} >= {e["position"] for e in events}


def test_a_token_value_in_a_claim_or_user_agent_is_never_stored(client, service, ws) -> None:
    before = head(service)
    _create(client, ws.admin, "leaky", **{"User-Agent": f"agent {ws.admin}", "X-Request-Id": ws.admin})
    rows = audit_rows(service, before)
    assert rows
    for row in rows:
        assert ws.admin not in json.dumps(dict(row))
        assert row["user_agent"] == "agent [redacted]" and row["claimed_request_id"] == "[redacted]"


def test_events_without_request_details_still_load_with_nulls(client, service, ws) -> None:
    """Events written before the client's address and claims were recorded (here: by the ledger
    itself, with no request) answer with null `client` and `claimed`."""
    events = client.get(url("/v0/audit", ws.admin, event="Created")).json()["events"]
    setup = [e for e in events if e["actor"]["name"] == "system"]
    assert setup and all(e["client"] is None and e["claimed"] is None for e in setup)
    assert {e["aggregate"] for e in setup} >= {"token", "workspace"}


def test_the_console_audit_page_shows_where_a_change_came_from(client, service, ws) -> None:
    _create(client, ws.admin, "shown", **{"X-Tokentrail-Origin": "cli", "User-Agent": "tokentrail-cli/0.1"})
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/signin").text)
    assert csrf
    signed_in = client.post("/ui/signin", data={"csrf": csrf.group(1), "token": ws.admin}, follow_redirects=False)
    assert signed_in.status_code == 303, signed_in.text
    page = client.get("/ui/audit")
    assert page.status_code == 200, page.text
    assert "tokentrail-cli/0.1" in page.text and "testclient" in page.text and "claimed" in page.text
